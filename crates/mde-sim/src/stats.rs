//! What the simulator saw: calls by route and status, throttling, tokens, actions, calls per machine and the
//! busiest window of each quota. Served as JSON at `GET /sim/stats` and by [`super::Simulator::stats`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A snapshot of the simulator's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimStats {
    /// `"METHOD /route/{template}"` -> status code (or `"dropped"`) -> count. Token routes included,
    /// `/sim/stats` not.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every HTTP request received, whatever its route or method (`/sim/stats` excepted).
    #[serde(default)]
    pub requests: u64,
    /// 429 answers sent, from the quota and from faults.
    pub throttled: u64,
    /// 429 answers sent because a quota window was full.
    pub quota_rejections: u64,
    pub tokens_issued: u64,
    /// Polls of the token endpoint with a device code, and those sooner than the interval asked for.
    #[serde(default)]
    pub device_code_polls: u64,
    #[serde(default)]
    pub polls_too_fast: u64,
    /// Refresh tokens presented (redeemed or refused).
    #[serde(default)]
    pub refresh_grants: u64,
    pub actions_created: u64,
    /// Real milliseconds from the simulator's start to the first and to the last offboard action created
    /// (none yet: absent): how long a client's offboards took, as the service saw them.
    #[serde(default)]
    pub first_action_ms: Option<u64>,
    #[serde(default)]
    pub last_action_ms: Option<u64>,
    /// Offboard calls per machine id (lowercase, as called, known or not).
    pub offboard_calls: BTreeMap<String, OffboardCount>,
    /// Per quota, the most calls served in any one window of any budget.
    pub max_in_window: Vec<WindowStats>,
    /// How the quotas are counted (`api` or `app`), and the busiest windows of each budget (an API's name,
    /// or `app`).
    #[serde(default)]
    pub quota_scope: String,
    #[serde(default)]
    pub max_in_window_by_budget: BTreeMap<String, Vec<WindowStats>>,
    /// The background client's calls served, and refused because the quota was full.
    #[serde(default)]
    pub background_served: u64,
    #[serde(default)]
    pub background_refused: u64,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// TCP connections accepted, and the most open at once (this request's own included), all tenants
    /// together: a connection serves whichever tenant each request is for.
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub most_connections_open: u64,
    /// The most API reads (GETs: list pages, a machine, an action) being answered at once, their latency
    /// included, all tenants together.
    #[serde(default)]
    pub most_reads_at_once: u64,
    /// Offboard actions by current status.
    pub actions_by_status: BTreeMap<String, u64>,
    pub time_scale: f64,
}

/// Offboard calls for one machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffboardCount {
    /// Every call that reached the route.
    pub calls: u64,
    /// Calls that created an action (including those whose connection was then dropped).
    pub accepted: u64,
}

/// The busiest window of one quota.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStats {
    /// As configured, e.g. `"100/1m"` (service time).
    pub quota: String,
    pub limit: u32,
    /// The window in real time.
    pub period_ms: u64,
    /// The most calls served (not answered 429 by the quota) in any window; never above `limit`.
    pub max_seen: u32,
    /// The most calls that arrived in any window, 429s included: above `limit` means the client overshot.
    pub max_offered: u32,
}

/// Faults injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    pub error_500: u64,
    pub error_503: u64,
    pub dropped: u64,
    pub spurious_429: u64,
    pub transient_404: u64,
    /// Answers delayed by `Faults::slow_latency`.
    #[serde(default)]
    pub slow: u64,
}

/// The live counters behind [`SimStats`], under one short lock.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    calls: HashMap<(&'static str, u16), u64>,
    pub(crate) requests: u64,
    pub(crate) throttled: u64,
    pub(crate) quota_rejections: u64,
    pub(crate) tokens_issued: u64,
    pub(crate) device_code_polls: u64,
    pub(crate) polls_too_fast: u64,
    pub(crate) refresh_grants: u64,
    pub(crate) actions_created: u64,
    /// See [`SimStats::first_action_ms`].
    actions_span_ms: Option<(u64, u64)>,
    offboard: HashMap<String, OffboardCount>,
    pub(crate) faults: FaultCounts,
}

/// The status recorded for a connection closed without an answer.
pub(crate) const DROPPED: u16 = 0;

impl Counters {
    pub(crate) fn call(&mut self, route: &'static str, status: u16) {
        *self.calls.entry((route, status)).or_default() += 1;
        if status == 429 {
            self.throttled += 1;
        }
    }

    pub(crate) fn offboard(&mut self, machine_id: &str) -> &mut OffboardCount {
        if !self.offboard.contains_key(machine_id) {
            self.offboard.insert(machine_id.to_string(), OffboardCount::default());
        }
        self.offboard.get_mut(machine_id).expect("inserted above")
    }

    /// An offboard action was created `since_start` after the simulator started.
    pub(crate) fn action_created(&mut self, since_start: Duration) {
        self.actions_created += 1;
        let ms = since_start.as_millis() as u64;
        let (first, _) = self.actions_span_ms.unwrap_or((ms, ms));
        self.actions_span_ms = Some((first.min(ms), ms));
    }

    /// The counters; with `per_machine` false, without the offboard calls per machine (an entry per machine
    /// called, for a client that keeps its own memory small).
    pub(crate) fn snapshot(&self, per_machine: bool) -> SimStats {
        let mut calls: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (&(route, status), &n) in &self.calls {
            let status = if status == DROPPED { "dropped".to_string() } else { status.to_string() };
            calls.entry(route.to_string()).or_default().insert(status, n);
        }
        SimStats {
            calls,
            requests: self.requests,
            throttled: self.throttled,
            quota_rejections: self.quota_rejections,
            tokens_issued: self.tokens_issued,
            device_code_polls: self.device_code_polls,
            polls_too_fast: self.polls_too_fast,
            refresh_grants: self.refresh_grants,
            actions_created: self.actions_created,
            first_action_ms: self.actions_span_ms.map(|(first, _)| first),
            last_action_ms: self.actions_span_ms.map(|(_, last)| last),
            offboard_calls: match per_machine {
                true => self.offboard.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                false => BTreeMap::new(),
            },
            faults: self.faults,
            ..SimStats::default()
        }
    }
}

impl SimStats {
    /// Calls of one route with one status (`"201"`, `"dropped"`), zero if none.
    pub fn count(&self, route: &str, status: &str) -> u64 {
        self.calls.get(route).and_then(|m| m.get(status)).copied().unwrap_or(0)
    }

    /// All calls of one route, whatever their status.
    pub fn total(&self, route: &str) -> u64 {
        self.calls.get(route).map_or(0, |m| m.values().sum())
    }
}
