//! `mde-offboard run`: the offboarding pipeline.
//!
//! reader (blocking thread) -> bounded channel -> dispatcher (at most `concurrency` machines at once, by
//! owned semaphore permits) -> one writer task. Every input row ends in exactly one results row: invalid
//! and duplicate rows go straight to the writer, every valid id gets one offboard call sequence, and a
//! per-machine failure is a row, never an aborted run. On shutdown the dispatcher stops taking machines,
//! waits for those in flight, and the writer flushes.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::api::{Api, CallResult, RetryPolicy};
use crate::auth::TokenCache;
use crate::error::{Error, Result, exit_code};
use crate::input::{self, InputRow, RowKind, Scan, Source};
use crate::limiter::{self, Limiter};
use crate::preflight::{self, Screened};
use crate::progress::Progress;
use crate::results::{self, Outcome, ResultRow, ResultsWriter};
use crate::settings::{Credentials, Settings, SettingsArgs};

/// Bounds on the call latency assumed when estimating how long a run takes (the sign-in's round trip,
/// measured, within these).
const ESTIMATE_LATENCY: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(2));
/// Rows buffered between the reader and the workers, and between the workers and the writer.
const CHANNEL_DEPTH: usize = 1024;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// CSV file listing the machines (a MachineId / Device ID / id column, or one id per line); `-` reads stdin.
    #[arg(value_name = "INPUT")]
    pub input: String,
    /// Results CSV. [default: <input stem>.results.csv beside the input; results.csv for stdin]
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace the results file if it exists.
    #[arg(long)]
    pub overwrite: bool,
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
    #[arg(long)]
    pub dry_run: bool,
    /// Real runs: skip the pre-flight that reads the inventory and open actions first (so that unknown and
    /// already pending machines cost no offboard call).
    #[arg(long, conflicts_with = "dry_run")]
    pub no_preflight: bool,
    /// The input lists computer names (computerDnsName, DeviceName, Name column): resolve them to ids through
    /// the inventory. A name that matches several machines is `ambiguous`, never guessed.
    #[arg(long, conflicts_with = "no_preflight")]
    pub by_name: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Everything a run needs, resolved.
pub struct Job {
    pub settings: Settings,
    pub credentials: Credentials,
    pub comment: String,
    pub scan: Scan,
    pub output: PathBuf,
    pub overwrite: bool,
    /// Ask for confirmation before the first offboard call.
    pub confirm: bool,
    /// Show a progress bar (only on a terminal).
    pub progress: bool,
    /// Dry run and pre-flight.
    pub preflight: preflight::Options,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub counts: BTreeMap<Outcome, u64>,
    pub rows: u64,
    pub duration: Duration,
    pub calls: u64,
    pub throttled: u64,
    pub results: PathBuf,
    pub interrupted: bool,
}

impl Summary {
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            exit_code::INTERRUPTED
        } else if self.counts.iter().all(|(outcome, n)| outcome.is_ok() || *n == 0) {
            exit_code::OK
        } else {
            exit_code::SOME_FAILED
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {} rows in {}\n",
            if self.interrupted { "Interrupted after" } else { "Finished:" },
            self.rows,
            humantime::format_duration(Duration::from_secs(self.duration.as_secs()).max(Duration::from_secs(0)))
        );
        for outcome in Outcome::ALL {
            let n = self.counts.get(&outcome).copied().unwrap_or(0);
            if n > 0 {
                out += &format!("  {:<16} {n}\n", outcome.as_str());
            }
        }
        out += &format!("API calls: {} (429 throttled: {})\n", self.calls, self.throttled);
        out += &format!("Results: {}\n", self.results.display());
        out
    }
}

/// Turns the command line into a [`Job`], checking everything that can be checked without the network.
pub fn prepare(args: RunArgs, settings: Settings) -> Result<Job> {
    let credentials = settings.credentials()?;
    let options = preflight::Options { dry_run: args.dry_run, preflight: !args.no_preflight };
    // A dry run sends no offboard, so it needs no comment.
    let comment =
        if options.dry_run { settings.comment.clone().unwrap_or_default() } else { settings.require_comment()? };
    let source = Source::parse(&args.input);
    let from_stdin = matches!(source, Source::Stdin);
    let output = args.output.clone().unwrap_or_else(|| {
        let input = match &source {
            Source::Path(p) => Some(p.as_path()),
            Source::Stdin => None,
        };
        if options.dry_run { preflight::default_output(input) } else { results::default_path(input) }
    });
    results::check_writable(&output, args.overwrite)?;
    let scan = input::scan_with(source, args.id_column.as_deref(), args.by_name)?;
    if scan.by_name && !options.preflight {
        return Err(Error::Usage(format!(
            "{} lists computer names (column `{}`), which are resolved through the pre-flight; drop --no-preflight",
            scan.source.display(),
            scan.id_column.as_deref().unwrap_or("")
        )));
    }
    if let Some(max) = args.max_machines {
        if scan.valid > max {
            return Err(Error::Usage(format!(
                "{} lists {} machines, more than --max-machines {max}; nothing was done",
                scan.source.display(),
                scan.valid
            )));
        }
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !options.dry_run && !args.yes && scan.valid > 0 && (!terminal || from_stdin) {
        return Err(Error::Usage(
            "offboarding needs a confirmation, and there is no terminal to ask on (or the input is stdin); \
             pass --yes to confirm on the command line"
                .into(),
        ));
    }
    Ok(Job {
        settings,
        credentials,
        comment,
        scan,
        output,
        overwrite: args.overwrite,
        confirm: !args.yes,
        progress: std::io::stderr().is_terminal(),
        preflight: options,
    })
}

/// Builds the HTTP client every call shares.
pub fn http_client(settings: &Settings) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(settings.concurrency.max(4))
        .user_agent(concat!("mde-offboard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Setting { key: "api.base_url", message: format!("cannot build the HTTP client: {e}") })
}

/// How long the quotas and the concurrency make `machines` offboard calls take, at best, when a call
/// takes `latency`.
pub fn estimate(settings: &Settings, machines: u64, latency: Duration) -> Duration {
    let latency = latency.clamp(ESTIMATE_LATENCY.0, ESTIMATE_LATENCY.1);
    limiter::earliest_schedule(&settings.rates, machines, settings.concurrency, latency)
}

/// Runs the job: sign in, confirm, offboard every machine, write every row, summarise.
pub async fn execute(job: Job, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    if job.preflight.dry_run {
        return preflight::dry_run(job, shutdown).await;
    }
    let started = Instant::now();
    let http = http_client(&job.settings)?;
    let tokens = Arc::new(TokenCache::new(http.clone(), job.credentials.clone()));
    // Sign in before anything else: a wrong secret or tenant is reported before any machine is touched.
    let token = tokens.get().await.map_err(|e| Error::Auth(e.to_string()))?;
    let round_trip = started.elapsed();
    // And the permissions, before any API call.
    preflight::check_permissions(&token.roles, &job.preflight, job.scan.by_name)?;

    let limiter = Limiter::new(&job.settings.rates);
    let policy = RetryPolicy { max_attempts: job.settings.max_attempts, retry_delay: job.settings.retry_delay };
    let api = Arc::new(Api::new(http, &job.settings.api_base, tokens, limiter, policy));
    // The pre-flight's reads share the quotas with the offboards: same Api, same limiter.
    let mut screen = preflight::load(&job, &api).await?;
    let to_offboard = screen.as_ref().map_or(job.scan.valid, preflight::Screen::to_submit);
    if let Some(screen) = &screen {
        eprintln!("Pre-flight: read {}.", screen.describe());
    }

    if to_offboard > 0 {
        let plan = format!(
            "About to offboard {} machines in tenant {} through {}.\nThe API's quotas ({}) make this take about {} at best.",
            to_offboard,
            job.credentials.tenant_id,
            job.settings.api_base,
            job.settings.rates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            humantime::format_duration(Duration::from_secs(estimate(&job.settings, to_offboard, round_trip).as_secs()))
        );
        eprintln!("{plan}");
        if job.confirm {
            confirm(to_offboard)?;
        }
    }

    let writer = ResultsWriter::create(&job.output, job.overwrite)?;
    let progress = Progress::new(job.scan.rows, job.progress);

    let cancelled = Arc::new(AtomicBool::new(false));
    let (item_tx, mut item_rx) = mpsc::channel::<Result<InputRow>>(CHANNEL_DEPTH);
    let (row_tx, row_rx) = mpsc::channel::<ResultRow>(CHANNEL_DEPTH);

    let reader = {
        let rows = job.scan.rows()?;
        let cancelled = cancelled.clone();
        tokio::task::spawn_blocking(move || {
            for row in rows {
                if cancelled.load(Ordering::Relaxed) || item_tx.blocking_send(row).is_err() {
                    break;
                }
            }
        })
    };
    let writer_task = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || write_rows(writer, row_rx, progress))
    };

    let slots = Arc::new(Semaphore::new(job.settings.concurrency));
    let comment: Arc<str> = job.comment.into();
    let mut input_error = None;
    tokio::pin!(shutdown);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut shutdown => {
                cancelled.store(true, Ordering::Relaxed);
                tracing::warn!("interrupted: no new machines are started; waiting for calls in flight");
                break;
            }
            item = item_rx.recv() => item,
        };
        let Some(item) = item else { break };
        let row = match item {
            Ok(row) => row,
            Err(e) => {
                input_error = Some(e);
                cancelled.store(true, Ordering::Relaxed);
                break;
            }
        };
        let (row, facts) = match preflight::screen(screen.as_mut(), row) {
            Screened::Row(result) => {
                if row_tx.send(result).await.is_err() {
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
                let mut result = ResultRow::new(row.line, row.raw, Outcome::InvalidId);
                result.error_message = Some("not a machine id (40 hexadecimal characters)".into());
                if row_tx.send(result).await.is_err() {
                    break;
                }
                continue;
            }
            RowKind::Duplicate => {
                let mut result = ResultRow::new(row.line, row.raw.trim().to_ascii_lowercase(), Outcome::Duplicate);
                result.error_message = Some("listed earlier in the input; offboarded once".into());
                if row_tx.send(result).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let slot = tokio::select! {
            biased;
            _ = &mut shutdown => {
                cancelled.store(true, Ordering::Relaxed);
                tracing::warn!("interrupted: no new machines are started; waiting for calls in flight");
                break;
            }
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let api = api.clone();
        let comment = comment.clone();
        let row_tx = row_tx.clone();
        tokio::spawn(async move {
            let mut result = offboard_one(&api, row.line, machine, &comment).await;
            if let Some(facts) = facts {
                facts.fill(&mut result);
            }
            let _ = row_tx.send(result).await;
            drop(slot);
        });
    }
    // Drain: every machine started gets its row before the writer closes.
    let _all = slots.acquire_many(job.settings.concurrency as u32).await.expect("the semaphore is never closed");
    drop(row_tx);
    drop(item_rx);
    let _ = reader.await;
    let (counts, rows) =
        writer_task.await.map_err(|e| Error::Output { path: job.output.clone(), message: e.to_string() })??;
    progress.finish();

    if let Some(e) = input_error {
        return Err(e);
    }
    if let Some(e) = api.fatal() {
        return Err(Error::Auth(format!("{e} (the run stopped; see {} for the rows written)", job.output.display())));
    }
    Ok(Summary {
        counts,
        rows,
        duration: started.elapsed(),
        calls: api.counters.calls.load(Ordering::Relaxed),
        throttled: api.counters.throttled.load(Ordering::Relaxed),
        results: job.output,
        interrupted: cancelled.load(Ordering::Relaxed),
    })
}

/// Asks on the terminal for the number of machines, typed back.
fn confirm(machines: u64) -> Result<()> {
    eprint!("Type {machines} to offboard them, anything else to stop: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::Usage(format!("cannot read the confirmation: {e}")))?;
    if answer.trim() == machines.to_string() {
        Ok(())
    } else {
        Err(Error::Usage("not confirmed; nothing was done".into()))
    }
}

fn write_rows(
    mut writer: ResultsWriter,
    mut rows: mpsc::Receiver<ResultRow>,
    progress: Progress,
) -> Result<(BTreeMap<Outcome, u64>, u64)> {
    let mut counts = BTreeMap::new();
    let mut written = 0;
    while let Some(row) = rows.blocking_recv() {
        writer.write(&row)?;
        written += 1;
        *counts.entry(row.outcome).or_insert(0) += 1;
        progress.row_done(row.outcome.is_ok());
    }
    writer.finish()?;
    Ok((counts, written))
}

/// The part of a MachineAction a results row uses.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MachineAction {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    computer_dns_name: Option<String>,
    #[serde(default)]
    creation_date_time_utc: Option<String>,
    #[serde(default)]
    last_update_date_time_utc: Option<String>,
    /// Some pages spell it this way: read both.
    #[serde(default)]
    last_update_time_utc: Option<String>,
}

/// Offboards one machine and says what happened, as a results row.
async fn offboard_one(api: &Api, line: u64, machine_id: String, comment: &str) -> ResultRow {
    let CallResult { attempts, answer } = api.offboard(&machine_id, comment).await;
    let mut row = ResultRow::new(line, machine_id, Outcome::Failed);
    row.attempts = attempts;
    match answer {
        Ok(reply) => {
            row.outcome = Outcome::Submitted;
            row.http_status = Some(reply.status);
            let action: MachineAction = serde_json::from_slice(&reply.body).unwrap_or_else(|_| {
                row.error_message = Some("the service created the action but its answer could not be read".into());
                MachineAction::default()
            });
            row.action_id = action.id;
            row.action_status = action.status;
            row.computer_dns_name = action.computer_dns_name.filter(|s| !s.is_empty());
            row.submitted_at = action.creation_date_time_utc;
            row.updated_at = action.last_update_date_time_utc.or(action.last_update_time_utc);
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
