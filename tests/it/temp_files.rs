//! Temporary files never outlive the process: each is unlinked as soon as it is open, so whatever ends a run
//! (kill -9 included) the system reclaims them, and a scheduled job killed now and then fills nothing.

use std::path::Path;
use std::time::Duration;

use mde_sim::{Faults, SimConfig, Simulator};

use crate::common::{command, write_file};

/// Files the process `pid` has open under `dir` (from /proc: what the kernel says it holds).
#[cfg(target_os = "linux")]
fn open_under(pid: u32, dir: &Path) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .map(|target| target.display().to_string())
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_sigkill_leaves_the_temporary_directory_empty() {
    // Every API answer waits ten minutes: the run is surely inside its first call (the pre-flight's first
    // read, after the input's copy and its sorted keys are written) when it is killed.
    let faults = Faults { latency: Duration::from_secs(600), ..Faults::default() };
    let sim = Simulator::start(SimConfig { faults, ..SimConfig::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut list = String::with_capacity(42 * 100_001);
    list.push_str("MachineId\n");
    for n in 0..100_000u64 {
        list.push_str(&format!("{:040x}\n", u128::from(n) * 0x9e37_79b9_7f4a_7c15 + 1));
    }
    let input = write_file(dir.path(), "machines.csv", &list);
    let output = dir.path().join("results.csv");
    let args = ["run", input.to_str().unwrap(), "--yes", "--output", output.to_str().unwrap()];
    let tmp_env = tmp.to_str().unwrap();
    let mut child = command(&sim, dir.path(), &args, &[("TMPDIR", tmp_env), ("TMP", tmp_env), ("TEMP", tmp_env)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until an API call is in flight (received, not answered): the scan is done, its files written.
    let in_flight = || {
        let stats = sim.stats();
        stats.requests > stats.calls.values().flat_map(|by_status| by_status.values()).sum::<u64>()
    };
    while !in_flight() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first API call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = open_under(child.id(), &tmp);
    assert!(held.len() >= 3, "the run holds its temporary files (input copy, sorted keys): {held:?}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left in the temporary directory after kill -9: {left:?} (it held {held:?})");
    sim.shutdown().await;
}
