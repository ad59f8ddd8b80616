//! The dry run, the pre-flight of real runs, permissions and input by name, against the simulator.
//!
//! The fleets are larger than one page (25,000 machines: 3 pages of 10,000), so call counts show whether the
//! reads are batched: pages + a constant, whatever the size of the input.

use mde_sim::{Fleet, SimConfig, SimStats, Simulator};

use crate::common::{Results, id_list, mde, mde_env, write_file};

const MACHINES: &str = "GET /api/machines";
const MACHINE: &str = "GET /api/machines/{id}";
const ACTIONS: &str = "GET /api/machineactions";
const OFFBOARD: &str = "POST /api/machines/{id}/offboard";
const UNKNOWN: &str = "abcdefabcdefabcdefabcdefabcdefabcdefabcd";

fn fleet() -> Fleet {
    Fleet::generate(25_000, 7)
}

/// Calls per route made between two snapshots.
fn delta(before: &SimStats, after: &SimStats, route: &str) -> u64 {
    after.total(route) - before.total(route)
}

/// Every `step`th machine of the fleet, ending with the fleet's last (so that every page must be read).
fn spread(fleet: &Fleet, step: usize) -> Vec<String> {
    let ids: Vec<String> = fleet.ids().map(str::to_owned).collect();
    let mut picked: Vec<String> = ids.iter().step_by(step).cloned().collect();
    picked.push(ids.last().unwrap().clone());
    picked.dedup();
    picked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_costs_pages_not_rows_and_writes_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet();
    let sim = Simulator::start(SimConfig { fleet: fleet.clone(), ..SimConfig::default() }).await.unwrap();
    let mut ids = spread(&fleet, 97);
    // Two machines with an open offboard action before the dry run (lines 3 and 4): ones the app may offboard.
    let offboardable = |id: &str| {
        let m = fleet.get(id).unwrap();
        m.os_platform.starts_with("Windows1") && m.rbac_group_name == "Workstations"
    };
    let mut chosen: Vec<String> = ids.iter().filter(|id| offboardable(id)).take(2).cloned().collect();
    ids.retain(|id| !chosen.contains(id));
    ids.splice(1..1, chosen.drain(..));
    let pending = [ids[1].as_str(), ids[2].as_str()];
    let pre = write_file(dir.path(), "pre.csv", &id_list(&pending));
    let out = mde(&sim, &["run", pre.to_str().unwrap(), "--yes", "--no-preflight"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let mut text = id_list(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    text += &format!("{UNKNOWN}\nnot-an-id\n{}\n", ids[0].to_uppercase());
    let input = write_file(dir.path(), "fleet.csv", &text);
    let before = sim.stats();
    // No comment is needed: nothing is offboarded.
    let out =
        mde_env(&sim, dir.path(), &["run", input.to_str().unwrap(), "--dry-run"], "", &[("MDE_COMMENT", "")]).await;
    let after = sim.stats();
    assert_eq!(out.code, 3, "not_found and invalid rows: exit 3\n{}\n{}", out.stdout, out.stderr);
    assert_eq!(delta(&before, &after, OFFBOARD), 0, "a dry run never offboards");
    assert_eq!(delta(&before, &after, MACHINES), 3, "25,000 machines: 3 pages");
    assert_eq!(delta(&before, &after, ACTIONS), 3, "one list per open status, and one of the succeeded offboards");
    assert_eq!(delta(&before, &after, MACHINE), 0, "no per-id lookups");
    assert!(out.stdout.contains("API calls: 6"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("would submit {} offboard", ids.len() - 2)), "{}", out.stdout);

    let results = Results::read(&dir.path().join("fleet.dry-run.csv"));
    assert_eq!(results.rows.len(), ids.len() + 3);
    let count = |outcome: &str| results.rows.iter().filter(|r| r["outcome"] == outcome).count();
    assert_eq!(
        (count("would_submit"), count("already_pending"), count("not_found"), count("invalid_id"), count("duplicate")),
        (ids.len() - 2, 2, 1, 1, 1)
    );
    let first = results.line(2);
    let machine = fleet.get(&ids[0]).unwrap();
    assert_eq!(first["outcome"], "would_submit");
    assert_eq!(first["computer_dns_name"], machine.computer_dns_name);
    assert_eq!(first["os_platform"], machine.os_platform);
    assert_eq!(first["health_status"], machine.health_status);
    assert_eq!(first["last_seen"], machine.last_seen);
    let last = results.line(ids.len() as u64 + 1);
    assert_eq!((last["machine_id"].as_str(), last["outcome"].as_str()), (ids.last().unwrap().as_str(), "would_submit"));
    let pending_row = results.line(3);
    assert_eq!(pending_row["outcome"], "already_pending");
    assert!(!pending_row["action_id"].is_empty() && pending_row["action_status"] == "Pending", "{pending_row:?}");
    assert_eq!(results.line(ids.len() as u64 + 2)["outcome"], "not_found");

    // Ten times the input, the same calls.
    let many = spread(&fleet, 9);
    let input = write_file(dir.path(), "many.csv", &id_list(&many.iter().map(String::as_str).collect::<Vec<_>>()));
    let before = sim.stats();
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--dry-run"], "").await;
    let after = sim.stats();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!((delta(&before, &after, MACHINES), delta(&before, &after, ACTIONS)), (3, 3));
    assert_eq!(delta(&before, &after, OFFBOARD), 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_id_is_looked_up_by_id() {
    let fleet = fleet();
    let sim = Simulator::start(SimConfig { fleet: fleet.clone(), ..SimConfig::default() }).await.unwrap();
    let id = fleet.ids().nth(12_345).unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "one.csv", &id_list(&[&id]));
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--dry-run"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let stats = sim.stats();
    assert_eq!((stats.total(MACHINE), stats.total(MACHINES), stats.total(ACTIONS)), (1, 0, 1));
    let row = Results::read(&dir.path().join("one.dry-run.csv")).line(2).clone();
    assert_eq!(row["outcome"], "would_submit");
    assert_eq!(row["os_platform"], fleet.get(&id).unwrap().os_platform);

    // An unknown id: asked twice (the service has answered 404 for machines that exist), no action list.
    let input = write_file(dir.path(), "unknown.csv", &id_list(&[UNKNOWN]));
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--dry-run"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let stats = sim.stats();
    assert_eq!((stats.total(MACHINE), stats.total(MACHINES), stats.total(ACTIONS)), (3, 0, 1));
    assert_eq!(Results::read(&dir.path().join("unknown.dry-run.csv")).line(2)["outcome"], "not_found");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_skips_cost_no_offboard_call() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet();
    let sim = Simulator::start(SimConfig { fleet: fleet.clone(), ..SimConfig::default() }).await.unwrap();
    // Offboardable machines (a supported platform, a group the app may touch), from every page.
    let good: Vec<String> = fleet
        .machines()
        .iter()
        .filter(|m| m.os_platform.starts_with("Windows1") && m.rbac_group_name == "Workstations")
        .step_by(1500)
        .map(|m| m.id.clone())
        .collect();
    assert!(good.len() >= 5, "{}", good.len());
    let pending = [good[0].as_str(), good[1].as_str()];
    let pre = write_file(dir.path(), "pre.csv", &id_list(&pending));
    let out = mde(&sim, &["run", pre.to_str().unwrap(), "--yes", "--no-preflight"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let unknown2 = "0123456789012345678901234567890123456789";
    let mut ids: Vec<&str> = good.iter().map(String::as_str).collect();
    ids.extend([UNKNOWN, unknown2]);
    let input = write_file(dir.path(), "run.csv", &id_list(&ids));
    let before = sim.stats();
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--yes"], "").await;
    let after = sim.stats();
    assert_eq!(out.code, 3, "unknown machines: exit 3\n{}", out.stderr);
    assert!(out.stderr.contains("Pre-flight"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("About to offboard {} machine(s)", good.len() - 2)), "{}", out.stderr);
    assert_eq!((delta(&before, &after, MACHINES), delta(&before, &after, ACTIONS)), (3, 3));
    assert_eq!(delta(&before, &after, OFFBOARD), good.len() as u64 - 2, "only the machines to offboard are called");
    for id in [UNKNOWN, unknown2] {
        assert!(!after.offboard_calls.contains_key(id), "{id} was called");
    }
    for id in pending {
        assert_eq!(after.offboard_calls[id].calls, 1, "{id}: only the first run called it");
    }
    let results = Results::read(&dir.path().join("run.results.csv"));
    for (i, id) in ids.iter().enumerate() {
        let row = results.line(i as u64 + 2);
        assert_eq!(row["machine_id"], *id);
        let expected = match i {
            0 | 1 => "already_pending",
            _ if i >= good.len() => "not_found",
            _ => "submitted",
        };
        assert_eq!(row["outcome"], expected, "{row:?}");
        if expected != "submitted" {
            assert_eq!(row["attempts"], "0", "{row:?}");
        }
        if expected != "not_found" {
            let machine = fleet.get(id).unwrap();
            assert_eq!((&row["os_platform"], &row["last_seen"]), (&machine.os_platform, &machine.last_seen));
        }
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolve_and_ambiguous_names_are_never_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet();
    let sim = Simulator::start(SimConfig { fleet: fleet.clone(), ..SimConfig::default() }).await.unwrap();
    let first_label = |name: &str| name.split('.').next().unwrap().to_string();
    let mut labels: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for m in fleet.machines() {
        *labels.entry(first_label(&m.computer_dns_name)).or_default() += 1;
    }
    let label_count = |label: &str| labels[label];
    let shared = fleet.machines().iter().find(|m| fleet.by_name(&m.computer_dns_name).count() >= 2).unwrap();
    let shared_ids: Vec<String> = fleet.by_name(&shared.computer_dns_name).map(|m| m.id.clone()).collect();
    let mut unique = fleet.machines().iter().filter(|m| {
        m.os_platform.starts_with("Windows1")
            && m.rbac_group_name == "Workstations"
            && label_count(&first_label(&m.computer_dns_name)) == 1
    });
    let (full, short) = (unique.next().unwrap(), unique.nth(5000).unwrap());
    let short_name = first_label(&short.computer_dns_name).to_uppercase();

    // Only a name column: read by name without --by-name.
    let input = write_file(
        dir.path(),
        "names.csv",
        &format!(
            "Owner,DeviceName\n\
             a,{}\n\
             b,{short_name}\n\
             c,{}\n\
             d,nosuch-9999.contoso.local\n\
             e,\n\
             f,{}\n\
             g,{}\n",
            full.computer_dns_name,
            shared.computer_dns_name,
            full.computer_dns_name.to_uppercase(),
            short.computer_dns_name,
        ),
    );
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--dry-run"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let stats = sim.stats();
    assert_eq!((stats.total(MACHINES), stats.total(ACTIONS), stats.total(MACHINE)), (3, 3, 0));
    let results = Results::read(&dir.path().join("names.dry-run.csv"));
    let row = |line: u64| results.line(line).clone();
    assert_eq!((row(2)["outcome"].as_str(), row(2)["machine_id"].as_str()), ("would_submit", full.id.as_str()));
    assert_eq!(row(2)["computer_dns_name"], full.computer_dns_name);
    assert_eq!((row(3)["outcome"].as_str(), row(3)["machine_id"].as_str()), ("would_submit", short.id.as_str()));
    assert_eq!(row(3)["computer_dns_name"], short.computer_dns_name, "the inventory's full name");
    let ambiguous = row(4);
    assert_eq!((ambiguous["outcome"].as_str(), ambiguous["machine_id"].as_str()), ("ambiguous", ""));
    assert_eq!(ambiguous["computer_dns_name"], shared.computer_dns_name);
    for id in &shared_ids {
        assert!(ambiguous["error_message"].contains(id.as_str()), "{ambiguous:?}");
    }
    assert_eq!(row(5)["outcome"], "not_found");
    assert_eq!(row(6)["outcome"], "invalid_id");
    assert_eq!(row(7)["outcome"], "duplicate");
    assert_eq!(
        (row(8)["outcome"].as_str(), row(8)["machine_id"].as_str()),
        ("duplicate", short.id.as_str()),
        "a second name for the same machine"
    );

    // A real run by name offboards the resolved machines once and never guesses.
    let input = write_file(
        dir.path(),
        "real.csv",
        &format!(
            "computerDnsName,MachineId\n{},x\n{short_name},x\n{},x\n",
            full.computer_dns_name, shared.computer_dns_name
        ),
    );
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--yes", "--by-name"], "").await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let stats = sim.stats();
    assert_eq!(stats.offboard_calls.len(), 2, "{:?}", stats.offboard_calls);
    assert!(stats.offboard_calls.contains_key(&full.id) && stats.offboard_calls.contains_key(&short.id));
    let results = Results::read(&dir.path().join("real.results.csv"));
    assert_eq!(results.line(2)["outcome"], "submitted");
    assert_eq!(results.line(3)["outcome"], "submitted");
    assert_eq!(results.line(4)["outcome"], "ambiguous");

    // Names need the pre-flight.
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--yes", "--by-name", "--no-preflight"], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_roles_are_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate(50, 3);
    let id = fleet.machines().iter().find(|m| m.os_platform.starts_with("Windows1")).unwrap().id.clone();
    let input = write_file(dir.path(), "m.csv", &id_list(&[&id]));
    let path = input.to_str().unwrap();
    let no_api_call = |stats: &SimStats| {
        for route in [MACHINES, MACHINE, ACTIONS, OFFBOARD] {
            assert_eq!(stats.total(route), 0, "{route} was called");
        }
    };

    // Offboard only: no dry run, no pre-flight.
    let roles = vec!["Machine.Offboard".to_string()];
    let sim = Simulator::start(SimConfig { fleet: fleet.clone(), roles, ..SimConfig::default() }).await.unwrap();
    let out = mde(&sim, &["run", path, "--dry-run"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Machine.Read.All") && out.stderr.contains("dry run"), "{}", out.stderr);
    let out = mde(&sim, &["run", path, "--yes"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Machine.Read.All") && out.stderr.contains("--no-preflight"), "{}", out.stderr);
    no_api_call(&sim.stats());
    assert!(!dir.path().join("m.results.csv").exists() && !dir.path().join("m.dry-run.csv").exists());
    // Without the pre-flight the run goes on.
    let out = mde(&sim, &["run", path, "--yes", "--no-preflight"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sim.stats().total(OFFBOARD), 1);
    sim.shutdown().await;

    // Read only: a dry run, but no real run.
    let roles = vec!["Machine.Read.All".to_string()];
    let sim = Simulator::start(SimConfig { fleet, roles, ..SimConfig::default() }).await.unwrap();
    let out = mde(&sim, &["run", path, "--yes", "--overwrite"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Machine.Offboard"), "{}", out.stderr);
    no_api_call(&sim.stats());
    let out = mde(&sim, &["run", path, "--dry-run"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(sim.stats().total(OFFBOARD), 0);
    sim.shutdown().await;
}
