//! The legacy action type: the 2019 documentation's example answer shows offboard actions as
//! `"type": "OffboardMachine"`, today's service says `Offboard`. Against a simulator that answers the legacy
//! type (and filters by it), the pre-flight, a resume's lookup and tracking all see the offboard actions.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use mde_sim::{Faults, Fleet, Lifecycle, SimConfig, Simulator};

use crate::common::{Results, mde_in, write_file};

/// `n` active Windows 11 workstations: every one can be offboarded.
fn fleet(dir: &Path, n: usize) -> (Fleet, Vec<String>) {
    let mut text = String::from("id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName\n");
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{:040x}", 0x1e9a_c000 + i);
        text += &format!("{id},legacy{i}.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations\n");
        ids.push(id);
    }
    (Fleet::from_csv(&write_file(dir, "fleet.csv", &text)).unwrap(), ids)
}

/// `GET /api/machineactions?$filter=FILTER` as the demo app: the answer's JSON.
async fn list_as_demo_app(sim: &Simulator, filter: String) -> serde_json::Value {
    let http = reqwest::Client::new();
    let token = crate::common::demo_token(sim).await;
    let url = format!("{}/api/machineactions", sim.base_url());
    let response = http.get(url).query(&[("$filter", filter)]).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

fn calls(sim: &Simulator, id: &str) -> (u64, u64) {
    sim.stats().offboard_calls.get(id).map_or((0, 0), |c| (c.calls, c.accepted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_answers_and_filters_the_legacy_type() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 1);
    let sim = Simulator::start(SimConfig { fleet, legacy_action_type: true, ..SimConfig::default() }).await.unwrap();
    let input = write_file(dir.path(), "one.csv", &format!("MachineId\n{}\n", ids[0]));
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes", "--no-preflight"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list = |filter: &str| list_as_demo_app(&sim, filter.to_string());
    let legacy = list("type eq 'OffboardMachine'").await;
    assert_eq!(legacy["value"].as_array().unwrap().len(), 1, "{legacy}");
    assert_eq!(legacy["value"][0]["type"], "OffboardMachine");
    let today = list("type eq 'Offboard'").await;
    assert_eq!(today["value"].as_array().unwrap().len(), 0, "{today}");
    let either = list("(type eq 'Offboard' or type eq 'OffboardMachine') and status eq 'Pending'").await;
    assert_eq!(either["value"].as_array().unwrap().len(), 1, "{either}");
}

/// A machine with an open legacy offboard action is `already_pending` to the pre-flight (no offboard call),
/// and `--wait` tracks every legacy action to its end, the already pending one matched by machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_offboard_actions_are_seen_by_the_preflight_and_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 3);
    // 100x faster than real time; pending for a second of real time, so the first action is still open when
    // the second run starts; then ten seconds of service time in progress, and success.
    let lifecycle = Lifecycle {
        pending_for: Duration::from_secs(100),
        in_progress_for: Duration::from_secs(10),
        failed_share: 0.0,
        timeout_share: 0.0,
        action_timeout: Duration::from_secs(600),
    };
    let config = SimConfig { fleet, time_scale: 100.0, lifecycle, legacy_action_type: true, ..SimConfig::default() };
    let sim = Simulator::start(config).await.unwrap();
    let first = write_file(dir.path(), "first.csv", &format!("{}\n", ids[0]));
    let out =
        mde_in(&sim, dir.path(), &["run", first.to_str().unwrap(), "--yes", "--output", "first.out.csv"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let earlier = Results::read(&dir.path().join("first.out.csv")).rows[0]["action_id"].clone();

    let input = write_file(dir.path(), "machines.csv", &format!("MachineId\n{}\n", ids.join("\n")));
    let args = [
        "run",
        input.to_str().unwrap(),
        "--yes",
        "--rate",
        "1000/1s",
        "--wait",
        "--poll-interval",
        "100ms",
        "--wait-timeout",
        "20s",
    ];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(calls(&sim, &ids[0]), (1, 1), "the pre-flight saw the open legacy action: no second call");
    let results = Results::read(&dir.path().join("machines.results.csv"));
    let row = results.rows.iter().find(|r| r["machine_id"] == ids[0]).unwrap();
    assert_eq!(row["outcome"], "already_pending", "{row:?}");
    assert!(row["error_message"].contains("pre-flight"), "{row:?}");
    assert_eq!(row["action_id"], earlier);
    let statuses: BTreeMap<&str, usize> = results.rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["action_status"].as_str()).or_default() += 1;
        m
    });
    assert_eq!(statuses, BTreeMap::from([("Succeeded", 3)]), "{}", out.stdout);
}

/// A resume looks up a machine whose answer was lost among its offboard actions: of the legacy type too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_finds_the_legacy_action_of_a_lost_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, ids) = fleet(dir.path(), 6);
    // Actions that end at once: a second offboard of the same machine would be accepted, so only the
    // lookup can prevent it.
    let lifecycle = Lifecycle {
        pending_for: Duration::ZERO,
        in_progress_for: Duration::ZERO,
        failed_share: 0.0,
        timeout_share: 0.0,
        action_timeout: Duration::ZERO,
    };
    let config = SimConfig { fleet, quotas: Vec::new(), lifecycle, legacy_action_type: true, ..SimConfig::default() };
    let sim = Simulator::start(config).await.unwrap();
    let input = write_file(dir.path(), "m.csv", &format!("MachineId\n{}\n", ids.join("\n")));
    let args = ["run", input.to_str().unwrap(), "--yes", "--resume", "--no-preflight", "--max-attempts", "1"];
    sim.set_faults(Faults { seed: 3, drop_connection: 1.0, ..Faults::default() });
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(ids.iter().any(|id| calls(&sim, id).1 == 1), "no call went through before its answer was lost");

    sim.set_faults(Faults::default());
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in &ids {
        assert_eq!(calls(&sim, id).1, 1, "machine {id}: offboarded once (found by the lookup, not called again)");
    }
    let results = Results::read(&dir.path().join("m.results.csv"));
    assert!(results.rows.iter().all(|r| r["outcome"] == "submitted" && !r["action_id"].is_empty()));
}

/// The client's own offboard filter selects offboard actions of both types, as the simulator reads OData
/// (moved here from the simulator's unit tests when it became a crate of its own: the simulator does not
/// know the client's constants).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_offboard_filter_selects_both_offboard_types() {
    use mde_offboard::defender::api::{OFFBOARD_TYPE_FILTER, OFFBOARD_TYPES};
    assert_eq!(OFFBOARD_TYPES, ["Offboard", "OffboardMachine"]);
    for legacy in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, ids) = fleet(dir.path(), 1);
        let sim =
            Simulator::start(SimConfig { fleet, legacy_action_type: legacy, ..SimConfig::default() }).await.unwrap();
        let input = write_file(dir.path(), "one.csv", &format!("MachineId\n{}\n", ids[0]));
        let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes", "--no-preflight"], "").await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let selected = list_as_demo_app(&sim, format!("{OFFBOARD_TYPE_FILTER} and status eq 'Pending'")).await;
        assert_eq!(selected["value"].as_array().unwrap().len(), 1, "legacy {legacy}: {selected}");
        let isolate = list_as_demo_app(&sim, "type eq 'Isolate'".to_string()).await;
        assert_eq!(isolate["value"].as_array().unwrap().len(), 0, "{isolate}");
    }
}
