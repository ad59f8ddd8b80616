//! The platforms the offboard API accepts (its page as revised in 2026): Windows 10 1703+, Windows 11,
//! Windows Server 2012 R2 and later, macOS 14 and later, and Linux; older ones answer `OsPlatformNotSupported`.

use mde_sim::{Fleet, SimConfig, Simulator};

use crate::common::{Results, mde_in, write_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macos_14_and_linux_are_offboarded_and_older_systems_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let machines = [
        ("macOS", "15.3", "submitted"),
        ("macOS", "14.0", "submitted"),
        ("macOS", "13.6", "unsupported"),
        ("Linux", "", "submitted"),
        ("Windows10", "22H2", "submitted"),
        ("Windows10", "1607", "unsupported"),
        ("Windows11", "23H2", "submitted"),
        ("WindowsServer2012R2", "", "submitted"),
        ("WindowsServer2008R2", "", "unsupported"),
        ("Windows7", "", "unsupported"),
    ];
    let mut fleet = String::from("id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName,version\n");
    let mut input = String::from("MachineId\n");
    for (i, (platform, version, _)) in machines.iter().enumerate() {
        let id = format!("{:040x}", 0xfeed00 + i);
        fleet += &format!("{id},m{i}.contoso.local,{platform},Active,2026-11-20T10:00:00Z,Workstations,{version}\n");
        input += &format!("{id}\n");
    }
    let fleet = Fleet::from_csv(&write_file(dir.path(), "fleet.csv", &fleet)).unwrap();
    let sim = Simulator::start(SimConfig { fleet, quotas: Vec::new(), ..SimConfig::default() }).await.unwrap();
    let input = write_file(dir.path(), "m.csv", &input);
    let out = mde_in(&sim, dir.path(), &["run", input.to_str().unwrap(), "--yes", "--rate", "1000/1s"], "").await;
    assert_eq!(out.code, 3, "{}\n{}", out.stdout, out.stderr);
    let results = Results::read(&dir.path().join("m.results.csv"));
    for (i, (platform, version, outcome)) in machines.iter().enumerate() {
        let row = results.line(i as u64 + 2);
        assert_eq!(row["outcome"], *outcome, "{platform} {version}: {row:?}");
        if *outcome == "unsupported" {
            assert_eq!(row["error_code"], "OsPlatformNotSupported", "{row:?}");
        }
    }
    sim.shutdown().await;
}
