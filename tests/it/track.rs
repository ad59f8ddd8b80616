//! Tracking offboard actions to their end (`run --wait`, `track`) against the simulator's action lifecycle.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use mde_sim::{Fleet, Lifecycle, SimConfig, Simulator};

use crate::common::{Results, mde_in, post_as_demo_app, write_file};

/// A fleet of `active` Active and `inactive` Inactive Windows 11 workstations: every one can be offboarded;
/// actions on inactive machines never start (they stay Pending until the action timeout).
fn fleet(dir: &Path, active: usize, inactive: usize) -> (Fleet, Vec<String>) {
    let mut text = String::from("id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName\n");
    let mut ids = Vec::new();
    for i in 0..active + inactive {
        let id = format!("{:040x}", 0xabc000 + i);
        let health = if i < active { "Active" } else { "Inactive" };
        text += &format!("{id},m{i}.contoso.local,Windows11,{health},2026-11-20T10:00:00Z,Workstations\n");
        ids.push(id);
    }
    (Fleet::from_csv(&write_file(dir, "fleet.csv", &text)).unwrap(), ids)
}

fn input(dir: &Path, ids: &[String]) -> String {
    let text = format!("MachineId\n{}\n", ids.join("\n"));
    write_file(dir, "machines.csv", &text).to_str().unwrap().to_string()
}

/// 100x faster than real time: Pending 100 ms, InProgress 100 ms, time-outs after `timeout` of service time.
fn lifecycle(failed: f64, timed_out: f64, timeout: Duration) -> Lifecycle {
    Lifecycle {
        pending_for: Duration::from_secs(10),
        in_progress_for: Duration::from_secs(10),
        failed_share: failed,
        timeout_share: timed_out,
        action_timeout: timeout,
    }
}

fn statuses(results: &Results) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for row in &results.rows {
        *counts.entry(row["action_status"].clone()).or_insert(0) += 1;
    }
    counts
}

fn passes(stdout: &str) -> u64 {
    let at =
        stdout.find(" passes").or_else(|| stdout.find(" pass,")).unwrap_or_else(|| panic!("no pass count in {stdout}"));
    stdout[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_follows_successes_failures_and_timeouts_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 36, 4);
    let config = SimConfig {
        fleet,
        time_scale: 100.0,
        lifecycle: lifecycle(0.25, 0.2, Duration::from_secs(60)),
        ..SimConfig::default()
    };
    let sim = Simulator::start(config).await.unwrap();
    let input = input(dir.path(), &ids);
    let args = [
        "run",
        &input,
        "--yes",
        "--no-preflight",
        "--rate",
        "1000/1s",
        "--wait",
        "--poll-interval",
        "100ms",
        "--wait-timeout",
        "30s",
    ];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    // Some actions fail or time out: exit 3, although every offboard was accepted.
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);

    let results = Results::read(&dir.path().join("machines.results.csv"));
    assert_eq!(results.rows.len(), 40);
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"));
    let ours = statuses(&results);
    let stats = sim.stats();
    // What the file says is what the service says, and every action is final.
    assert_eq!(ours, stats.actions_by_status, "{}", out.stdout);
    for status in ["Succeeded", "Failed", "TimeOut"] {
        assert!(ours.get(status).copied().unwrap_or(0) > 0, "no {status} in {ours:?}");
    }
    assert!(results.rows.iter().all(|r| !r["updated_at"].is_empty() && r["updated_at"] >= r["submitted_at"]));
    // The inactive machines' actions never started: they timed out.
    for id in &ids[36..] {
        let row = results.rows.iter().find(|r| &r["machine_id"] == id).unwrap();
        assert_eq!(row["action_status"], "TimeOut");
    }
    // One page per pass: never a call per action.
    let listed = stats.total("GET /api/machineactions");
    assert_eq!(listed, passes(&out.stdout), "{}", out.stdout);
    assert!((2..40).contains(&listed), "{listed} list calls");
    assert_eq!(stats.total("GET /api/machineactions/{id}"), 0);
    assert!(out.stdout.contains("Failed") && out.stdout.contains("TimeOut"), "{}", out.stdout);
    assert_eq!(stats.tokens_issued, 1, "the run and the tracking after it share one sign-in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_later_pages_each_pass_and_ends_at_0_when_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 25, 0);
    let config = SimConfig {
        fleet,
        time_scale: 100.0,
        lifecycle: lifecycle(0.0, 0.0, Duration::from_secs(600)),
        ..SimConfig::default()
    };
    let sim = Simulator::start(config).await.unwrap();
    let input = input(dir.path(), &ids);
    let out = mde_in(&sim, dir.path(), &["run", &input, "--yes", "--no-preflight", "--rate", "1000/1s"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let path = dir.path().join("machines.results.csv");
    assert!(Results::read(&path).rows.iter().all(|r| r["action_status"] == "Pending"));

    // Pages of 10: three per pass for 25 actions.
    let args = ["track", path.to_str().unwrap(), "--rate", "1000/1s", "--poll-interval", "100ms", "--page-size", "10"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&path);
    assert_eq!(statuses(&results), BTreeMap::from([("Succeeded".to_string(), 25)]));
    let stats = sim.stats();
    let pages = stats.total("GET /api/machineactions");
    assert_eq!(pages, 3 * passes(&out.stdout), "{}", out.stdout);
    assert_eq!(stats.total("GET /api/machineactions/{id}"), 0);
    // Nothing left in the directory but the files we made: the update went through a renamed temporary file.
    // (The run's own lock, journal and calls spent of the quotas aside.)
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock") && !n.ends_with(".journal") && !n.ends_with(".calls"))
        .collect();
    names.sort();
    assert_eq!(names, ["fleet.csv", "machines.csv", "machines.results.csv"]);

    // Tracking a file whose actions are all final makes no call at all.
    let before = sim.stats().total("GET /api/machineactions");
    let out = mde_in(&sim, dir.path(), &["track", path.to_str().unwrap()], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sim.stats().total("GET /api/machineactions"), before);
    assert_eq!(sim.stats().tokens_issued, 2, "no sign-in when nothing is open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_still_pending_when_the_wait_ends_are_reported_open() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 2, 3);
    let config = SimConfig {
        fleet,
        time_scale: 100.0,
        lifecycle: lifecycle(0.0, 0.0, Duration::from_secs(86_400)),
        ..SimConfig::default()
    };
    let sim = Simulator::start(config).await.unwrap();
    let input = input(dir.path(), &ids);
    let args =
        ["run", &input, "--yes", "--rate", "1000/1s", "--wait", "--poll-interval", "100ms", "--wait-timeout", "1s"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("still open") && out.stdout.contains("Pending 3"), "{}", out.stdout);
    let results = Results::read(&dir.path().join("machines.results.csv"));
    assert_eq!(
        statuses(&results),
        BTreeMap::from([("Pending".to_string(), 3), ("Succeeded".to_string(), 2)]),
        "{}",
        out.stdout
    );
    // About one pass per 100 ms over a second, never more (and the pre-flight's three lists).
    let listed = sim.stats().total("GET /api/machineactions");
    assert!((3..=13).contains(&listed), "{listed} passes in 1 s at one per 100 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_cancelled_in_the_service_ends_cancelled_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 1, 0);
    // Pending for ten minutes of real time: still open whenever the cancel comes.
    let lifecycle =
        Lifecycle { pending_for: Duration::from_secs(600), ..lifecycle(0.0, 0.0, Duration::from_secs(3600)) };
    let sim = Simulator::start(SimConfig { fleet, lifecycle, ..SimConfig::default() }).await.unwrap();
    let input = input(dir.path(), &ids);
    let out = mde_in(&sim, dir.path(), &["run", &input, "--yes"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let path = dir.path().join("machines.results.csv");
    let action = Results::read(&path).line(2)["action_id"].clone();
    // Someone cancels it in the portal.
    let cancel = format!("/api/machineactions/{action}/cancel");
    let (status, body) = post_as_demo_app(&sim, &cancel, serde_json::json!({"Comment": "kept after all"})).await;
    assert_eq!(status, 200, "{body}");

    let out = mde_in(&sim, dir.path(), &["track", path.to_str().unwrap(), "--poll-interval", "100ms"], "").await;
    assert_eq!(out.code, 3, "a cancelled offboard did not happen\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Cancelled"), "{}", out.stdout);
    assert_eq!(Results::read(&path).line(2)["action_status"], "Cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_pending_rows_are_matched_by_machine_id() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 3, 0);
    // Pending for a second of real time: the earlier action is still open when the second run starts.
    let lifecycle =
        Lifecycle { pending_for: Duration::from_secs(100), ..lifecycle(0.0, 0.0, Duration::from_secs(600)) };
    let config = SimConfig { fleet, time_scale: 100.0, lifecycle, ..SimConfig::default() };
    let sim = Simulator::start(config).await.unwrap();
    // An earlier offboard of the first machine, whose results file is gone.
    let first = write_file(dir.path(), "first.csv", &format!("{}\n", ids[0]));
    let out =
        mde_in(&sim, dir.path(), &["run", first.to_str().unwrap(), "--yes", "--output", "first.out.csv"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let earlier = Results::read(&dir.path().join("first.out.csv")).rows[0]["action_id"].clone();

    let input = input(dir.path(), &ids);
    let args = ["run", &input, "--yes", "--rate", "1000/1s", "--wait", "--poll-interval", "100ms"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&dir.path().join("machines.results.csv"));
    let row = results.rows.iter().find(|r| r["machine_id"] == ids[0]).unwrap();
    assert_eq!(row["outcome"], "already_pending");
    assert_eq!(row["action_id"], earlier, "matched to the machine's open action");
    assert_eq!(row["action_status"], "Succeeded");
    assert!(!row["submitted_at"].is_empty());
    assert_eq!(statuses(&results), BTreeMap::from([("Succeeded".to_string(), 3)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_without_a_read_role_says_what_to_grant() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 2, 0);
    let config = SimConfig { fleet, roles: vec!["Machine.Offboard".into()], ..SimConfig::default() };
    let sim = Simulator::start(config).await.unwrap();
    let input = input(dir.path(), &ids);
    // `run --wait` is refused before any call (see up_front.rs); the run alone may go on, and `track` says
    // what to grant.
    let out = mde_in(&sim, dir.path(), &["run", &input, "--yes", "--no-preflight"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let path = dir.path().join("machines.results.csv");
    let out = mde_in(&sim, dir.path(), &["track", path.to_str().unwrap()], "").await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("Machine.Read.All"), "{}", out.stderr);
    // The run's rows stay as written.
    let results = Results::read(&path);
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted" && r["action_status"] == "Pending"));
}
