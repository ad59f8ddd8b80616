//! `mde-offboard run`: the offboarding pipeline.
//!
//! reader (a batch at a time on the blocking pool) -> bounded channel -> dispatcher (intents on record, then
//! into a queue of at most `concurrency` machines, see [`WorkQueue`]) -> `concurrency` worker tasks (one call
//! sequence at a time each) -> one writer task. Every input row ends in exactly one results row: invalid and
//! duplicate rows go straight to the writer, every valid id gets one offboard call sequence, and a
//! per-machine failure is a row, never an aborted run. On shutdown the dispatcher stops, the machines queued
//! are dropped uncalled (like the rows not yet read), the run waits for those in flight, and the writer
//! flushes.

pub mod inventory;
mod job;
mod offboard;
pub mod dry_run;
pub mod guard;
pub mod preflight;
mod resume;
mod tenants;

pub use job::{Job, Options, Summary, TenantSummary};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::commands::session::Session;
use crate::defender::SharedClient;
use crate::defender::api::{CommentBody, TagChange};
use crate::defender::limiter::{self, Endpoint, Limiter};
use crate::domain::{MachineId, Outcome, message};
use crate::error::{Error, Result};
use crate::files::journal::{self, Journal, RunIdentity};
use crate::files::lock::{self, ResultsLock};
use crate::files::results::{self, Finished, ResultRow, ResultsWriter};
use crate::files::sync::off_runtime;
use crate::input::{self, Lookup, RowKind, Source};
use crate::settings::{Settings, SettingsArgs};
use crate::ui::progress::Progress;
use preflight::Screened;

/// Rows buffered between the workers and the writer. A row goes boxed, as a machine goes to a worker: a
/// channel allocates its slots in blocks of 32, and a block of pointers is a few hundred bytes where one of
/// rows is 9 KB, which each tenant of a run of many would hold twice for its whole run.
const CHANNEL_DEPTH: usize = 1024;
/// Rows the reader hands over at once: one wake of the dispatcher (and of the reader's thread) for each
/// batch, not for each row. The input is on disk already, so a batch waits for nothing but reading it. At
/// most [`READ_BATCH_PER_WORKER`] per machine the run calls at once: a paced run (each tenant of a run of
/// many) holds the rows it will soon call, not a thousand.
const READ_BATCH: usize = 128;
const READ_BATCH_PER_WORKER: usize = 2;
/// Batches read ahead of the dispatcher.
const READ_AHEAD: usize = 2;
/// At most this many rows, of those waiting, go to the results file in one write.
const WRITE_BATCH: usize = 256;
/// After an interrupt, calls in flight get their timeout and this much more to finish.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// CSV file listing the machines (a MachineId / Device ID / id column, or one id per line); `-` reads stdin.
    #[arg(value_name = "INPUT")]
    pub input: String,
    /// Results CSV. [default: <input stem>.results.csv beside the input; results.csv for stdin]
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace the results file if it exists.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Continue an interrupted run from its results file: keep finished rows, retry failed ones, do the rest.
    #[arg(long)]
    pub resume: bool,
    /// Also write the summary as JSON to FILE (atomically, also when interrupted).
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Do not ask for confirmation (needed when there is no terminal, e.g. in cron).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Refuse to start when the input has more than N valid machine ids.
    #[arg(long, value_name = "N")]
    pub max_machines: Option<u64>,
    /// Name of the column holding machine ids (matched ignoring case, spaces and underscores); with --by-name,
    /// the column holding computer names.
    #[arg(long, value_name = "NAME")]
    pub id_column: Option<String>,
    /// Offboard nothing: read the inventory and open actions in a few batched calls and write what a real run
    /// would do (would_submit, not_found, already_pending). Needs only read permission.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Real runs: skip the pre-flight that reads the inventory and open actions first (so that unknown and
    /// already pending machines cost no offboard call).
    #[arg(long, conflicts_with = "dry_run")]
    pub no_preflight: bool,
    /// The input lists computer names (computerDnsName, DeviceName, ComputerName, Hostname, DNS Name, Name
    /// column, or one name a line): resolve them to ids through the inventory. A name that matches several
    /// machines is `ambiguous`, never guessed.
    #[arg(long, conflicts_with = "no_preflight")]
    pub by_name: bool,
    /// The input lists Entra (Azure AD) device ids (AzureADDeviceId, aadDeviceId, Entra Device ID column, or
    /// one a line): resolve them to ids through the inventory, like names.
    #[arg(long, conflicts_with_all = ["no_preflight", "by_name"])]
    pub by_aad_device_id: bool,
    /// Field separator of the input: one character (`;`, `|`) or `tab`. [default: what the first line shows:
    /// `,`, `;` or a tab]
    #[arg(long, value_name = "CHAR", value_parser = input::parse_delimiter)]
    pub delimiter: Option<u8>,
    /// Do not offboard a machine that reported within DURATION (its row is `protected`); the API's lastSeen is
    /// the last full report, about daily. [config: run.active_within] [default: 48h]
    #[arg(long, value_name = "DURATION", conflicts_with = "allow_active")]
    pub active_within: Option<String>,
    /// Offboard machines however recently they reported (a migration to another product offboards live
    /// machines on purpose).
    #[arg(long)]
    pub allow_active: bool,
    /// Do not offboard machines carrying this tag; repeat for several (replaces run.protect_tags). Needs the
    /// pre-flight.
    #[arg(long = "protect-tag", value_name = "TAG")]
    pub protect_tags: Vec<String>,
    /// Do not offboard machines in this device group; repeat for several (replaces run.protect_groups). Needs
    /// the pre-flight.
    #[arg(long = "protect-group", value_name = "GROUP")]
    pub protect_groups: Vec<String>,
    /// After the offboards, add this tag to every machine whose row ended submitted, already_pending or
    /// already_offboarded (`{run_id}` and `{date}` filled in), 500 a call; needs Machine.ReadWrite.All.
    /// [config: run.tag]
    #[arg(long, value_name = "VALUE", conflicts_with = "dry_run")]
    pub tag: Option<String>,
    /// A list of several tenants (a TenantId or Tenant column) whose tenants sign in with app registrations
    /// of their own: per tenant, its client id and a secret file or a certificate (see README "Many tenants").
    #[arg(long, value_name = "FILE.toml")]
    pub tenants: Option<PathBuf>,
    /// Write the report at the end of the run, also when interrupted: HTML, or Markdown for a .md name.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Tracking follows the run (`--wait`, parsed with the tracking's options), as these options say: its
    /// permission is checked before the first API call.
    #[arg(skip)]
    pub wait: Option<crate::commands::track::TrackOptions>,
    /// The input is one tenant's share of a list of several, each record after its line in the list
    /// ([`input::Format::numbered`]): a run of several tenants runs each tenant's share so.
    #[arg(skip)]
    pub tenant_share: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// What a second signal still does before the process exits at once: write the summary JSON of the run
/// so far (it is small and atomic). Set while a run with `--summary-json` is under way.
static EXIT_NOW: Mutex<Option<Box<dyn FnOnce() + Send>>> = Mutex::new(None);

/// Runs what must happen before the process exits at once (a second signal): writes the summary JSON of
/// the run under way, if any.
pub fn before_exit_now() {
    let hook = EXIT_NOW.lock().ok().and_then(|mut hook| hook.take());
    if let Some(hook) = hook {
        hook();
    }
}

fn set_exit_now(hook: Option<Box<dyn FnOnce() + Send>>) {
    if let Ok(mut slot) = EXIT_NOW.lock() {
        *slot = hook;
    }
}

/// `mde-offboard run`: job, run, summary printed (and written as JSON with `--summary-json`). Also returns
/// the run's session (its sign-in, limiter and lock), for whatever follows on the same quota (`--wait`).
///
/// A list with a tenant column (`TenantId`, `Tenant`) is a run of several tenants ([`tenants`]): it has no
/// one session to return.
pub async fn command(
    args: RunArgs,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(Summary, Option<Session>)> {
    // A list whose header cannot be read is left to the usual checks, which say what else is wrong too.
    if let Source::Path(path) = Source::parse(&args.input)
        && let Ok(Some(column)) = input::tenants::tenant_column(&path, &input_format(&args))
    {
        return Ok((tenants::command(args, settings, path, column, shutdown).await?, None));
    }
    let summary_json = args.summary_json.clone();
    let (job, mut session) = prepare(args, settings)?;
    let run_id = job.run_id.clone();
    let tag = job.tag.clone();
    let result = execute(Box::new(job), &mut session, shutdown).await;
    // From here on this function writes the summary JSON itself.
    set_exit_now(None);
    match result {
        Ok(mut summary) => {
            tag_after(&mut summary, &session, tag).await;
            if let Some(path) = &summary_json
                && let Err(e) = summary.write_json(path)
            {
                // The offboards happened: say so with the exit code of a run stopped part way.
                summary.stopped.get_or_insert_with(|| e.to_string());
            }
            crate::ui::output::stdout(&summary.render());
            Ok((summary, Some(session)))
        }
        Err(e) => {
            if let Some(path) = &summary_json {
                let json = serde_json::json!({ "run_id": run_id, "exit_code": e.exit_code(), "error": e.to_string() });
                let _ = crate::files::write_atomically(
                    path,
                    &serde_json::to_vec_pretty(&json).expect("the summary serialises"),
                );
            }
            Err(e)
        }
    }
}

/// Tags the machines of a run that went to its end (`--tag`, `run.tag`), counting the calls in the summary;
/// an interrupted one is tagged later (`mde-offboard tag`).
async fn tag_after(summary: &mut Summary, session: &Session, tag: Option<String>) {
    let Some(template) = tag else { return };
    if summary.interrupted || summary.stopped.is_some() {
        return;
    }
    let value = journal::expand_comment(&template, &summary.run_id, SystemTime::now());
    let api = session.api();
    let calls_before = api.counters.calls.load(Ordering::Relaxed);
    match crate::commands::tag::tag_results(api, &summary.results, &value, TagChange::Add).await {
        Ok(tags) => summary.tags = Some(tags),
        // The offboards stand: a tagging that could not read the results is told, never the run's end.
        Err(e) => crate::ui::output::error(&format!("the machines were not tagged: {e}")),
    }
    summary.calls += api.counters.calls.load(Ordering::Relaxed) - calls_before;
}

/// How the command line says to read the input.
fn input_format(args: &RunArgs) -> input::Format {
    let lookup = match (args.by_name, args.by_aad_device_id) {
        (true, _) => Some(Lookup::Name),
        (_, true) => Some(Lookup::AadDeviceId),
        _ => None,
    };
    input::Format { column: args.id_column.clone(), lookup, delimiter: args.delimiter, numbered: args.tenant_share }
}

/// Where the results go: `--output` (`{date}` and `{run_id}` filled in), or beside the input.
fn output_path(args: &RunArgs, source: &Source, run_id: &str) -> PathBuf {
    let output = args.output.as_deref().map(|path| journal::expand_output(path, run_id, SystemTime::now()));
    output.unwrap_or_else(|| {
        let input = match source {
            Source::Path(p) => Some(p.as_path()),
            Source::Stdin => None,
        };
        if args.dry_run { dry_run::default_output(input) } else { results::default_path(input) }
    })
}

/// Turns the command line into a [`Job`] and the [`Session`] it runs in, checking everything that can be
/// checked without the network.
pub fn prepare(args: RunArgs, settings: Settings) -> Result<(Job, Session)> {
    prepare_on(args, settings, None)
}

/// As [`prepare`], the session's calls made on `shared` when given (a client the tenants of a run share).
pub fn prepare_on(args: RunArgs, settings: Settings, shared: Option<SharedClient>) -> Result<(Job, Session)> {
    if let Some(file) = &args.tenants {
        return Err(Error::Usage(format!(
            "--tenants {} gives the apps of a list of several tenants, and {} has no tenant column (TenantId or \
             Tenant); add one, or drop --tenants",
            file.display(),
            Source::parse(&args.input).display()
        )));
    }
    let options = Options { dry_run: args.dry_run, preflight: !args.no_preflight, wait: args.wait.is_some() };
    // A dry run sends no offboard, so it needs no comment. Whatever is missing is said at once.
    let comment =
        if options.dry_run { Ok(settings.comment.clone().unwrap_or_default()) } else { settings.require_comment() };
    let (credentials, comment_template) = match (settings.credentials(), comment) {
        (Ok(credentials), Ok(comment)) => (credentials, comment),
        (credentials, comment) => {
            return Err(Error::all([credentials.err(), comment.err()].into_iter().flatten()).expect("one failed"));
        }
    };
    // A person's sign-in asks only for what this run does (a resume may look up the machines in doubt).
    let by_name = args.by_name || args.by_aad_device_id;
    let credentials = credentials.needing(!options.dry_run, options.reads(by_name) || options.wait || args.resume);
    let source = Source::parse(&args.input);
    let from_stdin = matches!(source, Source::Stdin);
    let run_id = journal::new_run_id(SystemTime::now());
    // `{date}` and `{run_id}` in --output: a new results file for each night's run of a list that changes.
    let output = output_path(&args, &source, &run_id);
    // A resume continues an existing file; either way the directory must take new files.
    results::check_writable(&output, args.overwrite || args.resume).map_err(|e| match e {
        Error::Output { path, .. } if !options.dry_run && !args.overwrite && is_results_of(&path, &source) => {
            Error::Output { path, message: RESUMABLE.into() }
        }
        e => e,
    })?;
    // And every other file it writes, before any network: found after the offboards, a file the run cannot
    // write would leave it unable to say what it did.
    preflight::check_files(&output, &options, args.resume, args.summary_json.as_deref())?;
    let scan = input::scan_format(source, &input_format(&args))?;
    if let (Some(column), Source::Stdin) = (&scan.tenant_column, &scan.source) {
        return Err(scan_error(
            &scan,
            &format!(
                "names several tenants (column `{}`), which a run splits by tenant on disk: save the list to a file \
                 and give its path; nothing was done",
                column.escape_debug()
            ),
        ));
    }
    if scan.rows == 0 {
        // Nothing to sign in for.
        return Err(scan_error(&scan, "no machines in the input: it has a header and no rows; nothing was done"));
    }
    if scan.by_name && !options.preflight {
        let what = if scan.lookup == Lookup::AadDeviceId { "Entra device ids" } else { "computer names" };
        return Err(Error::Usage(format!(
            "{} lists {what} (column `{}`), which are resolved through the pre-flight; drop --no-preflight",
            scan.source.display(),
            scan.id_column.as_deref().unwrap_or("")
        )));
    }
    let guard = resolve_guard(&args, &settings)?;
    // The guard sees the machines through the pre-flight alone: a protect setting asked for (a tag, a group,
    // or --active-within on the command line) cannot be kept without it.
    if !options.preflight && (guard.protects_by_name() || args.active_within.is_some()) {
        return Err(Error::Usage(format!(
            "the guard protects {}, which it can only see through the pre-flight's read of the inventory; drop \
             --no-preflight (or the protect settings); nothing was done",
            guard.describe()
        )));
    }
    if let Some(max) = args.max_machines
        && scan.valid > max
    {
        return Err(Error::Usage(format!(
            "{} lists {} machines, more than --max-machines {max}; nothing was done",
            scan.source.display(),
            scan.valid
        )));
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !options.dry_run && !args.yes && scan.valid > 0 && (!terminal || from_stdin) {
        return Err(Error::Usage(
            "offboarding needs a confirmation, and there is no terminal to ask on (or the input is stdin); \
             pass --yes to confirm on the command line"
                .into(),
        ));
    }
    let tag = if options.dry_run { None } else { args.tag.clone().or_else(|| settings.tag.clone()) };
    if let Some(tag) = &tag {
        crate::commands::tag::check_value(tag)?;
    }
    let credentials = if tag.is_some() { credentials.tagging() } else { credentials };
    let limiter = Limiter::new(&settings.rates, settings.quota_scope);
    let session = match shared {
        Some(shared) => Session::open_on(shared, &settings, credentials, limiter),
        None => Session::open(&settings, credentials, limiter)?,
    };
    // A dry run changes nothing, as `--yes` says for a real one.
    session.require_person(args.yes || options.dry_run)?;
    let job = Job {
        tag,
        settings,
        comment_template,
        scan,
        output,
        overwrite: args.overwrite,
        resume: args.resume,
        run_id,
        lock_dir: lock::state_dir(),
        confirm: !args.yes,
        progress: std::io::stderr().is_terminal(),
        preflight: options,
        guard,
        summary_json: args.summary_json.clone(),
    };
    Ok((job, session))
}

const RESUMABLE: &str = "already exists, the results of an earlier run of this list: pass --resume to continue \
                         it (finished rows are kept, the rest done or retried), --overwrite to replace it, or \
                         --output to write elsewhere";

/// Whether `path` is the results file of an earlier run of `source` (its journal says so).
fn is_results_of(path: &std::path::Path, source: &Source) -> bool {
    path.is_file()
        && journal::read(&journal::path_for(path), |_, _| false).is_ok_and(|j| j.identity.input == source.display())
}

/// An error about the scanned input.
fn scan_error(scan: &input::Scan, message: &str) -> Error {
    Error::Input { path: PathBuf::from(scan.source.display()), message: message.into() }
}

/// The guard of live machines: the flags over the settings (a flag list replaces the configured one).
fn resolve_guard(args: &RunArgs, settings: &Settings) -> Result<guard::Guard> {
    let active_within = match &args.active_within {
        _ if args.allow_active => None,
        Some(text) => Some(
            crate::settings::parse_active_within(text)
                .map_err(|allowed| Error::Usage(format!("--active-within `{text}` is not allowed: {allowed}")))?,
        ),
        None => Some(settings.active_within),
    };
    let list = |flags: &[String], configured: &[String], flag: &str| -> Result<Vec<String>> {
        if let Some(bad) = flags.iter().find(|f| f.trim().is_empty() || f.contains(char::is_control)) {
            let bad = bad.escape_debug();
            return Err(Error::Usage(format!(
                "{flag} `{bad}` is empty or holds control characters; name a tag or group"
            )));
        }
        Ok(if flags.is_empty() { configured.to_vec() } else { flags.to_vec() })
    };
    Ok(guard::Guard {
        active_within,
        tags: list(&args.protect_tags, &settings.protect_tags, "--protect-tag")?,
        groups: list(&args.protect_groups, &settings.protect_groups, "--protect-group")?,
        now: SystemTime::now(),
    })
}

/// Runs the job in `session`: lock, sign in, confirm, offboard every machine, write every row, summarise.
pub async fn execute(mut job: Box<Job>, session: &mut Session, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    // One run at a time per tenant and app (a dry run too: its reads spend the same quota). Held as long as
    // the session. A tenant given by a domain name takes the lock of its id, which signing in finds (before
    // any API call).
    // (Signing in to learn it may wait for a person to enter a code: a signal ends that at once.)
    //
    // The steps that run once before the offboards (the lock, the sign-in, the pre-flight, a dry run) are
    // boxed: an async function's state is as large as its largest step's, and would be held that large for
    // the whole run (by each tenant of a run of many) though these steps are over in its first second.
    tokio::pin!(shutdown);
    tokio::select! {
        biased;
        _ = &mut shutdown => return Err(Error::Interrupted),
        locked = Box::pin(session.lock(&job.lock_dir, &job.run_id)) => locked?,
    }
    // And one command at a time on the results file, whatever its state directory.
    let _results_lock = ResultsLock::acquire(&job.output)?;
    if job.preflight.dry_run {
        return Box::pin(dry_run::dry_run(*job, session, shutdown)).await;
    }
    let credentials = session.credentials();
    let started = Instant::now();
    let started_at = SystemTime::now();
    let journal_path = journal::path_for(&job.output);
    let mut identity = RunIdentity {
        run_id: job.run_id.clone(),
        input: job.scan.source.display(),
        input_rows: job.scan.rows,
        input_valid: job.scan.valid,
        input_sha256: Some(job.scan.sha256.clone()),
        tenant_id: credentials.tenant_id.clone(),
        client_id: credentials.client_id.clone(),
        comment: job.comment_template.clone(),
        resolved_comment: Some(journal::expand_comment(&job.comment_template, &job.run_id, started_at)),
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        account: None,
    };

    // A resume continues the earlier run: same identity (and run id, so the comment stays the same).
    let mut resume = if job.resume && job.output.exists() {
        // Reads the earlier results and journal whole: off the runtime.
        Some(off_runtime(|| resume::read_earlier(&job, &journal_path, &identity))?)
    } else {
        None
    };
    let resumed = resume.is_some();
    if let Some(earlier) = &resume {
        identity = earlier.identity.clone();
    }
    let comment = identity.comment_sent();

    // Until the first offboard, a signal ends the run at once: nothing has been done.
    // Sign in before anything else: a wrong secret or tenant is reported before any machine is touched.
    // And the permissions, before any API call.
    let in_doubt = resume.as_ref().map_or(0, |earlier| earlier.in_doubt.len());
    let needs = |granted: &crate::defender::auth::Permissions| {
        preflight::check_permissions(granted, &job.preflight, job.scan.by_name)?;
        if job.tag.is_some() {
            crate::commands::tag::check_permission(
                granted,
                "--tag (run.tag) tags the machines after the offboards, which",
            )?;
        }
        resume::check_lookup_permission(granted, in_doubt)
    };
    let token = tokio::select! {
        token = Box::pin(session.sign_in(needs)) => token?,
        _ = &mut shutdown => return Err(Error::Interrupted),
    };
    let account = token.account().map(str::to_owned);
    if !job.preflight.dry_run && !preflight::READ_ROLES.iter().any(|r| token.permissions().has(r)) {
        crate::ui::output::notice(
            "plan",
            &format!(
                "Without {} or {}, a machine whose answer is lost (a timeout, a dropped connection) cannot be \
                 looked up: its row is `failed` with `InDoubt`, and it is not called again (--resume needs the \
                 permission to look it up).",
                preflight::READ_ROLES[0],
                preflight::READ_ROLES[1]
            ),
        );
    }
    if !resumed {
        // Kept in the journal, so a report of the results file names who offboarded.
        identity.account = account.clone();
    }
    let round_trip = started.elapsed();
    let api = session.api().clone();
    // The pre-flight's reads share the quotas with the offboards: same Api, same limiter.
    let mut screen = tokio::select! {
        screen = Box::pin(preflight::load(&job, &api)) => screen?,
        _ = &mut shutdown => return Err(Error::Interrupted),
    };
    // Read through once: the run goes on without it (8 KiB a tenant of a run of many).
    job.scan.release_filter();
    if let Some(screen) = &screen {
        crate::ui::output::notice("preflight", &format!("Pre-flight: read {}.", screen.describe()));
        crate::ui::output::notice("plan", &screen.protected_line());
    } else {
        crate::ui::output::notice(
            "plan",
            "Guard: off. Without the pre-flight (--no-preflight) the guard cannot see the machines: live machines \
             are offboarded like any other.",
        );
    }
    let to_offboard = match &mut resume {
        // Exactly the machines this session will call for: the input screened as the run will screen it,
        // less the lines already done. (The pre-flight's count already leaves out the machines whose
        // earlier offboard is still open, so subtracting the finished ones from it counted some twice.)
        Some(earlier) => {
            let (rows, done) = (job.scan.rows()?, std::mem::take(&mut earlier.done));
            let in_doubt = earlier.in_doubt.clone();
            let counted = tokio::task::spawn_blocking(move || {
                let calls = resume::count_calls(rows, screen.as_mut(), &done, &in_doubt);
                (calls, screen, done)
            });
            let (calls, back, done) = tokio::select! {
                counted = counted => counted.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
                _ = &mut shutdown => return Err(Error::Interrupted),
            };
            (screen, earlier.done) = (back, done);
            if let Some(screen) = &mut screen {
                screen.rewind()?;
            }
            calls?
        }
        None => screen.as_ref().map_or(job.scan.valid, preflight::Screen::to_submit),
    };

    if to_offboard > 0 {
        // The schedule the limiter will follow, from the calls already in its windows.
        let latency = round_trip.clamp(limiter::ESTIMATE_LATENCY.0, limiter::ESTIMATE_LATENCY.1);
        let schedule = api.limiter().schedule(Endpoint::Offboard, to_offboard, job.settings.concurrency, latency);
        let plan = format!(
            "{} {to_offboard} machine(s) in tenant {} through {} (run {}).\nThe API's quotas ({}, {}) make this take about {} at best.",
            if resumed { "Resuming: about to offboard the remaining" } else { "About to offboard" },
            credentials.tenant_id,
            job.settings.api_base,
            identity.run_id,
            job.settings.rates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            limiter::describe_scope(api.limiter().stats().scope),
            humantime::format_duration(Duration::from_secs(schedule.done.as_secs()))
        );
        let plan = match schedule.spilled {
            // Per API, the reads are in budgets of their own: only the offboards fill theirs.
            Some((rate, late)) if api.limiter().stats().scope == crate::settings::QuotaScope::Api => format!(
                "{plan}\nThese are more than the quota {rate} allows the offboard API in one period: the last {late} \
                 machine(s) wait for its next window."
            ),
            Some((rate, late)) => format!(
                "{plan}\nThe calls already made (the pre-flight's reads) and these are more than the quota {rate} allows \
                 in one period: the last {late} machine(s) wait for its next window."
            ),
            None => plan,
        };
        crate::ui::output::notice("plan", &plan);
        if job.confirm {
            // Read off the runtime, so a signal at the prompt ends the run at once.
            crate::ui::output::prompt(&format!("Type {to_offboard} to offboard them, anything else to stop: "));
            let answer = tokio::task::spawn_blocking(read_answer);
            tokio::select! {
                answer = answer => confirmed(to_offboard, answer.unwrap_or_else(|e| Err(Error::Usage(e.to_string()))))?,
                _ = &mut shutdown => return Err(Error::Interrupted),
            }
        }
    }

    // The journal before the results file: a kill between the two leaves no results file without one.
    // What the file holds before this session's rows (a resume appends to it).
    // (Reading the file, and creating the files with their first syncs, off the runtime.)
    let (rows_before, journal, writer) = off_runtime(|| {
        Ok::<_, Error>(if resumed {
            (results::count_rows(&job.output)?, Journal::reopen(&journal_path)?, ResultsWriter::append(&job.output)?)
        } else {
            let journal = Journal::create(&journal_path, &identity)?;
            (0, journal, ResultsWriter::create(&job.output, job.overwrite)?)
        })
    })?;
    let (finished, in_doubt) = match resume {
        Some(r) => (r.done, r.in_doubt),
        None => (Finished::default(), HashMap::new()),
    };
    // The lines earlier sessions finished, if any (a first session has none to look up for each row).
    let done = (!finished.is_empty()).then_some(&finished);
    let progress = Progress::new(job.scan.rows, job.progress);
    let status = progress.is_shown().then(|| {
        let (api, progress) = (api.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                let paused = api.limiter().paused_until().map(|until| until - Instant::now());
                progress.status(api.counters.throttled.load(Ordering::Relaxed), paused);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let span = tracing::info_span!("run", run_id = %identity.run_id);

    let cancelled = Arc::new(AtomicBool::new(false));
    let (item_tx, mut item_rx) = mpsc::channel::<Vec<Result<Screened>>>(READ_AHEAD);
    let read_batch = READ_BATCH.min(READ_BATCH_PER_WORKER * job.settings.concurrency).max(1);
    let (row_tx, row_rx) = mpsc::channel::<Box<ResultRow>>(CHANNEL_DEPTH);
    // The machines whose call sequence has started and whose row is not yet sent. A machine's task takes
    // itself out before it sends its row; after an interrupt's drain bound, the dispatcher takes out those
    // still in and writes their rows itself: either way each machine gets exactly one row.
    let in_flight: Arc<Mutex<InFlight>> = Arc::default();

    let reader = {
        let rows = job.scan.rows()?;
        let cancelled = cancelled.clone();
        let screen = screen.take();
        // Rows are read and screened off the runtime (both read files), a batch at a time on the blocking
        // pool: no thread is held while the batches wait for the dispatcher (a paced run waits for its
        // quota most of the time, each tenant of a run of many too).
        // (The reader and the screen boxed: the task holds them across its waits, as long as the run.)
        tokio::spawn(async move {
            let mut state = Box::new((rows, screen));
            loop {
                let (back, batch, end) = tokio::task::spawn_blocking(move || {
                    let (rows, screen) = &mut *state;
                    let mut batch = Vec::with_capacity(read_batch);
                    let mut end = true;
                    for row in rows.by_ref() {
                        let item = row.and_then(|row| preflight::screen(screen.as_mut(), row));
                        let failed = item.is_err();
                        batch.push(item);
                        // A row that could not be read ends the input: it goes with the rows before it.
                        if failed || batch.len() == read_batch {
                            end = failed;
                            break;
                        }
                    }
                    (state, batch, end)
                })
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                state = back;
                if cancelled.load(Ordering::Relaxed) || (!batch.is_empty() && item_tx.send(batch).await.is_err()) || end
                {
                    break;
                }
            }
        })
    };
    let live: Arc<Mutex<BTreeMap<Outcome, u64>>> = Arc::default();
    let writer_task = tokio::spawn(write_rows(writer, row_rx, progress.clone(), live.clone()));
    let session_summary = SessionSummary {
        run_id: identity.run_id.clone(),
        started,
        started_at,
        results: job.output.clone(),
        resumed,
        account,
        api: api.clone(),
    };
    if let Some(path) = job.summary_json.clone() {
        let (session_summary, live) = (session_summary.clone(), live.clone());
        set_exit_now(Some(Box::new(move || {
            // This session's rows: what the writer has put in the file so far.
            let counts = live.lock().map(|c| c.clone()).unwrap_or_default();
            let _ = session_summary.of(counts, true).write_json(&path);
        })));
    }

    let body = Arc::new(CommentBody::new(&comment));
    let comment: Arc<str> = comment.into();
    // Why dispatch stopped before the input's end, other than a signal.
    let mut stop: Option<Error> = None;
    let mut interrupted = false;
    let writer_gone = || Error::Output {
        path: job.output.clone(),
        message: "the results file stopped taking rows (see the error above)".into(),
    };
    // The workers, --concurrency of them: each takes the next machine from the queue, makes its call
    // sequence and sends its row, until the queue closes (or stops).
    let queue = Arc::new(WorkQueue::new(job.settings.concurrency));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..job.settings.concurrency {
        let (api, comment, body, queue) = (api.clone(), comment.clone(), body.clone(), queue.clone());
        // A weak sender: a machine still stuck in a call after an interrupt's drain bound must not keep the
        // writer waiting.
        let row_tx = row_tx.downgrade();
        let in_flight = in_flight.clone();
        workers.spawn(
            async move {
                loop {
                    // Sign-in failed for good, or the results file stopped taking rows: no machine more is
                    // called (the dispatcher sees why and stops).
                    if api.fatal().is_some() || row_tx.upgrade().is_none_or(|tx| tx.is_closed()) {
                        queue.stop();
                        break;
                    }
                    let Some(work) = queue.take(&in_flight).await else { break };
                    let Work { line, machine, facts, earlier_intent } = *work;
                    let mut result = offboard::offboard_one(&api, line, machine, &comment, &body, earlier_intent).await;
                    if let Some(facts) = facts {
                        facts.fill(&mut result);
                    }
                    log_row(&result);
                    // Upgraded under the lock, before the dispatcher can give up on this machine and drop
                    // the last strong sender.
                    let sender = {
                        let mut in_flight = in_flight.lock().expect("never poisoned");
                        in_flight.remove(&line).and_then(|_| row_tx.upgrade())
                    };
                    if let Some(sender) = sender {
                        let _ = sender.send(Box::new(result)).await;
                    }
                }
            }
            .instrument(span.clone()),
        );
    }
    // The lines of the next machines whose intents are on record already, in the order they are called
    // (see [`intents_ahead`]).
    let mut recorded: VecDeque<u64> = VecDeque::new();
    let mut batch = Vec::new().into_iter();
    loop {
        let Some(item) = batch.next() else {
            let next = tokio::select! {
                biased;
                _ = &mut shutdown => {
                    interrupted = true;
                    break;
                }
                next = item_rx.recv() => next,
            };
            match next {
                Some(next) => {
                    batch = next.into_iter();
                    continue;
                }
                None => break,
            }
        };
        let screened = match item {
            Ok(screened) => screened,
            Err(e) => {
                stop = Some(e);
                break;
            }
        };
        if done.is_some_and(|done| done.contains(screened.line(), &resume::machine_of(&screened))) {
            continue;
        }
        let screened = resume::look_up_if_in_doubt(screened, &in_doubt);
        let (row, facts) = match screened {
            Screened::Row(result) => {
                if row_tx.send(result).await.is_err() {
                    stop = Some(writer_gone());
                    break;
                }
                continue;
            }
            Screened::Pass(row, facts) => (row, facts),
        };
        let machine = match row.kind {
            RowKind::Valid(id) => id,
            RowKind::Name(_) => unreachable!("preflight::screen resolves every name"),
            RowKind::Invalid => {
                let why = message::not_a_machine_id(&row.raw);
                let mut result = ResultRow::new(row.line, row.raw, Outcome::InvalidId);
                result.error_message = Some(why.into());
                if row_tx.send(Box::new(result)).await.is_err() {
                    stop = Some(writer_gone());
                    break;
                }
                continue;
            }
            RowKind::Duplicate => {
                let mut result = ResultRow::new(row.line, row.raw.trim().to_ascii_lowercase(), Outcome::Duplicate);
                result.error_message = Some(message::listed_earlier().into());
                if row_tx.send(Box::new(result)).await.is_err() {
                    stop = Some(writer_gone());
                    break;
                }
                continue;
            }
        };
        // A full queue is waited on until it has run down to half: the dispatcher wakes once for many
        // machines, not once for each.
        if !queue.has_room() {
            let room = tokio::select! {
                biased;
                _ = &mut shutdown => {
                    interrupted = true;
                    break;
                }
                room = queue.room() => room,
            };
            if !room {
                break;
            }
        }
        if api.fatal().is_some() {
            break;
        }
        if row_tx.is_closed() {
            stop = Some(writer_gone());
            break;
        }
        let earlier_intent = in_doubt.get(&row.line).and_then(|intents| journal::earliest(intents, &machine));
        // The intent is on record before the first call, so a crash can never leave an unknown call behind:
        // this machine's, and with it those of the next ones already read, in one write.
        if recorded.front() == Some(&row.line) {
            recorded.pop_front();
        } else {
            recorded.clear();
            // The machines queued are on record and not yet called too: with them, at most --concurrency.
            let most = job.settings.concurrency.saturating_sub(queue.len()).max(1);
            let ahead = intents_ahead(batch.as_slice(), done, most);
            let written =
                journal.intents(std::iter::once((row.line, &machine)).chain(ahead.iter().map(|(l, m)| (*l, m))));
            if let Err(e) = written {
                stop = Some(e);
                break;
            }
            recorded.extend(ahead.iter().map(|(line, _)| *line));
        }
        queue.give(Box::new(Work { line: row.line, machine, facts, earlier_intent }));
    }
    if let Some(e) = api.fatal() {
        stop.get_or_insert_with(|| Error::from(e.clone()));
    }
    if stop.is_none() && row_tx.is_closed() {
        // A worker stopped the queue for it.
        stop = Some(writer_gone());
    }
    if interrupted || stop.is_some() {
        // The machines queued and not yet taken are not called: like those not yet read, they get no row,
        // and their intents are on record for --resume to look them up.
        queue.stop();
    } else {
        queue.close();
    }
    cancelled.store(true, Ordering::Relaxed);
    drop(item_rx);

    // Every machine started gets its row. At the input's end that means waiting as long as they take: the
    // quota may hold the last ones back for most of an hour, and each call is bounded by its timeout and
    // the retry policy. An interrupt (or a stop) cancels what has not been sent and waits a bounded time
    // for the calls on the wire.
    let all_done = async { while workers.join_next().await.is_some() {} };
    tokio::pin!(all_done);
    let mut finished = false;
    if !interrupted && stop.is_none() {
        tokio::select! {
            biased;
            _ = &mut all_done => finished = true,
            _ = &mut shutdown => interrupted = true,
        }
    }
    if !finished {
        tracing::warn!("no new machines are started; waiting for the calls in flight");
        api.cancel();
        let drain_limit = job.settings.timeout + DRAIN_GRACE;
        if tokio::time::timeout(drain_limit, &mut all_done).await.is_err() {
            let left: Vec<(u64, MachineId)> = in_flight.lock().expect("never poisoned").drain().collect();
            tracing::warn!(
                "{} call(s) still in flight after {}; their machines are in the journal and --resume looks them up",
                left.len(),
                humantime::format_duration(drain_limit)
            );
            for (line, machine) in left {
                let mut row = ResultRow::new(line, machine.to_string(), Outcome::Failed);
                row.error_code = Some("InDoubt".into());
                row.error_message = Some(message::in_flight_when_stopped().into());
                let _ = row_tx.send(Box::new(row)).await;
            }
        }
    }
    drop(row_tx);
    let _ = reader.await;
    let (written, write_error) = match writer_task.await {
        Ok(Ok(written)) => (written, None),
        Ok(Err(e)) => (None, Some(e)),
        Err(e) => (None, Some(Error::Output { path: job.output.clone(), message: format!("the writer stopped: {e}") })),
    };
    // What the writer put in the file this session.
    let counts = live.lock().map(|c| c.clone()).unwrap_or_default();
    let rows_written: u64 = counts.values().sum();
    if let Some(status) = status {
        status.abort();
    }
    progress.finish();
    off_runtime(|| journal.sync());

    let mut summary = session_summary.of(counts.clone(), interrupted);
    // A failed write stops the run with the rows so far; so does anything that stopped dispatch.
    if let Some(e) = write_error.or(stop) {
        summary.stopped = Some(e.to_string());
        tracing::error!("{e}");
        return Ok(summary);
    }
    // The file must hold every row written, or the summary would claim rows nobody can read.
    // Reading the file whole, compacting it and the journal: off the runtime.
    let end = off_runtime(|| {
        let in_doubt = results::verify(&job.output, rows_before + rows_written, written)?;
        let complete = !interrupted;
        // A resumed results file holds rows from several sessions: count (and, when complete, compact) it,
        // so it ends with exactly one row per input row.
        let counts = if resumed { results::tally(&job.output, complete)? } else { counts };
        if complete {
            journal.complete(&identity, &in_doubt)?;
        }
        Ok::<_, Error>(counts)
    });
    match end {
        Ok(counts) => {
            summary.rows = counts.values().sum();
            summary.counts = counts;
        }
        Err(e) => summary.stopped = Some(e.to_string()),
    }
    summary.duration = started.elapsed();
    Ok(summary)
}

/// The machines in flight, by input line.
type InFlight = HashMap<u64, MachineId, std::hash::BuildHasherDefault<LineHasher>>;

/// Hashes the input lines that key [`InFlight`]: each line is there once and none is chosen from outside,
/// so a multiplication spreads them as well as SipHash does, at a fraction of its cost (two a machine).
#[derive(Default)]
struct LineHasher(u64);

impl std::hash::Hasher for LineHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The machines the dispatcher hands to the workers, first in first out, at most `full` waiting. Each lock is
/// held for a take or a give, never across a wait. A worker takes a machine and enters it in the in-flight
/// set in one step, so a machine is always either queued, in flight or done.
struct WorkQueue {
    queued: Mutex<Queued>,
    /// Wakes a worker: a machine was given, or the queue closed.
    given: Notify,
    /// Wakes the dispatcher: the queue ran down to half, or stopped.
    drained: Notify,
    full: usize,
}

#[derive(Default)]
struct Queued {
    machines: VecDeque<Box<Work>>,
    /// No machine more will be given: the workers take those left, then end.
    closed: bool,
    /// Those left are dropped, and none is given or taken any more.
    stopped: bool,
}

impl WorkQueue {
    fn new(full: usize) -> WorkQueue {
        WorkQueue { queued: Mutex::default(), given: Notify::new(), drained: Notify::new(), full: full.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().expect("never poisoned")
    }

    /// Whether a machine can be given without waiting.
    fn has_room(&self) -> bool {
        self.len() < self.full
    }

    /// The machines queued.
    fn len(&self) -> usize {
        self.lock().machines.len()
    }

    /// Waits until the queue has room: at once if it has, else until a take brings it down to half (a wake
    /// left over from an earlier half may end a wait sooner: the queue is looked at again, and a full one
    /// waited on again). `false` once it has stopped.
    async fn room(&self) -> bool {
        loop {
            let drained = self.drained.notified();
            {
                let queued = self.lock();
                if queued.stopped {
                    return false;
                }
                if queued.machines.len() < self.full {
                    return true;
                }
            }
            drained.await;
        }
    }

    fn give(&self, work: Box<Work>) {
        self.lock().machines.push_back(work);
        self.given.notify_one();
    }

    /// Ends the queue once the machines in it are taken.
    fn close(&self) {
        self.lock().closed = true;
        self.given.notify_waiters();
    }

    /// Ends the queue now: the machines in it are dropped, not called.
    fn stop(&self) {
        let dropped = {
            let mut queued = self.lock();
            queued.closed = true;
            queued.stopped = true;
            std::mem::take(&mut queued.machines)
        };
        drop(dropped);
        self.given.notify_waiters();
        self.drained.notify_waiters();
    }

    /// The next machine, entered in `in_flight`; `None` once the queue has ended.
    async fn take(&self, in_flight: &Mutex<InFlight>) -> Option<Box<Work>> {
        loop {
            let given = self.given.notified();
            {
                let mut queued = self.lock();
                if let Some(work) = queued.machines.pop_front() {
                    in_flight.lock().expect("never poisoned").insert(work.line, work.machine);
                    if queued.machines.len() == self.full / 2 {
                        self.drained.notify_one();
                    }
                    return Some(work);
                }
                if queued.closed {
                    return None;
                }
            }
            given.await;
        }
    }
}

/// A machine handed to a worker.
struct Work {
    line: u64,
    machine: MachineId,
    /// What the pre-flight read of it, for its row.
    facts: Option<preflight::Facts>,
    /// When an earlier session was first about to call it (a resume looks it up first).
    earlier_intent: Option<u64>,
}

/// The machines among `next` (the rows read and not yet dispatched) that the dispatcher will call, in
/// order, up to `most` less one: their intents go on record with the machine about to be called, in one
/// write. Should the run stop before it calls them, `--resume` looks them up before calling (an intent
/// without a row is a call that may have gone through): a lookup each, never an offboard twice.
fn intents_ahead(next: &[Result<Screened>], done: Option<&Finished>, most: usize) -> Vec<(u64, MachineId)> {
    let mut ahead = Vec::new();
    for item in next {
        if ahead.len() + 1 >= most {
            break;
        }
        match item {
            Ok(Screened::Pass(row, _)) => match &row.kind {
                RowKind::Valid(id) if !done.is_some_and(|done| done.contains(row.line, &id.to_string())) => {
                    ahead.push((row.line, *id))
                }
                _ => {}
            },
            Ok(Screened::Row(_)) => {}
            // Dispatch stops at a row that could not be read: nothing after it is called.
            Err(_) => break,
        }
    }
    ahead
}

/// Whether the answer typed back is the number of machines.
fn confirmed(machines: u64, answer: Result<String>) -> Result<()> {
    if answer?.trim() == machines.to_string() {
        Ok(())
    } else {
        Err(Error::Usage("not confirmed; nothing was done".into()))
    }
}

/// Reads the answer to the confirmation (blocking: called off the runtime).
fn read_answer() -> Result<String> {
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::Usage(format!("cannot read the confirmation: {e}")))?;
    Ok(answer)
}

/// The one owner of the results file: writes each row as it comes, until every sender is gone, counting
/// each row written in `counts` (read live by a second signal's summary, and at the end). A failed write
/// ends it (the senders then find the channel closed and stop) and is returned; else what the writer wrote
/// ([`ResultsWriter::finish`]).
async fn write_rows(
    mut writer: ResultsWriter,
    mut rows: mpsc::Receiver<Box<ResultRow>>,
    progress: Progress,
    counts: Arc<Mutex<BTreeMap<Outcome, u64>>>,
) -> Result<Option<results::Written>> {
    // Grows to the most rows that came at once (a paced run's few).
    let mut batch = Vec::new();
    while rows.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        writer.write_all(&batch)?;
        if let Ok(mut counts) = counts.lock() {
            for row in &batch {
                *counts.entry(row.outcome).or_insert(0) += 1;
            }
        }
        for row in batch.drain(..) {
            progress.row_done(row.outcome.is_ok());
        }
    }
    off_runtime(|| writer.finish())
}

fn log_row(row: &ResultRow) {
    let outcome = row.outcome.as_str();
    let code = row.error_code.as_deref().unwrap_or("");
    if row.outcome == Outcome::Failed {
        tracing::warn!(line = row.line, machine = %row.machine_id, outcome, code, attempts = row.attempts, "machine done");
    } else {
        tracing::info!(line = row.line, machine = %row.machine_id, outcome, code, attempts = row.attempts, "machine done");
    }
}

/// What this session's summary holds besides its counts: the summary at the end and a second signal's are
/// made alike.
#[derive(Clone)]
struct SessionSummary {
    run_id: String,
    started: Instant,
    started_at: SystemTime,
    results: PathBuf,
    resumed: bool,
    account: Option<String>,
    api: Arc<crate::defender::api::Api>,
}

impl SessionSummary {
    /// The summary of this session with `counts` (the rows the writer put in the file), as of now.
    fn of(&self, counts: BTreeMap<Outcome, u64>, interrupted: bool) -> Summary {
        Summary {
            run_id: self.run_id.clone(),
            rows: counts.values().sum(),
            counts,
            started_at: self.started_at,
            duration: self.started.elapsed(),
            calls: self.api.counters.calls.load(Ordering::Relaxed),
            throttled: self.api.counters.throttled.load(Ordering::Relaxed),
            results: self.results.clone(),
            interrupted,
            resumed: self.resumed,
            stopped: None,
            account: self.account.clone(),
            tags: None,
            quotas: self.api.limiter().stats(),
            tenants: Vec::new(),
            tracking: None,
            calls_at_once: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::InputRow;

    fn id(n: u8) -> MachineId {
        MachineId::parse(&format!("{n:02x}").repeat(20)).expect("hex")
    }

    fn pass(line: u64, kind: RowKind) -> Result<Screened> {
        Ok(Screened::Pass(InputRow { line, raw: String::new(), kind }, None))
    }

    #[test]
    fn intents_go_ahead_for_the_machines_the_dispatcher_will_call_and_no_further() {
        let mut done = Finished::default();
        done.insert(4, &id(4).to_string());
        let next = vec![
            pass(2, RowKind::Valid(id(2))),
            pass(3, RowKind::Invalid),
            pass(4, RowKind::Valid(id(4))),
            Ok(Screened::Row(Box::new(ResultRow::new(5, id(5).to_string(), Outcome::NotFound)))),
            pass(6, RowKind::Duplicate),
            pass(7, RowKind::Valid(id(7))),
            pass(8, RowKind::Valid(id(8))),
            Err(Error::Usage("a row that cannot be read".into())),
            pass(10, RowKind::Valid(id(10))),
        ];
        let lines = |ahead: Vec<(u64, MachineId)>| ahead.into_iter().map(|(line, _)| line).collect::<Vec<_>>();
        // Line 4 is done (an earlier session), lines 3, 5 and 6 are never called, nothing after the
        // unreadable row is.
        assert_eq!(lines(intents_ahead(&next, Some(&done), 64)), [2, 7, 8]);
        assert_eq!(lines(intents_ahead(&next, None, 64)), [2, 4, 7, 8]);
        // With the machine about to be called, at most `most` in one write.
        assert_eq!(lines(intents_ahead(&next, None, 3)), [2, 4]);
        assert_eq!(lines(intents_ahead(&next, None, 1)), Vec::<u64>::new());
        assert_eq!(intents_ahead(&next, None, 2), [(2, id(2))]);
    }

    fn work(line: u64) -> Box<Work> {
        Box::new(Work { line, machine: id(line as u8), facts: None, earlier_intent: None })
    }

    /// Whether `future` is ready at its first poll.
    fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn the_queue_hands_machines_out_in_order_each_entered_in_flight_as_it_is_taken() {
        let queue = WorkQueue::new(4);
        let in_flight = Mutex::new(InFlight::default());
        for line in 1..=3 {
            queue.give(work(line));
        }
        let taken = ready_now(queue.take(&in_flight)).flatten().expect("a machine");
        assert_eq!(taken.line, 1);
        assert_eq!(in_flight.lock().unwrap().get(&1), Some(&id(1)));
        assert_eq!(in_flight.lock().unwrap().len(), 1, "the machines still queued are not in flight");
        // Closed: the machines left are still taken, then none.
        queue.close();
        assert_eq!(ready_now(queue.take(&in_flight)).flatten().map(|w| w.line), Some(2));
        assert_eq!(ready_now(queue.take(&in_flight)).flatten().map(|w| w.line), Some(3));
        assert!(matches!(ready_now(queue.take(&in_flight)), Some(None)), "ended");
    }

    #[test]
    fn an_empty_queue_keeps_a_worker_waiting_until_a_machine_comes_or_it_closes() {
        let queue = WorkQueue::new(2);
        let in_flight = Mutex::new(InFlight::default());
        assert!(ready_now(queue.take(&in_flight)).is_none(), "nothing to take yet");
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let queue = Arc::new(queue);
            let in_flight = Arc::new(in_flight);
            let waiting = {
                let (queue, in_flight) = (queue.clone(), in_flight.clone());
                tokio::spawn(async move { queue.take(&in_flight).await.map(|w| w.line) })
            };
            tokio::task::yield_now().await;
            queue.give(work(7));
            assert_eq!(waiting.await.unwrap(), Some(7));
            let waiting = {
                let (queue, in_flight) = (queue.clone(), in_flight.clone());
                tokio::spawn(async move { queue.take(&in_flight).await.map(|w| w.line) })
            };
            tokio::task::yield_now().await;
            queue.close();
            assert_eq!(waiting.await.unwrap(), None);
        });
    }

    #[test]
    fn a_full_queue_has_room_again_only_once_it_has_run_down_to_half() {
        let queue = WorkQueue::new(4);
        let in_flight = Mutex::new(InFlight::default());
        for line in 1..=4 {
            assert!(queue.has_room());
            queue.give(work(line));
        }
        assert!(!queue.has_room());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let queue = Arc::new(queue);
            let room = {
                let queue = queue.clone();
                tokio::spawn(async move { queue.room().await })
            };
            tokio::task::yield_now().await;
            ready_now(queue.take(&in_flight)).flatten().expect("a machine");
            tokio::task::yield_now().await;
            assert!(!room.is_finished(), "one taken of four: the dispatcher is not woken yet");
            ready_now(queue.take(&in_flight)).flatten().expect("a machine");
            assert!(room.await.unwrap(), "two of four left: room");
        });
    }

    #[test]
    fn a_stopped_queue_drops_what_it_holds_and_ends_both_sides() {
        let queue = WorkQueue::new(2);
        let in_flight = Mutex::new(InFlight::default());
        queue.give(work(1));
        queue.give(work(2));
        queue.stop();
        assert!(matches!(ready_now(queue.take(&in_flight)), Some(None)), "nothing left to take");
        assert!(in_flight.lock().unwrap().is_empty(), "the dropped machines were never in flight");
        assert_eq!(ready_now(queue.room()), Some(false), "the dispatcher gives no more");
    }
}
