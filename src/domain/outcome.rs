//! What happened to one input row: the `outcome` column of a results file, and the messages of the rows whose
//! outcome the tool decides itself ([`message`]).

use serde::Serialize;

/// What happened to one input row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The offboard action was created (requested, not yet done: see `action_status`).
    Submitted,
    /// Dry run: the machine is in the inventory with no open offboard action; a real run would submit it.
    WouldSubmit,
    /// An open offboard action already exists for the machine.
    AlreadyPending,
    /// The machine's latest offboard action `Succeeded` and it has not reported since: no call.
    AlreadyOffboarded,
    /// The guard kept the machine: it reported recently (`run.active_within`), or carries a protected tag or
    /// sits in a protected device group. No call.
    Protected,
    NotFound,
    /// A computer name (input by name) that matches several machines: never guessed.
    Ambiguous,
    Forbidden,
    /// The service does not support offboarding this machine's OS or sensor version.
    Unsupported,
    InvalidId,
    Duplicate,
    /// Anything else: `error_code` and `error_message` say what the service or the transport did.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Submitted,
        Outcome::WouldSubmit,
        Outcome::AlreadyPending,
        Outcome::AlreadyOffboarded,
        Outcome::Protected,
        Outcome::NotFound,
        Outcome::Ambiguous,
        Outcome::Forbidden,
        Outcome::Unsupported,
        Outcome::InvalidId,
        Outcome::Duplicate,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Submitted => "submitted",
            Outcome::WouldSubmit => "would_submit",
            Outcome::AlreadyPending => "already_pending",
            Outcome::AlreadyOffboarded => "already_offboarded",
            Outcome::Protected => "protected",
            Outcome::NotFound => "not_found",
            Outcome::Ambiguous => "ambiguous",
            Outcome::Forbidden => "forbidden",
            Outcome::Unsupported => "unsupported",
            Outcome::InvalidId => "invalid_id",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome named `text` in a results file.
    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// Whether a row with this outcome is done with: everything but `failed` (which a resume retries).
    pub fn is_final(self) -> bool {
        self != Outcome::Failed
    }

    /// Whether a row with this outcome has an offboard action to follow (tracking updates its status).
    pub fn has_action(self) -> bool {
        matches!(self, Outcome::Submitted | Outcome::AlreadyPending)
    }

    /// Whether this outcome leaves the exit code at 0. A `protected` row does not: the list asked for a
    /// machine the guard kept, which someone should look at.
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            Outcome::Submitted
                | Outcome::WouldSubmit
                | Outcome::AlreadyPending
                | Outcome::AlreadyOffboarded
                | Outcome::Duplicate
        )
    }
}

/// The messages of rows whose outcome the tool decided itself (the service's own messages pass through as it
/// wrote them): one wording for each case, whichever command writes it.
pub mod message {
    /// A `duplicate` row: the same machine id on an earlier line.
    pub fn listed_earlier() -> &'static str {
        "listed earlier in the input; offboarded once"
    }

    /// A `duplicate` row: a name that resolves to the machine of an earlier row.
    pub fn same_machine_as_earlier_row() -> &'static str {
        "names the same machine as an earlier row; offboarded once"
    }

    /// An `invalid_id` row, whose cell was `raw`.
    pub fn not_a_machine_id(raw: &str) -> &'static str {
        if crate::domain::aad_device_id(raw).is_some() {
            "not a machine id (40 hexadecimal characters) but a GUID, as Entra device ids are; to list those, \
             pass --by-aad-device-id"
        } else {
            "not a machine id (40 hexadecimal characters)"
        }
    }

    /// A `failed` row: a name, in a run without the pre-flight that resolves names.
    pub fn names_need_the_preflight() -> &'static str {
        "names are resolved by the pre-flight, which was off"
    }

    /// A `not_found` row: a name (or Entra device id) `written` that no machine has.
    pub fn no_machine_named(written: &str) -> &'static str {
        if crate::domain::aad_device_id(written).is_some() {
            "no machine in the inventory has this Entra device id (aadDeviceId)"
        } else {
            "no machine in the inventory has this name"
        }
    }

    /// A `not_found` row found so by the dry run or the pre-flight.
    pub fn not_in_inventory(dry_run: bool) -> &'static str {
        if dry_run {
            "not in the device inventory"
        } else {
            "not in the device inventory (pre-flight): no offboard call was made"
        }
    }

    /// An `already_pending` row found so by the dry run or the pre-flight.
    pub fn already_open(dry_run: bool) -> &'static str {
        if dry_run {
            "an offboard action is already open"
        } else {
            "an offboard action is already open (pre-flight): no offboard call was made"
        }
    }

    /// An `already_offboarded` row: the machine's offboard action `Succeeded` at `done`, and the machine last
    /// reported at `seen` (before it).
    pub fn offboarded_earlier(dry_run: bool, done: &str, seen: &str) -> String {
        let seen = if seen.is_empty() { "unknown" } else { seen };
        let not_called = if dry_run { "" } else { ": no offboard call was made" };
        format!(
            "offboarded earlier: its offboard action succeeded at {done} and it has not reported since (last seen \
             {seen}){not_called}"
        )
    }

    /// A `protected` row: `why` the guard kept it (it reported recently, or its tag or group), and `how` to
    /// offboard it anyway.
    pub fn protected(dry_run: bool, why: &str, how: &str) -> String {
        let not_called = if dry_run { "a real run would not offboard it" } else { "not offboarded" };
        format!("{why}: {not_called}; {how}")
    }

    /// An `ambiguous` row: a name (or Entra device id) `written` that `count` machines have, `listed` the
    /// first of them (each with its name and when it was last seen).
    pub fn names_several(written: &str, count: usize, listed: &[String]) -> String {
        let more = count.saturating_sub(listed.len());
        let what = if crate::domain::aad_device_id(written).is_some() { "Entra device id" } else { "name" };
        format!(
            "this {what} names {count} machines (a reimaged or renamed device leaves its old record): {}{}; list \
             the one to offboard by its id",
            listed.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        )
    }

    /// A `failed` (`UnconfirmedAnswer`) row: a 2xx answer (`status`) that did not show the action.
    pub fn unconfirmed_answer(status: u16, why: &str) -> String {
        format!(
            "the answer (HTTP {status}) did not prove an action was created: {why}; --resume looks up this \
             machine's offboard actions before calling it again"
        )
    }

    /// A `failed` (`InDoubt`) row of a resume: looking up whether an earlier call went through failed.
    pub fn lookup_failed(code: &str, message: &str) -> String {
        format!(
            "an earlier call may have offboarded this machine, and looking it up failed ({code}: {message}); it \
             was not called again, and --resume looks again"
        )
    }

    /// A resume's row for a machine whose earlier call had gone through.
    pub fn found_earlier_action() -> &'static str {
        "found the action of an earlier call whose answer was not recorded; not sent again"
    }

    /// A `failed` (`InDoubt`) row: the call was in flight when the run stopped.
    pub fn in_flight_when_stopped() -> &'static str {
        "the call was still in flight when the run stopped; --resume looks up whether it went through before \
         calling again"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_parse_as_they_are_written() {
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(Outcome::parse("Submitted"), None, "written in lowercase only");
        assert_eq!(Outcome::parse(""), None);
    }

    #[test]
    fn rows_submitted_or_already_pending_have_an_action() {
        let with: Vec<Outcome> = Outcome::ALL.into_iter().filter(|o| o.has_action()).collect();
        assert_eq!(with, [Outcome::Submitted, Outcome::AlreadyPending]);
    }
}
