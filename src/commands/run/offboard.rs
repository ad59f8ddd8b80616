//! One machine's offboard, and what its answers say, as a results row.
//!
//! An offboard is never sent again blindly. When a call may have reached the service without its answer
//! reaching us (in this session a timeout or a connection closed after sending; or an earlier session's
//! intent without a row, on `--resume`), the machine's offboard actions are looked up first: an action
//! with the run's comment created since that call is the call's own (`submitted`), an open one of someone
//! else's makes it `already_pending`, and none means the call did not go through, so it is sent (again). A
//! lookup that fails leaves the row `failed` with `InDoubt`: the machine is not called again in this
//! session, and `--resume` looks again. (Sent again blindly, a call whose first action had already ended
//! would be taken by the service: a second offboard of the same machine.)

use std::time::{Duration, SystemTime};

use crate::defender::api::{
    self, ActionAnswer, ActionQuery, Api, CallResult, CommentBody, Failure, MachineAction, Page, Reply,
};
use crate::domain::{ActionStatus, MachineId, Outcome, message};
use crate::files::results::ResultRow;

/// A machine's offboard actions fit one page: it has a handful at most.
const LOOKUP_PAGE: usize = 100;

/// How far before a call whose answer was lost (or an interrupted call's journal entry) an action found by
/// the lookup may have been created and still be taken for that call's (clocks differ).
const CLOCK_SKEW: Duration = Duration::from_secs(600);

/// Offboards one machine and says what happened, as a results row. `in_doubt_since` (milliseconds since the
/// epoch) is when an earlier call that may have gone through was made: the machine is looked up first.
pub(super) async fn offboard_one(
    api: &Api,
    line: u64,
    machine_id: MachineId,
    comment: &str,
    body: &CommentBody,
    mut in_doubt_since: Option<u64>,
) -> ResultRow {
    let mut attempts = 0u32;
    let mut lost = 0u32;
    // The last lost answer, once the calls have run out: the row's failure unless the lookup finds more.
    let mut given_up: Option<Failure> = None;
    loop {
        if let Some(since) = in_doubt_since {
            // Boxed: only a machine whose answer was lost looks its action up, and every machine's future would
            // otherwise keep room for it (each worker of each tenant holds one).
            let (calls, found) = Box::pin(look_up(api, line, machine_id, comment, since)).await;
            attempts += calls;
            if let Some(mut row) = found {
                row.attempts = attempts;
                return row;
            }
            if let Some(failure) = given_up {
                return answered(line, machine_id, attempts, Err(failure));
            }
        }
        let sent_at = now_ms();
        let CallResult { attempts: calls, answer } = api.offboard_with(&machine_id, body).await;
        attempts += calls;
        match answer {
            Err(failure) if failure.answer_lost() => {
                lost += 1;
                tracing::info!(machine = %machine_id, code = %failure.code, "the answer was lost: looking for the action before calling again");
                in_doubt_since.get_or_insert(sent_at);
                if lost >= api.max_attempts() {
                    given_up = Some(failure);
                }
            }
            answer => return answered(line, machine_id, attempts, answer),
        }
    }
}

/// The row of an offboard's last answer.
fn answered(line: u64, machine_id: MachineId, attempts: u32, answer: Result<Reply, Failure>) -> ResultRow {
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

/// Looks among the machine's offboard actions for one that a call made at `since` (milliseconds since the
/// epoch) may have created: the row it settles (`submitted` with the action found, `already_pending` for
/// someone else's open action, `failed` with `InDoubt` when the lookup fails), or `None` when there is none
/// and the machine may be called. The `u32` counts the HTTP calls.
async fn look_up(api: &Api, line: u64, machine_id: MachineId, comment: &str, since: u64) -> (u32, Option<ResultRow>) {
    let (calls, lookup) =
        api.list_actions(&ActionQuery::offboards(Page::nth(0, LOOKUP_PAGE)).of_machine(machine_id)).await;
    let since = SystemTime::UNIX_EPOCH + Duration::from_millis(since) - CLOCK_SKEW;
    let actions: Vec<MachineAction> = match lookup {
        // Either type is an offboard action; another type is not, whatever the service's filter let through.
        Ok(actions) => actions.into_iter().filter(MachineAction::is_offboard).collect(),
        Err(failure) => {
            tracing::warn!(machine = %machine_id, code = %failure.code, "cannot check whether an earlier call went through; not calling it");
            let mut row = ResultRow::new(line, machine_id.to_string(), Outcome::Failed);
            row.http_status = failure.status;
            row.error_code = Some("InDoubt".into());
            row.error_message = Some(message::lookup_failed(&failure.code, &failure.message));
            return (calls, Some(row));
        }
    };
    let created = |a: &MachineAction| a.creation_date_time_utc.as_deref().and_then(crate::defender::timestamp::parse);
    let ours = actions
        .iter()
        .filter(|a| a.requestor_comment.as_deref() == Some(comment) && created(a).is_some_and(|t| t >= since))
        .max_by_key(|a| created(a));
    let open = actions.iter().find(|a| a.status.as_ref().is_some_and(ActionStatus::is_open));
    let found = ours.or(open).map(|action| {
        let outcome = if ours.is_some() { Outcome::Submitted } else { Outcome::AlreadyPending };
        let mut row = ResultRow::new(line, machine_id.to_string(), outcome);
        row.http_status = Some(200);
        row.error_message = Some(message::found_earlier_action().into());
        fill_action(&mut row, action);
        row
    });
    (calls, found)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
