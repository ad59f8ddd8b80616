//! What happened to one input row: the `outcome` column of a results file.

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
    pub const ALL: [Outcome; 10] = [
        Outcome::Submitted,
        Outcome::WouldSubmit,
        Outcome::AlreadyPending,
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

    /// Whether this outcome leaves the exit code at 0.
    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Submitted | Outcome::WouldSubmit | Outcome::AlreadyPending | Outcome::Duplicate)
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
