//! One machine's offboard call, and what its answer says, as a results row.

use crate::defender::api::{self, ActionAnswer, Api, CallResult, CommentBody, MachineAction};
use crate::domain::{ActionStatus, MachineId, Outcome, message};
use crate::files::results::ResultRow;

/// Offboards one machine and says what happened, as a results row.
pub(super) async fn offboard_one(api: &Api, line: u64, machine_id: MachineId, comment: &CommentBody) -> ResultRow {
    let CallResult { attempts, answer } = api.offboard_with(&machine_id, comment).await;
    let mut row = ResultRow::new(line, machine_id.to_hex(), Outcome::Failed);
    row.attempts = attempts;
    match answer {
        Ok(reply) => {
            row.http_status = Some(reply.status);
            // Only an answer that shows the action proves it was created.
            match api::read_answer(&reply.body) {
                Ok(action) => {
                    row.outcome = Outcome::Submitted;
                    fill_answer(&mut row, &action);
                }
                Err(why) => {
                    row.error_code = Some(api::UNCONFIRMED_ANSWER.into());
                    row.error_message = Some(message::unconfirmed_answer(reply.status, &why));
                }
            }
        }
        Err(failure) => {
            row.outcome = match (failure.status, failure.code.as_str()) {
                (Some(400), "ActiveRequestAlreadyExists") => Outcome::AlreadyPending,
                (Some(400), "OsPlatformNotSupported" | "ClientVersionNotSupported") => Outcome::Unsupported,
                (Some(403), _) => Outcome::Forbidden,
                (Some(404), _) => Outcome::NotFound,
                _ => Outcome::Failed,
            };
            tracing::debug!(machine = %row.machine_id, outcome = row.outcome.as_str(), code = %failure.code, "machine done");
            row.http_status = failure.status;
            row.error_code = Some(failure.code);
            row.error_message = Some(failure.message);
        }
    }
    row
}

/// [`fill_action`] from an answer read in place: only the text the row keeps is copied.
fn fill_answer(row: &mut ResultRow, action: &ActionAnswer) {
    let status = action.status.as_deref().map(ActionStatus::parse);
    let (id, name) = (action.id.as_deref(), action.computer_dns_name.as_deref());
    fill(row, id, status.as_ref(), name, action.creation_date_time_utc.as_deref(), action.updated_at());
}

/// The action's fields a row keeps.
pub(super) fn fill_action(row: &mut ResultRow, action: &MachineAction) {
    let (id, name) = (action.id.as_deref(), action.computer_dns_name.as_deref());
    let updated = action.updated_at().map(String::as_str);
    fill(row, id, action.status.as_ref(), name, action.creation_date_time_utc.as_deref(), updated);
}

/// Fills in the action's id, status, machine name (an empty one is none), creation and last update.
fn fill(
    row: &mut ResultRow,
    id: Option<&str>,
    status: Option<&ActionStatus>,
    name: Option<&str>,
    created: Option<&str>,
    updated: Option<&str>,
) {
    row.action_id = id.map(str::to_owned);
    row.action_status = status.map(|status| status.as_str().to_owned());
    row.computer_dns_name = name.filter(|s| !s.is_empty()).map(str::to_owned);
    row.submitted_at = created.map(str::to_owned);
    row.updated_at = updated.map(str::to_owned);
}
