//! Continuing an interrupted run (`--resume`) without offboarding any machine twice: what the earlier
//! sessions finished, and which machines may have been called without their answer being recorded: each is
//! looked up before any new call ([`super::offboard::offboard_one`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use super::Job;
use super::preflight::{self, Screened};
use crate::defender::auth::Permissions;
use crate::domain::{MachineId, Outcome};
use crate::error::{Error, Result};
use crate::files::journal::{self, RunIdentity};
use crate::files::results::{self, Finished};
use crate::input::{self, RowKind};

/// What a resume starts from.
pub(super) struct Earlier {
    pub(super) identity: RunIdentity,
    /// Input lines already finished, each for its machine.
    pub(super) done: Finished,
    /// Lines whose machine may have been called without its answer being recorded, or whose row says the
    /// call may have gone through: every intent on record for them.
    pub(super) in_doubt: HashMap<u64, Vec<journal::Intent>>,
}

pub(super) fn read_earlier(job: &Job, journal_path: &Path, now: &RunIdentity) -> Result<Earlier> {
    let refuse = |message: String| Error::Resume { path: job.output.clone(), message };
    if !journal_path.exists() {
        return Err(refuse(format!(
            "its journal {} is missing, so calls that were in flight cannot be checked; \
             start a new run with another --output (or --overwrite)",
            journal_path.display()
        )));
    }
    let cut = results::cut_torn_row(&job.output)?;
    if cut > 0 {
        tracing::warn!("cut a torn last row ({cut} bytes) from {}", job.output.display());
    }
    let (done, _) = results::final_lines(&job.output)?;
    let mut earlier = journal::read(journal_path, |line, machine| !done.contains(line, machine))?;
    if let Some(why) = now.mismatch(&earlier.identity) {
        return Err(refuse(why));
    }
    let identity = &mut earlier.identity;
    if identity.input_sha256.is_none() {
        tracing::warn!(
            "the journal does not say what the input held (an older version wrote it): a row counts as done \
             only where the input still lists its machine on its line"
        );
    }
    // A journal from an older version is completed with what this session knows.
    identity.input_sha256 = identity.input_sha256.take().or_else(|| now.input_sha256.clone());
    identity.resolved_comment = Some(identity.comment_sent());
    if !earlier.intents.is_empty() {
        tracing::info!(
            machines = earlier.intents.len(),
            "machines whose earlier call may have gone through are looked up before any new call"
        );
    }
    Ok(Earlier { identity: earlier.identity, done, in_doubt: earlier.intents })
}

/// How many machines a session that skips the lines in `done` calls for: the rows screened as the run
/// screens them, counting each valid id that passes and is not done.
pub(super) fn count_calls(
    rows: input::Rows,
    mut screen: Option<&mut preflight::Screen>,
    done: &Finished,
    in_doubt: &HashMap<u64, Vec<journal::Intent>>,
) -> Result<u64> {
    let mut calls = 0;
    for row in rows {
        let screened = preflight::screen(screen.as_deref_mut(), row?)?;
        if done.contains(screened.line(), &machine_of(&screened)) {
            continue;
        }
        let screened = look_up_if_in_doubt(screened, in_doubt);
        if let Screened::Pass(row, _) = &screened
            && matches!(row.kind, RowKind::Valid(_))
        {
            calls += 1;
        }
    }
    Ok(calls)
}

/// A machine in doubt (an earlier session's call for it may have gone through, its answer unrecorded)
/// whose open offboard action the pre-flight found: that action may be the earlier call's own, so the
/// machine goes on to the lookup, which tells the run's own action (`submitted`) from someone else's
/// (`already_pending`), instead of the pre-flight's `already_pending` row ("no offboard call was made").
pub(super) fn look_up_if_in_doubt(screened: Screened, in_doubt: &HashMap<u64, Vec<journal::Intent>>) -> Screened {
    let Screened::Row(row) = screened else { return screened };
    let intents = match in_doubt.get(&row.line) {
        Some(intents) if row.outcome == Outcome::AlreadyPending => intents,
        _ => return Screened::Row(row),
    };
    match MachineId::parse(&row.machine_id).filter(|id| journal::earliest(intents, id).is_some()) {
        Some(id) => {
            let facts = preflight::Facts {
                computer_dns_name: row.computer_dns_name,
                os_platform: row.os_platform,
                health_status: row.health_status,
                last_seen: row.last_seen,
            };
            let row = input::InputRow { line: row.line, raw: row.machine_id, kind: RowKind::Valid(id) };
            Screened::Pass(row, Some(facts))
        }
        None => Screened::Row(row),
    }
}

/// The machine a row is about, as its results row names it: what a finished line is compared with.
pub(super) fn machine_of(screened: &Screened) -> Cow<'_, str> {
    match screened {
        Screened::Row(row) => Cow::Borrowed(&row.machine_id),
        Screened::Pass(row, _) => match &row.kind {
            RowKind::Valid(id) => Cow::Owned(id.to_string()),
            RowKind::Name(name) => Cow::Borrowed(name),
            RowKind::Invalid | RowKind::Duplicate => Cow::Borrowed(&row.raw),
        },
    }
}

/// Looking up machines in doubt reads the machine actions: without a read role the resume could only call
/// them blindly (or never), so it stops before any API call.
pub(super) fn check_lookup_permission(permissions: &Permissions, in_doubt: usize) -> Result<()> {
    if in_doubt == 0 || preflight::READ_ROLES.iter().any(|r| permissions.has(r)) {
        return Ok(());
    }
    let (granted, kind) = (permissions.granted(), permissions.kind_word());
    Err(Error::Permission(format!(
        "{in_doubt} machine(s) may have been offboarded by an earlier call whose answer was lost; the resume looks \
         them up among the machine actions before calling them again, which needs the {kind} permission {} \
         or {}, and the token carries {granted}. Grant one, then run --resume again; nothing was called",
        preflight::READ_ROLES[0],
        preflight::READ_ROLES[1]
    )))
}
