//! Everything a run will need is checked before its first API call: the files it will write (results,
//! journal, summary), the temporary directory, and the roles of the whole command (`--wait`'s tracking
//! included). A run refused for any of them exits 1 having called nothing.

use std::path::Path;

use mde_sim::{Fleet, SimConfig, Simulator};

use crate::common::{Output, mde_env, write_file};

const OFFBOARD: &str = "POST /api/machines/{id}/offboard";

/// Ten machines of the simulator's fleet, one id a line.
fn ten_ids(fleet: &Fleet) -> String {
    let mut text = String::from("MachineId\n");
    for id in fleet.ids().take(10) {
        text += id;
        text += "\n";
    }
    text
}

async fn sim_with(roles: &[&str]) -> (Simulator, Fleet) {
    let fleet = Fleet::generate(50, 3);
    let config = SimConfig {
        fleet: fleet.clone(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..SimConfig::default()
    };
    (Simulator::start(config).await.unwrap(), fleet)
}

async fn run(sim: &Simulator, dir: &Path, fleet: &Fleet, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let input = write_file(dir, "fleet.csv", &ten_ids(fleet));
    let mut args = vec!["run", input.to_str().unwrap(), "--yes"];
    args.extend_from_slice(extra);
    mde_env(sim, dir, &args, "", env).await
}

/// Not one API call: no read, no offboard (a sign-in may have been made, to read the token's roles).
fn nothing_called(sim: &Simulator, out: &Output) {
    let stats = sim.stats();
    assert_eq!(stats.total(OFFBOARD), 0, "no offboard call\n{}", out.stderr);
    let api: u64 =
        stats.calls.iter().filter(|(route, _)| route.contains(" /api/")).map(|(_, s)| s.values().sum::<u64>()).sum();
    assert_eq!(api, 0, "no API call at all: {:?}\n{}", stats.calls, out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_summary_file_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, fleet) = sim_with(&["Machine.Offboard", "Machine.Read.All"]).await;
    let missing = dir.path().join("no-such-dir").join("s.json");
    let out = run(&sim, dir.path(), &fleet, &["--summary-json", missing.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("s.json") && out.stderr.contains("--summary-json"), "{}", out.stderr);
    nothing_called(&sim, &out);
    assert_eq!(sim.stats().tokens_issued, 0, "refused before signing in");
    assert!(!dir.path().join("fleet.results.csv").exists(), "no results file");

    // A directory where the file should be is refused the same way.
    let out = run(&sim, dir.path(), &fleet, &["--summary-json", dir.path().to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("is a directory"), "{}", out.stderr);
    nothing_called(&sim, &out);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_without_a_read_role_is_refused_before_any_offboard() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, fleet) = sim_with(&["Machine.Offboard"]).await;
    let out = run(&sim, dir.path(), &fleet, &["--no-preflight", "--wait"], &[]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("--wait")
            && out.stderr.contains("Machine.Read.All")
            && out.stderr.contains("Nothing was offboarded"),
        "{}",
        out.stderr
    );
    nothing_called(&sim, &out);

    // Without --wait the same run is allowed: the refusal was for the tracking.
    let out = run(&sim, dir.path(), &fleet, &["--no-preflight", "--overwrite"], &[]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(sim.stats().total(OFFBOARD), 10);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_journal_or_temporary_directory_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, fleet) = sim_with(&["Machine.Offboard", "Machine.Read.All"]).await;
    // Something that is not a file stands where the journal goes.
    let journal = dir.path().join("fleet.results.csv.journal");
    std::fs::create_dir(&journal).unwrap();
    let out = run(&sim, dir.path(), &fleet, &[], &[]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("fleet.results.csv.journal"), "{}", out.stderr);
    nothing_called(&sim, &out);
    std::fs::remove_dir(&journal).unwrap();

    // A temporary directory that does not exist: the input's copy, the pre-flight and tracking need it.
    let tmp = dir.path().join("no-such-tmp");
    let out = run(&sim, dir.path(), &fleet, &["--wait"], &[("TMPDIR", tmp.to_str().unwrap())]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("TMPDIR") && out.stderr.contains("no-such-tmp"), "{}", out.stderr);
    nothing_called(&sim, &out);
    sim.shutdown().await;
}
