//! A list of several tenants in one run: a tenant column, each tenant its own sign-in, quotas, lock and
//! results, one tenant's failure failing only its rows, and one results file with a `tenant_id` column.

use std::collections::HashMap;
use std::path::Path;

use mde_sim::{Fleet, SimConfig, Simulator};

use crate::common::{mde_in, summary_json, write_file};

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";

/// Three tenants of `n` machines each: the demo tenant, `tenant2.onmicrosoft.com`, and
/// `tenant3.onmicrosoft.com`, which has not consented to the app.
async fn three_tenants(n: usize) -> (Simulator, Vec<SimConfig>) {
    let first = SimConfig {
        fleet: Fleet::generate(n, 31),
        quotas: vec!["100/1m".parse().unwrap()],
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        ..SimConfig::default()
    };
    let mut tenants = mde_sim::tenant_series(first, 3, |k| Fleet::generate(n, 31 + k as u64)).unwrap();
    tenants[2].consented = false;
    let sim = Simulator::start_tenants(tenants.clone()).await.unwrap();
    (sim, tenants)
}

fn ids(config: &SimConfig) -> Vec<String> {
    config.fleet.ids().map(str::to_owned).collect()
}

/// A list of every machine of each tenant, tenant after tenant: the first named by its id, tenant K by
/// its domain `tenantK.onmicrosoft.com`.
fn grouped_list(tenants: &[SimConfig]) -> String {
    let mut text = String::from("MachineId,TenantId\n");
    for (k, tenant) in tenants.iter().enumerate() {
        let name = if k == 0 { tenant.tenant_id.clone() } else { format!("tenant{}.onmicrosoft.com", k + 1) };
        for id in ids(tenant) {
            text += &format!("{id},{name}\n");
        }
    }
    text
}

/// A list of the first two tenants' machines, row by row in turn (as [`grouped_list`] names them).
fn paired_list(tenants: &[SimConfig]) -> String {
    let mut text = String::from("MachineId,TenantId\n");
    for (a, b) in ids(&tenants[0]).iter().zip(ids(&tenants[1])) {
        text += &format!("{a},{}\n{b},tenant2.onmicrosoft.com\n", tenants[0].tenant_id);
    }
    text
}

/// The rows of a results file by line, its header checked to be the results' with `tenant_id` last.
fn rows(path: &Path) -> HashMap<u64, HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = reader.headers().unwrap().clone();
    let mut expected: Vec<&str> = mde_offboard::files::results::COLUMNS.to_vec();
    expected.push("tenant_id");
    assert_eq!(headers.iter().collect::<Vec<_>>(), expected);
    let mut rows = HashMap::new();
    for record in reader.records() {
        let row: HashMap<String, String> =
            headers.iter().map(str::to_owned).zip(record.unwrap().iter().map(str::to_owned)).collect();
        assert!(rows.insert(row["line"].parse().unwrap(), row).is_none(), "one row per line");
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_consent_fails_only_its_rows_and_a_resume_keeps_the_others() {
    let (sim, tenants) = three_tenants(4).await;
    let (a, b, c) = (ids(&tenants[0]), ids(&tenants[1]), ids(&tenants[2]));
    let dir = tempfile::tempdir().unwrap();
    // Interleaved; the second tenant by its domain; one id twice in the first tenant (a duplicate) and the
    // same id in the second tenant (not one: duplicates are per tenant, and it is not the second's).
    let mut text = String::from("MachineId,TenantId\n");
    for i in 0..4 {
        text += &format!(
            "{},{}\n{},Tenant2.onmicrosoft.com\n{},tenant3.onmicrosoft.com\n",
            a[i], tenants[0].tenant_id, b[i], c[i]
        );
    }
    text += &format!("{},{}\n{},tenant2.onmicrosoft.com\n", a[0], tenants[0].tenant_id, a[1]);
    let input = write_file(dir.path(), "m.csv", &text);
    let args = ["run", input.to_str().unwrap(), "--yes", "--summary-json", "s.json"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 3, "some rows failed: {}\n{}", out.stdout, out.stderr);
    let results = rows(&dir.path().join("m.results.csv"));
    assert_eq!(results.len(), 14, "one row per input row");
    for i in 0..4u64 {
        let (row_a, row_b, row_c) = (&results[&(2 + 3 * i)], &results[&(3 + 3 * i)], &results[&(4 + 3 * i)]);
        assert_eq!(
            (row_a["outcome"].as_str(), row_a["tenant_id"].as_str()),
            ("submitted", tenants[0].tenant_id.as_str())
        );
        assert_eq!((row_b["outcome"].as_str(), row_b["tenant_id"].as_str()), ("submitted", "tenant2.onmicrosoft.com"));
        assert_eq!((row_c["outcome"].as_str(), row_c["error_code"].as_str()), ("failed", "TenantNotStarted"));
        assert!(row_c["error_message"].contains("AADSTS700016"), "{row_c:?}");
        assert_eq!(row_c["machine_id"], c[i as usize]);
    }
    assert_eq!(results[&14]["outcome"], "duplicate");
    assert_eq!(results[&15]["outcome"], "not_found", "the first tenant's machine is not the second's");
    // Each tenant's machines went to its own tenant, each offboarded once.
    let offboards = |tenant: &str| sim.tenant_stats(tenant).unwrap().count(OFFBOARD, "201");
    assert_eq!((offboards(&tenants[0].tenant_id), offboards(&tenants[1].tenant_id)), (4, 4));
    assert_eq!(sim.tenant_stats(&tenants[2].tenant_id).unwrap().count(OFFBOARD, "201"), 0);
    // Counts per tenant, in the summary and its JSON.
    assert!(out.stdout.contains("tenant tenant3.onmicrosoft.com: 4 rows: failed 4"), "{}", out.stdout);
    let summary = summary_json(dir.path());
    let per_tenant: Vec<(&str, u64, u64, u64)> = summary["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let n = |o: &str| t["counts"][o].as_u64().unwrap();
            (t["tenant"].as_str().unwrap(), n("submitted"), n("failed"), t["rows"].as_u64().unwrap())
        })
        .collect();
    let first = tenants[0].tenant_id.to_ascii_lowercase();
    assert_eq!(
        per_tenant,
        [(first.as_str(), 4, 0, 5), ("tenant2.onmicrosoft.com", 4, 0, 5), ("tenant3.onmicrosoft.com", 0, 4, 4)]
    );
    assert_eq!(summary["counts"]["submitted"], 8);

    // A resume keeps what is done, tries the tenant that could not start again, and sends nothing twice.
    let args = ["run", input.to_str().unwrap(), "--yes", "--resume"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let again = rows(&dir.path().join("m.results.csv"));
    assert_eq!(again.len(), 14);
    for (line, row) in &results {
        assert_eq!(again[line]["outcome"], row["outcome"], "line {line}");
        assert_eq!(again[line]["action_id"], row["action_id"], "line {line}");
    }
    assert_eq!((offboards(&tenants[0].tenant_id), offboards(&tenants[1].tenant_id)), (4, 4));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tenant_cell_is_refused_before_any_call() {
    let (sim, tenants) = three_tenants(2).await;
    let dir = tempfile::tempdir().unwrap();
    let a = ids(&tenants[0]);
    let input = write_file(
        dir.path(),
        "m.csv",
        &format!("MachineId,Tenant\n{},{}\n{},contoso\n", a[0], tenants[0].tenant_id, a[1]),
    );
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("line 3: `contoso` is not a tenant id"), "{}", out.stderr);
    assert_eq!(sim.stats().requests, 0, "no call");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_several_tenants_on_stdin_is_refused_before_any_call() {
    let (sim, tenants) = three_tenants(2).await;
    let dir = tempfile::tempdir().unwrap();
    let a = ids(&tenants[0]);
    let text = format!("MachineId,TenantId\n{},{}\n", a[0], tenants[0].tenant_id);
    let out = mde_in(&sim, dir.path(), &["run", "-", "--yes"], &text).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("names several tenants (column `TenantId`)"), "{}", out.stderr);
    assert_eq!(sim.stats().requests, 0, "no call");
    sim.shutdown().await;
}

/// A tenant with an app registration of its own signs in as the tenants file says; without the file, it
/// cannot (its directory does not know the usual app) and only its rows fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_its_own_app_signs_in_as_the_tenants_file_says() {
    const OWN_APP: &str = "7b2f0c2e-93b4-4d57-8e1a-2c3d4e5f6a71";
    const OWN_SECRET: &str = "sim~OwnSecret.NotReal_9876543210";
    let first = SimConfig {
        fleet: Fleet::generate(3, 41),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        ..SimConfig::default()
    };
    let mut tenants = mde_sim::tenant_series(first, 2, |k| Fleet::generate(3, 41 + k as u64)).unwrap();
    (tenants[1].client_id, tenants[1].client_secret) = (OWN_APP.into(), OWN_SECRET.into());
    let sim = Simulator::start_tenants(tenants.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("MachineId,Tenant\n");
    for id in ids(&tenants[0]) {
        text += &format!("{id},{}\n", tenants[0].tenant_id);
    }
    for id in ids(&tenants[1]) {
        text += &format!("{id},tenant2.onmicrosoft.com\n");
    }
    let input = write_file(dir.path(), "m.csv", &text);
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let results = rows(&dir.path().join("m.results.csv"));
    let outcomes = |tenant: &str| -> Vec<String> {
        let mut rows: Vec<_> = results.values().filter(|r| r["tenant_id"] == tenant).collect();
        rows.sort_by_key(|r| r["line"].parse::<u64>().unwrap());
        rows.iter().map(|r| r["outcome"].clone()).collect()
    };
    assert_eq!(outcomes("tenant2.onmicrosoft.com"), ["failed"; 3]);
    assert_eq!(outcomes(&tenants[0].tenant_id), ["submitted"; 3]);

    let secret = write_file(dir.path(), "own.secret", OWN_SECRET);
    #[cfg(unix)]
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&secret).unwrap().permissions(), 0o600);
    write_file(
        dir.path(),
        "tenants.toml",
        &format!(
            "[[tenant]]\ntenant = \"tenant2.onmicrosoft.com\"\nclient_id = \"{OWN_APP}\"\nclient_secret_file = \"own.secret\"\n"
        ),
    );
    let tenants_file = dir.path().join("tenants.toml");
    let args = ["run", input.to_str().unwrap(), "--yes", "--resume", "--tenants", tenants_file.to_str().unwrap()];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains(OWN_SECRET) && !out.stdout.contains(OWN_SECRET));
    let results = rows(&dir.path().join("m.results.csv"));
    assert!(results.values().all(|r| r["outcome"] == "submitted"), "{results:?}");
    assert_eq!(sim.tenant_stats(&tenants[1].tenant_id).unwrap().count(OFFBOARD, "201"), 3);
    assert_eq!(sim.tenant_stats(&tenants[0].tenant_id).unwrap().count(OFFBOARD, "201"), 3, "sent once");
    // A tenants file with a list of one tenant is a mistake, said before any call.
    let single = write_file(dir.path(), "one.csv", &crate::common::id_list(&ids(&tenants[0])));
    let args = ["run", single.to_str().unwrap(), "--yes", "--tenants", tenants_file.to_str().unwrap()];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("has no tenant column"), "{}", out.stderr);
    sim.shutdown().await;
}

/// `track`, `cancel` and `report` given the one results file of several tenants: each tenant's actions are
/// read and cancelled in its own tenant, and the one file says so; the tenant that could not start keeps
/// its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_cancel_and_report_work_on_each_tenants_rows() {
    let (sim, tenants) = three_tenants(3).await;
    let (a, b, c) = (ids(&tenants[0]), ids(&tenants[1]), ids(&tenants[2]));
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("TenantId;MachineId\n");
    for i in 0..3 {
        text += &format!(
            "tenant2.onmicrosoft.com;{}\n{};{}\ntenant3.onmicrosoft.com;{}\n",
            b[i], tenants[0].tenant_id, a[i], c[i]
        );
    }
    let input = write_file(dir.path(), "m.csv", &text);
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let results = dir.path().join("m.results.csv");
    let path = results.to_str().unwrap();

    let out = mde_in(&sim, dir.path(), &["track", path, "--once"], "").await;
    assert_eq!(out.code, 3, "actions still open: {}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Tenant tenant2.onmicrosoft.com:"), "{}", out.stdout);
    let tracked = rows(&results);
    assert_eq!(tracked.len(), 9);
    for row in tracked.values() {
        let expected = if row["tenant_id"] == "tenant3.onmicrosoft.com" { "" } else { "Pending" };
        assert_eq!(row["action_status"], expected, "{row:?}");
    }
    let reads =
        |tenant: &str| sim.tenant_stats(tenant).unwrap().calls.keys().filter(|r| r.contains("machineactions")).count();
    assert!(reads(&tenants[0].tenant_id) > 0 && reads(&tenants[1].tenant_id) > 0, "each tenant read its own");

    let out = mde_in(&sim, dir.path(), &["cancel", path, "--comment", "wrong list", "--yes"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let cancelled = rows(&results);
    assert_eq!(cancelled.len(), 9);
    for row in cancelled.values() {
        let expected = if row["tenant_id"] == "tenant3.onmicrosoft.com" { "" } else { "Cancelled" };
        assert_eq!(row["action_status"], expected, "{row:?}");
    }
    let cancels = |tenant: &str| sim.tenant_stats(tenant).unwrap().count("POST /api/machineactions/{id}/cancel", "200");
    assert_eq!((cancels(&tenants[0].tenant_id), cancels(&tenants[1].tenant_id)), (3, 3));

    let out = mde_in(&sim, dir.path(), &["report", path, "--markdown", "r.md"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The report counts each tenant's rows (cancelled, or never started: tenant3), and takes the run's
    // comment from the first tenant's journal.
    let report = std::fs::read_to_string(dir.path().join("r.md")).unwrap();
    assert!(report.contains("- **Tenant**: 3 tenant(s)"), "{report}");
    assert!(report.contains("| tenant2.onmicrosoft.com | 3 | 3 |"), "{report}");
    assert!(report.contains("| tenant3.onmicrosoft.com | 3 | 3 |"), "{report}");
    assert!(report.contains("- **Comment**: integration test"), "{report}");
    sim.shutdown().await;
}

/// Actions that succeed 600 ms after they are created.
fn quick_lifecycle() -> mde_sim::Lifecycle {
    mde_sim::Lifecycle {
        pending_for: std::time::Duration::from_millis(300),
        in_progress_for: std::time::Duration::from_millis(300),
        failed_share: 0.0,
        timeout_share: 0.0,
        ..mde_sim::Lifecycle::default()
    }
}

/// `run --wait` of several tenants tracks each tenant's actions in its own tenant until they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_tracks_each_tenant_to_the_end() {
    let lifecycle = quick_lifecycle();
    let first = SimConfig {
        fleet: Fleet::generate(2, 51),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        lifecycle,
        ..SimConfig::default()
    };
    let mut tenants = mde_sim::tenant_series(first, 3, |k| Fleet::generate(2, 51 + k as u64)).unwrap();
    tenants[2].consented = false;
    let sim = Simulator::start_tenants(tenants.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = grouped_list(&tenants);
    let input = write_file(dir.path(), "m.csv", &text);
    let args = ["run", input.to_str().unwrap(), "--yes", "--wait", "--poll-interval", "100ms", "--report", "r.md"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 3, "the third tenant's rows failed: {}\n{}", out.stdout, out.stderr);
    let results = rows(&dir.path().join("m.results.csv"));
    assert_eq!(results.len(), 6);
    for row in results.values() {
        let expected = if row["tenant_id"] == "tenant3.onmicrosoft.com" { "" } else { "Succeeded" };
        assert_eq!(row["action_status"], expected, "{row:?}");
    }
    assert!(dir.path().join("r.md").is_file());
    sim.shutdown().await;
}

/// `run --wait` of several tenants tracks each tenant right after its own run, in the run's session: the
/// same sign-in, and the same limiter, which counts the calls the run made. Under one budget per app of 8
/// calls in 2 s, the run's own calls (the pre-flight's reads and the offboards) leave little of the window,
/// and a tracking that counted afresh would spend it again and meet 429s. (Before, each tenant was tracked
/// after every tenant's run, in a session of its own: a second sign-in and a limiter that had counted
/// nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_tracks_each_tenant_in_its_runs_session_and_quota() {
    let lifecycle = quick_lifecycle();
    // Machines that report (an Inactive one's action would wait for it to report, past the test).
    let active = |seed: u64| {
        (seed..)
            .map(|s| Fleet::generate(2, s))
            .find(|f| f.machines().iter().all(|m| m.health_status == "Active"))
            .expect("a fleet of active machines")
    };
    let first = SimConfig {
        fleet: active(61),
        quotas: vec!["8/2s".parse().unwrap()],
        quota_scope: mde_sim::QuotaScope::App,
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        lifecycle,
        ..SimConfig::default()
    };
    let tenants = mde_sim::tenant_series(first, 2, |k| active(1000 * k as u64)).unwrap();
    let sim = Simulator::start_tenants(tenants.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = grouped_list(&tenants);
    let input = write_file(dir.path(), "m.csv", &text);
    let args = [
        "run",
        input.to_str().unwrap(),
        "--yes",
        "--rate",
        "8/2s",
        "--quota-scope",
        "app",
        "--wait",
        "--poll-interval",
        "100ms",
    ];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for row in rows(&dir.path().join("m.results.csv")).values() {
        assert_eq!(row["action_status"], "Succeeded", "{row:?}");
    }
    for (k, tenant) in tenants.iter().enumerate() {
        let stats = sim.tenant_stats(&tenant.tenant_id).unwrap();
        assert_eq!(stats.tokens_issued, 1, "tenant {}: one sign-in for the run and its tracking", k + 1);
        assert_eq!(stats.throttled, 0, "tenant {}: {:?}", k + 1, stats.calls);
        assert!(stats.total("GET /api/machineactions") > 3, "tenant {}: tracked after the pre-flight's lists", k + 1);
    }
    sim.shutdown().await;
}

/// The plan a run of several tenants prints names how many tenants, and the column it read them from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_names_the_tenants_and_their_column() {
    let (sim, tenants) = three_tenants(1).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "m.csv", &grouped_list(&tenants[..2]));
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--dry-run"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("lists 2 row(s) of 2 tenant(s) (column `TenantId`)"), "{all}");
    sim.shutdown().await;
}

/// A dry run of several tenants reads each tenant in its own session and writes one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reads_each_tenant() {
    let (sim, tenants) = three_tenants(2).await;
    let dir = tempfile::tempdir().unwrap();
    let text = grouped_list(&tenants);
    let input = write_file(dir.path(), "m.csv", &text);
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--dry-run", "-o", "plan.csv"], "").await;
    assert_eq!(out.code, 3, "the third tenant could not sign in: {}\n{}", out.stdout, out.stderr);
    let mut reader = csv::Reader::from_path(dir.path().join("plan.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    assert_eq!(headers.iter().next_back(), Some("tenant_id"));
    let (outcome, tenant) = (headers.iter().position(|h| h == "outcome").unwrap(), headers.len() - 1);
    let rows: Vec<(String, String)> =
        reader.records().map(|r| r.unwrap()).map(|r| (r[tenant].to_string(), r[outcome].to_string())).collect();
    assert_eq!(rows.len(), 6);
    for (tenant, outcome) in &rows {
        let expected = if tenant == "tenant3.onmicrosoft.com" { "failed" } else { "would_submit" };
        assert_eq!(outcome, expected, "{rows:?}");
    }
    for tenant in &tenants[..2] {
        assert_eq!(
            sim.tenant_stats(&tenant.tenant_id).unwrap().count(OFFBOARD, "201"),
            0,
            "a dry run offboards nothing"
        );
    }
    sim.shutdown().await;
}

/// What every tenant needs is said once, before any call: a missing client id is the run's error (exit 1),
/// not a failed row in every tenant; a confirmation that cannot be asked, before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_every_tenant_needs_stops_the_run_before_any_call() {
    let (sim, tenants) = three_tenants(2).await;
    let dir = tempfile::tempdir().unwrap();
    let a = ids(&tenants[0]);
    let input = write_file(dir.path(), "m.csv", &format!("MachineId,TenantId\n{},tenant2.onmicrosoft.com\n", a[0]));
    let out = crate::common::mde_env(
        &sim,
        dir.path(),
        &["run", input.to_str().unwrap(), "--yes"],
        "",
        &[("MDE_CLIENT_ID", "")],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("client"), "{}", out.stderr);
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "m.csv", &format!("MachineId,TenantId\n{},tenant2.onmicrosoft.com\n", a[0]));
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap()], "").await;
    assert_eq!(out.code, 2, "no terminal to confirm on: {}", out.stderr);
    assert!(!dir.path().join("m.results.tenants").exists(), "nothing written");
    assert_eq!(sim.stats().requests + sim.tenant_stats("tenant2.onmicrosoft.com").unwrap().requests, 0, "no call");
    sim.shutdown().await;
}

/// Killed (-9) part way, a run of several tenants loses nothing: each tenant's results and journal keep a
/// run's guarantees, and `--resume` writes the one file again with one row per input row, every machine
/// offboarded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_part_way_a_resume_finishes_every_tenant_sending_nothing_twice() {
    let first = SimConfig {
        fleet: Fleet::generate(12, 61),
        quotas: vec!["5/1s".parse().unwrap()],
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        ..SimConfig::default()
    };
    let tenants = mde_sim::tenant_series(first, 2, |k| Fleet::generate(12, 61 + k as u64)).unwrap();
    let sim = Simulator::start_tenants(tenants.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = paired_list(&tenants);
    let input = write_file(dir.path(), "m.csv", &text);
    let args = ["run", input.to_str().unwrap(), "--yes", "--rate", "5/1s"];
    let mut child = crate::common::command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    let own = |tenant: &str| dir.path().join("m.results.tenants").join(format!("{tenant}.results.csv"));
    let first_tenant = tenants[0].tenant_id.to_ascii_lowercase();
    crate::common::wait_until("rows in both tenants", || {
        crate::common::rows_in(&own(&first_tenant)) >= 3 && crate::common::rows_in(&own("tenant2.onmicrosoft.com")) >= 3
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(crate::common::rows_in(&own("tenant2.onmicrosoft.com")) < 12, "killed part way");

    let args = ["run", input.to_str().unwrap(), "--yes", "--resume", "--rate", "5/1s"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = rows(&dir.path().join("m.results.csv"));
    assert_eq!(results.len(), 24, "one row per input row");
    assert!(results.values().all(|r| ["submitted", "already_pending"].contains(&r["outcome"].as_str())), "{results:?}");
    for tenant in &tenants {
        let stats = sim.tenant_stats(&tenant.tenant_id).unwrap();
        assert_eq!(stats.total(OFFBOARD), 12, "each machine offboarded once: {:?}", stats.calls);
    }
    sim.shutdown().await;
}

/// `tag` given the one results file tags each tenant's machines in its own tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_tags_each_tenants_machines_in_its_tenant() {
    const TAG_MANY: &str = "POST /api/machines/AddOrRemoveTagForMultipleMachines";
    let roles = ["Machine.Offboard", "Machine.Read.All", "Machine.ReadWrite.All"].map(String::from).to_vec();
    let first = SimConfig {
        fleet: Fleet::generate(3, 71),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        roles,
        ..SimConfig::default()
    };
    let tenants = mde_sim::tenant_series(first, 2, |k| Fleet::generate(3, 71 + k as u64)).unwrap();
    let sim = Simulator::start_tenants(tenants.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = paired_list(&tenants);
    let input = write_file(dir.path(), "m.csv", &text);
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = mde_in(&sim, dir.path(), &["tag", "m.results.csv", "--value", "retired"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for tenant in &tenants {
        let stats = sim.tenant_stats(&tenant.tenant_id).unwrap();
        assert_eq!(stats.count(TAG_MANY, "200"), 1, "{:?}", stats.calls);
    }
    sim.shutdown().await;
}

/// Each tenant's share of the list holds its own rows only, with their lines in the list: a tenant whose
/// rows come late in a long list reads a file of its rows, not of the list, and its results (and its
/// duplicates, and the one file) keep the list's lines, blank lines and quoted line breaks counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_share_holds_its_rows_only_and_keeps_their_lines() {
    let (sim, tenants) = three_tenants(2).await;
    let (a, b) = (ids(&tenants[0]), ids(&tenants[1]));
    let dir = tempfile::tempdir().unwrap();
    // 600 rows of the first tenant (its two machines, then invalid ids), a blank line, a note over two
    // lines, then the second tenant's two machines and one of them again.
    let mut text = String::from("MachineId;TenantId;Note\r\n");
    let invalid = (2..600).map(|i| format!("not-an-id-{i}"));
    for id in a.iter().take(2).cloned().chain(invalid) {
        text += &format!("{id};{};\r\n", tenants[0].tenant_id);
    }
    text += "\r\n";
    text += &format!("{};tenant2.onmicrosoft.com;\"two\nlines\"\r\n", b[0]);
    text += &format!("{};tenant2.onmicrosoft.com;\r\n{};TENANT2.onmicrosoft.com;\r\n", b[1], b[0]);
    let input = write_file(dir.path(), "m.csv", &text);
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes"], "").await;
    assert_eq!(out.code, 3, "the invalid rows: {}\n{}", out.stdout, out.stderr);
    let share = dir.path().join("m.results.tenants").join("tenant2.onmicrosoft.com.input.csv");
    let size = std::fs::metadata(&share).unwrap().len();
    assert!(size < 300, "the second tenant's share is its 3 rows and the header, not the list: {size} bytes");
    let results = rows(&dir.path().join("m.results.csv"));
    assert_eq!(results.len(), 603, "one row per input row");
    let at = |line: u64| (results[&line]["outcome"].as_str(), results[&line]["tenant_id"].as_str());
    assert_eq!(at(2), ("submitted", tenants[0].tenant_id.as_str()));
    assert_eq!(at(601), ("invalid_id", tenants[0].tenant_id.as_str()));
    assert_eq!(at(603), ("submitted", "tenant2.onmicrosoft.com"));
    assert_eq!(results[&603]["machine_id"], b[0]);
    assert_eq!(at(605), ("submitted", "tenant2.onmicrosoft.com"));
    assert_eq!(at(606), ("duplicate", "tenant2.onmicrosoft.com"));
    let tenant_results = dir.path().join("m.results.tenants").join("tenant2.onmicrosoft.com.results.csv");
    let mut lines: Vec<String> = csv::Reader::from_path(&tenant_results)
        .unwrap()
        .records()
        .map(|r| r.unwrap().get(0).unwrap().to_string())
        .collect();
    lines.sort();
    assert_eq!(lines, ["603", "605", "606"], "the tenant's own results keep the list's lines");
    sim.shutdown().await;
}

/// The tenants of a run share one HTTP client, and one bound on their calls at once: 20 tenants at
/// concurrency 8, their calls answered after 50 ms, could make 160 calls at once, each on a connection of
/// its own (tenants x concurrency, some 30 KB of buffers each); the run holds no more connections than its
/// 64 calls at once and the tenants' sign-ins, and every machine is offboarded, in its own tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_share_connections_within_a_bound_of_calls_at_once() {
    tenants_calls_at_once("", 64).await;
}

/// `run.calls_at_once` sets that bound: at 12, the same run holds at most 12 connections for its calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_calls_at_once_sets_the_bound_of_the_tenants_calls_at_once() {
    tenants_calls_at_once("calls_at_once = 12\n", 12).await;
}

/// 20 tenants of 100 machines at concurrency 8, with `extra` in the config's `[run]`: every machine is
/// offboarded in its own tenant, with at most `bound` connections open for calls (and one per sign-in).
async fn tenants_calls_at_once(extra: &str, bound: usize) {
    const TENANTS: usize = 20;
    let (sim, tenants, dir) = slow_tenants(TENANTS, 100, 41, std::time::Duration::from_millis(50)).await;
    let out = run_all(&sim, &tenants, dir.path(), extra, &["--no-preflight", "--concurrency", "8"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for tenant in &tenants {
        assert_eq!(sim.tenant_stats(&tenant.tenant_id).unwrap().count(OFFBOARD, "201"), 100);
    }
    let open = sim.stats().most_connections_open;
    assert!(open <= (bound + TENANTS + 1) as u64, "{open} connections open at once");
    sim.shutdown().await;
}

/// A slow service does not hold the tenants' pre-flights back one behind another: a list page waits for one
/// of the process's few page slots (the bound on pages held in memory at once) only once its answer has
/// come, to be read, not while the service takes its time to answer. Six tenants, every answer a second
/// late: their pre-flight reads are answered together, not two at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_answers_the_tenants_pre_flight_reads_together() {
    let (sim, tenants, dir) = slow_tenants(6, 4, 51, std::time::Duration::from_secs(1)).await;
    let out = run_all(&sim, &tenants, dir.path(), "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for tenant in &tenants {
        let stats = sim.tenant_stats(&tenant.tenant_id).unwrap();
        assert_eq!(stats.count(OFFBOARD, "201"), 4);
        assert!(stats.count("GET /api/machines", "200") >= 1, "{:?}", stats.calls);
    }
    let reads = sim.stats().most_reads_at_once;
    assert!(reads > 2, "at most {reads} reads were answered at once: the tenants' pre-flights waited in turn");
    sim.shutdown().await;
}

/// The default bound on calls at once grows while it, not the quotas, holds the tenants' calls back: 20
/// tenants at concurrency 8 against a service answering in half a second could make 160 calls at once, and
/// 64 at once keep them waiting. After five seconds of calls waiting at every look the bound doubles (and
/// again, up to the 160, if they still wait); the summary says so, and every machine is offboarded once, in
/// its own tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_bound_on_calls_at_once_grows_while_it_holds_calls_back() {
    const TENANTS: usize = 20;
    let (sim, tenants, dir) = slow_tenants(TENANTS, 100, 61, std::time::Duration::from_millis(500)).await;
    let extra = ["--no-preflight", "--concurrency", "8", "--summary-json", "s.json"];
    let out = run_all(&sim, &tenants, dir.path(), "", &extra).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for tenant in &tenants {
        assert_eq!(sim.tenant_stats(&tenant.tenant_id).unwrap().count(OFFBOARD, "201"), 100);
    }
    let summary = summary_json(dir.path());
    let to = summary["calls_at_once"]["to"].as_u64().expect("the bound grew");
    assert!(summary["calls_at_once"]["from"] == 64 && (to == 128 || to == 160), "{summary}");
    let line = format!("Calls at once across the tenants: raised from 64 to {to}: the service answered slowly");
    assert!(out.stdout.contains(&line), "{}", out.stdout);
    let open = sim.stats().most_connections_open;
    assert!(open > (64 + TENANTS + 1) as u64, "{open} connections open at once: the bound did not grow");
    sim.shutdown().await;
}

/// `n` tenants of `machines` machines each (fleets from `seed` on), no quotas, every answer `latency` late;
/// and a directory for the run.
async fn slow_tenants(
    n: usize,
    machines: usize,
    seed: u64,
    latency: std::time::Duration,
) -> (Simulator, Vec<SimConfig>, tempfile::TempDir) {
    let first = SimConfig {
        fleet: Fleet::generate(machines, seed),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        faults: mde_sim::Faults { latency, ..mde_sim::Faults::default() },
        ..SimConfig::default()
    };
    let tenants = mde_sim::tenant_series(first, n, |k| Fleet::generate(machines, seed + k as u64)).unwrap();
    let sim = Simulator::start_tenants(tenants.clone()).await.unwrap();
    (sim, tenants, tempfile::tempdir().unwrap())
}

/// `run` in `dir` of one list of every machine of `tenants`, every tenant at once, with `extra` in the
/// config's `[run]` and `flags` on the command line.
async fn run_all(
    sim: &Simulator,
    tenants: &[SimConfig],
    dir: &Path,
    extra: &str,
    flags: &[&str],
) -> crate::common::Output {
    let input = write_file(dir, "m.csv", &grouped_list(tenants));
    let config = write_file(dir, "c.toml", &format!("[run]\ntenant_concurrency = {}\n{extra}", tenants.len()));
    let mut args = vec!["run", input.to_str().unwrap(), "--yes", "--config", config.to_str().unwrap()];
    args.extend_from_slice(flags);
    mde_in(sim, dir, &args, "").await
}
