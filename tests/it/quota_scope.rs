//! How the quotas are counted: one budget per API (the default, as each API's page states its limits), the
//! switch to one budget for the app when a 429 comes that the per-API budget cannot explain, and a run that
//! gives up part of the quota while another client spends it. Real time with small quotas: these show
//! pacing, with generous bounds only.

use std::time::{Duration, Instant};

use mde_sim::{QuotaScope, Rate};

use crate::common::{Results, fleet_counting, mde_in, summary_json};

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";

/// The calls of every read route the simulator saw.
fn reads(stats: &mde_sim::SimStats) -> u64 {
    stats.calls.iter().filter(|(route, _)| route.starts_with("GET")).map(|(_, by)| by.values().sum::<u64>()).sum()
}

fn all_submitted(results: &Results, n: usize) {
    assert_eq!(results.rows.len(), n);
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"), "{:?}", results.rows);
}

/// Before (one budget for every call): a list of exactly the quota, after the pre-flight's reads, waited a
/// whole period for the last machines (`real_time::the_plan_says_...`). Per API, the reads spend their own
/// budgets: every offboard goes in the first window, and nothing is throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_api_counting_lets_a_list_of_exactly_the_quota_and_its_reads_finish_in_one_window() {
    let (dir, sim, input, ids) = fleet_counting(20, 5, "20/10s", |_| ()).await;
    let started = Instant::now();
    let args = ["run", input.to_str().unwrap(), "--yes", "--rate", "20/10s", "--summary-json", "s.json"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    let took = started.elapsed();
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    all_submitted(&Results::read(&dir.path().join("m.results.csv")), ids.len());
    assert!(reads(&stats) > 0, "the pre-flight read: {:?}", stats.calls);
    assert_eq!((stats.quota_scope.as_str(), stats.throttled), ("api", 0), "{:?}", stats.calls);
    assert_eq!(stats.max_in_window_by_budget["offboard"][0].max_seen, 20);
    // The plan knows: no machine waits for the next window.
    assert!(out.stderr.contains("counted per API"), "{}", out.stderr);
    assert!(!out.stderr.contains("wait for its next window"), "{}", out.stderr);
    // The next window opens 10 s after the first answers: the run ended well before.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let summary = summary_json(dir.path());
    assert_eq!(
        (summary["quota_scope"].as_str(), summary["quota_scope_switched"].as_bool()),
        (Some("api"), Some(false))
    );
    assert_eq!(summary["quota_taken_percent"], 0);
}

/// A run right after another of the same tenant and app: the service still counts the first run's calls
/// (10 offboards in a quota of 10 every 4 s). The first run leaves what its calls spent beside its run lock,
/// and the second counts them in its budgets before its first call: it waits for the first run's window to
/// pass. Before, it was answered 429 at once, which its empty budget could not explain, and switched to one
/// budget for the app for the rest of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_right_after_another_counts_the_calls_the_service_still_counts() {
    let (dir, sim, _, ids) = fleet_counting(20, 7, "10/4s", |_| ()).await;
    let list = |name: &str, ids: &[String]| {
        crate::common::write_file(dir.path(), name, &format!("MachineId\n{}\n", ids.join("\n")))
    };
    let (first, second) = (list("a.csv", &ids[..10]), list("b.csv", &ids[10..]));
    for input in [&first, &second] {
        let args =
            ["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--rate", "10/4s", "--summary-json", "s.json"];
        let out = mde_in(&sim, dir.path(), &args, "").await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let summary = summary_json(dir.path());
        assert_eq!(
            (summary["quota_scope_switched"].as_bool(), summary["throttled_429"].as_u64()),
            (Some(false), Some(0))
        );
    }
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!((stats.throttled, stats.count(OFFBOARD, "201")), (0, 20), "{:?}", stats.calls);
    assert_eq!(stats.max_in_window_by_budget["offboard"][0].max_seen, 10);
    assert!(dir.path().read_dir().unwrap().any(|e| e.unwrap().path().extension().is_some_and(|x| x == "calls")));
}

/// A service that counts every call against one budget: the per-API run meets a 429 its budget cannot
/// explain, says so and switches to one budget for the app; from then on it keeps to it. Only the calls in
/// flight when the first 429 came back can be refused too: at most the concurrency in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_counting_per_app_makes_the_run_switch_and_be_refused_no_more() {
    let (dir, sim, input, ids) = fleet_counting(20, 5, "20/5s", |c| c.quota_scope = QuotaScope::App).await;
    let args =
        ["run", input.to_str().unwrap(), "--yes", "--rate", "20/5s", "--concurrency", "4", "--summary-json", "s.json"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    all_submitted(&Results::read(&dir.path().join("m.results.csv")), ids.len());
    assert_eq!(stats.quota_scope, "app");
    assert!(stats.throttled >= 1, "the per-API run was not refused: {:?}", stats.calls);
    assert!(
        stats.throttled <= 4,
        "{} 429s: more than the calls in flight at the switch: {:?}",
        stats.throttled,
        stats.calls
    );
    assert_eq!(stats.count(OFFBOARD, "201"), ids.len() as u64);
    assert!(out.stderr.contains("quota scope app"), "the log says nothing of the switch:\n{}", out.stderr);
    assert!(out.stdout.contains("switched from per API"), "{}", out.stdout);
    let summary = summary_json(dir.path());
    assert_eq!((summary["quota_scope"].as_str(), summary["quota_scope_switched"].as_bool()), (Some("app"), Some(true)));
    assert_eq!(summary["throttled_429"], stats.throttled);
}

/// Another client of the same app spends 30% of the offboards' budget. The run switches to one budget, the
/// 429s keep coming, and it lowers its own rate until they stop: every machine done, every 429 counted, and
/// the summary says how much of the quota it found taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_client_taking_30_percent_makes_the_run_lower_its_rate() {
    let background: Rate = "6/2s".parse().unwrap();
    let (dir, sim, input, ids) = fleet_counting(50, 6, "20/2s", |c| c.background_rate = Some(background)).await;
    let args =
        ["run", input.to_str().unwrap(), "--yes", "--rate", "20/2s", "--concurrency", "4", "--summary-json", "s.json"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    all_submitted(&Results::read(&dir.path().join("m.results.csv")), ids.len());
    assert!(stats.background_served > 0, "{stats:?}");
    let summary = summary_json(dir.path());
    assert_eq!(summary["throttled_429"], stats.throttled, "{:?}", stats.calls);
    assert!(stats.throttled >= 2, "{:?}", stats.calls);
    // A storm would be a 429 for most calls; one per pause is a few per spell.
    assert!(stats.throttled < ids.len() as u64, "{} 429s for {} machines", stats.throttled, ids.len());
    assert_eq!(summary["quota_scope"].as_str(), Some("app"));
    let taken = summary["quota_taken_percent"].as_u64().unwrap();
    assert!((10..=90).contains(&taken), "{summary}");
    assert!(out.stderr.contains("another client spends the same quota"), "{}", out.stderr);
    assert!(out.stdout.contains(&format!("another client spent up to {taken}%")), "{}", out.stdout);
}
