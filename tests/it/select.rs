//! `mde-offboard select` against the simulator: the API's own `$filter`, every condition, duplicates of
//! reimaged devices, and an output `run` reads as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use mde_sim::{Fleet, SimConfig, SimMachine, Simulator};

use crate::common::{Results, mde_in};

const MACHINES: &str = "GET /api/machines";

async fn simulator(fleet: Fleet) -> Simulator {
    Simulator::start(SimConfig { fleet, ..SimConfig::default() }).await.unwrap()
}

/// The output of a select: its rows as maps, keyed by machine id.
fn read(path: &std::path::Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        [
            "MachineId",
            "computerDnsName",
            "osPlatform",
            "healthStatus",
            "lastSeen",
            "rbacGroupName",
            "machineTags",
            "reason"
        ]
    );
    reader
        .records()
        .map(|r| {
            let row: BTreeMap<String, String> =
                headers.iter().map(str::to_owned).zip(r.unwrap().iter().map(str::to_owned)).collect();
            (row["MachineId"].clone(), row)
        })
        .collect()
}

fn seen(m: &SimMachine) -> SystemTime {
    mde_offboard::defender::timestamp::parse(&m.last_seen).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_machines_cost_the_filtered_pages_and_run_reads_the_output_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    // 25,000 machines: 3 pages unfiltered.
    let fleet = Fleet::generate_live(25_000, 4, 0.8);
    let sim = simulator(fleet.clone()).await;
    let out = mde_in(&sim, dir.path(), &["select", "--inactive-for", "30d", "--output", "stale.csv"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let cutoff = SystemTime::now() - Duration::from_secs(30 * 86_400);
    let expected: BTreeSet<String> =
        fleet.machines().iter().filter(|m| seen(m) < cutoff).map(|m| m.id.clone()).collect();
    assert!(expected.len() > 500 && expected.len() < 10_000, "{}", expected.len());
    let chosen = read(&dir.path().join("stale.csv"));
    assert_eq!(chosen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let row = chosen.values().next().unwrap();
    let machine = fleet.get(&row["MachineId"]).unwrap();
    assert_eq!((&row["computerDnsName"], &row["lastSeen"]), (&machine.computer_dns_name, &machine.last_seen));
    assert_eq!(row["reason"], "not seen for 30d");
    assert_eq!(sim.stats().total(MACHINES), 1, "the API filtered: one page, not three");
    assert!(out.stdout.contains(&format!("Selected {} machine(s)", expected.len())), "{}", out.stdout);
    assert!(out.stdout.contains("lastSeen lt") && out.stdout.contains("1 inventory page(s)"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("{}  not seen for 30d", expected.len())), "{}", out.stdout);

    // The output is run's input as it is: a dry run would offboard every one of them.
    let out = mde_in(&sim, dir.path(), &["run", "stale.csv", "--dry-run"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&dir.path().join("stale.dry-run.csv"));
    assert_eq!(results.rows.len(), expected.len());
    assert!(results.rows.iter().all(|r| r["outcome"] == "would_submit"), "{}", out.stdout);

    // An existing output is not replaced without --overwrite, before any call.
    let calls = sim.stats().requests;
    let out = mde_in(&sim, dir.path(), &["select", "--inactive-for", "30d", "--output", "stale.csv"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("--overwrite"), "{}", out.stderr);
    assert_eq!(sim.stats().requests, calls);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_condition_narrows_the_choice() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate_live(3000, 8, 0.5);
    let sim = simulator(fleet.clone()).await;
    let has = |m: &SimMachine, tag: &str| m.machine_tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
    type Pick = Box<dyn Fn(&SimMachine) -> bool>;
    let cases: Vec<(Vec<&str>, Pick)> = vec![
        (vec!["--health", "Inactive"], Box::new(|m: &SimMachine| m.health_status == "Inactive")),
        (
            vec!["--os", "Windows7", "--os", "WindowsServer2008R2"],
            Box::new(|m: &SimMachine| m.os_platform == "Windows7" || m.os_platform == "WindowsServer2008R2"),
        ),
        (
            vec!["--group", "lab", "--health", "Active"],
            Box::new(|m: &SimMachine| m.rbac_group_name == "Lab" && m.health_status == "Active"),
        ),
        (vec!["--tag", "decommission"], Box::new(move |m: &SimMachine| has(m, "Decommission"))),
        (
            vec!["--name-matches", "SRV-00*", "--exclude-tag", "Finance"],
            Box::new(move |m: &SimMachine| m.computer_dns_name.starts_with("srv-00") && !has(m, "Finance")),
        ),
    ];
    for (i, (flags, pick)) in cases.iter().enumerate() {
        let name = format!("out{i}.csv");
        let mut args = vec!["select", "--output", &name];
        args.extend(flags);
        let out = mde_in(&sim, dir.path(), &args, "").await;
        assert_eq!(out.code, 0, "{flags:?}\n{}\n{}", out.stdout, out.stderr);
        let expected: BTreeSet<String> = fleet.machines().iter().filter(|m| pick(m)).map(|m| m.id.clone()).collect();
        assert!(!expected.is_empty(), "{flags:?}");
        assert_eq!(read(&dir.path().join(&name)).keys().cloned().collect::<BTreeSet<_>>(), expected, "{flags:?}");
    }
    // Without a condition it refuses, rather than list the whole inventory.
    let out = mde_in(&sim, dir.path(), &["select", "--output", "all.csv"], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!dir.path().join("all.csv").exists());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_reimaged_devices_keep_the_record_seen_last() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate_live(6000, 12, 0.3);
    let sim = simulator(fleet.clone()).await;
    let out = mde_in(&sim, dir.path(), &["select", "--duplicates", "--output", "dups.csv"], "").await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let mut by_name: BTreeMap<String, Vec<&SimMachine>> = BTreeMap::new();
    for m in fleet.machines() {
        by_name.entry(m.computer_dns_name.to_lowercase()).or_default().push(m);
    }
    let mut expected = BTreeMap::new();
    for records in by_name.values().filter(|r| r.len() > 1) {
        let kept = records.iter().max_by_key(|m| seen(m)).unwrap();
        for m in records.iter().filter(|m| m.id != kept.id) {
            expected.insert(m.id.clone(), kept.id.clone());
        }
    }
    assert!(expected.len() >= 20, "{} duplicates", expected.len());
    let chosen = read(&dir.path().join("dups.csv"));
    assert_eq!(chosen.keys().cloned().collect::<BTreeSet<_>>(), expected.keys().cloned().collect());
    for (id, row) in &chosen {
        assert!(row["reason"].starts_with(&format!("duplicate: {} (seen last", expected[id])), "{row:?}");
    }
    assert!(out.stdout.contains(&format!("{}  duplicate", expected.len())), "{}", out.stdout);
    assert!(out.stdout.contains("no $filter"), "{}", out.stdout);

    // With another condition: the duplicates that also meet it (the one kept need not).
    let out = mde_in(&sim, dir.path(), &["select", "--duplicates", "--health", "Inactive", "-o", "d2.csv"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let inactive: BTreeSet<String> =
        expected.keys().filter(|id| fleet.get(id).unwrap().health_status == "Inactive").cloned().collect();
    assert!(!inactive.is_empty());
    assert_eq!(read(&dir.path().join("d2.csv")).keys().cloned().collect::<BTreeSet<_>>(), inactive);

    // run --dry-run shows what would happen: the old records would be offboarded, but a record that reported
    // within two days (a device reimaged twice leaves a live record behind too) is protected.
    let out = mde_in(&sim, dir.path(), &["run", "dups.csv", "--dry-run"], "").await;
    let results = Results::read(&dir.path().join("dups.dry-run.csv"));
    assert_eq!(results.rows.len(), expected.len(), "{}", out.stdout);
    let live = |id: &str| {
        SystemTime::now().duration_since(seen(fleet.get(id).unwrap())).unwrap() < Duration::from_secs(48 * 3600)
    };
    for row in &results.rows {
        let outcome = if live(&row["machine_id"]) { "protected" } else { "would_submit" };
        assert_eq!(row["outcome"], outcome, "{row:?}");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_without_read_permission_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let sim =
        Simulator::start(SimConfig { roles: vec!["Machine.Offboard".into()], ..SimConfig::default() }).await.unwrap();
    let out = mde_in(&sim, dir.path(), &["select", "--inactive-for", "30d", "-o", "x.csv"], "").await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Machine.Read.All"), "{}", out.stderr);
    assert_eq!(sim.stats().total(MACHINES), 0);
    assert!(!dir.path().join("x.csv").exists());
    sim.shutdown().await;
}
