//! The typed API against the simulator: the calls no command makes yet (cancel, tags) and the machine query,
//! each through the one retry policy.

use std::time::{Duration, SystemTime};

use mde_offboard::defender::api::{Api, MachineQuery, Page, RetryPolicy, TagChange, read_action};
use mde_sim::{Fleet, SimConfig, Simulator};

/// A simulator of `machines` machines, no quotas, nothing forbidden, its app granted `roles`.
async fn simulator(machines: usize, roles: &[&str]) -> (Simulator, Vec<String>) {
    let config = SimConfig {
        fleet: Fleet::generate(machines, 31),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..SimConfig::default()
    };
    let ids = config.fleet.ids().map(str::to_owned).collect();
    (Simulator::start(config).await.unwrap(), ids)
}

fn api_on(sim: &Simulator) -> Api {
    crate::common::demo_api(sim, RetryPolicy { max_attempts: 2, retry_delay: Duration::from_millis(10) }).0
}

/// The tags a machine shows now.
async fn tags_of(api: &Api, id: &str) -> Vec<String> {
    let reply = api.get_machine(id).await.answer.unwrap();
    let machine: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    machine["machineTags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn cancel_ends_an_open_action_and_only_an_open_one() {
    let (sim, ids) = simulator(2, &["Machine.Offboard", "Machine.Read.All"]).await;
    let api = api_on(&sim);
    let machine = mde_offboard::domain::MachineId::parse(&ids[0]).unwrap();
    let created = api.offboard(&machine, "retired").await.answer.unwrap();
    let action = read_action(&created.body).unwrap();
    let id = action.id.unwrap();

    let cancelled = api.cancel_action(&id, "offboarded the wrong machine").await;
    let cancelled = read_action(&cancelled.answer.unwrap().body).unwrap();
    assert_eq!(cancelled.status.as_ref().map(|s| s.as_str()), Some("Cancelled"));

    // Final now: refused, and not tried again.
    let again = api.cancel_action(&id, "again").await;
    assert_eq!((again.attempts, again.answer.unwrap_err().status), (1, Some(400)));
    // An unknown action: 404, final (no second try).
    let unknown = api.cancel_action("00000000-0000-0000-0000-000000000000", "x").await;
    assert_eq!((unknown.attempts, unknown.answer.unwrap_err().status), (1, Some(404)));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_tag_is_added_to_one_machine_and_removed() {
    let (sim, ids) = simulator(2, &["Machine.ReadWrite.All"]).await;
    let api = api_on(&sim);
    let before = tags_of(&api, &ids[0]).await;
    assert!(api.tag_machine(&ids[0], "retired", TagChange::Add).await.answer.is_ok());
    assert_eq!(tags_of(&api, &ids[0]).await, [before.clone(), vec!["retired".to_string()]].concat());
    assert_eq!(tags_of(&api, &ids[1]).await.iter().filter(|t| *t == "retired").count(), 0);
    assert!(api.tag_machine(&ids[0], "retired", TagChange::Remove).await.answer.is_ok());
    assert_eq!(tags_of(&api, &ids[0]).await, before);
    sim.shutdown().await;

    // Tags need Machine.ReadWrite.All.
    let (sim, ids) = simulator(1, &["Machine.Offboard", "Machine.Read.All"]).await;
    let refused = api_on(&sim).tag_machine(&ids[0], "retired", TagChange::Add).await;
    assert_eq!(refused.answer.unwrap_err().status, Some(403));
    sim.shutdown().await;
}

#[tokio::test]
async fn many_machines_are_tagged_500_a_call() {
    let (sim, ids) = simulator(501, &["Machine.ReadWrite.All"]).await;
    let api = api_on(&sim);
    let results = api.tag_machines(&ids, "batch-7", TagChange::Add).await;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.answer.is_ok()), "{results:?}");
    assert_eq!(sim.stats().count("POST /api/machines/AddOrRemoveTagForMultipleMachines", "200"), 2);
    let (_, tagged) = api
        .list_machines(&MachineQuery::all(Page::nth(0, 1000)), |body| {
            let page: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let value = page["value"].as_array().cloned().unwrap_or_default();
            Ok(value.iter().filter(|m| m["machineTags"].as_array().unwrap().iter().any(|t| t == "batch-7")).count())
        })
        .await;
    assert_eq!(tagged.unwrap(), 501);
    sim.shutdown().await;
}

#[tokio::test]
async fn machines_are_listed_by_when_they_were_last_seen() {
    let (sim, _) = simulator(50, &["Machine.Read.All"]).await;
    let api = api_on(&sim);
    let last_seen = |before: Option<SystemTime>| {
        let query = MachineQuery { seen_before: before, ..MachineQuery::all(Page::nth(0, 100)) };
        let api = &api;
        async move {
            let (_, seen) = api
                .list_machines(&query, |body| {
                    let page: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                    Ok(page["value"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m["lastSeen"].as_str().unwrap().to_string())
                        .collect::<Vec<_>>())
                })
                .await;
            seen.unwrap()
        }
    };
    let all = last_seen(None).await;
    assert_eq!(all.len(), 50);
    let mut times: Vec<SystemTime> = all.iter().map(|t| mde_offboard::defender::timestamp::parse(t).unwrap()).collect();
    times.sort();
    let middle = times[25];
    let older = last_seen(Some(middle)).await;
    assert_eq!(older.len(), times.iter().filter(|t| **t < middle).count());
    assert!(!older.is_empty() && older.len() < 50);
    sim.shutdown().await;
}
