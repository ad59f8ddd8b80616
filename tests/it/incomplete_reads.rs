//! Reads that do not see everything must not conclude anything from what they did not see: a service that
//! ignores `$skip`, an HTML 404 from a wrong API base, a tracking pass that fails or cannot reach the end of
//! its list. Each one is made by the simulator misbehaving, never faked in the client.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use mde_sim::{Faults, Fleet, Lifecycle, SimConfig, Simulator};

use crate::common::{Output, Results, command, id_list, mde_env, mde_in, write_file};

const MACHINES: &str = "GET /api/machines";
const ACTIONS: &str = "GET /api/machineactions";
const OFFBOARD: &str = "POST /api/machines/{id}/offboard";

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

/// A fleet of `n` Active Windows 11 workstations, and an input listing them all.
fn workstations(dir: &Path, n: usize) -> (Fleet, String) {
    let mut text = String::from("id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName\n");
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{:040x}", 0xdef000 + i);
        text += &format!("{id},w{i}.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations\n");
        ids.push(id);
    }
    let fleet = Fleet::from_csv(&write_file(dir, "fleet.csv", &text)).unwrap();
    let input = write_file(dir, "machines.csv", &id_list(&ids));
    (fleet, input.to_str().unwrap().to_string())
}

/// Offboards every machine of `input` (no pre-flight): the results file, every row `submitted`.
async fn offboard_all(sim: &Simulator, dir: &Path, input: &str) -> std::path::PathBuf {
    let out = mde_in(sim, dir, &["run", input, "--yes", "--no-preflight", "--rate", "1000/1s"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let path = dir.join("machines.results.csv");
    assert!(Results::read(&path).rows.iter().all(|r| r["outcome"] == "submitted"));
    path
}

/// Runs `mde-offboard ARGS` in `dir`, calling `during` with the simulator until it ends; kills it if it has
/// not ended after a minute (a tracking that never ends must fail its test, not hang the suite).
async fn run_while(sim: &Simulator, dir: &Path, args: &[&str], mut during: impl FnMut(&Simulator)) -> Output {
    let mut child: Child = command(sim, dir, args, &[]).spawn().expect("the binary starts");
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("still running after a minute\n{}", String::from_utf8_lossy(&out.stderr));
        }
        during(sim);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Offboard actions that stay Pending for an hour of service time.
fn pending_for_an_hour() -> Lifecycle {
    Lifecycle { pending_for: Duration::from_secs(3600), ..Lifecycle::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_that_cannot_read_the_actions_says_so_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, input) = workstations(dir.path(), 5);
    let sim =
        Simulator::start(SimConfig { fleet, lifecycle: pending_for_an_hour(), ..SimConfig::default() }).await.unwrap();
    let path = offboard_all(&sim, dir.path(), &input).await;
    let written = std::fs::read(&path).unwrap();
    sim.set_faults(Faults { seed: 1, error_503: 1.0, ..Faults::default() });

    let file = path.to_str().unwrap();
    let quick = ["--max-attempts", "2", "--retry-delay", "10ms"];
    for how in [&["--once"][..], &["--poll-interval", "100ms", "--wait-timeout", "5s"][..]] {
        let args: Vec<&str> = ["track", file].iter().chain(how).chain(&quick).copied().collect();
        let out = mde_in(&sim, dir.path(), &args, "").await;
        assert_eq!(out.code, 1, "{how:?}: nothing could be read\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("Could not track 5 actions") && out.stdout.contains("503"), "{}", out.stdout);
        assert!(!out.stdout.contains("still open") && !out.stdout.contains("Pending"), "{}", out.stdout);
        assert_eq!(std::fs::read(&path).unwrap(), written, "the file is unchanged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_last_pass_reports_the_state_of_the_last_read_and_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, input) = workstations(dir.path(), 3);
    let sim =
        Simulator::start(SimConfig { fleet, lifecycle: pending_for_an_hour(), ..SimConfig::default() }).await.unwrap();
    let path = offboard_all(&sim, dir.path(), &input).await;
    let args =
        ["track", path.to_str().unwrap(), "--poll-interval", "100ms", "--wait-timeout", "2s", "--max-attempts", "1"];
    // The first pass reads; every pass after it meets a 503.
    let mut faulty = false;
    let out = run_while(&sim, dir.path(), &args, |sim| {
        if !faulty && sim.stats().total(ACTIONS) >= 1 {
            sim.set_faults(Faults { seed: 1, error_503: 1.0, ..Faults::default() });
            faulty = true;
        }
    })
    .await;
    assert!(sim.stats().faults.error_503 > 0);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Pending 3) as last read"), "{}", out.stdout);
    assert!(out.stdout.contains("could not read every action") && out.stdout.contains("503"), "{}", out.stdout);
    assert!(!out.stdout.contains("when the wait ended"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_fails_mid_wait_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, input) = workstations(dir.path(), 3);
    // 100 times faster than real time: Pending for a second, InProgress for 100 ms, then Succeeded.
    let lifecycle = Lifecycle {
        pending_for: Duration::from_secs(100),
        in_progress_for: Duration::from_secs(10),
        failed_share: 0.0,
        timeout_share: 0.0,
        ..Lifecycle::default()
    };
    let sim =
        Simulator::start(SimConfig { fleet, lifecycle, time_scale: 100.0, ..SimConfig::default() }).await.unwrap();
    let path = offboard_all(&sim, dir.path(), &input).await;
    let args =
        ["track", path.to_str().unwrap(), "--poll-interval", "100ms", "--wait-timeout", "30s", "--max-attempts", "1"];
    // 503s from the first pass on, until two passes have met one.
    let mut step = 0;
    let out = run_while(&sim, dir.path(), &args, |sim| {
        let stats = sim.stats();
        if step == 0 && stats.total(ACTIONS) >= 1 {
            sim.set_faults(Faults { seed: 1, error_503: 1.0, ..Faults::default() });
            step = 1;
        } else if step == 1 && stats.faults.error_503 >= 2 {
            sim.set_faults(Faults::default());
            step = 2;
        }
    })
    .await;
    assert_eq!(step, 2, "the faults came and went\n{}", out.stderr);
    assert_eq!(out.code, 0, "a later pass read everything\n{}\n{}", out.stdout, out.stderr);
    assert!(Results::read(&path).rows.iter().all(|r| r["action_status"] == "Succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_stops_paging_when_the_service_ignores_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, input) = workstations(dir.path(), 25);
    let sim =
        Simulator::start(SimConfig { fleet, lifecycle: pending_for_an_hour(), ..SimConfig::default() }).await.unwrap();
    let path = offboard_all(&sim, dir.path(), &input).await;
    sim.set_faults(Faults { ignore_skip: true, ..Faults::default() });
    let before = sim.stats().total(ACTIONS);
    // Pages of 10 over 25 actions: without $skip every page is the first, full one.
    let out =
        run_while(&sim, dir.path(), &["track", path.to_str().unwrap(), "--once", "--page-size", "10"], |_| {}).await;
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ignored $skip") && out.stdout.contains("as last read"), "{}", out.stdout);
    assert_eq!(sim.stats().total(ACTIONS) - before, 2, "the second page repeats the first: the pass stops there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_ends_inside_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, input) = workstations(dir.path(), 3);
    let sim =
        Simulator::start(SimConfig { fleet, lifecycle: pending_for_an_hour(), ..SimConfig::default() }).await.unwrap();
    let path = offboard_all(&sim, dir.path(), &input).await;
    // Every answer now takes a minute: the first pass cannot end within the wait of half a second.
    sim.set_faults(Faults { latency: Duration::from_secs(60), ..Faults::default() });
    let args = ["track", path.to_str().unwrap(), "--poll-interval", "100ms", "--wait-timeout", "500ms"];
    let out = run_while(&sim, dir.path(), &args, |_| {}).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("the wait ended before a pass could read every action"), "{}", out.stdout);
    assert!(!out.stdout.contains("still open"), "{}", out.stdout);
}
