//! Reads that do not see everything must not conclude anything from what they did not see: a service that
//! ignores `$skip`, an HTML 404 from a wrong API base, a tracking pass that fails or cannot reach the end of
//! its list. Each one is made by the simulator misbehaving, never faked in the client.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use mde_offboard::sim::{Faults, Fleet, Lifecycle, SimConfig, Simulator};

use crate::common::{Output, Results, command, mde_env, mde_in, write_file};

const MACHINES: &str = "GET /api/machines";
const ACTIONS: &str = "GET /api/machineactions";
const OFFBOARD: &str = "POST /api/machines/{id}/offboard";

fn id_list(ids: &[String]) -> String {
    format!("MachineId\n{}\n", ids.join("\n"))
}

/// Machines from every page of a 25,000-machine fleet (3 pages of 10,000), the fleet's last among them.
fn across_pages(fleet: &Fleet) -> Vec<String> {
    let ids: Vec<String> = fleet.ids().map(str::to_owned).collect();
    vec![ids[5].clone(), ids[12_345].clone(), ids[ids.len() - 1].clone()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_ignores_skip_stops_the_preflight_before_any_offboard() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate(25_000, 7);
    let ids = across_pages(&fleet);
    let faults = Faults { ignore_skip: true, ..Faults::default() };
    let sim = Simulator::start(SimConfig { fleet, faults, ..SimConfig::default() }).await.unwrap();
    let input = write_file(dir.path(), "machines.csv", &id_list(&ids));
    let input = input.to_str().unwrap();

    let out = mde_in(&sim, dir.path(), &["run", input, "--yes"], "").await;
    assert_eq!(out.code, 1, "the inventory was not read to its end\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("ignored $skip") && out.stderr.contains("--no-preflight"), "{}", out.stderr);
    let stats = sim.stats();
    assert_eq!(stats.total(OFFBOARD), 0, "nothing is offboarded");
    assert_eq!(stats.total(MACHINES), 2, "the second page repeats the first: reading stops there");
    let results = dir.path().join("machines.results.csv");
    if results.exists() {
        let rows = Results::read(&results).rows;
        assert!(rows.iter().all(|r| r["outcome"] != "not_found"), "{rows:?}");
    }

    // The dry run likewise: no `not_found` for machines on pages it never saw.
    let out = mde_in(&sim, dir.path(), &["run", input, "--dry-run"], "").await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("ignored $skip"), "{}", out.stderr);
    assert!(!dir.path().join("machines.dry-run.csv").exists(), "no dry-run rows from an incomplete inventory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_404_from_a_wrong_api_base_is_not_an_empty_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::generate(50, 3);
    let ids: Vec<String> = fleet.ids().take(5).map(str::to_owned).collect();
    let faults = Faults { html_not_found: true, ..Faults::default() };
    let sim = Simulator::start(SimConfig { fleet, faults, ..SimConfig::default() }).await.unwrap();
    let wrong = format!("{}/defender", sim.base_url());
    let env = [("MDE_API_BASE", wrong.as_str())];
    let many = write_file(dir.path(), "many.csv", &id_list(&ids));
    let one = write_file(dir.path(), "one.csv", &id_list(&ids[..1]));

    // Paged reads, and a single id read by id: both stop, and say where to look.
    for input in [&many, &one] {
        let args = ["run", input.to_str().unwrap(), "--yes", "--retry-delay", "10ms"];
        let out = mde_env(&sim, dir.path(), &args, "", &env).await;
        assert_eq!(
            out.code,
            1,
            "{}: an HTML 404 is not an empty list\n{}\n{}",
            input.display(),
            out.stdout,
            out.stderr
        );
        assert!(out.stderr.contains("API base URL") && out.stderr.contains("--no-preflight"), "{}", out.stderr);
        let results = dir.path().join(format!("{}.results.csv", input.file_stem().unwrap().to_str().unwrap()));
        if results.exists() {
            let rows = Results::read(&results).rows;
            assert!(rows.iter().all(|r| r["outcome"] != "not_found"), "{rows:?}");
        }
    }
    assert_eq!(sim.stats().total(OFFBOARD), 0);

    // The service's own JSON 404 is still an empty list (the API answers empty lists that way).
    sim.set_faults(Faults::default());
    let args = ["run", many.to_str().unwrap(), "--dry-run", "--output", "json404.csv", "--retry-delay", "10ms"];
    let out = mde_env(&sim, dir.path(), &args, "", &env).await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let rows = Results::read(&dir.path().join("json404.csv")).rows;
    assert!(rows.iter().all(|r| r["outcome"] == "not_found"), "{rows:?}");
}
