//! Promises found broken when the tool was tried as a careful operator and as an attacker would (one test
//! per hole, named after what it proves).

use mde_sim::{SimConfig, Simulator};

use crate::common::{mde, write_file};

/// Before: `run --dry-run --wait` was accepted, then followed the tenant's pending actions for up to an
/// hour in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_with_wait_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let input = write_file(dir.path(), "m.csv", "MachineId\n1111111111111111111111111111111111111111\n");
    let out = mde(&sim, &["run", input.to_str().unwrap(), "--dry-run", "--wait"], "").await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--dry-run") && out.stderr.contains("--wait"), "{}", out.stderr);
    assert_eq!(sim.stats().total("POST /{tenant}/oauth2/v2.0/token"), 0, "nothing was called");
}
