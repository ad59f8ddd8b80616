//! Machine actions: created by offboard calls, their status computed from their age whenever asked.
//!
//! Nothing runs in the background: an action's status is a function of its creation instant, the lifecycle
//! settings, its outcome (drawn once from its id) and whether its machine was inactive. An action's id is
//! drawn from the seed, the machine and how many actions that machine had before, so runs with the same
//! calls give the same ids and outcomes whatever the interleaving.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::clock::{Clock, guid, mix, rfc3339, unit};
use super::config::Lifecycle;
use super::fleet::SimMachine;
use super::query::{Clause, Field, ListQuery, text_matches, time_matches};

/// How an action ends if nothing holds it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    TimeOut,
}

#[derive(Debug)]
pub(crate) struct Action {
    id: String,
    machine_id: String,
    computer_dns_name: String,
    requestor: String,
    comment: String,
    created: Instant,
    created_at: SystemTime,
    outcome: Outcome,
    /// The machine was inactive: the action never starts.
    stalled: bool,
    /// Cancelled while open (`POST /api/machineactions/{id}/cancel`).
    cancelled: Option<Cancellation>,
}

#[derive(Debug)]
struct Cancellation {
    at: Instant,
    at_time: SystemTime,
    requestor: String,
    comment: String,
}

/// Why an action cannot be cancelled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CancelError {
    NotFound,
    /// Already final: its status.
    Final(&'static str),
}

#[derive(Debug)]
pub(crate) struct Actions {
    list: Vec<Action>,
    by_id: HashMap<String, usize>,
    by_machine: HashMap<String, Vec<usize>>,
    seed: u64,
    lifecycle: Lifecycle,
    clock: Clock,
    /// The type offboard actions have: [`OFFBOARD`], or [`LEGACY_OFFBOARD`] (see
    /// [`super::SimConfig::legacy_action_type`]).
    kind: &'static str,
}

/// The type of an offboard action, as the service names it today.
pub(crate) const OFFBOARD: &str = "Offboard";
/// The type the 2019 documentation's example answer shows.
pub(crate) const LEGACY_OFFBOARD: &str = "OffboardMachine";

/// A MachineAction as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActionView<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    requestor: &'a str,
    requestor_comment: &'a str,
    status: &'static str,
    machine_id: &'a str,
    computer_dns_name: &'a str,
    creation_date_time_utc: String,
    last_update_date_time_utc: String,
    cancellation_requestor: Option<&'a str>,
    cancellation_comment: Option<&'a str>,
    cancellation_date_time_utc: Option<String>,
    error_h_result: i64,
    scope: Option<&'a str>,
    external_id: Option<&'a str>,
    request_source: &'static str,
    related_file_info: Option<&'a str>,
    commands: [(); 0],
    troubleshoot_info: Option<&'a str>,
}

impl Actions {
    pub(crate) fn new(seed: u64, lifecycle: Lifecycle, clock: Clock) -> Actions {
        Actions {
            list: Vec::new(),
            by_id: HashMap::new(),
            by_machine: HashMap::new(),
            seed,
            lifecycle,
            clock,
            kind: OFFBOARD,
        }
    }

    /// Offboard actions of the legacy type `OffboardMachine`, when `legacy`.
    pub(crate) fn legacy_type(mut self, legacy: bool) -> Actions {
        self.kind = if legacy { LEGACY_OFFBOARD } else { OFFBOARD };
        self
    }

    /// The machine's open (Pending or InProgress) action, if any.
    pub(crate) fn open_for(&self, machine_id: &str, now: Instant) -> Option<&Action> {
        let last = *self.by_machine.get(machine_id)?.last()?;
        let action = &self.list[last];
        matches!(self.status(action, now).0, "Pending" | "InProgress").then_some(action)
    }

    /// Records a new offboard action for `machine`.
    #[cfg(test)]
    fn create(&mut self, machine: &SimMachine, requestor: &str, comment: &str, now: Instant) -> &Action {
        let index = self.add(machine, requestor, comment, now);
        &self.list[index]
    }

    /// Records a new offboard action for `machine`; returns its index.
    fn add(&mut self, machine: &SimMachine, requestor: &str, comment: &str, now: Instant) -> usize {
        let index = self.list.len();
        let earlier = self.by_machine.entry(machine.id.clone()).or_default();
        let ordinal = (earlier.len() as u64).to_le_bytes();
        earlier.push(index);
        let parts: [&[u8]; 2] = [machine.id.as_bytes(), &ordinal];
        let id = guid(u128::from(mix(self.seed, &parts)) << 64 | u128::from(mix(!self.seed, &parts)));
        let draw = unit(mix(self.seed, &[id.as_bytes()]));
        let l = &self.lifecycle;
        let outcome = if draw < l.failed_share {
            Outcome::Failed
        } else if draw < l.failed_share + l.timeout_share {
            Outcome::TimeOut
        } else {
            Outcome::Succeeded
        };
        self.by_id.insert(id.clone(), index);
        self.list.push(Action {
            id,
            machine_id: machine.id.clone(),
            computer_dns_name: machine.computer_dns_name.clone(),
            requestor: requestor.to_string(),
            comment: comment.to_string(),
            created: now,
            created_at: self.clock.service_time(now),
            outcome,
            stalled: machine.health_status == "Inactive",
            cancelled: None,
        });
        index
    }

    /// Records a new offboard action and shows it as the API does.
    pub(crate) fn create_view(
        &mut self,
        machine: &SimMachine,
        requestor: &str,
        comment: &str,
        now: Instant,
    ) -> ActionView<'_> {
        let index = self.add(machine, requestor, comment, now);
        self.view(&self.list[index], now)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Action> {
        let index = match self.by_id.get(id) {
            Some(&i) => i,
            None => *self.by_id.get(&id.to_ascii_lowercase())?,
        };
        Some(&self.list[index])
    }

    /// Cancels an open action at `now`; its index.
    pub(crate) fn cancel(
        &mut self,
        id: &str,
        requestor: &str,
        comment: &str,
        now: Instant,
    ) -> Result<usize, CancelError> {
        let index = match self.by_id.get(id).or_else(|| self.by_id.get(&id.to_ascii_lowercase())) {
            Some(&i) => i,
            None => return Err(CancelError::NotFound),
        };
        match self.status(&self.list[index], now).0 {
            status @ ("Succeeded" | "Failed" | "TimeOut" | "Cancelled") => Err(CancelError::Final(status)),
            _ => {
                let at_time = self.clock.service_time(now);
                let cancellation =
                    Cancellation { at: now, at_time, requestor: requestor.to_string(), comment: comment.to_string() };
                self.list[index].cancelled = Some(cancellation);
                Ok(index)
            }
        }
    }

    /// The action at `index`, as the API shows it.
    pub(crate) fn view_at(&self, index: usize, now: Instant) -> ActionView<'_> {
        self.view(&self.list[index], now)
    }

    /// The action's status at `now`, and the service-time offset from creation of its last change.
    fn status(&self, a: &Action, now: Instant) -> (&'static str, Duration) {
        if let Some(c) = a.cancelled.as_ref().filter(|c| c.at <= now) {
            return ("Cancelled", self.clock.service_between(a.created, c.at));
        }
        let age = self.clock.service_between(a.created, now);
        let l = &self.lifecycle;
        let started = l.pending_for;
        let ended = l.pending_for + l.in_progress_for;
        match a.outcome {
            _ if a.stalled && age < l.action_timeout => ("Pending", Duration::ZERO),
            _ if a.stalled => ("TimeOut", l.action_timeout),
            _ if age < started => ("Pending", Duration::ZERO),
            Outcome::TimeOut if age < l.action_timeout.max(started) => ("InProgress", started),
            Outcome::TimeOut => ("TimeOut", l.action_timeout.max(started)),
            _ if age < ended => ("InProgress", started),
            Outcome::Succeeded => ("Succeeded", ended),
            Outcome::Failed => ("Failed", ended),
        }
    }

    pub(crate) fn view<'a>(&self, a: &'a Action, now: Instant) -> ActionView<'a> {
        let (status, changed) = self.status(a, now);
        ActionView {
            id: &a.id,
            kind: self.kind,
            title: "Offboard machine",
            requestor: &a.requestor,
            requestor_comment: &a.comment,
            status,
            machine_id: &a.machine_id,
            computer_dns_name: &a.computer_dns_name,
            creation_date_time_utc: rfc3339(a.created_at),
            last_update_date_time_utc: rfc3339(a.created_at + changed),
            cancellation_requestor: a.cancelled.as_ref().map(|c| c.requestor.as_str()),
            cancellation_comment: a.cancelled.as_ref().map(|c| c.comment.as_str()),
            cancellation_date_time_utc: a.cancelled.as_ref().map(|c| rfc3339(c.at_time)),
            error_h_result: 0,
            scope: None,
            external_id: None,
            request_source: "PublicApi",
            related_file_info: None,
            commands: [],
            troubleshoot_info: None,
        }
    }

    /// The actions a list request asks for, in creation order.
    pub(crate) fn list(&self, q: &ListQuery, now: Instant, default_top: usize) -> Vec<ActionView<'_>> {
        let by_machine =
            q.filter.required().into_iter().find(|c| c.field == Field::MachineId).map(|c| match &c.value {
                super::query::Value::Text(id) => {
                    self.by_machine.get(&id.to_ascii_lowercase()).map(Vec::as_slice).unwrap_or(&[])
                }
                _ => &[],
            });
        let candidates: Box<dyn Iterator<Item = &Action>> = match by_machine {
            Some(indexes) => Box::new(indexes.iter().map(|&i| &self.list[i])),
            None => Box::new(self.list.iter()),
        };
        candidates
            .filter(|a| q.filter.matches(&|c| self.matches(a, c, now)))
            .skip(q.skip)
            .take(q.top.unwrap_or(default_top))
            .map(|a| self.view(a, now))
            .collect()
    }

    fn matches(&self, a: &Action, c: &Clause, now: Instant) -> bool {
        match c.field {
            Field::Id => text_matches(&c.value, &a.id),
            Field::MachineId => text_matches(&c.value, &a.machine_id),
            Field::Type => text_matches(&c.value, self.kind),
            Field::Status => text_matches(&c.value, self.status(a, now).0),
            Field::Requestor => text_matches(&c.value, &a.requestor),
            Field::CreationDateTimeUtc => time_matches(c.op, &c.value, a.created_at),
            _ => false,
        }
    }

    /// When the machine's latest offboard action succeeded (service time), if it did.
    pub(crate) fn succeeded_at(&self, machine_id: &str, now: Instant) -> Option<SystemTime> {
        let last = *self.by_machine.get(machine_id)?.last()?;
        let action = &self.list[last];
        match self.status(action, now) {
            ("Succeeded", changed) => Some(action.created_at + changed),
            _ => None,
        }
    }

    /// How many actions are in each status now.
    pub(crate) fn count_by_status(&self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for a in &self.list {
            let status = self.status(a, now).0;
            match counts.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => counts.push((status, 1)),
            }
        }
        counts
    }
}

#[cfg(test)]
impl Action {
    fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;

    #[test]
    fn lifecycle_follows_age_and_outcome() {
        let lifecycle = Lifecycle {
            pending_for: Duration::from_secs(10),
            in_progress_for: Duration::from_secs(10),
            failed_share: 0.3,
            timeout_share: 0.3,
            action_timeout: Duration::from_secs(100),
        };
        let fleet = Fleet::generate(400, 2);
        let mut actions = Actions::new(5, lifecycle, Clock::new(1.0));
        let t0 = Instant::now();
        for m in fleet.machines() {
            actions.create(m, "app", "test", t0);
        }
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let statuses = |secs: u64| actions.count_by_status(at(secs));
        assert_eq!(statuses(5), vec![("Pending", 400)]);
        let inactive = fleet.machines().iter().filter(|m| m.health_status == "Inactive").count() as u64;
        let end: std::collections::HashMap<_, _> = statuses(30).into_iter().collect();
        assert_eq!(end["Pending"], inactive);
        assert!(end["Failed"] > 60 && end["Succeeded"] > 60 && end["InProgress"] > 60, "{end:?}");
        let late: std::collections::HashMap<_, _> = statuses(200).into_iter().collect();
        assert_eq!(late.get("Pending"), None);
        assert_eq!(late.get("InProgress"), None);
        assert_eq!(late["TimeOut"], end["InProgress"] + inactive);

        let first = &fleet.machines()[0];
        let a = actions.open_for(&first.id, at(5)).expect("open action");
        let v = actions.view(a, at(15));
        assert_eq!(v.machine_id, first.id);
        if first.health_status != "Inactive" {
            assert_eq!(v.status, "InProgress");
            assert_ne!(v.creation_date_time_utc, v.last_update_date_time_utc);
        }
        // Ids depend on the seed, the machine and its action count only.
        let mut again = Actions::new(5, actions.lifecycle.clone(), Clock::new(1.0));
        for m in fleet.machines().iter().rev() {
            again.create(m, "app", "test", t0);
        }
        assert_eq!(again.open_for(&first.id, at(5)).map(Action::id), Some(a.id()));
    }

    #[test]
    fn open_actions_cancel_and_final_ones_do_not() {
        let lifecycle = Lifecycle {
            pending_for: Duration::from_secs(10),
            in_progress_for: Duration::from_secs(10),
            failed_share: 0.0,
            timeout_share: 0.0,
            action_timeout: Duration::from_secs(100),
        };
        let fleet = Fleet::generate(50, 2);
        let machine = fleet.machines().iter().find(|m| m.health_status != "Inactive").unwrap();
        let mut actions = Actions::new(5, lifecycle, Clock::new(1.0));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let first = actions.create(machine, "app", "test", t0).id().to_string();
        let index = actions.cancel(&first.to_uppercase(), "app", "changed our mind", at(5)).unwrap();
        assert!(actions.open_for(&machine.id, at(6)).is_none(), "a cancelled action is not open");
        let v = actions.view_at(index, at(60));
        assert_eq!((v.status, v.cancellation_comment), ("Cancelled", Some("changed our mind")));
        assert_eq!(v.cancellation_date_time_utc.as_deref(), Some(v.last_update_date_time_utc.as_str()));
        assert_eq!(actions.cancel(&first, "app", "again", at(7)), Err(CancelError::Final("Cancelled")));
        // A new action for the machine runs to its end; then it is final.
        let second = actions.create(machine, "app", "test", at(8)).id().to_string();
        assert_eq!(actions.cancel(&second, "app", "late", at(60)), Err(CancelError::Final("Succeeded")));
        assert_eq!(actions.cancel("no-such-action", "app", "x", at(60)), Err(CancelError::NotFound));
    }
}
