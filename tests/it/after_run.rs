//! After the run: `cancel` takes back a run's open actions (and nothing else in the tenant), `run --tag` and
//! `tag` mark the machines 500 a call, and `report` writes what people read: its escaping, its counts and
//! rows against the results file (parsed with an HTML parser), an interrupted run's report, and the page in
//! a real browser (headless Chromium; `MDE_OFFBOARD_SKIP_BROWSER=1` skips that one test, which otherwise
//! fails when /usr/bin/chromium is missing).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mde_sim::{Faults, Fleet, SimConfig, Simulator};
use scraper::{Html, Selector};

use crate::common::{
    Results, command, demo_token, kill, mde_in, post_as_demo_app, rows_in, wait, wait_until, write_file,
};

const CANCEL: &str = "POST /api/machineactions/{id}/cancel";
const OFFBOARD: &str = "POST /api/machines/{id}/offboard";
const TAG_MANY: &str = "POST /api/machines/AddOrRemoveTagForMultipleMachines";
const ALL_ROLES: [&str; 3] = ["Machine.Offboard", "Machine.Read.All", "Machine.ReadWrite.All"];

/// A simulator of `n` machines (seed `seed`), every one offboardable, with `roles`.
async fn simulator(n: usize, seed: u64, roles: &[&str]) -> (Simulator, Vec<String>) {
    let config = SimConfig {
        fleet: Fleet::generate(n, seed),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        // The run's pace is not what these tests are about.
        quotas: vec!["1000000/1s".parse().unwrap()],
        ..SimConfig::default()
    };
    let ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    (Simulator::start(config).await.unwrap(), ids)
}

fn input(dir: &Path, ids: &[String]) -> String {
    write_file(dir, "m.csv", &format!("MachineId\n{}\n", ids.join("\n"))).to_str().unwrap().to_string()
}

/// `GET {path}` on `sim` as the demo app.
async fn get_as_demo_app(sim: &Simulator, path: &str) -> serde_json::Value {
    let token = demo_token(sim).await;
    let answer = reqwest::Client::new().get(format!("{}{path}", sim.base_url())).bearer_auth(token).send().await;
    answer.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_takes_back_the_runs_open_actions_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, ids) = simulator(14, 31, &ALL_ROLES).await;
    // An action of somebody else in the tenant, open before the run and not in its list.
    let (status, foreign) = post_as_demo_app(
        &sim,
        &format!("/api/machines/{}/offboard", ids[13]),
        serde_json::json!({ "Comment": "other team" }),
    )
    .await;
    assert_eq!(status, 201);
    let foreign = foreign["id"].as_str().unwrap().to_string();
    // And one in the run's list, open before the run: its row is already_pending without an action id (no
    // pre-flight), and `cancel` finds its open action by machine.
    let (status, earlier) = post_as_demo_app(
        &sim,
        &format!("/api/machines/{}/offboard", ids[5]),
        serde_json::json!({ "Comment": "earlier" }),
    )
    .await;
    assert_eq!(status, 201);
    let run_input = input(dir.path(), &ids[..12]);
    let out = mde_in(&sim, dir.path(), &["run", &run_input, "--yes", "--no-preflight", "--rate", "1000/1s"], "").await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let results = dir.path().join("m.results.csv");
    let rows = Results::read(&results);
    assert_eq!((rows.line(7)["outcome"].as_str(), rows.line(7)["action_id"].as_str()), ("already_pending", ""));
    assert!(
        rows.rows
            .iter()
            .filter(|r| r["line"] != "7")
            .all(|r| r["outcome"] == "submitted" && r["action_status"] == "Pending")
    );
    // One of the run's actions ends (is cancelled by hand) before `cancel`: the file still says Pending.
    let by_hand = rows.line(12)["action_id"].clone();
    let (status, _) = post_as_demo_app(
        &sim,
        &format!("/api/machineactions/{by_hand}/cancel"),
        serde_json::json!({ "Comment": "by hand" }),
    )
    .await;
    assert_eq!(status, 200);
    // And one row already shows a final status in the file: left as it is, never called.
    let text = std::fs::read_to_string(&results).unwrap();
    let final_action = rows.line(11)["action_id"].clone();
    std::fs::write(&results, text.replace(&format!("{final_action},Pending"), &format!("{final_action},Succeeded")))
        .unwrap();
    let path = results.to_str().unwrap();

    // A dry run calls nothing.
    let out = mde_in(&sim, dir.path(), &["cancel", path, "--dry-run"], "").await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("11 open offboard action(s) would be cancelled"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("would cancel: {} (its open action is looked up", ids[5])), "{}", out.stdout);
    assert_eq!(sim.stats().total(CANCEL), 1, "only the cancel made by hand");
    // Without --yes and without a terminal it refuses (exit 2) and calls nothing.
    let out = mde_in(&sim, dir.path(), &["cancel", path, "--comment", "x"], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(sim.stats().total(CANCEL), 1);
    // The offboard comment (MDE_COMMENT, set for every test command) is not a cancel's: --comment is needed.
    let out = mde_in(&sim, dir.path(), &["cancel", path, "--yes"], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--comment"), "{}", out.stderr);
    assert_eq!(sim.stats().total(CANCEL), 1);

    // --only: just the machines listed.
    let only = write_file(dir.path(), "only.csv", &format!("MachineId\n{}\n{}\n", ids[0], ids[1]));
    let args = ["cancel", path, "--yes", "--comment", "wrong list {run_id}", "--only", only.to_str().unwrap()];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Cancelled 2 offboard action(s)"), "{}", out.stdout);
    assert_eq!(sim.stats().total(CANCEL), 3);

    // The rest: 9 still open, of which one was cancelled by hand (the service refuses it: exit 3).
    let out = mde_in(&sim, dir.path(), &["cancel", path, "--yes", "--comment", "wrong list {run_id}"], "").await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Cancelled 8 offboard action(s)"), "{}", out.stdout);
    assert!(out.stdout.contains("already final (left as they were) 3"), "{}", out.stdout);
    assert!(out.stdout.contains("could not be cancelled            1 (HTTP 400"), "{}", out.stdout);
    assert_eq!(sim.stats().total(CANCEL), 1 + 2 + 9, "one call per open row, none for final rows");

    let after = Results::read(&results);
    let statuses: BTreeMap<String, usize> = after.rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["action_status"].clone()).or_insert(0) += 1;
        m
    });
    assert_eq!(
        statuses,
        BTreeMap::from([("Cancelled".to_string(), 10), ("Pending".to_string(), 1), ("Succeeded".to_string(), 1)])
    );
    assert_eq!(after.line(12)["action_status"], "Pending", "the refused one is left as the file had it");
    assert_eq!(after.line(7)["action_id"], earlier["id"].as_str().unwrap(), "found by its machine");
    assert_eq!(sim.stats().total("GET /api/machineactions"), 1, "one lookup, for the row without an id");
    for row in after.rows.iter().filter(|r| r["action_status"] == "Cancelled") {
        assert!(!row["updated_at"].is_empty());
        let action = get_as_demo_app(&sim, &format!("/api/machineactions/{}", row["action_id"])).await;
        assert_eq!(action["status"], "Cancelled");
        assert!(action["cancellationComment"].as_str().unwrap().starts_with("wrong list 2"), "{action}");
    }
    // Nothing else in the tenant was touched.
    let other = get_as_demo_app(&sim, &format!("/api/machineactions/{foreign}")).await;
    assert_eq!(other["status"], "Pending", "{other}");

    // `track --report` reads the service's statuses and refreshes the report: the one cancelled by hand too.
    let out = mde_in(&sim, dir.path(), &["track", path, "--once", "--report", "t.md"], "").await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    let report = std::fs::read_to_string(dir.path().join("t.md")).unwrap();
    assert!(report.contains("| Cancelled | 11 |") && report.contains("| Succeeded | 1 |"), "{report}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tag_marks_1200_machines_500_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, ids) = simulator(1200, 32, &ALL_ROLES).await;
    // The service refuses more than 500 machines in one call.
    let (status, body) = post_as_demo_app(
        &sim,
        "/api/machines/AddOrRemoveTagForMultipleMachines",
        serde_json::json!({ "Value": "x", "Action": "Add", "MachineIds": ids[..501] }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let run_input = input(dir.path(), &ids);
    let args = [
        "run",
        &run_input,
        "--yes",
        "--no-preflight",
        "--rate",
        "100000/1s",
        "--concurrency",
        "32",
        "--tag",
        "retired-{run_id}",
        "--report",
        "r.md",
    ];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Tagged 1200 machine(s) with `retired-2"), "{}", out.stdout);
    assert_eq!(sim.stats().count(TAG_MANY, "200"), 3, "1,200 machines: 500 + 500 + 200");
    assert_eq!(sim.stats().count(TAG_MANY, "400"), 1, "only the refused call above");
    let report = std::fs::read_to_string(dir.path().join("r.md")).unwrap();
    assert!(report.contains("added: 1200 machine(s), 0 not"), "{report}");
    assert!(report.contains("- **Exit code**: 0 (every row ended well; as the command ended)"), "{report}");
    let tag = out.stdout.split('`').nth(1).unwrap().to_string();
    let tagged = |page: serde_json::Value| {
        page["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["machineTags"].as_array().unwrap().iter().any(|t| *t == tag))
            .count()
    };
    assert_eq!(tagged(get_as_demo_app(&sim, "/api/machines?$top=10000").await), 1200);

    // Removed later, and removing again changes nothing.
    let results = dir.path().join("m.results.csv");
    for _ in 0..2 {
        let out = mde_in(&sim, dir.path(), &["tag", results.to_str().unwrap(), "--value", &tag, "--remove"], "").await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains(&format!("Removed the tag `{tag}` from 1200 machine(s) in 3 call(s)")),
            "{}",
            out.stdout
        );
    }
    assert_eq!(tagged(get_as_demo_app(&sim, "/api/machines?$top=10000").await), 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_without_its_permission_is_refused_before_the_first_offboard() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, ids) = simulator(3, 33, &["Machine.Offboard", "Machine.Read.All"]).await;
    let run_input = input(dir.path(), &ids);
    let out = mde_in(&sim, dir.path(), &["run", &run_input, "--yes", "--tag", "retired"], "").await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("Machine.ReadWrite.All"), "{}", out.stderr);
    assert_eq!(sim.stats().total(OFFBOARD), 0);
    assert_eq!(sim.stats().total("GET /api/machines"), 0, "no call at all");
    sim.shutdown().await;
}

/// A computer name, an error message and a comment that are markup.
const EVIL_NAME: &str = "<script>alert(\"name\")</script>'n'.contoso.local";
const EVIL_MESSAGE: &str = "</td><script>alert('message')</script><img src=x onerror=\"alert(1)\">";
const EVIL_COMMENT: &str = "<script>alert(\"comment\")</script> 'change' \"CHG1\"";

/// A run of 6 machines (one named [`EVIL_NAME`], one unknown, one listed twice, one invalid) with
/// [`EVIL_COMMENT`], whose results then carry [`EVIL_MESSAGE`] on the unknown machine's row, in reverse
/// order (so that the page's default sort, not the file's order, puts the rows in order): the directory and
/// the results file.
async fn run_with_markup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = String::from("id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName\n");
    let ids: Vec<String> = (0..5).map(|i| format!("{:040x}", 0xfeed00 + i)).collect();
    for (i, id) in ids.iter().enumerate() {
        let name =
            if i == 0 { format!("\"{}\"", EVIL_NAME.replace('"', "\"\"")) } else { format!("m{i}.contoso.local") };
        fleet += &format!("{id},{name},Windows11,Active,2026-11-20T10:00:00Z,Workstations\n");
    }
    let config = SimConfig {
        fleet: Fleet::from_csv(&write_file(dir.path(), "fleet.csv", &fleet)).unwrap(),
        ..SimConfig::default()
    };
    let sim = Simulator::start(config).await.unwrap();
    let unknown = format!("{:040x}", 0xdead);
    let list = [
        ids[0].clone(),
        ids[1].clone(),
        unknown.clone(),
        ids[2].clone(),
        ids[1].clone(),
        "not-an-id".into(),
        ids[3].clone(),
    ];
    let run_input = input(dir.path(), &list);
    let args = ["run", &run_input, "--yes", "--rate", "1000/1s", "--comment", EVIL_COMMENT];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    sim.shutdown().await;
    let results = dir.path().join("m.results.csv");
    let mut reader = csv::Reader::from_path(&results).unwrap();
    let headers = reader.headers().unwrap().clone();
    let message = headers.iter().position(|h| h == "error_message").unwrap();
    let machine = headers.iter().position(|h| h == "machine_id").unwrap();
    let mut records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    records.reverse();
    let mut writer = csv::Writer::from_path(&results).unwrap();
    writer.write_record(&headers).unwrap();
    for record in records {
        let mut cells: Vec<String> = record.iter().map(str::to_string).collect();
        if cells[machine] == unknown {
            cells[message] = EVIL_MESSAGE.to_string();
        }
        writer.write_record(&cells).unwrap();
    }
    writer.flush().unwrap();
    (dir, results)
}

fn select<'a>(html: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    html.select(&Selector::parse(css).unwrap()).collect()
}

fn text(e: &scraper::ElementRef) -> String {
    e.text().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_escapes_what_came_from_the_service_and_the_input() {
    let (dir, results) = run_with_markup().await;
    let out =
        mde_in_offline(dir.path(), &["report", results.to_str().unwrap(), "--html", "r.html", "--markdown", "r.md"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("r.html")).unwrap();
    let html = Html::parse_document(&page);
    assert_eq!(select(&html, "script").len(), 1, "only the page's own script");
    assert!(select(&html, "img").is_empty() && select(&html, "[onerror]").is_empty());
    let cells: Vec<String> = select(&html, "#rows td").iter().map(text).collect();
    assert!(cells.iter().any(|c| c == EVIL_NAME), "the name shows as text: {cells:?}");
    assert!(cells.iter().any(|c| c == EVIL_MESSAGE), "the message shows as text");
    let run: Vec<String> = select(&html, "#run td").iter().map(text).collect();
    assert!(run.iter().any(|c| c.contains(EVIL_COMMENT)), "the comment shows as text: {run:?}");
    for evil in [EVIL_NAME, EVIL_MESSAGE, EVIL_COMMENT, "<script>alert", "onerror=\""] {
        assert!(!page.contains(evil), "{evil} survives as markup");
    }
    let markdown = std::fs::read_to_string(dir.path().join("r.md")).unwrap();
    assert!(!markdown.contains('<') && !markdown.contains("</td>"), "{markdown}");
    assert!(markdown.contains("&lt;script&gt;alert("), "{markdown}");
}

/// Runs `mde-offboard ARGS` in `dir` without a simulator (report reads files only).
fn mde_in_offline(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mde-offboard"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .output()
        .unwrap()
}

/// A results file that is not there is the report's input: the message names it as such (not as a file the
/// command writes) and says what to give instead; no report is written.
#[test]
fn a_report_of_a_missing_results_file_names_it_as_its_input_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = mde_in_offline(dir.path(), &["report", "missing.csv", "--html", "r.html"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("input missing.csv"), "{stderr}");
    assert!(!stderr.contains("output missing.csv"), "{stderr}");
    assert!(stderr.contains("check the path") && stderr.contains("results file"), "{stderr}");
    assert!(!dir.path().join("r.html").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_holds_the_counts_and_rows_of_the_results_file() {
    let (dir, results) = run_with_markup().await;
    let out = mde_in_offline(dir.path(), &["report", results.to_str().unwrap(), "--html", "r.html"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let html = Html::parse_document(&std::fs::read_to_string(dir.path().join("r.html")).unwrap());
    let file = Results::read(&results);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for row in &file.rows {
        *outcomes.entry(row["outcome"].clone()).or_insert(0) += 1;
    }
    let shown: BTreeMap<String, u64> = select(&html, "#outcomes tbody tr")
        .iter()
        .map(|tr| {
            let tds: Vec<String> = select_in(tr, "td").iter().map(text).collect();
            (tds[0].clone(), tds[1].parse().unwrap())
        })
        .collect();
    assert_eq!(shown, outcomes);
    assert_eq!(text(&select(&html, "#total")[0]), file.rows.len().to_string());
    let not_well = file.rows.iter().filter(|r| !matches!(r["outcome"].as_str(), "submitted" | "duplicate")).count();
    assert_eq!(text(&select(&html, "#not-well")[0]), not_well.to_string());
    // Every row is in the table, its cells as the file has them.
    let headings: Vec<String> =
        select(&html, "#rows thead th").iter().map(|th| th.value().attr("data-col").unwrap().to_string()).collect();
    let table: Vec<HashMap<String, String>> = select(&html, "#rows tbody tr")
        .iter()
        .map(|tr| headings.iter().cloned().zip(select_in(tr, "td").iter().map(text)).collect())
        .collect();
    assert_eq!(table.len(), file.rows.len());
    for row in &table {
        let in_file = file.line(row["line"].parse().unwrap());
        for (column, value) in row {
            assert_eq!(&in_file[column], value, "{column} of line {}", row["line"]);
        }
    }
    // Rows that did not end well come first in the page as written.
    let wells: Vec<&str> =
        select(&html, "#rows tbody tr").iter().map(|tr| tr.value().attr("data-well").unwrap()).collect();
    assert!(wells.windows(2).all(|w| w[0] <= w[1]), "{wells:?}");
    assert_eq!(wells.iter().filter(|w| **w == "0").count(), not_well);
}

fn select_in<'a>(e: &scraper::ElementRef<'a>, css: &str) -> Vec<scraper::ElementRef<'a>> {
    e.select(&Selector::parse(css).unwrap()).collect()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_writes_its_report() {
    let (dir, sim, input, _) = crate::common::fleet_with_quota(40, 34, "4/1s", Faults::default()).await;
    let args = ["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--rate", "4/1s", "--report", "r.html"];
    let child = command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    let results = dir.path().join("m.results.csv");
    wait_until("a few rows", || rows_in(&results) >= 3).await;
    kill(&child, "-INT");
    let out = wait(child).await;
    assert_eq!(out.code, 130, "{}{}", out.stdout, out.stderr);
    let written = Results::read(&results).rows.len();
    assert!(written < 40);
    let html = Html::parse_document(&std::fs::read_to_string(dir.path().join("r.html")).unwrap());
    let run: HashMap<String, String> = select(&html, "#run tr")
        .iter()
        .map(|tr| (text(&select_in(tr, "th")[0]), text(&select_in(tr, "td")[0])))
        .collect();
    assert!(run["Exit code"].starts_with("130 (interrupted"), "{run:?}");
    assert_eq!(run["Written by"], "run (interrupted)");
    assert_eq!(text(&select(&html, "#total")[0]), written.to_string());
    assert_eq!(select(&html, "#rows tbody tr").len(), written);
    sim.shutdown().await;
}

/// Headless Chromium's DOM of `page` (a `file://` path and query) after its script ran; `None` when the
/// browser is missing and `MDE_OFFBOARD_SKIP_BROWSER=1` says to skip.
fn rendered(page: &Path, query: &str) -> Option<Html> {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        if std::env::var("MDE_OFFBOARD_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("skipped: /usr/bin/chromium is missing and MDE_OFFBOARD_SKIP_BROWSER=1");
            return None;
        }
        panic!(
            "/usr/bin/chromium is missing: install Debian's chromium (apt-get install chromium), or set MDE_OFFBOARD_SKIP_BROWSER=1 to skip this test"
        );
    }
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}{query}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    Some(Html::parse_document(&String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_sorts_and_filters_in_a_real_browser() {
    let (dir, results) = run_with_markup().await;
    let out = mde_in_offline(dir.path(), &["report", results.to_str().unwrap(), "--html", "r.html"]);
    assert_eq!(out.status.code(), Some(0));
    let page = dir.path().join("r.html");
    let Some(dom) = rendered(&page, "") else { return };
    let file = Results::read(&results);
    let total = file.rows.len();
    assert_eq!(text(&select(&dom, "#shown")[0]), format!("{total} of {total} rows shown"));
    assert_eq!(text(&select(&dom, "#total")[0]), total.to_string());
    // The default sort: rows that did not end well first, each group by input line (the file is in reverse).
    let lines = |dom: &Html| -> Vec<(String, u64)> {
        select(dom, "#rows tbody tr")
            .iter()
            .filter(|tr| tr.value().attr("hidden").is_none())
            .map(|tr| {
                (tr.value().attr("data-well").unwrap().to_string(), text(&select_in(tr, "td")[0]).parse().unwrap())
            })
            .collect()
    };
    let mut expected: Vec<(String, u64)> = file
        .rows
        .iter()
        .map(|r| {
            let well = matches!(r["outcome"].as_str(), "submitted" | "duplicate");
            (if well { "1" } else { "0" }.to_string(), r["line"].parse().unwrap())
        })
        .collect();
    expected.sort();
    assert_eq!(lines(&dom), expected);
    assert_eq!(lines(&dom)[0], ("0".to_string(), 4), "the unknown machine on input line 4 comes first");

    // A filter narrows the table.
    let Some(dom) = rendered(&page, "?filter=not_found") else { return };
    let not_found = file.rows.iter().filter(|r| r["outcome"] == "not_found").count();
    assert!(not_found > 0 && not_found < total);
    assert_eq!(text(&select(&dom, "#shown")[0]), format!("{not_found} of {total} rows shown"));
    assert_eq!(lines(&dom).len(), not_found);
    // And a chosen sort: by line, descending.
    let Some(dom) = rendered(&page, "?sort=line&desc") else { return };
    let by_line: Vec<u64> = lines(&dom).iter().map(|(_, l)| *l).collect();
    let mut descending = by_line.clone();
    descending.sort_by(|a, b| b.cmp(a));
    assert_eq!(by_line, descending);
}

/// A results file of `n` rows, every hundredth `not_found`, the others `submitted`.
fn big_results(dir: &Path, name: &str, n: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "{}", mde_offboard::files::results::COLUMNS.join(",")).unwrap();
    for i in 0..n {
        let (outcome, status, at) =
            if i % 100 == 0 { ("not_found", "", "") } else { ("submitted", "Pending", "2026-11-30T10:00:00Z") };
        writeln!(out, "{},{:040x},{outcome},,{status},,1,,,m{i},,,,{at},", i + 2, i).unwrap();
    }
    out.flush().unwrap();
    path
}

/// Runs `mde-offboard ARGS` in `dir` to its end: its exit code and its own peak resident memory in KiB
/// (`wait4`'s rusage: this child only, whatever else the tests run).
#[cfg(target_os = "linux")]
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's wait cannot replace: it drops the rusage
fn peak_memory(dir: &Path, args: &[&str]) -> (i32, i64) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mde-offboard"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

#[cfg(target_os = "linux")]
#[test]
fn a_report_of_a_million_rows_takes_the_memory_of_ten_thousand() {
    let dir = tempfile::tempdir().unwrap();
    let small = big_results(dir.path(), "small.csv", 10_000);
    let large = big_results(dir.path(), "large.csv", 1_000_000);
    let (code, small_kib) = peak_memory(dir.path(), &["report", small.to_str().unwrap(), "--html", "s.html"]);
    assert_eq!(code, 0);
    let args = ["report", large.to_str().unwrap(), "--html", "l.html", "--markdown", "l.md"];
    let (code, large_kib) = peak_memory(dir.path(), &args);
    assert_eq!(code, 0);
    // The file is about 80 MB: holding it, or its rows, would show.
    assert!(large_kib < small_kib + 16 * 1024, "1,000,000 rows: {large_kib} KiB; 10,000 rows: {small_kib} KiB");
    let page = std::fs::read_to_string(dir.path().join("l.html")).unwrap();
    // Every row that did not end well (10,000) and the first 1,000 of the others.
    assert_eq!(page.matches("<tr class=\"bad\" data-well=\"0\">").count(), 10_000);
    assert_eq!(page.matches("<tr data-well=\"1\">").count(), 1_000);
    assert!(page.contains("989000 row(s) that ended well are left out"), "the page says so");
    assert!(page.contains("<td class=\"num\" id=\"total\">1000000</td>"));
    let markdown = std::fs::read_to_string(dir.path().join("l.md")).unwrap();
    assert_eq!(markdown.matches("| not\\_found |").count(), 1 + 10_000, "the count and every row");
}

/// The one results file of a run of several tenants: the report counts the rows of each tenant (in the
/// file's order), shows each row's tenant, and says the run was one run per tenant.
#[test]
fn a_report_of_several_tenants_counts_each_tenant_and_names_each_rows_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let header = "line,machine_id,outcome,action_id,action_status,http_status,attempts,error_code,error_message,\
                  computer_dns_name,os_platform,health_status,last_seen,submitted_at,updated_at,tenant_id";
    let id = |n: u32| format!("{n:040x}");
    let rows = [
        format!(
            "2,{},submitted,a1,Pending,201,1,,,ws-1,Windows11,Active,,2026-11-30T10:00:00Z,,contoso.onmicrosoft.com",
            id(1)
        ),
        format!(
            "4,{},forbidden,,,403,1,Forbidden,no access,srv-1,WindowsServer2022,Active,,,,contoso.onmicrosoft.com",
            id(2)
        ),
        format!(
            "3,{},submitted,a3,Pending,201,1,,,ws-3,Windows10,Active,,2026-11-30T10:00:01Z,,fabrikam.onmicrosoft.com",
            id(3)
        ),
    ];
    let results = write_file(dir.path(), "m.results.csv", &format!("{header}\n{}\n", rows.join("\n")));
    let out =
        mde_in_offline(dir.path(), &["report", results.to_str().unwrap(), "--html", "r.html", "--markdown", "r.md"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let markdown = std::fs::read_to_string(dir.path().join("r.md")).unwrap();
    assert!(markdown.contains("- **Tenant**: 2 tenant(s) (the rows of each below)"), "{markdown}");
    assert!(
        markdown.contains("| contoso.onmicrosoft.com | 2 | 1 |\n| fabrikam.onmicrosoft.com | 1 | 0 |"),
        "{markdown}"
    );
    assert!(markdown.contains("| Tenant | Line | Machine id |"), "{markdown}");
    assert!(markdown.contains(&format!("| contoso.onmicrosoft.com | 4 | {} |", id(2))), "{markdown}");

    let html = Html::parse_document(&std::fs::read_to_string(dir.path().join("r.html")).unwrap());
    let tenants: Vec<String> = select(&html, "#tenants td").iter().map(text).collect();
    assert_eq!(tenants, ["contoso.onmicrosoft.com", "2", "1", "fabrikam.onmicrosoft.com", "1", "0"]);
    let heads: Vec<String> = select(&html, "#rows th").iter().map(text).collect();
    assert_eq!(heads[..2], ["Tenant", "Line"]);
    let first_cells: Vec<String> = select(&html, "#rows tbody tr")
        .iter()
        .map(|r| r.select(&Selector::parse("td").unwrap()).next().map(|c| text(&c)).unwrap())
        .collect();
    assert_eq!(first_cells, ["contoso.onmicrosoft.com", "contoso.onmicrosoft.com", "fabrikam.onmicrosoft.com"]);

    // A file of one tenant has no tenant column, and its report none either.
    let single = write_file(
        dir.path(),
        "one.results.csv",
        &format!("{}\n{}\n", &header[..header.len() - 10], &rows[1][..rows[1].len() - 24]),
    );
    let out = mde_in_offline(dir.path(), &["report", single.to_str().unwrap(), "--markdown", "one.md"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let markdown = std::fs::read_to_string(dir.path().join("one.md")).unwrap();
    assert!(markdown.contains("| Line | Machine id |") && !markdown.contains("Tenant |"), "{markdown}");
}

/// Every cancel's answer comes after the call timeout, though the service cancelled the action when the
/// call came: the action says so, so the row is `Cancelled` and counted. Before: "could not be cancelled
/// (Timeout)", exit 3, and the rows left `Pending`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_answer_is_lost_is_read_back_from_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, ids) = simulator(3, 41, &ALL_ROLES).await;
    let run_input = input(dir.path(), &ids);
    let out = mde_in(&sim, dir.path(), &["run", &run_input, "--yes", "--no-preflight"], "").await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let results = dir.path().join("m.results.csv");
    assert!(Results::read(&results).rows.iter().all(|r| r["action_status"] == "Pending"));

    sim.set_faults(Faults {
        slow_share: 1.0,
        slow_latency: std::time::Duration::from_secs(2),
        actions_only: true,
        ..Faults::default()
    });
    let path = results.to_str().unwrap();
    let args = ["cancel", path, "--yes", "--comment", "undo", "--timeout", "1s", "--max-attempts", "2"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Cancelled 3 offboard action(s)"), "{}", out.stdout);
    let after = Results::read(&results);
    assert!(after.rows.iter().all(|r| r["action_status"] == "Cancelled"), "{:?}", after.rows);
    for row in &after.rows {
        let action = get_as_demo_app(&sim, &format!("/api/machineactions/{}", row["action_id"])).await;
        assert_eq!(action["status"], "Cancelled");
    }
}
