//! Runs at real time: small quotas, slow answers, waits longer than the call timeout. Every other suite
//! compresses time; these show that a normal run waits for every machine however long the quota makes it
//! wait, and that no row is lost between the last input row and the summary.

use std::collections::HashSet;
use std::time::Duration;

use mde_sim::{Faults, QuotaScope};

use crate::common::{Results, fleet_counting, fleet_with_quota, mde};

/// One row per input row, each machine once.
fn one_row_each(results: &Results, ids: &[String]) {
    assert_eq!(
        results.rows.len(),
        ids.len(),
        "rows: {:?}",
        results.rows.iter().map(|r| &r["line"]).collect::<Vec<_>>()
    );
    let lines: HashSet<&str> = results.rows.iter().map(|r| r["line"].as_str()).collect();
    assert_eq!(lines.len(), ids.len(), "a line has two rows");
}

/// 14 machines through 10 calls per 8 s with a 2 s call timeout: the last four wait about 8 s for the quota,
/// longer than the call timeout. Before: the drain bound (timeout + 5 s) cut them off, the run said
/// "Finished: 10 rows" and exited 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_end_waits_for_every_machine_the_quota_holds_back() {
    let (dir, sim, input, ids) = fleet_with_quota(14, 5, "10/8s", Faults::default()).await;
    let out = mde(
        &sim,
        &["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--rate", "10/8s", "--timeout", "2s"],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = Results::read(&dir.path().join("m.results.csv"));
    one_row_each(&results, &ids);
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"), "{:?}", results.rows);
    assert!(out.stdout.contains("Finished: 14 rows"), "{}", out.stdout);
    assert_eq!(sim.stats().count("POST /api/machines/{id}/offboard", "201"), 14);
}

/// The full pipeline (pre-flight included) with slow answers (3 s, past the 2 s call timeout) on a quarter
/// of the calls, and 5xx retried after a long delay: every machine still gets its row, and the exit code
/// reads the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_and_long_retries_still_end_in_one_row_each() {
    let faults =
        Faults { seed: 3, error_503: 0.3, slow_share: 0.25, slow_latency: Duration::from_secs(3), ..Faults::default() };
    let (dir, sim, input, ids) = fleet_with_quota(14, 5, "10/8s", faults).await;
    let out = mde(
        &sim,
        &[
            "run",
            input.to_str().unwrap(),
            "--yes",
            "--rate",
            "10/8s",
            "--timeout",
            "2s",
            "--retry-delay",
            "3s",
            "--max-attempts",
            "3",
        ],
        "",
    )
    .await;
    let results = Results::read(&dir.path().join("m.results.csv"));
    one_row_each(&results, &ids);
    let all_ok = results.rows.iter().all(|r| ["submitted", "already_pending"].contains(&r["outcome"].as_str()));
    assert_eq!(out.code, if all_ok { 0 } else { 3 }, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Finished: 14 rows"), "{}", out.stdout);
}

/// Before: the plan's estimate left out the calls already in the windows (the pre-flight's reads), so a
/// list as long as the quota showed a fraction of the time the run took, and never said why. With one
/// budget for every call (a service counting per app, and the run told so): per API, see
/// `quota_scope::per_api_counting_lets_a_list_of_exactly_the_quota_and_its_reads_finish_in_one_window`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_says_when_the_quota_pushes_the_last_machines_into_its_next_window() {
    let (dir, sim, input, ids) = fleet_counting(20, 5, "20/10s", |c| c.quota_scope = QuotaScope::App).await;
    let args = ["run", input.to_str().unwrap(), "--yes", "--rate", "20/10s", "--quota-scope", "app"];
    let out = mde(&sim, &args, "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reads = sim
        .stats()
        .calls
        .iter()
        .filter(|(route, _)| route.starts_with("GET"))
        .map(|(_, by)| by.values().sum::<u64>())
        .sum::<u64>();
    assert!(reads > 0, "the pre-flight read");
    assert!(
        out.stderr.contains(&format!("the last {reads} machine(s) wait for its next window")),
        "{reads} reads:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("take about 10s") || out.stderr.contains("take about 11s"), "{}", out.stderr);
    one_row_each(&Results::read(&dir.path().join("m.results.csv")), &ids);
}
