//! A machine action's status and type, as the service reports them.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// The status of a machine action (Microsoft's documentation: `Pending`, `InProgress`, `Succeeded`,
/// `Failed`, `TimeOut`, `Cancelled`). Read ignoring case; any other text is kept as [`ActionStatus::Other`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ActionStatus {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    TimeOut,
    Cancelled,
    /// A status this tool does not know, as the service wrote it: neither open nor final, so tracking keeps
    /// following the action and the pre-flight does not count it as an open offboard.
    Other(String),
}

impl ActionStatus {
    /// The statuses of an action still under way: a machine with an open offboard action is not called again.
    pub const OPEN: [ActionStatus; 2] = [ActionStatus::Pending, ActionStatus::InProgress];
    /// The statuses an action ends in: tracking stops following it.
    pub const FINAL: [ActionStatus; 4] =
        [ActionStatus::Succeeded, ActionStatus::Failed, ActionStatus::TimeOut, ActionStatus::Cancelled];

    /// The status named `text`, in any case.
    pub fn parse(text: &str) -> ActionStatus {
        Self::OPEN
            .into_iter()
            .chain(Self::FINAL)
            .find(|known| known.as_str().eq_ignore_ascii_case(text))
            .unwrap_or_else(|| ActionStatus::Other(text.to_owned()))
    }

    /// The status as the API writes it (an unknown one as it was read).
    pub fn as_str(&self) -> &str {
        match self {
            ActionStatus::Pending => "Pending",
            ActionStatus::InProgress => "InProgress",
            ActionStatus::Succeeded => "Succeeded",
            ActionStatus::Failed => "Failed",
            ActionStatus::TimeOut => "TimeOut",
            ActionStatus::Cancelled => "Cancelled",
            ActionStatus::Other(text) => text,
        }
    }

    /// Still under way: `Pending` or `InProgress`.
    pub fn is_open(&self) -> bool {
        matches!(self, ActionStatus::Pending | ActionStatus::InProgress)
    }

    /// Ended: `Succeeded`, `Failed`, `TimeOut` or `Cancelled`.
    pub fn is_final(&self) -> bool {
        matches!(self, ActionStatus::Succeeded | ActionStatus::Failed | ActionStatus::TimeOut | ActionStatus::Cancelled)
    }
}

impl From<&str> for ActionStatus {
    fn from(text: &str) -> ActionStatus {
        ActionStatus::parse(text)
    }
}

impl fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Any string: a status the service sends never fails the page it is on.
impl<'de> Deserialize<'de> for ActionStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ActionStatus::parse(&String::deserialize(deserializer)?))
    }
}

/// The types an offboard action is given: `Offboard` by today's service, `OffboardMachine` in the 2019
/// documentation's example answer. Every reader of actions treats both as offboard actions, and every list of
/// offboard actions asks for both.
pub const OFFBOARD_TYPES: [&str; 2] = ["Offboard", "OffboardMachine"];

/// The type of a machine action, as far as this tool cares: an offboard action (under either of
/// [`OFFBOARD_TYPES`], read ignoring case and surrounding whitespace), or another, kept as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ActionType {
    Offboard,
    Other(String),
}

impl ActionType {
    /// The type named `text`.
    pub fn parse(text: &str) -> ActionType {
        if OFFBOARD_TYPES.iter().any(|t| t.eq_ignore_ascii_case(text.trim())) {
            ActionType::Offboard
        } else {
            ActionType::Other(text.to_owned())
        }
    }

    /// The type as the API writes it today (an unknown one as it was read).
    pub fn as_str(&self) -> &str {
        match self {
            ActionType::Offboard => OFFBOARD_TYPES[0],
            ActionType::Other(text) => text,
        }
    }

    pub fn is_offboard(&self) -> bool {
        *self == ActionType::Offboard
    }
}

impl From<&str> for ActionType {
    fn from(text: &str) -> ActionType {
        ActionType::parse(text)
    }
}

impl fmt::Display for ActionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Any string, as [`ActionStatus`].
impl<'de> Deserialize<'de> for ActionType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ActionType::parse(&String::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_in_any_case_and_display_as_the_api_writes_them() {
        for status in ActionStatus::OPEN.into_iter().chain(ActionStatus::FINAL) {
            let text = status.to_string();
            assert_eq!(ActionStatus::parse(&text), status);
            assert_eq!(ActionStatus::parse(&text.to_uppercase()), status);
            assert_eq!(ActionStatus::from(text.to_lowercase().as_str()), status);
        }
        assert_eq!(ActionStatus::parse("InProgress").to_string(), "InProgress");
        assert_eq!(format!("{:<12}|", ActionStatus::TimeOut), "TimeOut     |");
    }

    #[test]
    fn open_and_final_statuses_are_the_documented_ones() {
        let open: Vec<&str> = ActionStatus::OPEN.iter().map(ActionStatus::as_str).collect();
        let done: Vec<&str> = ActionStatus::FINAL.iter().map(ActionStatus::as_str).collect();
        assert_eq!(open, ["Pending", "InProgress"]);
        assert_eq!(done, ["Succeeded", "Failed", "TimeOut", "Cancelled"]);
        assert!(ActionStatus::OPEN.iter().all(|s| s.is_open() && !s.is_final()));
        assert!(ActionStatus::FINAL.iter().all(|s| s.is_final() && !s.is_open()));
    }

    #[test]
    fn an_unknown_status_is_kept_as_written_and_is_neither_open_nor_final() {
        for text in ["Queued", "", " Pending", "Succeeded.", "Erfolgreich"] {
            let status = ActionStatus::parse(text);
            assert_eq!(status, ActionStatus::Other(text.into()));
            assert_eq!(status.to_string(), text);
            assert!(!status.is_open() && !status.is_final(), "{text:?}");
        }
    }

    #[test]
    fn any_string_deserializes_and_anything_else_does_not() {
        let read = |json: &str| serde_json::from_str::<Option<ActionStatus>>(json).map_err(|_| ());
        assert_eq!(read(r#""succeeded""#), Ok(Some(ActionStatus::Succeeded)));
        assert_eq!(read(r#""Pending\u0041""#), Ok(Some(ActionStatus::Other("PendingA".into()))));
        assert_eq!(read(r#""NewStatus""#), Ok(Some(ActionStatus::Other("NewStatus".into()))));
        assert_eq!(read("null"), Ok(None));
        assert_eq!(read("3"), Err(()));
    }

    #[test]
    fn both_offboard_types_are_offboard_and_others_are_kept() {
        for text in OFFBOARD_TYPES.into_iter().chain(["offboard", " OFFBOARDMACHINE "]) {
            assert_eq!(ActionType::parse(text), ActionType::Offboard, "{text:?}");
        }
        assert_eq!(ActionType::Offboard.to_string(), "Offboard");
        let isolate = ActionType::from("Isolate");
        assert!(!isolate.is_offboard());
        assert_eq!(isolate.to_string(), "Isolate");
        let read = serde_json::from_str::<ActionType>(r#""OffboardMachine""#).unwrap();
        assert!(read.is_offboard());
    }
}
