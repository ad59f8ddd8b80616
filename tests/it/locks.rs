//! One run at a time per tenant and app, whatever the tenant is called: its GUID in any letter case, or a
//! domain name of it (`contoso.onmicrosoft.com`), takes one lock, by the tenant id the token names.

use std::path::Path;

use mde_offboard::files::lock::RunLock;
use mde_sim::{self as sim, Fleet, SimConfig, SimStats, Simulator};

use crate::common::{mde_env, write_file};

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const FLEET: &str = "\
id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName
1111111111111111111111111111111111111111,ws-0001.contoso.local,Windows11,Active,2026-11-20T10:00:00Z,Workstations
2222222222222222222222222222222222222222,ws-0002.contoso.local,Windows10,Active,2026-11-20T10:00:00Z,Workstations
";
const DOMAIN: &str = "contoso.onmicrosoft.com";

async fn simulator(dir: &Path) -> Simulator {
    let fleet = Fleet::from_csv(&write_file(dir, "fleet.csv", FLEET)).unwrap();
    Simulator::start(SimConfig { fleet, tenant_domains: vec![DOMAIN.into()], ..SimConfig::default() }).await.unwrap()
}

/// Calls to the API (sign-in not counted).
fn api_calls(stats: &SimStats) -> u64 {
    stats.calls.iter().filter(|(route, _)| !route.contains("oauth2")).flat_map(|(_, by)| by.values()).sum()
}

/// The lock is held by another run: exit 1, the holder named, nothing called.
fn refused(what: &str, out: &crate::common::Output) {
    assert_eq!(out.code, 1, "{what}: exit {}\n{}", out.code, out.stderr);
    assert!(
        out.stderr.contains("another run for this tenant and app") && out.stderr.contains("run holder"),
        "{what}: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_guid_in_any_letter_case_takes_one_lock() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(dir.path()).await;
    let input = write_file(dir.path(), "machines.csv", &format!("MachineId\n{A}\n"));
    let (upper, lower) = (sim::DEMO_TENANT_ID.to_uppercase(), sim::DEMO_TENANT_ID.to_lowercase());
    for (held, given) in [(&upper, &lower), (&lower, &upper)] {
        let lock = RunLock::acquire(dir.path(), held, &sim::DEMO_CLIENT_ID.to_uppercase(), "holder").unwrap();
        let output = dir.path().join("results.csv");
        let args = ["run", input.to_str().unwrap(), "--dry-run", "--output", output.to_str().unwrap()];
        let out = mde_env(&sim, dir.path(), &args, "", &[("MDE_TENANT_ID", given)]).await;
        refused(&format!("held as {held}, run as {given}"), &out);
        drop(lock);
    }
    assert_eq!(api_calls(&sim.stats()), 0, "{:?}", sim.stats().calls);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_name_and_the_tenant_guid_take_one_lock() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(dir.path()).await;
    let input = write_file(dir.path(), "machines.csv", &format!("MachineId\n{A}\n{B}\n"));
    let output = dir.path().join("results.csv");
    let domain = [("MDE_TENANT_ID", "Contoso.onmicrosoft.com")];
    // Free: a run naming the tenant by its domain signs in and offboards.
    let args = ["run", input.to_str().unwrap(), "--yes", "--output", output.to_str().unwrap()];
    let out = mde_env(&sim, dir.path(), &args, "", &domain).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = api_calls(&sim.stats());

    // Held under the GUID: a run and a track naming the domain are refused, after sign-in and before any
    // API call.
    let lock = RunLock::acquire(dir.path(), sim::DEMO_TENANT_ID, sim::DEMO_CLIENT_ID, "holder").unwrap();
    let again = dir.path().join("again.csv");
    let args = ["run", input.to_str().unwrap(), "--yes", "--output", again.to_str().unwrap()];
    refused("run by domain", &mde_env(&sim, dir.path(), &args, "", &domain).await);
    let track = ["track", output.to_str().unwrap(), "--once"];
    refused("track by domain", &mde_env(&sim, dir.path(), &track, "", &domain).await);
    drop(lock);
    assert_eq!(api_calls(&sim.stats()), calls, "no API call while refused: {:?}", sim.stats().calls);

    // Free again: tracking by the domain goes on.
    let out = mde_env(&sim, dir.path(), &track, "", &domain).await;
    assert!([0, 3].contains(&out.code), "exit {}\n{}", out.code, out.stderr);
    sim.shutdown().await;
}
