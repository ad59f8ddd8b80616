//! `mde-offboard cancel RESULTS`: takes back a run's offboards that have not happened yet.
//!
//! Only the actions of that results file are touched, never another action of the tenant: the rows with an
//! action (`submitted`, `already_pending`: [`Outcome::has_action`]) whose status in the file is not final,
//! narrowed by `--only FILE` to the machine ids it lists. A row without an action id (`already_pending`
//! found by the pre-flight) is matched, as tracking does, to its machine's open offboard action (one read:
//! `GET /api/machineactions` for that machine). Rows whose action the file already shows final are left as
//! they are and counted. Each open action gets `POST /api/machineactions/{id}/cancel` with the comment,
//! through the command's one limiter (so the usual retries and 429 handling); an answer that refuses (a
//! 400 for an action that became final meanwhile, a 404) is counted with the service's reason.
//!
//! It asks first ("Type N to cancel them"), unless `--yes`; `--dry-run` lists what would be cancelled and
//! makes no call. The permission (`Machine.Offboard`, and a read permission when some row needs its action
//! looked up) is checked from the token before any call. The results file is then rewritten atomically
//! ([`Rewrite`]) with `action_status` `Cancelled` and `updated_at` from the service's answer, so `track` and
//! `report` see it; an interrupt rewrites what was cancelled so far.
//!
//! Memory: the file is streamed; what is kept is the list of open rows to cancel (a row number, a machine
//! and an action id each), which the quota bounds in practice (100 cancels a minute).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::commands::run::preflight::{OFFBOARD_ROLE, READ_ROLES};
use crate::commands::session::Session;
use crate::defender::api::{ActionQuery, Api, Page, read_action};
use crate::defender::auth::Permissions;
use crate::defender::limiter::Limiter;
use crate::domain::{ActionStatus, MachineId, Outcome};
use crate::error::{Error, Result, exit_code};
use crate::files::journal;
use crate::files::lock::{self, ResultsLock};
use crate::files::results::{ResultsFile, Rewrite};
use crate::settings::{ApiArgs, RetryArgs, RunSettingsArgs, Settings, SettingsArgs};
use crate::ui::output::{self, printable};

/// `mde-offboard cancel RESULTS.csv`.
#[derive(clap::Args, Clone, Debug)]
pub struct CancelArgs {
    /// Results CSV of a run: its offboard actions still open are cancelled; updated in place.
    #[arg(value_name = "RESULTS.csv")]
    pub results: PathBuf,
    /// Cancel only the actions of the machine ids this file lists (one a line, or a CSV whose lines start
    /// with the id; lines without an id are skipped).
    #[arg(long, value_name = "FILE")]
    pub only: Option<PathBuf>,
    /// Do not ask for confirmation (needed when there is no terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// List the actions that would be cancelled; call nothing, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Comment recorded with each cancellation (required by the API; `{run_id}` and `{date}` are filled in).
    /// Only from this flag: the offboard comment of run.comment or MDE_COMMENT would say the wrong thing.
    #[arg(long, value_name = "TEXT", required_unless_present = "dry_run")]
    pub comment: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

impl CancelArgs {
    /// The flags that feed the settings (no run-only flag: the cancel's comment is its own).
    pub fn settings(&self) -> SettingsArgs {
        SettingsArgs { run: RunSettingsArgs::default(), api: self.api.clone(), retry: self.retry.clone() }
    }
}

/// A row whose action is to be cancelled.
struct Open {
    /// The row's number in the file (the header is row 1).
    row: u64,
    machine: MachineId,
    /// Its action id; `None`: looked up by machine.
    action_id: Option<String>,
}

/// What a row becomes once its action is cancelled.
struct Update {
    action_id: String,
    status: String,
    updated_at: Option<String>,
}

/// What `cancel` did.
#[derive(Debug, Default)]
pub struct CancelSummary {
    pub results: PathBuf,
    /// Rows of the file within `--only` with an action.
    pub with_action: u64,
    pub cancelled: u64,
    /// Left as they were: the file shows their action final.
    pub already_final: u64,
    /// Rows without an action id whose machine has no open offboard action.
    pub no_open_action: u64,
    /// Refused or failed, by reason.
    pub not_cancelled: BTreeMap<String, u64>,
    pub first_message: Option<String>,
    pub interrupted: bool,
    pub dry_run: bool,
    /// Would be cancelled (a dry run).
    pub to_cancel: u64,
}

impl CancelSummary {
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            exit_code::INTERRUPTED
        } else if self.not_cancelled.values().sum::<u64>() > 0 {
            exit_code::SOME_FAILED
        } else {
            exit_code::OK
        }
    }

    pub fn render(&self) -> String {
        let mut out = if self.dry_run {
            format!("Dry run: {} open offboard action(s) would be cancelled; nothing was called.\n", self.to_cancel)
        } else {
            format!(
                "{} {} offboard action(s).\n",
                if self.interrupted { "Interrupted after cancelling" } else { "Cancelled" },
                self.cancelled
            )
        };
        out += &format!("  already final (left as they were) {}\n", self.already_final);
        if self.no_open_action > 0 {
            out += &format!("  no open action found             {}\n", self.no_open_action);
        }
        let refused: u64 = self.not_cancelled.values().sum();
        if refused > 0 {
            let why: Vec<String> = self.not_cancelled.iter().map(|(code, n)| format!("{code} {n}")).collect();
            out += &format!(
                "  could not be cancelled            {refused} ({}){}\n",
                why.join(", "),
                self.first_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            );
        }
        out += &format!("Results: {}\n", self.results.display());
        printable(&out)
    }
}

/// `mde-offboard cancel`.
pub async fn command(args: CancelArgs, settings: Settings, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let file = ResultsFile::open(&args.results)?;
    let only = args.only.as_deref().map(read_only).transpose()?;
    let mut summary = CancelSummary { results: args.results.clone(), dry_run: args.dry_run, ..Default::default() };
    let open = open_rows(&file, only.as_ref(), &mut summary)?;
    if args.dry_run {
        summary.to_cancel = open.len() as u64;
        for o in &open {
            let action = o.action_id.as_deref().unwrap_or("(its open action is looked up when cancelling)");
            output::stdout(&printable(&format!("would cancel: {} {action}\n", o.machine)));
        }
        output::stdout(&summary.render());
        return Ok(exit_code::OK);
    }
    if open.is_empty() {
        output::stdout(&summary.render());
        return Ok(summary.exit_code());
    }
    let template = args.comment.clone().ok_or_else(|| {
        Error::Usage(
            "cancelling needs a comment (the API records it with the cancellation); pass --comment (`{run_id}` \
             and `{date}` are filled in)"
                .into(),
        )
    })?;
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.yes && !terminal {
        return Err(Error::Usage(
            "cancelling needs a confirmation, and there is no terminal to ask on; pass --yes to confirm on the \
             command line"
                .into(),
        ));
    }
    let run_id = journal::read(&journal::path_for(&args.results), |_, _| false)
        .map(|earlier| earlier.identity.run_id)
        .unwrap_or_else(|_| journal::new_run_id(SystemTime::now()));
    let comment = journal::expand_comment(&template, &run_id, SystemTime::now());

    let lookups = open.iter().any(|o| o.action_id.is_none());
    let credentials = settings.credentials()?.needing(true, lookups);
    let mut session = Session::open(&settings, credentials, Limiter::new(&settings.rates, settings.quota_scope))?;
    // A person's sign-in without a terminal: only with --yes and a cached refresh token.
    session.require_person(args.yes)?;
    session.lock(&lock::state_dir(), &journal::new_run_id(SystemTime::now())).await?;
    let _results_lock = ResultsLock::acquire(&args.results)?;
    tokio::pin!(shutdown);
    tokio::select! {
        token = session.sign_in(|granted| check_permissions(granted, lookups)) => token?,
        () = &mut shutdown => return Err(Error::Interrupted),
    };
    if !args.yes {
        let n = open.len();
        output::notice(
            "plan",
            &printable(&format!(
                "About to cancel {n} open offboard action(s) of run {run_id} ({}) in tenant {}.",
                args.results.display(),
                session.credentials().tenant_id
            )),
        );
        output::prompt(&format!("Type {n} to cancel them, anything else to stop: "));
        let answer = tokio::task::spawn_blocking(|| {
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer).map(|_| answer)
        });
        let answer = tokio::select! {
            answer = answer => answer.ok().and_then(|a| a.ok()).unwrap_or_default(),
            () = &mut shutdown => return Err(Error::Interrupted),
        };
        if answer.trim() != n.to_string() {
            return Err(Error::Usage("not confirmed; nothing was cancelled".into()));
        }
    }

    let api = session.api();
    let mut updates: BTreeMap<u64, Update> = BTreeMap::new();
    for o in &open {
        let done = tokio::select! {
            biased;
            () = &mut shutdown => { summary.interrupted = true; break; }
            done = cancel_one(api, o, &comment, &mut summary) => done,
        };
        if let Some(update) = done {
            updates.insert(o.row, update);
        }
        if api.fatal().is_some() {
            break;
        }
    }
    summary.cancelled = updates.len() as u64;
    if !updates.is_empty() {
        rewrite(&file, &updates)?;
    }
    if let Some(e) = api.fatal() {
        output::stdout(&summary.render());
        return Err(Error::Stopped(Box::new(Error::from(e.clone()))));
    }
    output::stdout(&summary.render());
    Ok(summary.exit_code())
}

/// Refuses a token that cannot cancel (or, with `lookups`, cannot read the actions to cancel).
fn check_permissions(permissions: &Permissions, lookups: bool) -> Result<()> {
    let (granted, kind, grant) = (permissions.granted(), permissions.kind_word(), permissions.how_to_grant());
    if !permissions.has(OFFBOARD_ROLE) {
        return Err(Error::Permission(format!(
            "cancelling offboard actions needs the {kind} permission {OFFBOARD_ROLE}, and the token carries \
             {granted}; {grant}"
        )));
    }
    if lookups && !READ_ROLES.iter().any(|r| permissions.has(r)) {
        return Err(Error::Permission(format!(
            "some rows (already_pending) have no action id, and finding their open action needs the {kind} \
             permission {} or {}; the token carries {granted}; {grant}",
            READ_ROLES[0], READ_ROLES[1]
        )));
    }
    Ok(())
}

/// The machine ids `--only` lists: the first cell of each line that is one.
fn read_only(path: &Path) -> Result<HashSet<MachineId>> {
    let fail = |e: std::io::Error| Error::Input { path: path.to_owned(), message: format!("cannot read it: {e}") };
    let file = std::fs::File::open(path).map_err(fail)?;
    let mut ids = HashSet::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(fail)?;
        let first = line.split([',', ';', '\t']).next().unwrap_or("").trim().trim_matches('"');
        if let Some(id) = MachineId::parse(first) {
            ids.insert(id);
        }
    }
    if ids.is_empty() {
        return Err(Error::Input {
            path: path.to_owned(),
            message: "lists no machine id (40 hexadecimal characters at the start of a line); nothing was cancelled"
                .into(),
        });
    }
    Ok(ids)
}

/// The rows whose action is to be cancelled, counting those left as they are in `summary`.
fn open_rows(file: &ResultsFile, only: Option<&HashSet<MachineId>>, summary: &mut CancelSummary) -> Result<Vec<Open>> {
    let col = |name| file.column(name);
    let (machine_col, outcome_col, id_col, status_col) =
        (col("machine_id")?, col("outcome")?, col("action_id")?, col("action_status")?);
    let mut open = Vec::new();
    for record in file.records()? {
        let record = record?;
        let cell = |i: usize| record.cells.get(i).unwrap_or("").trim();
        if !Outcome::parse(cell(outcome_col)).is_some_and(Outcome::has_action) {
            continue;
        }
        let Some(machine) = MachineId::parse(cell(machine_col)) else { continue };
        if only.is_some_and(|only| !only.contains(&machine)) {
            continue;
        }
        summary.with_action += 1;
        if ActionStatus::parse(cell(status_col)).is_final() {
            summary.already_final += 1;
            continue;
        }
        let action_id = Some(cell(id_col).to_string()).filter(|id| !id.is_empty());
        open.push(Open { row: record.row, machine, action_id });
    }
    Ok(open)
}

/// Cancels one row's action (looking it up first if the row has no id): the row's new state, or `None`.
async fn cancel_one(api: &Api, open: &Open, comment: &str, summary: &mut CancelSummary) -> Option<Update> {
    let mut refused = |code: String, message: String| {
        *summary.not_cancelled.entry(code).or_insert(0) += 1;
        summary.first_message.get_or_insert(message);
    };
    let action_id = match &open.action_id {
        Some(id) => id.clone(),
        None => {
            let query = ActionQuery::offboards(Page::nth(0, 100)).of_machine(open.machine);
            match api.list_actions(&query).await.1 {
                Ok(actions) => {
                    let open_action = actions
                        .into_iter()
                        .filter(|a| a.status.as_ref().is_some_and(ActionStatus::is_open))
                        .max_by(|a, b| a.creation_date_time_utc.cmp(&b.creation_date_time_utc));
                    match open_action.and_then(|a| a.id) {
                        Some(id) => id,
                        None => {
                            summary.no_open_action += 1;
                            return None;
                        }
                    }
                }
                Err(f) => {
                    refused(format!("lookup {}", f.code), f.message);
                    return None;
                }
            }
        }
    };
    let result = api.cancel_action(&action_id, comment).await;
    match result.answer {
        Ok(reply) => {
            let action = read_action(&reply.body).ok();
            let status =
                action.as_ref().and_then(|a| a.status.clone()).unwrap_or(ActionStatus::Cancelled).as_str().to_string();
            let updated_at = action.as_ref().and_then(|a| a.updated_at().cloned());
            let updated_at =
                updated_at.or_else(|| Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()));
            Some(Update { action_id, status, updated_at })
        }
        Err(f) => {
            // An answer lost on the way back (a timeout, a dropped connection), or a refusal of a retry after
            // one: the cancel may have gone through. The action says.
            if (f.answer_lost() || result.attempts > 1)
                && let Some(update) = cancelled_after_all(api, open.machine, &action_id).await
            {
                tracing::info!(machine = %open.machine, action = %action_id, "its answer was lost, and the action is cancelled");
                return Some(update);
            }
            let code = match f.status {
                Some(status) => format!("HTTP {status} {}", f.code),
                None => f.code.clone(),
            };
            tracing::warn!(machine = %open.machine, action = %action_id, "not cancelled: {code}: {}", f.message);
            refused(code, f.message);
            None
        }
    }
}

/// The row's new state when the machine's action `action_id` reads `Cancelled` now; `None` when it does
/// not, or cannot be read.
async fn cancelled_after_all(api: &Api, machine: MachineId, action_id: &str) -> Option<Update> {
    let query = ActionQuery::offboards(Page::nth(0, 100)).of_machine(machine);
    let actions = api.list_actions(&query).await.1.ok()?;
    let action = actions.into_iter().find(|a| a.id.as_deref().is_some_and(|id| id.eq_ignore_ascii_case(action_id)))?;
    (action.status == Some(ActionStatus::Cancelled)).then(|| Update {
        action_id: action_id.to_string(),
        status: ActionStatus::Cancelled.as_str().to_string(),
        updated_at: action.updated_at().cloned(),
    })
}

/// Rewrites the results file with the rows' new states, atomically.
fn rewrite(file: &ResultsFile, updates: &BTreeMap<u64, Update>) -> Result<()> {
    let (id_col, status_col, updated_col) =
        (file.column("action_id")?, file.column("action_status")?, file.column("updated_at")?);
    let mut out = Rewrite::start(file.path(), file.headers())?;
    for record in file.records()? {
        let record = record?;
        let mut cells: Vec<String> = record.cells.iter().map(str::to_string).collect();
        if let Some(update) = updates.get(&record.row) {
            let width = id_col.max(status_col).max(updated_col) + 1;
            if cells.len() < width {
                cells.resize(width, String::new());
            }
            cells[id_col] = update.action_id.clone();
            cells[status_col] = update.status.clone();
            if let Some(at) = &update.updated_at {
                cells[updated_col] = at.clone();
            }
        }
        out.write(&cells)?;
    }
    out.commit()
}
