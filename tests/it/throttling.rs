//! 429s: a call gives up after 20 in a row (not 20 in all), and a throttled pool backs off as one, longer
//! with each 429 in a row and one call at a time, whatever `Retry-After` says: a throttled run never storms.

use std::time::Duration;

use mde_offboard::defender::api::{Api, RetryPolicy, THROTTLED_IN_A_ROW_MAX};
use mde_sim::{Faults, Fleet, RetryAfterOverride, SimConfig, Simulator};

use crate::common::{Results, mde_in, write_file};

const MACHINE: &str = "GET /api/machines/{id}";

/// An [`Api`] on `sim` as the demo app, no quota, retry delay `delay`.
fn api_on(sim: &Simulator, delay: Duration) -> Api {
    crate::common::demo_api(sim, RetryPolicy { max_attempts: 6, retry_delay: delay }).0
}

/// A simulator of one machine whose first calls are answered `script`, `Retry-After` absent.
async fn scripted(script: Vec<u16>) -> (Simulator, String) {
    let config = SimConfig {
        fleet: Fleet::generate(1, 31),
        quotas: Vec::new(),
        faults: Faults { script, ..Faults::default() },
        retry_after_override: Some(RetryAfterOverride::Absent),
        ..SimConfig::default()
    };
    let id = config.fleet.ids().next().unwrap().to_owned();
    (Simulator::start(config).await.unwrap(), id)
}

#[tokio::test]
async fn a_call_gives_up_after_20_429s_in_a_row_not_20_in_all() {
    // Five rounds of five 429s and a 503: 25 429s for one call, never more than five in a row.
    let script: Vec<u16> = (0..5).flat_map(|_| [429, 429, 429, 429, 429, 503]).collect();
    let (sim, id) = scripted(script).await;
    let api = api_on(&sim, Duration::from_micros(100));
    let result = api.get_machine(&id).await;
    let stats = sim.stats();
    sim.shutdown().await;
    assert!(result.answer.is_ok(), "{:?}\n{:?}", result.answer, stats.calls);
    assert_eq!((stats.count(MACHINE, "429"), stats.count(MACHINE, "503"), stats.count(MACHINE, "200")), (25, 5, 1));
    assert_eq!(result.attempts, 31);

    // 25 in a row: the 20th is the last.
    let (sim, id) = scripted(vec![429; 25]).await;
    let api = api_on(&sim, Duration::from_micros(1));
    let result = api.get_machine(&id).await;
    let stats = sim.stats();
    sim.shutdown().await;
    let failure = result.answer.unwrap_err();
    assert_eq!((failure.status, failure.code.as_str()), (Some(429), "TooManyRequests"));
    assert_eq!(stats.count(MACHINE, "429"), u64::from(THROTTLED_IN_A_ROW_MAX));
    assert_eq!(result.attempts, THROTTLED_IN_A_ROW_MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_run_makes_a_bounded_number_of_calls_whatever_retry_after_says() {
    let cases =
        [RetryAfterOverride::Text("0".into()), RetryAfterOverride::Absent, RetryAfterOverride::Text("soon".into())];
    let runs: Vec<_> = cases.into_iter().map(|retry_after| tokio::spawn(throttled_run(retry_after))).collect();
    for run in runs {
        run.await.unwrap();
    }
}

/// The quota is spent by another tool for the first 5 seconds, and every 429 says `retry_after`. 4 workers,
/// retry delay 250ms: one call at a time while throttled, each pause twice the one before (and at least a
/// second after `Retry-After: 0`), so at most 4 + log2(5s / 250ms + 1) = 8.4 429s. Before, `0` (taken as
/// 1s) meant 4 calls a second, and no usable value a backoff per call: 16 to 24.
async fn throttled_run(retry_after: RetryAfterOverride) {
    let config = SimConfig {
        fleet: Fleet::generate(8, 32),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        retry_after_override: Some(retry_after.clone()),
        quota_spent_for: Duration::from_secs(5),
        ..SimConfig::default()
    };
    let ids: Vec<String> = config.fleet.ids().map(str::to_owned).collect();
    let sim = Simulator::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "m.csv", &format!("MachineId\n{}\n", ids.join("\n")));
    let args =
        ["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--concurrency", "4", "--retry-delay", "250ms"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    let stats = sim.stats();
    sim.shutdown().await;
    assert_eq!(out.code, 0, "{retry_after:?}\n{}", out.stderr);
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted"), "{retry_after:?}");
    let offboard = "POST /api/machines/{id}/offboard";
    let throttled = stats.count(offboard, "429");
    assert!(throttled >= 4, "{retry_after:?}: the run was not throttled: {:?}", stats.calls);
    assert!(throttled <= 10, "{retry_after:?}: {throttled} calls answered 429 in 5 seconds: {:?}", stats.calls);
    assert_eq!(stats.count(offboard, "201"), 8, "{retry_after:?}");
}
