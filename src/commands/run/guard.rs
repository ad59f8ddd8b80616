//! The guard of live machines: which machines a real run keeps from offboarding, whatever the list says.
//!
//! A machine is `protected` when it reported within `run.active_within` (the API's `lastSeen` is the last
//! full report, about daily: a live machine is seldom more than a day behind), or carries one of
//! `run.protect_tags`, or sits in one of `run.protect_groups` (both compared ignoring case, as the portal
//! does). The facts come from the inventory the pre-flight reads anyway: the guard costs no call, and
//! without the pre-flight it sees nothing (a run refuses `--no-preflight` together with a protect setting,
//! and its plan says the guard is off).
//!
//! A `lastSeen` the guard cannot read does not protect: the inventory answered for the machine, and an
//! unreadable time says nothing about it being live.

use std::time::{Duration, SystemTime};

use crate::defender::timestamp;

pub use crate::settings::DEFAULT_ACTIVE_WITHIN;

/// What the guard protects. The default protects machines seen within [`DEFAULT_ACTIVE_WITHIN`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    /// Machines seen within this long before `now` are protected; `None`: `--allow-active`.
    pub active_within: Option<Duration>,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
    /// The time `lastSeen` is compared with (the run's start).
    pub now: SystemTime,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            active_within: Some(DEFAULT_ACTIVE_WITHIN),
            tags: Vec::new(),
            groups: Vec::new(),
            now: SystemTime::now(),
        }
    }
}

/// Why the guard keeps a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// It reported within `active_within`.
    Active,
    /// It carries a protected tag.
    Tag,
    /// It sits in a protected device group.
    Group,
}

impl Why {
    /// As a one-byte code, for the on-disk records of the pre-flight.
    pub fn code(self) -> u8 {
        match self {
            Why::Active => 1,
            Why::Tag => 2,
            Why::Group => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Why> {
        match code {
            1 => Some(Why::Active),
            2 => Some(Why::Tag),
            3 => Some(Why::Group),
            _ => None,
        }
    }
}

/// How many machines the guard kept, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub active: u64,
    pub tag: u64,
    pub group: u64,
}

impl Kept {
    pub fn add(&mut self, why: Why) {
        match why {
            Why::Active => self.active += 1,
            Why::Tag => self.tag += 1,
            Why::Group => self.group += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.active + self.tag + self.group
    }
}

impl Guard {
    /// Whether the guard protects anything beyond live machines (the settings `--no-preflight` refuses).
    pub fn protects_by_name(&self) -> bool {
        !self.tags.is_empty() || !self.groups.is_empty()
    }

    /// Why the guard keeps a machine with these facts, if it does: a protected tag first, then a protected
    /// group, then a recent report.
    pub fn judge<'a>(&self, last_seen: &str, group: &str, mut tags: impl Iterator<Item = &'a str>) -> Option<Why> {
        let named = |list: &[String], value: &str| list.iter().any(|p| p.trim().eq_ignore_ascii_case(value.trim()));
        if !self.tags.is_empty() && tags.any(|t| named(&self.tags, t)) {
            return Some(Why::Tag);
        }
        if !self.groups.is_empty() && named(&self.groups, group) {
            return Some(Why::Group);
        }
        let within = self.active_within?;
        let seen = timestamp::parse(last_seen)?;
        let ago = self.now.duration_since(seen).unwrap_or(Duration::ZERO);
        (ago < within).then_some(Why::Active)
    }

    /// The message of a `protected` row: why, and how to offboard it anyway.
    pub fn explain(&self, why: Why, last_seen: &str, group: &str, tags: &[String]) -> (String, String) {
        match why {
            Why::Active => {
                let within = self.active_within.unwrap_or_default();
                let ago = timestamp::parse(last_seen)
                    .map(|seen| self.now.duration_since(seen).unwrap_or(Duration::ZERO))
                    .map(|ago| humantime::format_duration(Duration::from_secs(ago.as_secs() / 60 * 60)).to_string())
                    .unwrap_or_else(|| "recently".into());
                (
                    format!(
                        "it reported {ago} ago (lastSeen {last_seen}), within {} (run.active_within)",
                        crate::ui::output::short_duration(within)
                    ),
                    "if it is really retired, pass --allow-active (or a shorter --active-within) to offboard it".into(),
                )
            }
            Why::Tag => {
                let tag = tags.iter().find(|t| self.tags.iter().any(|p| p.trim().eq_ignore_ascii_case(t.trim())));
                (
                    format!("it carries the protected tag `{}` (run.protect_tags)", tag.map_or("", |t| t.as_str())),
                    "remove the tag from the machine or from --protect-tag to offboard it".into(),
                )
            }
            Why::Group => (
                format!("it is in the protected device group `{group}` (run.protect_groups)"),
                "remove the group from --protect-group to offboard it".into(),
            ),
        }
    }

    /// What the guard protects, in a few words for the plan.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.active_within {
            Some(within) => parts.push(format!("machines seen within {}", crate::ui::output::short_duration(within))),
            None => parts.push("not live machines (--allow-active)".into()),
        }
        if !self.tags.is_empty() {
            parts.push(format!("tags {}", self.tags.join(", ")));
        }
        if !self.groups.is_empty() {
            parts.push(format!("device groups {}", self.groups.join(", ")));
        }
        parts.join("; ")
    }
}

/// One line for the plan: how many machines the guard kept, and why.
pub fn kept_line(kept: &Kept, guard: &Guard) -> String {
    let mut why = Vec::new();
    if kept.active > 0 {
        let within = crate::ui::output::short_duration(guard.active_within.unwrap_or_default());
        why.push(format!("{} reported within {within}", kept.active));
    }
    if kept.tag > 0 {
        why.push(format!("{} carry a protected tag", kept.tag));
    }
    if kept.group > 0 {
        why.push(format!("{} are in a protected device group", kept.group));
    }
    if why.is_empty() {
        format!("Protected: none (the guard protects {}).", guard.describe())
    } else {
        format!(
            "Protected: {} machine(s) will not be offboarded: {} (see the `protected` rows; --allow-active turns the \
             live-machine guard off).",
            kept.total(),
            why.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_tagged_and_grouped_machines_are_kept() {
        let now = timestamp::parse("2026-11-30T12:00:00Z").unwrap();
        let guard = Guard { now, ..Guard::default() };
        let none = std::iter::empty();
        assert_eq!(guard.judge("2026-11-29T12:00:00Z", "Workstations", none), Some(Why::Active));
        assert_eq!(guard.judge("2026-11-28T11:59:00Z", "Workstations", std::iter::empty()), None, "49 hours");
        assert_eq!(guard.judge("not a time", "Workstations", std::iter::empty()), None);
        let off = Guard { active_within: None, ..guard.clone() };
        assert_eq!(off.judge("2026-11-30T11:00:00Z", "Workstations", std::iter::empty()), None);

        let named = Guard { tags: vec!["VIP".into()], groups: vec!["Tier0 Servers".into()], ..off };
        assert!(named.protects_by_name());
        assert_eq!(named.judge("2020-01-01T00:00:00Z", "x", ["Finance", "vip"].into_iter()), Some(Why::Tag));
        assert_eq!(named.judge("2020-01-01T00:00:00Z", "tier0 servers", std::iter::empty()), Some(Why::Group));
        assert_eq!(named.judge("2020-01-01T00:00:00Z", "Servers", ["Finance"].into_iter()), None);
        let (why, how) = guard.explain(Why::Active, "2026-11-30T09:30:00Z", "", &[]);
        assert!(why.contains("2h 30m ago") && why.contains("48h"), "{why}");
        assert!(how.contains("--allow-active"), "{how}");
    }
}
