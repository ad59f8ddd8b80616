//! The pre-flight of real runs and the dry run's reads, and the permission check that comes before both.
//!
//! Under 1,500 calls an hour every call that is not an offboard is a machine not offboarded, so both read the
//! inventory and the open offboard actions in batches ([`crate::commands::run::inventory`]: pages + a constant, whatever the
//! size of the input), through the run's one [`Api`] and so its one limiter. Then each input row is decided
//! locally ([`Screen`]): `not_found`, `already_pending`, `already_offboarded` (its offboard succeeded and it
//! has not reported since) and `protected` (kept by the [`super::guard`]) rows cost no offboard call, and a
//! dry run writes `would_submit` where a real run would call. Input by name is resolved here: a name that may mean several
//! machines is `ambiguous` and never guessed. Only reads that saw every page decide `not_found`: reads that
//! could not finish (a failed call, a repeated page, an HTML 404) stop the run before any offboard.
//!
//! Permissions come from the token's `roles` claim (an app's) or `scp` claim (a person's) and are checked right after sign-in, before any API call:
//! a refusal names the missing permission and what to do.

use std::path::Path;

use super::job::{Job, Options};
use crate::commands::run::inventory::{
    AMBIGUOUS_LISTED, Decision, DecisionKind, Inventory, Joined, Machine, MachineFacts,
};
use crate::defender::api::Api;
use crate::defender::auth::Permissions;
use crate::domain::{Outcome, message};
use crate::error::{Error, Result};
use crate::files::results::ResultRow;
use crate::input::{InputRow, RowKind};

/// The permission an offboard needs (Microsoft's documentation).
pub const OFFBOARD_ROLE: &str = "Machine.Offboard";
/// Either of these lets the app read machines and machine actions (Microsoft's documentation).
pub const READ_ROLES: [&str; 2] = ["Machine.Read.All", "Machine.ReadWrite.All"];

/// Refuses, before any API call, a command that needs a permission the token does not carry: the run's
/// (offboarding, the pre-flight's reads) and the tracking that follows it with `--wait`.
pub fn check_permissions(permissions: &Permissions, options: &Options, by_name: bool) -> Result<()> {
    let has = |name: &str| permissions.has(name);
    let granted = permissions.granted();
    let grant = permissions.how_to_grant();
    let kind = permissions.kind_word();
    if !options.dry_run && !has(OFFBOARD_ROLE) {
        return Err(Error::Permission(format!(
            "offboarding needs the {kind} permission {OFFBOARD_ROLE}, and the token carries {granted}; {grant}. \
             --dry-run audits the list with read permission only"
        )));
    }
    if READ_ROLES.iter().any(|r| has(r)) {
        return Ok(());
    }
    let mut needs = Vec::new();
    if options.dry_run {
        needs.push("a dry run reads the inventory and the open actions");
    } else if by_name {
        needs.push("input by name is resolved through the inventory");
    } else if options.preflight {
        needs.push("the pre-flight reads the inventory and the open actions");
    }
    if options.wait {
        needs.push("--wait tracks the offboard actions after the run, reading the machine actions");
    }
    if needs.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "{}, which needs the {kind} permission {} or {}, and the token carries {granted}; {grant}",
        needs.join(", and "),
        READ_ROLES[0],
        READ_ROLES[1]
    );
    let without_reads = !options.dry_run && !by_name && options.preflight;
    let cost = "unknown machines and open actions then cost an offboard call each";
    let track_later = "follow the actions later with `mde-offboard track` under an app that may read";
    match (options.wait, without_reads) {
        (true, true) => {
            message.push_str(&format!("; or drop --wait and pass --no-preflight ({cost}), and {track_later}"))
        }
        (true, false) => message.push_str(&format!("; or drop --wait, and {track_later}")),
        (false, true) => message.push_str(&format!("; or pass --no-preflight to offboard without it ({cost})")),
        (false, false) => {}
    }
    message.push_str(". Nothing was offboarded");
    Err(Error::Permission(message))
}

/// Refuses, before any network, a run that could not write what it will have to: the journal beside the
/// results file (a real run; the results file itself is [`crate::files::results::check_writable`]'s) and the
/// summary file. Found after the offboards, either would leave a run that did its work and could not say so.
/// (The temporary directory, where the pre-flight and tracking sort, is proven by the input's copy, which the
/// scan makes there before any network, naming the input when it cannot.)
pub fn check_files(results: &Path, options: &Options, resume: bool, summary: Option<&Path>) -> Result<()> {
    if !options.dry_run {
        let continues = resume && results.exists();
        let journal = crate::files::journal::path_for(results);
        // Opened as the run will open it, without changing it. A resume whose journal is missing is refused
        // by the resume itself, with what to do.
        let opened = if continues {
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(results)
                .map_err(|e| Error::write(results, "append to it", e))?;
            journal.exists().then(|| std::fs::OpenOptions::new().read(true).append(true).open(&journal))
        } else {
            journal.exists().then(|| std::fs::OpenOptions::new().write(true).open(&journal))
        };
        if let Some(Err(e)) = opened {
            return Err(Error::Output {
                path: journal,
                message: format!(
                    "cannot write the run journal there: {e}; move it away, or choose another place with --output"
                ),
            });
        }
    }
    if let Some(path) = summary {
        let refuse = |why: String| Error::Output {
            path: path.to_owned(),
            message: format!("{why}; --summary-json needs a file the run can write"),
        };
        if path.is_dir() {
            return Err(refuse("is a directory".into()));
        }
        // Written as a temporary file beside it, then renamed: the directory must take new files.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        tempfile::NamedTempFile::new_in(dir)
            .map(drop)
            .map_err(|e| refuse(format!("cannot write in {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// What the pre-flight knows of a machine, for its results row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub computer_dns_name: Option<String>,
    pub os_platform: Option<String>,
    pub health_status: Option<String>,
    pub last_seen: Option<String>,
}

impl Facts {
    fn of(m: Machine) -> Facts {
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        Facts {
            computer_dns_name: some(m.computer_dns_name),
            os_platform: some(m.os_platform),
            health_status: some(m.health_status),
            last_seen: some(m.last_seen),
        }
    }

    fn lent(m: MachineFacts) -> Facts {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Facts {
            computer_dns_name: some(m.computer_dns_name),
            os_platform: some(m.os_platform),
            health_status: some(m.health_status),
            last_seen: some(m.last_seen),
        }
    }

    /// Fills the row's machine columns the row does not already have.
    pub fn fill(self, row: &mut ResultRow) {
        row.computer_dns_name = row.computer_dns_name.take().or(self.computer_dns_name);
        row.os_platform = row.os_platform.take().or(self.os_platform);
        row.health_status = row.health_status.take().or(self.health_status);
        row.last_seen = row.last_seen.take().or(self.last_seen);
    }
}

/// What the pre-flight made of one input row.
#[derive(Debug)]
pub enum Screened {
    /// The row's outcome is known without an offboard call. Boxed, as it goes to the writer: the rows read
    /// ahead of the dispatcher take the room of the smaller variant.
    Row(Box<ResultRow>),
    /// Goes on as before (a valid id to offboard, now with what the inventory says of it; invalid and
    /// duplicate rows unchanged).
    Pass(InputRow, Option<Facts>),
}

/// The reads' results, applied row by row.
pub struct Screen {
    joined: Joined,
    dry_run: bool,
}

/// Decides `row` with the pre-flight's results, if there is a pre-flight. Without one, names cannot be
/// offboarded (the run refuses that combination up front): such a row fails. Rows must come in the input's
/// order (some may be left out).
pub fn screen(screen: Option<&mut Screen>, row: InputRow) -> Result<Screened> {
    match (screen, &row.kind) {
        (Some(screen), _) => screen.screen(row),
        (None, RowKind::Name(_)) => {
            let mut result = ResultRow::new(row.line, "", Outcome::Failed);
            result.computer_dns_name = Some(row.raw.trim().to_string());
            result.error_message = Some(message::names_need_the_preflight().into());
            Ok(Screened::Row(Box::new(result)))
        }
        (None, _) => Ok(Screened::Pass(row, None)),
    }
}

/// A temporary file of the pre-flight's could not be read.
fn disk(e: std::io::Error) -> Error {
    Error::Preflight(crate::files::extsort::temp_message("read", &e))
}

impl Screened {
    /// The input line the row is for.
    pub fn line(&self) -> u64 {
        match self {
            Screened::Row(result) => result.line,
            Screened::Pass(row, _) => row.line,
        }
    }
}

impl Screen {
    /// Back to the first line, for another pass over the input (see `run`'s count of the calls a resume
    /// will make).
    pub fn rewind(&mut self) -> Result<()> {
        self.joined.rewind().map_err(disk)
    }

    fn screen(&mut self, row: InputRow) -> Result<Screened> {
        let decisions = self.joined.take(row.line).map_err(disk)?;
        match &row.kind {
            RowKind::Valid(id) => {
                let found = decisions.iter().find(|d| d.kind == DecisionKind::Found && d.machine == *id);
                self.decide(row, found, None)
            }
            RowKind::Name(_) => self.resolve(row, &decisions),
            RowKind::Invalid | RowKind::Duplicate => Ok(Screened::Pass(row, None)),
        }
    }

    fn resolve(&mut self, row: InputRow, decisions: &[Decision]) -> Result<Screened> {
        let written = row.raw.trim().to_string();
        let mut result = ResultRow::new(row.line, "", Outcome::NotFound);
        result.computer_dns_name = Some(written.clone());
        match decisions {
            [] => {
                result.error_message = Some(message::no_machine_named(&written).into());
                Ok(Screened::Row(Box::new(result)))
            }
            [one] if one.kind == DecisionKind::Claimed => {
                let machine = self.joined.machine(one).map_err(disk)?;
                let mut result = ResultRow::new(row.line, machine.id.clone(), Outcome::Duplicate);
                Facts::of(machine).fill(&mut result);
                result.error_message = Some(message::same_machine_as_earlier_row().into());
                Ok(Screened::Row(Box::new(result)))
            }
            [one] if one.kind == DecisionKind::Found => self.decide(row, Some(one), Some(written)),
            candidates => {
                result.outcome = Outcome::Ambiguous;
                let count = candidates.iter().map(|c| c.count as usize).max().unwrap_or(candidates.len());
                let mut listed = Vec::new();
                for candidate in candidates.iter().take(AMBIGUOUS_LISTED) {
                    let m = self.joined.machine(candidate).map_err(disk)?;
                    let seen = if m.last_seen.is_empty() { "unknown" } else { &m.last_seen };
                    listed.push(format!("{} ({}, last seen {seen})", m.id, m.computer_dns_name));
                }
                result.error_message = Some(message::names_several(&written, count, &listed));
                Ok(Screened::Row(Box::new(result)))
            }
        }
    }

    /// One machine: unknown, already pending, or to offboard (would be, in a dry run).
    fn decide(&self, row: InputRow, found: Option<&Decision>, name: Option<String>) -> Result<Screened> {
        let Some(found) = found else {
            let id = match &row.kind {
                RowKind::Valid(id) => id.to_string(),
                _ => String::new(),
            };
            let mut result = ResultRow::new(row.line, id, Outcome::NotFound);
            result.computer_dns_name = name;
            result.error_message = Some(message::not_in_inventory(self.dry_run).into());
            return Ok(Screened::Row(Box::new(result)));
        };
        // The machine's facts copied straight from the store; its id written only for a row made here.
        let facts = self.joined.machine_facts(found, Facts::lent).map_err(disk)?;
        let text = || found.machine.to_hex();
        if let Some(action) = self.joined.open_action(found).map_err(disk)? {
            let some = |s: String| Some(s).filter(|s| !s.is_empty());
            let mut result = ResultRow::new(row.line, text(), Outcome::AlreadyPending);
            result.action_id = some(action.id);
            result.action_status = Some(action.status);
            result.submitted_at = some(action.created);
            result.updated_at = some(action.updated);
            result.error_message = Some(message::already_open(self.dry_run).into());
            facts.fill(&mut result);
            return Ok(Screened::Row(Box::new(result)));
        }
        if let Some(done) = self.joined.done_action(found).map_err(disk)? {
            let some = |s: String| Some(s).filter(|s| !s.is_empty());
            let mut result = ResultRow::new(row.line, text(), Outcome::AlreadyOffboarded);
            result.error_message = Some(message::offboarded_earlier(
                self.dry_run,
                &done.updated,
                facts.last_seen.as_deref().unwrap_or(""),
            ));
            result.action_id = some(done.id);
            result.action_status = Some(done.status);
            result.submitted_at = some(done.created);
            result.updated_at = some(done.updated);
            facts.fill(&mut result);
            return Ok(Screened::Row(Box::new(result)));
        }
        if let Some(why) = self.joined.kept(found) {
            let machine = self.joined.machine(found).map_err(disk)?;
            let guard = self.joined.guard();
            let (why, how) = guard.explain(why, &machine.last_seen, &machine.rbac_group_name, &machine.machine_tags);
            let mut result = ResultRow::new(row.line, text(), Outcome::Protected);
            result.error_message = Some(message::protected(self.dry_run, &why, &how));
            facts.fill(&mut result);
            return Ok(Screened::Row(Box::new(result)));
        }
        if self.dry_run {
            let mut result = ResultRow::new(row.line, text(), Outcome::WouldSubmit);
            facts.fill(&mut result);
            return Ok(Screened::Row(Box::new(result)));
        }
        Ok(Screened::Pass(InputRow { line: row.line, raw: row.raw, kind: RowKind::Valid(found.machine) }, Some(facts)))
    }

    /// How many offboard calls a real run makes after the pre-flight: machines found with no open action,
    /// not offboarded earlier and not kept by the guard.
    pub fn to_submit(&self) -> u64 {
        self.joined.tally.to_submit()
    }

    /// The plan's line on the guard: how many machines it keeps, and why.
    pub fn protected_line(&self) -> String {
        super::guard::kept_line(&self.joined.tally.kept, self.joined.guard())
    }

    /// One line on what the reads cost and found.
    pub fn describe(&self) -> String {
        let (r, t) = (&self.joined.reads, &self.joined.tally);
        let how = if r.by_id {
            format!("{} machine lookup(s) and {} action list call(s)", r.machine_lookups, r.action_pages)
        } else {
            format!("{} inventory page(s) and {} action list call(s)", r.inventory_pages, r.action_pages)
        };
        let found = if self.joined.by_name {
            format!(
                "{} name(s) resolved, {} unknown, {} ambiguous; {} with an open offboard action",
                t.found, t.unknown_names, t.ambiguous_names, t.open
            )
        } else {
            format!("{} of {} asked about in the inventory, {} with an open offboard action", t.found, t.wanted, t.open)
        };
        let offboarded =
            if t.offboarded > 0 { format!(", {} offboarded already", t.offboarded) } else { String::new() };
        let kept = t.kept.total();
        let kept = if kept > 0 { format!(", {kept} protected") } else { String::new() };
        format!("{how} ({} HTTP calls): {found}{offboarded}{kept}", r.http_calls)
    }
}

/// Pre-flights reading at once in the process, whatever the tenants. Each holds its sorters' room and its
/// files' buffers until it is done (some 100 KB for a list of 1,500 machines, more for a larger one), and
/// the tenants of a run of many start together: without a bound every running tenant would hold them at
/// once, for a peak of memory growing with the tenants. Their large list pages already wait their turn to be
/// read among the process's few (`api::PAGES_AT_ONCE`), so the bound costs a tenant little of its start.
const PREFLIGHTS_AT_ONCE: usize = 8;
static PREFLIGHTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PREFLIGHTS_AT_ONCE);

/// Reads what the input asks about, if the run reads at all (see [`Options::reads`]), when its turn among the
/// process's pre-flights comes.
pub async fn load(job: &Job, api: &Api) -> Result<Option<Screen>> {
    if !job.preflight.reads(job.scan.by_name) {
        return Ok(None);
    }
    let _turn = PREFLIGHTS.acquire().await.expect("the semaphore is never closed");
    let guard = super::guard::Guard { now: std::time::SystemTime::now(), ..job.guard.clone() };
    let joined = Inventory::load(api, &job.scan, guard).await.map_err(|e| {
        let next = if job.preflight.dry_run || job.scan.by_name {
            "nothing was done"
        } else {
            "nothing was offboarded; pass --no-preflight to offboard without the pre-flight"
        };
        Error::Preflight(format!("{e}; {next}"))
    })?;
    let screen = Screen { joined, dry_run: job.preflight.dry_run };
    tracing::info!("pre-flight: {}", screen.describe());
    Ok(Some(screen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(r: &[&str]) -> Permissions {
        Permissions::application(names(r))
    }

    fn names(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn permissions_are_checked_for_what_the_run_does() {
        let real = Options::default();
        let dry = Options { dry_run: true, preflight: true, wait: false };
        let bare = Options { dry_run: false, preflight: false, wait: false };
        let both = roles(&["Machine.Offboard", "Machine.Read.All"]);
        assert!(check_permissions(&both, &real, false).is_ok());
        assert!(check_permissions(&roles(&["Machine.ReadWrite.All"]), &dry, true).is_ok());
        assert!(check_permissions(&roles(&["Machine.Offboard"]), &bare, false).is_ok());

        let e = check_permissions(&roles(&["Machine.Offboard"]), &real, false).unwrap_err().to_string();
        assert!(e.contains("Machine.Read.All") && e.contains("--no-preflight"), "{e}");
        let e = check_permissions(&roles(&["Machine.Offboard"]), &bare, true).unwrap_err().to_string();
        assert!(e.contains("by name") && !e.contains("--no-preflight"), "{e}");
        let e = check_permissions(&roles(&["Machine.Offboard"]), &dry, false).unwrap_err().to_string();
        assert!(e.contains("dry run") && !e.contains("--no-preflight"), "{e}");
        let e = check_permissions(&roles(&["Machine.Read.All"]), &real, false).unwrap_err().to_string();
        assert!(e.contains("Machine.Offboard") && e.contains("--dry-run"), "{e}");
        let e = check_permissions(&roles(&[]), &dry, false).unwrap_err().to_string();
        assert!(e.contains("carries none"), "{e}");

        // --wait's tracking reads the actions: without the pre-flight too.
        let waiting = Options { wait: true, ..bare };
        assert!(check_permissions(&both, &Options { wait: true, ..real }, false).is_ok());
        let e = check_permissions(&roles(&["Machine.Offboard"]), &waiting, false).unwrap_err().to_string();
        assert!(e.contains("--wait tracks") && e.contains("Machine.Read.All") && e.contains("track`"), "{e}");
        assert!(!e.contains("--no-preflight") && e.contains("Nothing was offboarded"), "{e}");
        let e = check_permissions(&roles(&["Machine.Offboard"]), &Options { wait: true, ..real }, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pre-flight reads") && e.contains("and --wait tracks"), "{e}");
        assert!(e.contains("drop --wait and pass --no-preflight"), "{e}");
    }

    /// A person's token carries its permissions in `scp`: the same checks, in the words of delegated
    /// permissions.
    #[test]
    fn a_delegated_token_is_judged_by_its_scopes() {
        use crate::defender::auth::PermissionKind;
        let person = |n: &[&str]| Permissions {
            kind: PermissionKind::Delegated,
            names: names(n),
            account: Some("a@contoso".into()),
        };
        assert!(
            check_permissions(&person(&["Machine.Offboard", "Machine.Read.All"]), &Options::default(), false).is_ok()
        );
        let e = check_permissions(&person(&["Machine.Offboard"]), &Options::default(), false).unwrap_err().to_string();
        assert!(e.contains("delegated permission Machine.Read.All") && e.contains("Delegated permissions"), "{e}");
    }
}
