//! Choosing the list safely: a finished offboard is never repeated (`already_offboarded`), live, tagged and
//! grouped machines are kept (`protected`), against the simulator.

use std::time::Duration;

use mde_sim::{Fleet, Lifecycle, SimConfig, Simulator};

use crate::common::{Results, id_list, mde, mde_in, wait_until, write_file};

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";

/// A simulator where every machine may be offboarded, at `time_scale`, with a share of offboards failing.
async fn simulator(fleet: Fleet, time_scale: f64) -> Simulator {
    Simulator::start(SimConfig {
        fleet,
        time_scale,
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        // Service time runs fast: tokens must outlive a run in real time.
        token_lifetime: Duration::from_secs(3600 * 24 * 365 * 100),
        lifecycle: Lifecycle { failed_share: 0.3, timeout_share: 0.0, ..Lifecycle::default() },
        // Tags too (the second run's machines are tagged after it).
        roles: ["Machine.Offboard", "Machine.Read.All", "Machine.ReadWrite.All"].map(String::from).to_vec(),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// Waits until the simulator has no open action.
async fn all_final(sim: &Simulator) {
    wait_until("every action final", || {
        let stats = sim.stats();
        ["Pending", "InProgress"].iter().all(|s| stats.actions_by_status.get(*s).copied().unwrap_or(0) == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_does_not_offboard_again_what_the_first_finished() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate(30, 11);
    let ids: Vec<String> =
        fleet.ids().filter(|id| fleet.get(id).unwrap().health_status != "Inactive").map(str::to_owned).collect();
    let sim = simulator(fleet, 10_000.0).await;
    let input = write_file(dir.path(), "m.csv", &id_list(&ids));
    let input = input.to_str().unwrap();

    let out = mde_in(&sim, dir.path(), &["run", input, "--yes", "--rate", "1000/1s", "-o", "first.csv"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    all_final(&sim).await;
    let first = Results::read(&dir.path().join("first.csv"));
    // Which offboards succeeded, as the service tells it.
    let (api, _) = crate::common::demo_api(
        &sim,
        mde_offboard::defender::api::RetryPolicy { max_attempts: 3, retry_delay: Duration::from_millis(10) },
    );
    let mut succeeded = std::collections::BTreeMap::new();
    for row in &first.rows {
        assert_eq!(row["outcome"], "submitted", "{row:?}");
        let query = mde_offboard::defender::api::ActionQuery::offboards(mde_offboard::defender::api::Page::nth(0, 100))
            .of_machine(&row["machine_id"]);
        let actions = api.list_actions(&query).await.1.unwrap();
        assert_eq!(actions.len(), 1);
        let status = actions[0].status.as_ref().unwrap().as_str().to_string();
        succeeded.insert(row["machine_id"].clone(), (status == "Succeeded", row["action_id"].clone()));
    }
    let done = succeeded.values().filter(|(s, _)| *s).count();
    assert!(done > 0 && done < ids.len(), "some offboards succeed and some fail: {done} of {}", ids.len());

    // One of the succeeded machines came back (re-onboarded): it reports again.
    let back = succeeded.iter().find(|(_, (s, _))| *s).map(|(id, _)| id.clone()).unwrap();
    assert!(sim.machine_reports(&back));

    // The dry run shows it. The machine that came back is live now: the guard keeps it.
    let out = mde_in(&sim, dir.path(), &["run", input, "--dry-run", "-o", "dry.csv"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let dry = Results::read(&dir.path().join("dry.csv"));
    for row in &dry.rows {
        let (ok, action) = &succeeded[&row["machine_id"]];
        if row["machine_id"] == back {
            assert_eq!(row["outcome"], "protected", "{row:?}");
        } else if *ok {
            assert_eq!(row["outcome"], "already_offboarded", "{row:?}");
            assert_eq!((&row["action_id"], row["action_status"].as_str()), (action, "Succeeded"));
            assert!(!row["updated_at"].is_empty() && row["error_message"].contains("has not reported since"));
        } else {
            assert_eq!(row["outcome"], "would_submit", "{row:?}");
        }
    }

    // The same list again (offboarding the one that came back on purpose): no new action for what the first
    // run finished, and exit 0: already_offboarded is fine.
    let before = sim.stats();
    let args = ["run", input, "--yes", "--allow-active", "--rate", "1000/1s", "-o", "second.csv"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let created = sim.stats().actions_created - before.actions_created;
    assert_eq!(created as usize, ids.len() - done + 1, "the failed ones and the one that came back");
    let second = Results::read(&dir.path().join("second.csv"));
    for row in &second.rows {
        let (ok, action) = &succeeded[&row["machine_id"]];
        if *ok && row["machine_id"] != back {
            assert_eq!((row["outcome"].as_str(), &row["action_id"]), ("already_offboarded", action), "{row:?}");
            assert!(row["error_message"].contains("no offboard call"), "{row:?}");
            assert_eq!(sim.stats().offboard_calls[&row["machine_id"]].calls, 1, "called once, by the first run");
        } else {
            assert_eq!(row["outcome"], "submitted", "{row:?}");
        }
    }
    let plan = format!("About to offboard {} machine(s)", ids.len() - done + 1);
    assert!(out.stderr.contains(&plan), "{}", out.stderr);
    assert!(out.stdout.contains("already_offboarded"), "{}", out.stdout);

    // Tagging the run's machines counts the already offboarded ones too: every row of the second run.
    let out = mde_in(&sim, dir.path(), &["tag", "second.csv", "--value", "retired"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let tagged = format!("Tagged {} machine(s) with `retired`", ids.len());
    assert!(out.stdout.contains(&tagged), "{}", out.stdout);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offboarded_machine_stops_reporting_and_turns_inactive_after_seven_days() {
    let fleet = Fleet::generate(20, 3);
    let machine = fleet.machines().iter().find(|m| m.health_status == "Active").unwrap().clone();
    // A week of service time is 0.6 seconds.
    let sim = Simulator::start(SimConfig {
        fleet,
        time_scale: 1_000_000.0,
        token_lifetime: Duration::from_secs(3600 * 24 * 365 * 1000),
        quotas: Vec::new(),
        forbidden_groups: Vec::new(),
        unsupported_platforms: Vec::new(),
        lifecycle: Lifecycle { failed_share: 0.0, timeout_share: 0.0, ..Lifecycle::default() },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let (api, _) = crate::common::demo_api(
        &sim,
        mde_offboard::defender::api::RetryPolicy { max_attempts: 3, retry_delay: Duration::from_millis(10) },
    );
    let read = || async {
        let reply = api.get_machine(&machine.id).await.answer.unwrap();
        let m: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        (m["healthStatus"].as_str().unwrap().to_string(), m["lastSeen"].as_str().unwrap().to_string())
    };
    let id = mde_offboard::domain::MachineId::parse(&machine.id).unwrap();
    assert!(api.offboard(&id, "test").await.answer.is_ok());
    let (health, seen) = read().await;
    assert_eq!((health.as_str(), seen.as_str()), ("Active", machine.last_seen.as_str()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (health, seen) = read().await;
        assert_eq!(seen, machine.last_seen, "lastSeen stays where it was");
        if health == "Inactive" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never turned Inactive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It comes back: it reports, and is Active again.
    assert!(sim.machine_reports(&machine.id));
    let (health, seen) = read().await;
    assert_eq!(health, "Active");
    assert!(seen > machine.last_seen, "{seen}");
    sim.shutdown().await;
}

/// A fleet where about half the Active machines are live (reported within the day), with tags and groups.
fn live_fleet() -> Fleet {
    Fleet::generate_live(200, 5, 0.5)
}

fn is_live(m: &mde_sim::SimMachine) -> bool {
    let seen = mde_offboard::defender::timestamp::parse(&m.last_seen).unwrap();
    std::time::SystemTime::now().duration_since(seen).unwrap() < Duration::from_secs(48 * 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_machines_are_protected_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = live_fleet();
    let ids: Vec<String> = fleet.ids().take(60).map(str::to_owned).collect();
    let live: Vec<&String> = ids.iter().filter(|id| is_live(fleet.get(id).unwrap())).collect();
    assert!(live.len() > 5 && live.len() < 50, "{} live", live.len());
    let sim = simulator(fleet.clone(), 1.0).await;
    let input = write_file(dir.path(), "m.csv", &id_list(&ids));
    let input = input.to_str().unwrap();

    // The dry run shows the protected rows and says how many.
    let out = mde_in(&sim, dir.path(), &["run", input, "--dry-run"], "").await;
    assert_eq!(out.code, 3, "protected rows are not fine\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&format!("Protected: {} machine(s)", live.len())), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("{} reported within 48h", live.len())), "{}", out.stdout);
    let dry = Results::read(&dir.path().join("m.dry-run.csv"));
    for row in &dry.rows {
        let machine = fleet.get(&row["machine_id"]).unwrap();
        if is_live(machine) {
            assert_eq!(row["outcome"], "protected", "{row:?}");
            let message = &row["error_message"];
            assert!(message.contains(&machine.last_seen) && message.contains("--allow-active"), "{message}");
        } else {
            assert_eq!(row["outcome"], "would_submit", "{row:?}");
        }
    }

    // A shorter --active-within protects fewer: one second, none.
    let out =
        mde_in(&sim, dir.path(), &["run", input, "--dry-run", "--active-within", "1s", "-o", "short.csv"], "").await;
    assert!(out.stdout.contains("Protected: none"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("would submit {} offboard", ids.len())), "{}", out.stdout);
    // So does run.active_within in the config file; the flag wins over it.
    let config = write_file(dir.path(), "c.toml", "[run]\nactive_within = \"1s\"\n");
    let config = config.to_str().unwrap();
    let out = mde_in(&sim, dir.path(), &["run", input, "--dry-run", "--config", config, "-o", "c1.csv"], "").await;
    assert!(out.stdout.contains("Protected: none"), "{}", out.stdout);
    let args = ["run", input, "--dry-run", "--config", config, "--active-within", "2d", "-o", "c2.csv"];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert!(out.stdout.contains(&format!("Protected: {} machine(s)", live.len())), "{}", out.stdout);

    // A real run keeps them: no call, and the plan counts them.
    let out = mde_in(&sim, dir.path(), &["run", input, "--yes", "--rate", "1000/1s"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("Protected: {} machine(s) will not be offboarded", live.len())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&format!("About to offboard {} machine(s)", ids.len() - live.len())), "{}", out.stderr);
    let stats = sim.stats();
    for id in &live {
        assert!(!stats.offboard_calls.contains_key(*id), "{id} was called");
    }
    assert_eq!(stats.total(OFFBOARD) as usize, ids.len() - live.len());
    let results = Results::read(&dir.path().join("m.results.csv"));
    let protected = results.rows.iter().filter(|r| r["outcome"] == "protected").count();
    assert_eq!(protected, live.len());

    // --allow-active offboards them (a migration does so on purpose); the others are pending by now.
    let out =
        mde_in(&sim, dir.path(), &["run", input, "--yes", "--allow-active", "-o", "all.csv", "--rate", "1000/1s"], "")
            .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(sim.stats().total(OFFBOARD) as usize, ids.len());
    let all = Results::read(&dir.path().join("all.csv"));
    assert_eq!(all.rows.iter().filter(|r| r["outcome"] == "submitted").count(), live.len());

    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_and_grouped_machines_are_protected_and_need_the_preflight() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate(200, 9);
    let ids: Vec<String> = fleet.ids().map(str::to_owned).collect();
    let vip = |m: &mde_sim::SimMachine| m.machine_tags.iter().any(|t| t == "VIP");
    let lab = |m: &mde_sim::SimMachine| m.rbac_group_name == "Lab";
    let kept = ids.iter().filter(|id| vip(fleet.get(id).unwrap()) || lab(fleet.get(id).unwrap())).count();
    assert!(kept > 5, "{kept}");
    let sim = simulator(fleet.clone(), 1.0).await;
    let input = write_file(dir.path(), "m.csv", &id_list(&ids));
    let input = input.to_str().unwrap();
    let config = write_file(dir.path(), "c.toml", "[run]\nprotect_groups = [\"lab\"]\n");

    let args = ["run", input, "--dry-run", "--protect-tag", "vip", "--config", config.to_str().unwrap()];
    let out = mde_in(&sim, dir.path(), &args, "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let dry = Results::read(&dir.path().join("m.dry-run.csv"));
    for row in &dry.rows {
        let machine = fleet.get(&row["machine_id"]).unwrap();
        let message = &row["error_message"];
        if vip(machine) {
            assert_eq!(row["outcome"], "protected");
            assert!(message.contains("tag `VIP`") && message.contains("--protect-tag"), "{message}");
        } else if lab(machine) {
            assert_eq!(row["outcome"], "protected");
            assert!(message.contains("device group `Lab`"), "{message}");
        } else {
            assert_ne!(row["outcome"], "protected", "{row:?}");
        }
    }
    assert!(out.stdout.contains(&format!("Protected: {kept} machine(s)")), "{}", out.stdout);
    // --protect-group alone, on the command line.
    let out = mde_in(&sim, dir.path(), &["run", input, "--dry-run", "--protect-group", "Lab", "-o", "g.csv"], "").await;
    let labs = ids.iter().filter(|id| lab(fleet.get(id).unwrap())).count();
    assert!(out.stdout.contains(&format!("Protected: {labs} machine(s)")), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("{labs} are in a protected device group")), "{}", out.stdout);

    // Without the pre-flight the guard sees nothing: refused, before any call.
    let before = sim.stats().requests;
    let out = mde(&sim, &["run", input, "--yes", "--no-preflight", "--protect-tag", "VIP"], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--no-preflight") && out.stderr.contains("tags VIP"), "{}", out.stderr);
    let args = ["run", input, "--yes", "--no-preflight", "--config", config.to_str().unwrap()];
    let out = mde(&sim, &args, "").await;
    assert_eq!(out.code, 2, "a configured group too\n{}", out.stderr);
    let args = ["run", input, "--yes", "--no-preflight", "--active-within", "3d"];
    let out = mde(&sim, &args, "").await;
    assert_eq!(out.code, 2, "--active-within asked for too\n{}", out.stderr);
    assert_eq!(sim.stats().requests, before, "no call");

    // And a run without the pre-flight says that the guard is off.
    let one = write_file(dir.path(), "one.csv", &id_list(&ids[..1]));
    let out = mde(&sim, &["run", one.to_str().unwrap(), "--yes", "--no-preflight", "--rate", "1000/1s"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("Guard: off"), "{}", out.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nightly_list_that_grows_is_a_new_run_each_night_and_resume_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate(12, 21);
    let ids: Vec<String> = fleet.ids().map(str::to_owned).collect();
    let sim = simulator(fleet, 1.0).await;
    let list = dir.path().join("retired.csv");
    std::fs::write(&list, id_list(&ids[..6])).unwrap();
    let list = list.to_str().unwrap();
    let night = ["run", list, "--yes", "--rate", "1000/1s", "--output", "results-{date}.csv"];
    let out = mde_in(&sim, dir.path(), &night, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string();
    let first = dir.path().join(format!("results-{today}.csv"));
    assert_eq!(Results::read(&first).rows.len(), 6);

    // The list grows: resuming last night's results is refused, saying what to do instead.
    std::fs::write(dir.path().join("retired.csv"), id_list(&ids)).unwrap();
    let resume = ["run", list, "--yes", "--resume", "--output", first.to_str().unwrap()];
    let out = mde_in(&sim, dir.path(), &resume, "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("a new run each night") && out.stderr.contains("{date}"), "{}", out.stderr);

    // The next night's run repeats the list harmlessly: the open actions cost no call.
    let before = sim.stats().total(OFFBOARD);
    let next = ["run", list, "--yes", "--rate", "1000/1s", "--output", "next-{run_id}.csv"];
    let out = mde_in(&sim, dir.path(), &next, "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(sim.stats().total(OFFBOARD) - before, 6, "only the new machines are called");
    let written: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("next-") && n.ends_with(".csv"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let second = Results::read(&dir.path().join(&written[0]));
    assert_eq!(second.rows.iter().filter(|r| r["outcome"] == "already_pending").count(), 6);
    sim.shutdown().await;
}
