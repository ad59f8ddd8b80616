//! End-to-end runs of the real binary against the in-process simulator, over loopback HTTP.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mde_offboard::settings::Rate;
use mde_sim::{Faults, Fleet, SimConfig, SimStats, Simulator};

use crate::common::{Results, id_list, mde, write_file};

/// A fleet with one machine of every kind a run meets.
const FLEET: &str = "\
id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName
1111111111111111111111111111111111111111,ok-1.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations
2222222222222222222222222222222222222222,ok-2.contoso.local,Windows10,Active,2026-11-20T10:00:00Z,Workstations
3333333333333333333333333333333333333333,tier0-dc.contoso.local,WindowsServer2022,Active,2026-11-20T10:00:00Z,Tier0 Servers
4444444444444444444444444444444444444444,old.contoso.local,Windows7,Active,2026-11-20T10:00:00Z,Workstations
5555555555555555555555555555555555555555,pending.contoso.local,Windows11,Inactive,2026-11-01T10:00:00Z,Workstations
";

fn config(fleet: Fleet) -> SimConfig {
    SimConfig { fleet, forbidden_groups: vec!["Tier0 Servers".into()], ..SimConfig::default() }
}

fn small_fleet(dir: &std::path::Path) -> Fleet {
    Fleet::from_csv(&write_file(dir, "fleet.csv", FLEET)).unwrap()
}

fn generated(n: usize) -> Fleet {
    Fleet::generate(n, 42)
}

/// Every generated machine that a default simulator lets us offboard.
fn offboardable(sim_config: &SimConfig) -> Vec<String> {
    sim_config
        .fleet
        .ids()
        .filter(|id| {
            let m = sim_config.fleet.get(id).unwrap();
            !sim_config.unsupported_platforms.contains(&m.os_platform)
                && !sim_config.forbidden_groups.contains(&m.rbac_group_name)
        })
        .map(str::to_owned)
        .collect()
}

fn no_second_accepted_offboard(stats: &SimStats) {
    for (id, calls) in &stats.offboard_calls {
        assert!(calls.accepted <= 1, "machine {id} got {} accepted offboard calls", calls.accepted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_gets_its_row_and_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(small_fleet(dir.path()))).await.unwrap();
    // An open action for machine 2 before the run: already_pending.
    let pre = write_file(dir.path(), "pre.csv", "2222222222222222222222222222222222222222\n");
    let out = mde(&sim, &["run", pre.to_str().unwrap(), "--yes"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let input = write_file(
        dir.path(),
        "machines.csv",
        "Device ID,Name\n\
         1111111111111111111111111111111111111111,ok\n\
         2222222222222222222222222222222222222222,has an open action\n\
         3333333333333333333333333333333333333333,tier0\n\
         4444444444444444444444444444444444444444,windows 7\n\
         abcdefabcdefabcdefabcdefabcdefabcdefabcd,unknown\n\
         not-an-id,typo\n\
         \x20 1111111111111111111111111111111111111111 ,again (duplicate)\n\
         5555555555555555555555555555555555555555,inactive\n",
    );
    // Without the pre-flight: every outcome here comes from the offboard call's own answer.
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--yes", "--no-preflight"], "").await;
    assert_eq!(out.code, 3, "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    let results = Results::read(&dir.path().join("machines.results.csv"));
    assert_eq!(results.rows.len(), 8);
    let expect = [
        (2, "submitted", Some(201)),
        (3, "already_pending", Some(400)),
        (4, "forbidden", Some(403)),
        (5, "unsupported", Some(400)),
        (6, "not_found", Some(404)),
        (7, "invalid_id", None),
        (8, "duplicate", None),
        (9, "submitted", Some(201)),
    ];
    for (line, outcome, status) in expect {
        let row = results.line(line);
        assert_eq!(row["outcome"], outcome, "line {line}: {row:?}");
        assert_eq!(row["http_status"], status.map(|s| s.to_string()).unwrap_or_default(), "line {line}");
    }
    let submitted = results.line(2);
    assert_eq!(submitted["action_status"], "Pending");
    assert!(!submitted["action_id"].is_empty() && !submitted["submitted_at"].is_empty());
    assert_eq!(submitted["computer_dns_name"], "ok-1.contoso.local");
    assert_eq!(results.line(3)["error_code"], "ActiveRequestAlreadyExists");
    assert_eq!(results.line(5)["error_code"], "OsPlatformNotSupported");
    // The 404 was asked twice before it counted.
    assert_eq!(results.line(6)["attempts"], "2");
    assert_eq!(results.line(7)["attempts"], "0");
    assert!(out.stdout.contains("submitted") && out.stdout.contains("not_found"), "{}", out.stdout);

    let stats = sim.stats();
    no_second_accepted_offboard(&stats);
    assert_eq!(stats.offboard_calls.get("1111111111111111111111111111111111111111").map(|c| c.calls), Some(1));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_input_and_the_default_output_name() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(small_fleet(dir.path()))).await.unwrap();
    let out = crate::common::mde_in(
        &sim,
        dir.path(),
        &["run", "-", "--yes"],
        "1111111111111111111111111111111111111111\n2222222222222222222222222222222222222222\n",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&dir.path().join("results.csv"));
    assert_eq!(results.rows.len(), 2);
    assert_eq!(results.line(1)["outcome"], "submitted");
    assert_eq!(results.line(2)["outcome"], "submitted");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_make_no_api_call() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(config(small_fleet(dir.path()))).await.unwrap();
    let input = write_file(
        dir.path(),
        "m.csv",
        "MachineId\n1111111111111111111111111111111111111111\n2222222222222222222222222222222222222222\n",
    );
    let path = input.to_str().unwrap();

    // No terminal and no --yes: usage, exit 2.
    let out = mde(&sim, &["run", path], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);

    // Stdin input always needs --yes.
    let out = mde(&sim, &["run", "-"], "1111111111111111111111111111111111111111\n").await;
    assert_eq!(out.code, 2, "{}", out.stderr);

    // More machines than --max-machines.
    let out = mde(&sim, &["run", path, "--yes", "--max-machines", "1"], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--max-machines"), "{}", out.stderr);

    // No comment: the API requires one.
    let out = crate::common::mde_env(&sim, dir.path(), &["run", path, "--yes"], "", &[("MDE_COMMENT", "")]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);

    // A wrong secret: the AADSTS code and a hint, exit 1.
    let out =
        crate::common::mde_env(&sim, dir.path(), &["run", path, "--yes"], "", &[("MDE_CLIENT_SECRET", "wrong-secret")])
            .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("AADSTS7000215") && out.stderr.contains("secret"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-secret"), "the secret leaked: {}", out.stderr);

    // An input without an id column.
    let bad = write_file(dir.path(), "bad.csv", "Computer,Owner\npc1,alice\n");
    let out = mde(&sim, &["run", bad.to_str().unwrap(), "--yes"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("bad.csv"), "{}", out.stderr);

    let stats = sim.stats();
    assert_eq!(stats.actions_created, 0);
    assert!(stats.offboard_calls.is_empty(), "{:?}", stats.offboard_calls);

    // An existing results file is not replaced without --overwrite.
    let out = mde(&sim, &["run", path, "--yes"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = mde(&sim, &["run", path, "--yes"], "").await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--overwrite"), "{}", out.stderr);
    let out = mde(&sim, &["run", path, "--yes", "--overwrite"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(Results::read(&dir.path().join("m.results.csv")).line(2)["outcome"], "already_pending");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expiring_mid_run_are_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(generated(300));
    cfg.quotas = vec![];
    // Tokens live 200 ms of real time (the simulator still says `expires_in: 1`, its smallest), and each
    // call takes 20 ms: the run outlives several tokens and meets 401s it must renew through.
    cfg.token_lifetime = Duration::from_millis(200);
    cfg.faults = Faults { latency: Duration::from_millis(20), ..Faults::default() };
    let ids = offboardable(&cfg);
    let sim = Simulator::start(cfg).await.unwrap();
    let input = write_file(dir.path(), "m.csv", &id_list(&ids[..120]));
    let out =
        mde(&sim, &["run", input.to_str().unwrap(), "--yes", "--rate", "1000/1s", "--concurrency", "2"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"));
    let stats = sim.stats();
    assert!(stats.tokens_issued >= 3, "tokens issued: {}", stats.tokens_issued);
    assert!(stats.count("POST /api/machines/{id}/offboard", "401") > 0, "no token expired mid-run");
    no_second_accepted_offboard(&stats);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_pauses_and_every_machine_is_offboarded_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(generated(200));
    // The service allows far less than the client was told: every worker runs into 429s.
    cfg.quotas = vec!["15/1s".parse().unwrap()];
    let ids = offboardable(&cfg);
    let sim = Simulator::start(cfg).await.unwrap();
    let input = write_file(dir.path(), "m.csv", &id_list(&ids[..40]));
    let out =
        mde(&sim, &["run", input.to_str().unwrap(), "--yes", "--rate", "1000/1s", "--concurrency", "8"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stats = sim.stats();
    assert!(stats.throttled > 0, "the storm did not happen");
    assert!(out.stdout.contains("429 throttled: "), "{}", out.stdout);
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert_eq!(results.rows.len(), 40);
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"), "{:?}", results.rows);
    no_second_accepted_offboard(&stats);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_end_in_exactly_one_row_per_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(generated(400));
    cfg.quotas = vec![];
    cfg.faults = Faults { seed: 3, error_503: 0.15, error_500: 0.05, drop_connection: 0.1, ..Faults::default() };
    let ids = offboardable(&cfg);
    let sim = Simulator::start(cfg).await.unwrap();
    let input = write_file(dir.path(), "m.csv", &id_list(&ids[..150]));
    let out = mde(
        &sim,
        &["run", input.to_str().unwrap(), "--yes", "--rate", "10000/1s", "--retry-delay", "10ms", "--concurrency", "8"],
        "",
    )
    .await;
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert_eq!(results.rows.len(), 150);
    let mut lines: Vec<u64> = results.rows.iter().map(|r| r["line"].parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, (2..152).collect::<Vec<u64>>());
    let mut by_outcome: HashMap<&str, usize> = HashMap::new();
    for row in &results.rows {
        *by_outcome.entry(row["outcome"].as_str()).or_default() += 1;
    }
    // A dropped answer to an applied offboard is found by the lookup before any second call: `submitted`,
    // with the action (before: the retry found it open, and the row said `already_pending`).
    assert!(
        results.rows.iter().any(|r| r["outcome"] == "submitted" && r["error_message"].starts_with("found the action")),
        "{by_outcome:?}"
    );
    assert_eq!(by_outcome.get("already_pending"), None, "{by_outcome:?}");
    let failed = by_outcome.get("failed").copied().unwrap_or(0);
    assert_eq!(out.code, if failed > 0 { 3 } else { 0 }, "{by_outcome:?}\n{}", out.stderr);
    assert!(results.rows.iter().any(|r| r["attempts"].parse::<u32>().unwrap() > 1));
    no_second_accepted_offboard(&sim.stats());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_keeps_every_window_and_finishes_near_the_quota_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let quotas: Vec<Rate> = vec!["20/500ms".parse().unwrap(), "60/3s".parse().unwrap()];
    let mut cfg = config(generated(300));
    cfg.quotas = vec!["20/500ms".parse().unwrap(), "60/3s".parse().unwrap()];
    cfg.faults = Faults { latency: Duration::from_millis(5), ..Faults::default() };
    let ids = offboardable(&cfg);
    let sim = Simulator::start(cfg).await.unwrap();
    let machines = 130;
    let input = write_file(dir.path(), "m.csv", &id_list(&ids[..machines]));
    let started = Instant::now();
    let out = mde(
        &sim,
        &["run", input.to_str().unwrap(), "--yes", "--rate", "20/500ms", "--rate", "60/3s", "--concurrency", "8"],
        "",
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stats = sim.stats();
    assert_eq!(stats.throttled, 0, "the limiter let the service throttle");
    assert_eq!(stats.quota_rejections, 0);
    for window in &stats.max_in_window {
        assert!(window.max_offered <= window.limit, "{window:?}");
    }
    // Ideal: 60 calls, then 60 more 3 s later, then 10 more 3 s after that: about 6 s. Generous margin: the
    // precise figure is the benchmark's.
    let ideal =
        mde_offboard::defender::limiter::earliest_schedule(&quotas, machines as u64, 8, Duration::from_millis(5));
    assert!(ideal >= Duration::from_secs(6), "{ideal:?}");
    assert!(took < ideal + Duration::from_secs(4), "took {took:?}, ideal {ideal:?}");
    sim.shutdown().await;
}
