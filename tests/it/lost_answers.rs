//! An offboard whose answer is lost in the run itself (a timeout, a connection closed after the call went
//! out) is never sent again blindly: the run looks for the action first. Against a service whose actions
//! end at once, a blind second call is taken as a second offboard of the same machine.

use std::collections::HashMap;
use std::time::Duration;

use mde_sim::{Faults, Lifecycle, SimStats};

use crate::common::{Results, fleet_counting, mde};

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";
const ACTIONS: &str = "GET /api/machineactions";

/// Actions that end at once: a second offboard of the same machine is then accepted by the service, so
/// only the client can prevent it.
fn closing_at_once() -> Lifecycle {
    Lifecycle {
        pending_for: Duration::ZERO,
        in_progress_for: Duration::ZERO,
        failed_share: 0.0,
        timeout_share: 0.0,
        action_timeout: Duration::ZERO,
    }
}

fn accepted(stats: &SimStats) -> HashMap<&str, u64> {
    stats.offboard_calls.iter().map(|(id, c)| (id.as_str(), c.accepted)).collect()
}

/// Every connection of an offboard call closes without an answer, half of them after the service took the
/// call. Before: the call was sent again after each, up to --max-attempts: machines offboarded two and three
/// times, and rows saying `failed` for machines the service had offboarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_offboard_is_looked_up_and_never_sent_twice() {
    let faults = Faults { seed: 3, drop_connection: 1.0, actions_only: true, ..Faults::default() };
    let (dir, sim, input, ids) = fleet_counting(10, 21, "100000/1s", |c| {
        c.faults = faults;
        c.lifecycle = closing_at_once();
    })
    .await;
    let args = ["run", input.to_str().unwrap(), "--yes", "--max-attempts", "3", "--retry-delay", "10ms"];
    let out = mde(&sim, &args, "").await;
    let stats = sim.stats();
    let accepted = accepted(&stats);
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert_eq!(results.rows.len(), ids.len(), "{}", out.stderr);
    for row in &results.rows {
        let id = row["machine_id"].as_str();
        let times = accepted.get(id).copied().unwrap_or(0);
        assert!(times <= 1, "machine {id} offboarded {times} times\n{}", out.stderr);
        if times == 1 {
            // The service took it: the row says so, with the action the lookup found.
            assert_eq!(row["outcome"], "submitted", "{row:?}");
            assert!(!row["action_id"].is_empty(), "{row:?}");
        } else {
            assert_eq!(
                (row["outcome"].as_str(), row["error_code"].as_str()),
                ("failed", "ConnectionClosed"),
                "{row:?}"
            );
        }
    }
    assert!(accepted.values().any(|&n| n == 1), "no call went through before its connection closed");
    assert!(results.rows.iter().any(|r| r["outcome"] == "failed"), "every machine was taken on its first call");
    // The lookups read the actions; the calls that went nowhere were sent again, at most three times each.
    assert!(stats.count(ACTIONS, "200") >= ids.len() as u64, "{:?}", stats.calls);
    assert!(stats.offboard_calls.values().all(|c| c.calls <= 3), "{:?}", stats.offboard_calls);
    assert_eq!(out.code, 3, "{}", out.stderr);
}

/// At real time: every offboard answer comes 2 s after the call was taken, past the 1 s call timeout.
/// Before: each machine was called again after each timeout, up to --max-attempts, and offboarded each
/// time. Now the lookup finds the first call's action: `submitted`, once, and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_timeout_is_looked_up_not_sent_again() {
    let faults = Faults {
        seed: 3,
        slow_share: 1.0,
        slow_latency: Duration::from_secs(2),
        actions_only: true,
        ..Faults::default()
    };
    let (dir, sim, input, ids) = fleet_counting(4, 22, "100000/1s", |c| {
        c.faults = faults;
        c.lifecycle = closing_at_once();
    })
    .await;
    let args = [
        "run",
        input.to_str().unwrap(),
        "--yes",
        "--no-preflight",
        "--timeout",
        "1s",
        "--max-attempts",
        "3",
        "--retry-delay",
        "100ms",
    ];
    let out = mde(&sim, &args, "").await;
    let stats = sim.stats();
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert_eq!(results.rows.len(), ids.len(), "{}", out.stderr);
    for id in &ids {
        let calls = &stats.offboard_calls[id];
        assert_eq!((calls.calls, calls.accepted), (1, 1), "machine {id}\n{}", out.stderr);
    }
    for row in &results.rows {
        assert_eq!(row["outcome"], "submitted", "{row:?}");
        assert!(!row["action_id"].is_empty(), "{row:?}");
        assert_eq!(row["attempts"], "2", "the call and the lookup: {row:?}");
    }
    assert_eq!(stats.count(OFFBOARD, "201"), 0, "every answer came too late");
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// With only `Machine.Offboard` (and --no-preflight), a lost answer cannot be looked up: the row is
/// `failed` with `InDoubt` and the machine is not called again, and the plan says so before the first call.
/// Before: each timed-out machine was called again, and offboarded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_read_role_a_lost_answer_is_in_doubt_and_never_sent_again() {
    let faults = Faults {
        seed: 3,
        slow_share: 1.0,
        slow_latency: Duration::from_secs(2),
        actions_only: true,
        ..Faults::default()
    };
    let (dir, sim, input, ids) = fleet_counting(3, 23, "100000/1s", |c| {
        c.faults = faults;
        c.lifecycle = closing_at_once();
        c.roles = vec!["Machine.Offboard".into()];
    })
    .await;
    let args = ["run", input.to_str().unwrap(), "--yes", "--no-preflight", "--timeout", "1s", "--max-attempts", "3"];
    let out = mde(&sim, &args, "").await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("cannot be looked up"), "{}", out.stderr);
    let stats = sim.stats();
    for id in &ids {
        let calls = &stats.offboard_calls[id];
        assert_eq!((calls.calls, calls.accepted), (1, 1), "machine {id}\n{}", out.stderr);
    }
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert_eq!(results.rows.len(), ids.len());
    for row in &results.rows {
        assert_eq!((row["outcome"].as_str(), row["error_code"].as_str()), ("failed", "InDoubt"), "{row:?}");
    }
}
