//! The simulated devices: generated from a seed or read from a CSV file, indexed by id and by name.
//!
//! Invariants: ids are 40 lowercase hex characters and unique; the list keeps its order (the paging order
//! of `GET /api/machines`); a computer name may belong to several machines (reimaged devices), as in the
//! real inventory.
//!
//! Generated fleets stand for the machines a decommissioning list names: by default none has reported in
//! the last two days (the API's `lastSeen` is the last full report, about daily; an `Active` machine has
//! reported within 7 days, here 2.5 to 6.5 days ago, as a machine switched off last week). A share of live
//! machines, reported within the last day, is [`Fleet::generate_live`]'s: a whole tenant looks that way.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::clock::{guid, mix, parse_rfc3339, rfc3339};
use crate::error::Error;

/// The health states of the Machine entity (Microsoft's documentation).
pub const HEALTH_STATUSES: [&str; 6] =
    ["Active", "Inactive", "ImpairedCommunication", "NoSensorData", "NoSensorDataImpairedCommunication", "Unknown"];

/// One device as `GET /api/machines` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimMachine {
    /// 40 lowercase hex characters.
    pub id: String,
    pub computer_dns_name: String,
    pub first_seen: String,
    /// RFC 3339.
    pub last_seen: String,
    pub os_platform: String,
    pub os_processor: String,
    pub version: Option<String>,
    pub last_ip_address: String,
    pub last_external_ip_address: String,
    pub agent_version: String,
    pub health_status: String,
    pub onboarding_status: String,
    pub device_value: String,
    pub rbac_group_id: u32,
    pub rbac_group_name: String,
    pub risk_score: String,
    pub exposure_level: String,
    pub is_aad_joined: bool,
    pub aad_device_id: Option<String>,
    pub machine_tags: Vec<String>,
}

/// The device groups of generated fleets, with their ids.
const GROUPS: [(&str, u32); 5] =
    [("Workstations", 101), ("Servers", 102), ("Tier0 Servers", 103), ("Kiosks", 104), ("Lab", 105)];

/// Generated platforms with their weights (per thousand): mostly supported Windows, a few Linux and macOS, and
/// a few platforms the service refuses to offboard.
const PLATFORMS: [(&str, u32); 10] = [
    ("Windows10", 380),
    ("Windows11", 300),
    ("WindowsServer2019", 110),
    ("WindowsServer2022", 100),
    ("WindowsServer2016", 25),
    ("Linux", 35),
    ("macOS", 25),
    ("Windows7", 10),
    ("WindowsServer2008R2", 10),
    ("WindowsServer2012R2", 5),
];

/// Generated health states with their weights (per thousand).
const HEALTH: [(&str, u32); 6] = [
    ("Active", 850),
    ("Inactive", 80),
    ("ImpairedCommunication", 30),
    ("NoSensorData", 20),
    ("NoSensorDataImpairedCommunication", 10),
    ("Unknown", 10),
];

const TAGS: [&[&str]; 6] = [&[], &[], &["Finance"], &["VIP", "Finance"], &["Contoso-HQ"], &["Decommission"]];

/// The simulated inventory.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    machines: Vec<SimMachine>,
    by_id: HashMap<String, usize>,
    by_name: HashMap<String, Vec<usize>>,
}

impl Fleet {
    /// `n` machines, the same for the same `seed`, except that times are relative to now (to the hour); none
    /// reported in the last two days (see the module's comment).
    pub fn generate(n: usize, seed: u64) -> Fleet {
        Fleet::generate_live(n, seed, 0.0)
    }

    /// As [`Fleet::generate`], with `live_share` of the `Active` machines live (reported within the last day),
    /// and the new record of every reimaged device live when the share is above 0: a tenant's inventory
    /// rather than a decommissioning list. The same seed gives the same machines whatever the share; only
    /// their `lastSeen` differs.
    pub fn generate_live(n: usize, seed: u64, live_share: f64) -> Fleet {
        let mut rng = fastrand::Rng::with_seed(seed);
        let now = SystemTime::now();
        let hour = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() / 3600 * 3600;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(hour);
        let mut machines: Vec<SimMachine> = Vec::with_capacity(n);
        let mut counters = [0u32; 4];
        for _ in 0..n {
            let id: String = (0..40).map(|_| char::from_digit(rng.u32(..16), 16).expect("hex digit")).collect();
            // About one machine in sixty is a reimaged device: a new id under an older machine's name and
            // platform; the older record is the one left behind, inactive.
            let reimage_of = (machines.len() > 10 && rng.u32(..60) == 0).then(|| rng.usize(..machines.len()));
            let os = match reimage_of {
                Some(i) => {
                    PLATFORMS.iter().map(|(p, _)| *p).find(|p| *p == machines[i].os_platform).unwrap_or("Windows10")
                }
                None => pick(&mut rng, &PLATFORMS),
            };
            let mut health = pick(&mut rng, &HEALTH).to_string();
            let server = match reimage_of {
                Some(i) => machines[i].computer_dns_name.starts_with("srv-"),
                None => os.starts_with("WindowsServer") || (os == "Linux" && rng.bool()),
            };
            let (prefix, kind) = match os {
                _ if server => ("srv", 1),
                "Linux" => ("lnx", 2),
                "macOS" => ("mac", 3),
                _ => ("ws", 0),
            };
            let computer_dns_name = match reimage_of {
                Some(i) => {
                    machines[i].health_status = "Inactive".into();
                    machines[i].last_seen = rfc3339(now - Duration::from_secs(86_400 * rng.u64(8..60)));
                    machines[i].computer_dns_name.clone()
                }
                None => {
                    counters[kind] += 1;
                    format!("{prefix}-{:04}.contoso.local", counters[kind])
                }
            };
            let group = match kind {
                1 if rng.u32(..10) == 0 => GROUPS[2],
                1 => GROUPS[1],
                0 if rng.u32(..25) == 0 => GROUPS[3],
                2 if rng.bool() => GROUPS[4],
                _ => GROUPS[0],
            };
            let group = match reimage_of {
                Some(i) => GROUPS.into_iter().find(|(name, _)| *name == machines[i].rbac_group_name).unwrap_or(group),
                None => group,
            };
            if reimage_of.is_some() {
                health = "Active".into();
            }
            // Drawn the same whatever the share, so that the rest of the fleet stays the same.
            let live = live_share > 0.0
                && (reimage_of.is_some() || super::clock::unit(mix(seed, &[id.as_bytes()])) < live_share);
            let seen_ago = match health.as_str() {
                "Inactive" => 86_400 * rng.u64(8..150),
                "Active" if live => rng.u64(60..86_400),
                // 2.5 to 6.5 days ago.
                "Active" => 216_000 + rng.u64(60..86_400) * 4,
                // 2.5 to 5.5 days ago.
                _ => 216_000 + rng.u64(3600..86_400 * 6) / 2,
            };
            let last_seen = now - Duration::from_secs(seen_ago);
            let first_seen = last_seen - Duration::from_secs(86_400 * rng.u64(30..900));
            let tags = TAGS[rng.usize(..TAGS.len())].iter().map(|t| t.to_string()).collect();
            let aad = kind == 0 && rng.u32(..10) > 0;
            machines.push(SimMachine {
                aad_device_id: aad.then(|| guid(rng.u128(..))),
                is_aad_joined: aad,
                machine_tags: tags,
                ..SimMachine::new(
                    id,
                    computer_dns_name,
                    os.into(),
                    health,
                    rfc3339(last_seen),
                    group.0.into(),
                    group.1,
                    rfc3339(first_seen),
                )
            });
        }
        Fleet::from_machines(machines).expect("generated ids are unique")
    }

    /// Reads a CSV file with the header `id,computerDnsName,osPlatform,healthStatus,lastSeen,rbacGroupName`
    /// (any column order; other columns are ignored), and optionally `aadDeviceId` (a machine joined to Entra
    /// ID: its device id) and `version` (the OS version, e.g. `13.6` for macOS or `1607` for Windows 10: see
    /// [`crate::SimConfig::minimum_versions`]).
    pub fn from_csv(path: &Path) -> Result<Fleet, Error> {
        let fail = |message: String| Error::Input { path: path.to_owned(), message };
        let mut reader = csv::Reader::from_path(path).map_err(|e| fail(format!("cannot read the fleet file: {e}")))?;
        let headers = reader.headers().map_err(|e| fail(format!("cannot read the header line: {e}")))?.clone();
        let wanted = ["id", "computerDnsName", "osPlatform", "healthStatus", "lastSeen", "rbacGroupName"];
        let mut column = [0usize; 6];
        for (slot, name) in column.iter_mut().zip(wanted) {
            *slot = headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
                fail(format!(
                    "line 1: the header has no `{name}` column; a fleet file's header is {}",
                    wanted.join(",")
                ))
            })?;
        }
        let aad_column = headers.iter().position(|h| h.trim() == "aadDeviceId");
        let version_column = headers.iter().position(|h| h.trim() == "version");
        let mut groups: HashMap<String, u32> = HashMap::new();
        let mut machines = Vec::new();
        let mut seen: HashMap<String, u64> = HashMap::new();
        for record in reader.records() {
            let record = record.map_err(|e| fail(format!("not valid CSV: {e}")))?;
            let line = record.position().map_or(0, |p| p.line());
            let at = |message: String| fail(format!("line {line}: {message}"));
            let field = |i: usize| record.get(column[i]).unwrap_or("").trim();
            let id = field(0).to_ascii_lowercase();
            if id.len() != 40 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(at(format!("machine id `{}` is not 40 hex characters", field(0))));
            }
            if let Some(first) = seen.insert(id.clone(), line) {
                return Err(at(format!("machine id {id} is already on line {first}")));
            }
            let name = field(1);
            if name.is_empty() {
                return Err(at("computerDnsName is empty".into()));
            }
            let os = field(2);
            if os.is_empty() {
                return Err(at("osPlatform is empty".into()));
            }
            let health = field(3);
            if !HEALTH_STATUSES.contains(&health) {
                return Err(at(format!("healthStatus `{health}` is not one of {}", HEALTH_STATUSES.join(", "))));
            }
            let last_seen = parse_rfc3339(field(4)).ok_or_else(|| {
                at(format!("lastSeen `{}` is not an RFC 3339 time such as 2024-05-01T12:00:00Z", field(4)))
            })?;
            let group = field(5).to_string();
            let next_id = 101 + groups.len() as u32;
            let group_id = *groups.entry(group.clone()).or_insert(next_id);
            let h = mix(0, &[id.as_bytes()]);
            let first_seen = last_seen - Duration::from_secs(86_400 * (30 + h % 870));
            let mut machine = SimMachine::new(
                id,
                name.into(),
                os.into(),
                health.into(),
                rfc3339(last_seen),
                group,
                group_id,
                rfc3339(first_seen),
            );
            let aad = aad_column.and_then(|c| record.get(c)).map(str::trim).filter(|a| !a.is_empty());
            machine.aad_device_id = aad.map(str::to_owned);
            machine.is_aad_joined = aad.is_some();
            if let Some(version) = version_column.and_then(|i| record.get(i)).map(str::trim) {
                machine.version = Some(version.to_string()).filter(|v| !v.is_empty());
            }
            machines.push(machine);
        }
        Fleet::from_machines(machines).map_err(fail)
    }

    /// Builds the indexes; fails on a duplicate id.
    pub(crate) fn from_machines(machines: Vec<SimMachine>) -> Result<Fleet, String> {
        let mut by_id = HashMap::with_capacity(machines.len());
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::with_capacity(machines.len());
        for (i, m) in machines.iter().enumerate() {
            if by_id.insert(m.id.clone(), i).is_some() {
                return Err(format!("machine id {} appears twice", m.id));
            }
            by_name.entry(m.computer_dns_name.to_ascii_lowercase()).or_default().push(i);
        }
        Ok(Fleet { machines, by_id, by_name })
    }

    pub fn len(&self) -> usize {
        self.machines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Machine ids in paging order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.machines.iter().map(|m| m.id.as_str())
    }

    /// All machines in paging order.
    pub fn machines(&self) -> &[SimMachine] {
        &self.machines
    }

    /// A machine by id, case-insensitively.
    pub fn get(&self, id: &str) -> Option<&SimMachine> {
        self.index_of(id).map(|i| &self.machines[i])
    }

    /// The machines with this computer name, case-insensitively, in paging order.
    pub fn by_name(&self, name: &str) -> impl Iterator<Item = &SimMachine> {
        let found = self.by_name.get(&name.to_ascii_lowercase()).map(Vec::as_slice).unwrap_or(&[]);
        found.iter().map(|&i| &self.machines[i])
    }

    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        match self.by_id.get(id) {
            Some(&i) => Some(i),
            None if id.bytes().any(|c| c.is_ascii_uppercase()) => self.by_id.get(&id.to_ascii_lowercase()).copied(),
            None => None,
        }
    }
}

impl SimMachine {
    /// A machine with the given facts; the rest is derived from the id so that it is stable.
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: String,
        computer_dns_name: String,
        os_platform: String,
        health_status: String,
        last_seen: String,
        rbac_group_name: String,
        rbac_group_id: u32,
        first_seen: String,
    ) -> SimMachine {
        let h = mix(1, &[id.as_bytes()]);
        let windows = os_platform.starts_with("Windows");
        let risk = ["None", "Low", "Medium", "High"][(h % 4) as usize];
        SimMachine {
            first_seen,
            last_seen,
            os_processor: "x64".into(),
            // Versions the service offboards (see `DEFAULT_MINIMUM_VERSIONS`): older ones come from a fleet file.
            version: match os_platform.as_str() {
                _ if windows => Some(["1809", "21H2", "22H2", "23H2"][(h >> 8) as usize % 4].to_string()),
                "macOS" => Some(["14.7", "15.3", "15.5", "26.1"][(h >> 8) as usize % 4].to_string()),
                _ => None,
            },
            last_ip_address: format!("10.{}.{}.{}", (h >> 16) % 32, (h >> 24) % 256, 1 + (h >> 32) % 254),
            last_external_ip_address: format!("203.0.113.{}", 1 + (h >> 40) % 254),
            agent_version: format!("10.8{}.{}", (h >> 48) % 10, 20_000 + (h >> 52) % 9_000),
            onboarding_status: "Onboarded".into(),
            device_value: if rbac_group_name.contains("Tier0") { "High" } else { "Normal" }.into(),
            risk_score: risk.into(),
            exposure_level: risk.into(),
            is_aad_joined: false,
            aad_device_id: None,
            machine_tags: Vec::new(),
            id,
            computer_dns_name,
            os_platform,
            health_status,
            rbac_group_id,
            rbac_group_name,
        }
    }
}

fn pick<'a>(rng: &mut fastrand::Rng, weighted: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    let mut r = rng.u32(..total);
    for (value, weight) in weighted {
        if r < *weight {
            return value;
        }
        r -= weight;
    }
    weighted[weighted.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_fleets_are_repeatable_and_varied() {
        let a = Fleet::generate(1000, 7);
        let b = Fleet::generate(1000, 7);
        assert_eq!(a.ids().collect::<Vec<_>>(), b.ids().collect::<Vec<_>>());
        assert_ne!(a.ids().next(), Fleet::generate(1000, 8).ids().next());
        assert_eq!(a.len(), 1000);
        assert!(a.ids().all(|id| id.len() == 40 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))));
        let count = |f: &dyn Fn(&SimMachine) -> bool| a.machines().iter().filter(|m| f(m)).count();
        assert!(count(&|m| m.health_status == "Inactive") > 20);
        assert!(count(&|m| m.rbac_group_name == "Tier0 Servers") > 3);
        assert!(count(&|m| m.os_platform == "Windows7" || m.os_platform == "WindowsServer2008R2") > 3);
        assert!(count(&|m| m.os_platform == "Linux") > 3);
        let duplicated = a.machines().iter().filter(|m| a.by_name(&m.computer_dns_name).count() > 1).count();
        assert!(duplicated >= 4, "{duplicated} machines share a name");
        let first = &a.machines()[0];
        assert_eq!(a.get(&first.id.to_uppercase()).map(|m| &m.id), Some(&first.id));
    }
}
