//! `run` of a list of several tenants: a tenant column (`TenantId`, `Tenant`) beside the id column.
//!
//! The list is split on disk by tenant ([`input::tenants::partition`]: each tenant's rows only, with their lines in the
//! list, memory flat), into `<results stem>.tenants/` beside the results file. Each tenant is then an ordinary
//! single-tenant run of its own list, with everything a run has of its own: its sign-in (the same app registration, or
//! the one the settings give, signed in to that tenant), limiter and quotas, lock, pre-flight reads, journal and
//! results file (`<tenant>.results.csv`, with the kill -9 safety and the `--resume` of any run). Tenants run in
//! parallel, at most `run.tenant_concurrency` at once. They share one HTTP client (its connections: each call
//! carries its own tenant's token) and one bound on their calls at once ([`SharedClients`]), so the run holds
//! as many connections as calls in flight, not tenants x concurrency. A tenant that cannot start (sign-in refused, consent or a role
//! missing, its lock held) fails only its own rows: `failed`, with the reason. At the end (an interrupted run too) the
//! tenants' results are merged, in the order the list names the tenants, into the one results file with a `tenant_id`
//! column, replaced atomically: one row per input row, as for one tenant. `--resume` splits the list again (the same
//! files) and resumes each tenant's run from its own results file. With `--wait`, each tenant's tracking follows its
//! own run in the run's session (sign-in, limiter, lock), before the merge.
//!
//! The confirmation is asked once, before any API call, with the rows of each tenant. A tenant signs in with
//! the usual settings (one multi-tenant app consented in every tenant), or with its own app registration
//! when the tenants file (`--tenants FILE.toml`, [`TenantsFile`]) names it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::{RunArgs, Summary, TenantSummary, execute, output_path, prepare_on, tag_after};
use crate::commands::tenants::{keep_apps, settings_for, tenant_results, tenants_dir};
use crate::commands::track::{TrackSummary, track_file};
use crate::defender::SharedClients;
use crate::defender::calls_at_once::LOOK_EVERY;
use crate::defender::limiter::LimiterStats;
use crate::domain::Outcome;
use crate::error::{Error, Result};
use crate::files::journal;
use crate::files::lock::ResultsLock;
use crate::files::results::{self, ResultsFile, Rewrite};
use crate::input::tenants::{Partition, partition};
use crate::input::{self, Source};
use crate::settings::Settings;
use crate::settings::tenants::TenantsFile;

/// Tenants' lists scanned at once, whatever the tenants: a scan is file work of a few milliseconds, each on a
/// thread of the blocking pool (a stack of its own), and the tenants of a run start together.
static SCANS: Semaphore = Semaphore::const_new(4);

/// The error code of the rows of a tenant whose run could not start.
const NOT_STARTED: &str = "TenantNotStarted";

/// Runs the list at `path`, whose header has the tenant column `column`.
pub async fn command(
    args: RunArgs,
    settings: Settings,
    path: PathBuf,
    column: String,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary> {
    let run_id = journal::new_run_id(SystemTime::now());
    let source = Source::Path(path.clone());
    let output = output_path(&args, &source, &run_id);
    results::check_writable(&output, args.overwrite || args.resume)?;
    let dir = tenants_dir(&output);
    let _results_lock = ResultsLock::acquire(&output)?;
    let started = Instant::now();
    let started_at = SystemTime::now();

    // What every tenant needs, said once before anything is written: a comment, and a terminal to confirm on.
    if !args.dry_run {
        settings.require_comment()?;
        let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !args.yes && !terminal {
            return Err(Error::Usage(
                "offboarding needs a confirmation, and there is no terminal to ask on; pass --yes to confirm on \
                 the command line"
                    .into(),
            ));
        }
    }
    let apps = match &args.tenants {
        Some(file) => TenantsFile::load(file)?,
        None => TenantsFile::default(),
    };
    let parts = {
        let (path, format, default, dir) =
            (path.clone(), super::input_format(&args), settings.tenant_id.clone(), dir.clone());
        tokio::task::spawn_blocking(move || partition(&path, &format, default.as_deref(), &dir))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?
    };
    let total: u64 = parts.iter().map(|p| p.rows).sum();
    let mut plan = format!(
        "{} lists {total} row(s) of {} tenant(s) (column `{}`), each run on its own (at most {} at once):",
        path.display(),
        parts.len(),
        column.escape_debug(),
        settings.tenant_concurrency
    );
    for part in &parts {
        plan.push_str(&format!("\n  tenant {}: {} row(s)", part.tenant, part.rows));
    }
    crate::ui::output::notice("plan", &plan);
    // Every tenant's settings, before any call: a secret file or certificate that cannot be read stops the run.
    // (And who each signs in as: a client id or secret missing is the run's error, not each tenant's.)
    let settings_of: Vec<Settings> =
        parts.iter().map(|p| settings_for(&p.tenant, &args.settings, &settings, &apps)).collect::<Result<_>>()?;
    for tenant_settings in &settings_of {
        tenant_settings.credentials()?;
    }
    keep_apps(&dir, args.tenants.is_some().then_some(&apps))?;

    // One signal stops every tenant.
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    if !args.dry_run && !args.yes {
        crate::ui::output::prompt(&format!(
            "Type {total} to offboard the machines of these {total} row(s) in {} tenant(s), anything else to stop: ",
            parts.len()
        ));
        let answer = tokio::task::spawn_blocking(super::read_answer);
        tokio::select! {
            answer = answer => super::confirmed(total, answer.unwrap_or_else(|e| Err(Error::Usage(e.to_string()))))?,
            _ = &mut shutdown => return Err(Error::Interrupted),
        }
    }

    let slots = Arc::new(Semaphore::new(settings.tenant_concurrency));
    // One client (connection pool) for every tenant, and one bound on their calls at once: as many
    // connections as calls in flight.
    let widest = settings_of.iter().map(|s| s.concurrency).max().unwrap_or(1);
    let running = settings_of.iter().map(|s| s.concurrency).sum::<usize>().min(widest * settings.tenant_concurrency);
    let clients = Arc::new(SharedClients::new(running, widest, settings.calls_at_once, settings.calls_at_once_grows));
    // The bound grows while it, not the quotas, holds the tenants' calls back (a slow service).
    let grow = {
        let calls = clients.calls_at_once().clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LOOK_EVERY);
            loop {
                every.tick().await;
                if let Some(bound) = calls.look() {
                    tracing::info!(
                        calls_at_once = bound,
                        "calls waited for the bound on calls at once, not for the quotas (the service answers \
                         slowly): raised to {bound}"
                    );
                }
            }
        })
    };
    let mut tasks = Vec::with_capacity(parts.len());
    for (part, settings) in parts.iter().cloned().zip(settings_of) {
        let (slots, mut stopped) = (slots.clone(), stopped.clone());
        let (dir, clients) = (dir.clone(), clients.clone());
        // Boxed, here and in each step of the tenant's run: a task's future keeps room for every value it holds
        // across a wait (those moved on too), and a run of many tenants holds one task for each.
        let (args, settings) = (Box::new(args.clone()), Box::new(settings));
        tasks.push(tokio::spawn(async move {
            let _slot = tokio::select! {
                slot = slots.acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = stopped.wait_for(|s| *s) => return (part, (Err(Error::Interrupted), None)),
            };
            let result = run_tenant(args, settings, &clients, &part, &dir, stopped).await;
            (part, result)
        }));
    }
    let all = futures_join(tasks);
    tokio::pin!(all);
    let ran = tokio::select! {
        ran = &mut all => ran,
        _ = &mut shutdown => {
            let _ = stop.send(true);
            all.await
        }
    };
    grow.abort();
    let interrupted = *stop.borrow();
    let (ran, tracked): (Vec<_>, Vec<_>) =
        ran.into_iter().map(|(part, (run, tracked))| ((part.clone(), run), (part.tenant, tracked))).unzip();

    let merged = {
        let (output, format) = (output.clone(), super::input_format(&args));
        tokio::task::spawn_blocking(move || merge(&output, &format, &ran).map(|tenants| (tenants, ran)))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    };
    let (tenants, ran) = merged?;
    let mut summary = Summary {
        run_id,
        counts: BTreeMap::new(),
        rows: 0,
        started_at,
        duration: started.elapsed(),
        calls: 0,
        throttled: 0,
        results: output,
        interrupted,
        resumed: args.resume,
        stopped: None,
        account: None,
        tags: None,
        quotas: LimiterStats { scope: settings.quota_scope, share: 100, lowest_share: 100, ..Default::default() },
        tenants,
        tracking: None,
        calls_at_once: Some(clients.calls_at_once().bounds()).filter(|(from, to)| to > from),
    };
    for tenant in &summary.tenants {
        summary.rows += tenant.rows;
        for (outcome, n) in &tenant.counts {
            *summary.counts.entry(*outcome).or_insert(0) += n;
        }
    }
    for (_, result) in &ran {
        match result {
            Ok(ran) => {
                summary.calls += ran.calls;
                summary.throttled += ran.throttled;
                summary.interrupted |= ran.interrupted;
                summary.quotas.switched |= ran.quotas.switched;
                summary.quotas.lowest_share = summary.quotas.lowest_share.min(ran.quotas.lowest_share);
                summary.quotas.share = summary.quotas.share.min(ran.quotas.share);
                if let Some(why) = &ran.stopped {
                    summary.stopped.get_or_insert_with(|| why.clone());
                }
            }
            Err(Error::Interrupted) => summary.interrupted = true,
            Err(_) => {}
        }
    }
    if let Some(path) = &args.summary_json
        && let Err(e) = summary.write_json(path)
    {
        summary.stopped.get_or_insert_with(|| e.to_string());
    }
    crate::ui::output::stdout(&summary.render());
    // Each tenant's tracking, as `track` says it, after the run's summary.
    if args.wait.is_some() {
        let tracked = tracked.into_iter().filter_map(|(tenant, tracked)| Some((tenant, tracked?))).collect();
        summary.tracking = Some(crate::commands::tenants::each_said(tracked, |t| Some(t.render()), |t| t.exit_code()));
    }
    Ok(summary)
}

/// One tenant's run, as a run of its own list with the settings signed in to the tenant; its tags too. With
/// `--wait`, its tracking follows at once, in the run's session (the same sign-in, limiter and lock: the
/// quota the run spent is counted), while other tenants may still be offboarding. A tracking that cannot go
/// on stops part way, as after a run of one tenant: the offboards stand. Both stop on `stopped`.
async fn run_tenant(
    mut args: Box<RunArgs>,
    settings: Box<Settings>,
    clients: &SharedClients,
    part: &Partition,
    dir: &Path,
    stopped: watch::Receiver<bool>,
) -> (Result<Summary>, Option<Result<TrackSummary>>) {
    let signal = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let results = tenant_results(dir, &part.tenant);
    args.input = part.input.display().to_string();
    (args.tenant_share, args.delimiter) = (true, Some(part.delimiter));
    args.output = Some(results.clone());
    // Confirmed above, for every tenant; the run's summary and report are the merged file's.
    (args.yes, args.summary_json, args.report, args.tenants) = (true, None, None, None);
    let wait = args.wait;
    // Scanning the tenant's list reads a file: off the runtime.
    let tracking_settings = settings.clone();
    let shared = match clients.client(&settings) {
        Ok(shared) => shared,
        Err(e) => return (Err(e), None),
    };
    let prepared = {
        let _scan = SCANS.acquire().await.expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            prepare_on(*args, *settings, Some(shared)).map(|(job, session)| (Box::new(job), session))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    };
    let (mut job, mut session) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return (Err(e), None),
    };
    job.progress = false;
    let tag = job.tag.clone();
    // Each step boxed: the task holds only the step under way (see `execute`), not the largest of them.
    let mut summary = match Box::pin(execute(job, &mut session, signal(stopped.clone()))).await {
        Ok(summary) => summary,
        Err(e) => return (Err(e), None),
    };
    Box::pin(tag_after(&mut summary, &session, tag)).await;
    let tracked = match wait {
        Some(options) if !summary.interrupted => Some(
            Box::pin(track_file(&results, &tracking_settings, Some(session), options, signal(stopped))).await.map_err(
                |e| match e {
                    Error::Interrupted | Error::Stopped(_) | Error::TrackingStopped { .. } => e,
                    e => Error::TrackingStopped { results: results.clone(), source: Box::new(e) },
                },
            ),
        ),
        _ => None,
    };
    (Ok(summary), tracked)
}

/// Waits for every task, in order.
async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        done.push(task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    done
}

/// Writes the one results file: each tenant's results, in the list's order of tenants, with a `tenant_id`
/// column; a tenant whose run could not start, one `failed` row per row of its list, with the reason. Counts
/// each tenant's rows as written.
fn merge(output: &Path, format: &input::Format, ran: &[(Partition, Result<Summary>)]) -> Result<Vec<TenantSummary>> {
    let results_of = |part: &Partition, result: &Result<Summary>| match result {
        Ok(summary) => Some(summary.results.clone()),
        // Interrupted before its first offboard, or refused: whatever an earlier session wrote stands.
        Err(_) => Some(tenant_results(&tenants_dir(output), &part.tenant)).filter(|p| p.is_file()),
    };
    let mut headers: Option<csv::StringRecord> = None;
    for (part, result) in ran {
        if let Some(path) = results_of(part, result) {
            headers = Some(ResultsFile::open(&path)?.headers().clone());
            break;
        }
    }
    let headers = headers.unwrap_or_else(|| results::COLUMNS.iter().copied().collect());
    let column = |name: &str| headers.iter().position(|h| h == name);
    let outcome_at = column("outcome");
    let mut rewrite = Rewrite::start(output, headers.iter().chain(["tenant_id"]))?;
    let mut tenants = Vec::with_capacity(ran.len());
    for (part, result) in ran {
        let mut tenant = TenantSummary { tenant: part.tenant.clone(), ..TenantSummary::default() };
        if let Ok(summary) = result {
            (tenant.api_calls, tenant.throttled_429) = (summary.calls, summary.throttled);
            tenant.quota_scope_switched = summary.quotas.switched;
            tenant.quota_taken_percent = 100 - summary.quotas.lowest_share.min(100);
            tenant.error = summary.stopped.clone();
        }
        match (results_of(part, result), result) {
            (Some(path), _) => {
                let file = ResultsFile::open(&path)?;
                if file.headers() != &headers {
                    return Err(Error::Output {
                        path,
                        message: "has other columns than the other tenants' results: start a new run with \
                                  another --output"
                            .into(),
                    });
                }
                for record in file.records()? {
                    let record = record?;
                    let outcome = outcome_at.and_then(|at| record.cells.get(at)).and_then(Outcome::parse);
                    tally(&mut tenant, outcome);
                    rewrite.write(record.cells.iter().chain([part.tenant.as_str()]))?;
                }
            }
            (None, Err(Error::Interrupted)) => {}
            (None, Err(e)) => {
                let why = format!("the run in tenant {} could not start: {e}", part.tenant);
                let why: String = why.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
                let format = input::Format { numbered: true, delimiter: Some(part.delimiter), ..format.clone() };
                let scan = input::scan_format(Source::Path(part.input.clone()), &format)?;
                for row in scan.rows()? {
                    let row = row?;
                    let cells: Vec<String> = headers
                        .iter()
                        .map(|name| match name {
                            "line" => row.line.to_string(),
                            "machine_id" => row.raw.trim().to_string(),
                            "outcome" => Outcome::Failed.as_str().to_string(),
                            "attempts" => "0".into(),
                            "error_code" => NOT_STARTED.into(),
                            "error_message" => why.clone(),
                            _ => String::new(),
                        })
                        .collect();
                    tally(&mut tenant, Some(Outcome::Failed));
                    rewrite.write(cells.iter().map(String::as_str).chain([part.tenant.as_str()]))?;
                }
                tenant.error = Some(why);
            }
            (None, Ok(_)) => unreachable!("a run that ended has its results file"),
        }
        tenants.push(tenant);
    }
    rewrite.commit()?;
    Ok(tenants)
}

fn tally(tenant: &mut TenantSummary, outcome: Option<Outcome>) {
    tenant.rows += 1;
    if let Some(outcome) = outcome {
        *tenant.counts.entry(outcome).or_insert(0) += 1;
    }
}
