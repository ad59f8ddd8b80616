//! The tool's own words, each a type with one parser and one display: a machine id, an action's status and
//! type, a results row's outcome. The bottom layer: it does no I/O and uses nothing of the crate.
//!
//! The service is untrusted: a status or a type it sends that this tool does not know is kept as written
//! (`Other`), never an error, and is neither open nor final.

mod action;
mod machine_id;
mod outcome;

pub use action::{ActionStatus, ActionType, OFFBOARD_TYPES};
pub use machine_id::{MachineId, aad_device_id};
pub use outcome::{Outcome, message};
