//! Unattended runs: interrupts, kill -9 and --resume, the run lock, JSON logs and the summary file.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mde_sim::{Faults, Fleet, SimConfig, SimStats, Simulator};

use crate::common::{Results, command, mde_env, rows_in, write_file};

fn fleet_ids(cfg: &SimConfig, n: usize) -> Vec<String> {
    cfg.fleet
        .machines()
        .iter()
        .filter(|m| {
            !cfg.unsupported_platforms.contains(&m.os_platform) && !cfg.forbidden_groups.contains(&m.rbac_group_name)
        })
        .take(n)
        .map(|m| m.id.clone())
        .collect()
}

fn input(dir: &Path, ids: &[String]) -> std::path::PathBuf {
    write_file(dir, "m.csv", &format!("MachineId\n{}\n", ids.join("\n")))
}

/// Every input line has exactly one row, and every machine was accepted by the service exactly once.
/// (`already_pending` is right where an answer was lost and the retry met the action it had created.)
fn complete_and_once(results: &Results, ids: &[String], stats: &SimStats) {
    let mut lines: Vec<u64> = results.rows.iter().map(|r| r["line"].parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, (2..2 + ids.len() as u64).collect::<Vec<_>>(), "not one row per input row");
    for row in &results.rows {
        assert!(["submitted", "already_pending"].contains(&row["outcome"].as_str()), "{row:?}");
    }
    for id in ids {
        let accepted = stats.offboard_calls.get(id).map_or(0, |c| c.accepted);
        assert_eq!(accepted, 1, "machine {id} was accepted {accepted} times");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_drains_and_resume_finishes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        SimConfig { fleet: Fleet::generate(300, 5), quotas: vec!["20/500ms".parse().unwrap()], ..SimConfig::default() };
    cfg.faults = Faults { latency: Duration::from_millis(10), ..Faults::default() };
    let ids = fleet_ids(&cfg, 120);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let results_path = dir.path().join("m.results.csv");
    let args = ["run", path.to_str().unwrap(), "--yes", "--rate", "20/500ms", "--summary-json", "s.json"];
    let mut child = command(&sim, dir.path(), &args, &[]).spawn().unwrap();
    // Wait for the run to be well under way, then Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows_in(&results_path) < 25 {
        assert!(Instant::now() < deadline, "the run did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || {
        let _ = child.stdin.take();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("--resume"), "{stdout}");
    let partial = rows_in(&results_path);
    assert!(partial < 120, "the interrupt stopped nothing");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s.json")).unwrap()).unwrap();
    assert_eq!(summary["exit_code"], 130);
    assert_eq!(summary["interrupted"], true);

    let out = mde_env(
        &sim,
        dir.path(),
        &["run", path.to_str().unwrap(), "--yes", "--resume", "--rate", "20/500ms", "--summary-json", "s.json"],
        "",
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("Resuming"), "{}", out.stderr);
    complete_and_once(&Results::read(&results_path), &ids, &sim.stats());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s.json")).unwrap()).unwrap();
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["resumed"], true);
    assert_eq!(summary["rows"], 120);
    assert_eq!(summary["counts"]["submitted"], 120);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_nothing_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SimConfig { fleet: Fleet::generate(400, 6), quotas: Vec::new(), ..SimConfig::default() };
    // Some answers are lost after the action was created: the hardest case for a resume.
    cfg.faults = Faults { seed: 9, latency: Duration::from_millis(15), drop_connection: 0.05, ..Faults::default() };
    let ids = fleet_ids(&cfg, 200);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let results_path = dir.path().join("m.results.csv");
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--rate", "10000/1s", "--retry-delay", "10ms"];
    let mut rng = fastrand::Rng::with_seed(11);
    let mut kills = 0;
    for _ in 0..6 {
        let mut child = command(&sim, dir.path(), &args, &[]).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(rng.u64(40..500))).await;
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let _ = tokio::task::spawn_blocking(move || child.wait()).await.unwrap();
        if finished {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 2, "the runs ended before they could be killed");
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    complete_and_once(&Results::read(&results_path), &ids, &sim.stats());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_retries_failed_rows_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig {
        fleet: Fleet::generate(100, 7),
        quotas: Vec::new(),
        faults: Faults { seed: 1, error_503: 1.0, ..Faults::default() },
        ..SimConfig::default()
    };
    let ids = fleet_ids(&cfg, 30);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    // Without the pre-flight: its reads would fail first (every call answers 503).
    let args = ["run", path.to_str().unwrap(), "--yes", "--no-preflight", "--max-attempts", "1"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let results_path = dir.path().join("m.results.csv");
    assert!(Results::read(&results_path).rows.iter().all(|r| r["outcome"] == "failed" && r["http_status"] == "503"));

    sim.set_faults(Faults::default());
    let out = mde_env(&sim, dir.path(), &[&args[..], &["--resume"]].concat(), "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    complete_and_once(&Results::read(&results_path), &ids, &sim.stats());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_different_comment_or_input() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fleet: Fleet::generate(50, 8), quotas: Vec::new(), ..SimConfig::default() };
    let ids = fleet_ids(&cfg, 5);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let out = mde_env(&sim, dir.path(), &args, "", &[("MDE_COMMENT", "another reason")]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot resume") && out.stderr.contains("comment"), "{}", out.stderr);

    input(dir.path(), &ids[..3]);
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("changed"), "{}", out.stderr);

    // A finished run resumed again has nothing left to do and calls nothing.
    input(dir.path(), &ids);
    let before = sim.stats().total("POST /api/machines/{id}/offboard");
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sim.stats().total("POST /api/machines/{id}/offboard"), before);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_at_a_time_per_tenant_and_app() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        SimConfig { fleet: Fleet::generate(200, 9), quotas: vec!["5/1s".parse().unwrap()], ..SimConfig::default() };
    let ids = fleet_ids(&cfg, 40);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let mut first =
        command(&sim, dir.path(), &["run", path.to_str().unwrap(), "--yes", "--rate", "5/1s"], &[]).spawn().unwrap();
    let results_path = dir.path().join("m.results.csv");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows_in(&results_path) < 1 {
        assert!(Instant::now() < deadline, "the first run did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = mde_env(&sim, dir.path(), &["run", path.to_str().unwrap(), "--yes", "-o", "other.csv"], "", &[]).await;
    // Tracking spends the same quota: it waits its turn too.
    let track = mde_env(&sim, dir.path(), &["track", results_path.to_str().unwrap(), "--once"], "", &[]).await;
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("another run") && out.stderr.contains(&format!("pid {}", first.id())),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("other.csv").exists());
    assert_eq!(track.code, 1, "{}", track.stderr);
    // Tracking that file also meets the results file's own lock, which it takes first.
    assert!(track.stderr.contains("another run") || track.stderr.contains("is writing"), "{}", track.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_run_id_and_each_machine() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fleet: Fleet::generate(50, 10), quotas: Vec::new(), ..SimConfig::default() };
    let ids = fleet_ids(&cfg, 6);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = [
        "run",
        path.to_str().unwrap(),
        "--yes",
        "--log-format",
        "json",
        "-v",
        "--comment",
        "retire {run_id} on {date}",
    ];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut machines: HashMap<String, String> = HashMap::new();
    let mut run_ids = Vec::new();
    for line in out.stderr.lines().filter(|l| l.starts_with('{')) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(machine) = event["fields"]["machine"].as_str() {
            machines.insert(machine.to_string(), event["fields"]["outcome"].as_str().unwrap().to_string());
            run_ids.push(event["span"]["run_id"].as_str().expect("the run id is on each machine's line").to_string());
        }
    }
    assert_eq!(machines.len(), 6, "{}", out.stderr);
    assert!(machines.values().all(|o| o == "submitted"));
    assert!(run_ids.windows(2).all(|w| w[0] == w[1]));
    assert!(out.stdout.contains(&run_ids[0]), "the summary names the run: {}", out.stdout);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_at_the_crash_is_looked_up_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig { fleet: Fleet::generate(50, 12), quotas: Vec::new(), ..SimConfig::default() };
    let ids = fleet_ids(&cfg, 3);
    let sim = Simulator::start(cfg).await.unwrap();
    let path = input(dir.path(), &ids);
    let args = ["run", path.to_str().unwrap(), "--yes", "--resume", "--no-preflight", "--comment", "retire {run_id}"];
    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // What a kill -9 between the call and its row leaves: the journal names line 4's machine as called, and
    // its row is missing (the service did create the action).
    let results_path = dir.path().join("m.results.csv");
    let text = std::fs::read_to_string(&results_path).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("4,")).collect();
    std::fs::write(&results_path, kept.join("\n") + "\n").unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let journal = dir.path().join("m.results.csv.journal");
    let mut journal_text = std::fs::read_to_string(&journal).unwrap();
    journal_text += &format!("4,{},{now_ms}\n", ids[2]);
    std::fs::write(&journal, journal_text).unwrap();

    let out = mde_env(&sim, dir.path(), &args, "", &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&results_path);
    let row = results.line(4);
    assert_eq!(row["outcome"], "submitted", "{row:?}");
    assert!(row["error_message"].contains("not sent again"), "{row:?}");
    assert!(!row["action_id"].is_empty());
    assert_eq!(sim.stats().offboard_calls[&ids[2]].calls, 1, "the machine was called again");
    complete_and_once(&results, &ids, &sim.stats());
    sim.shutdown().await;
}
