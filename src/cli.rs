//! The command line: parse, set up logging, dispatch, and turn the outcome into an exit code.

use std::ffi::OsString;
use std::future::Future;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::cancel::{self, CancelArgs};
use crate::commands::check::{self, CheckArgs};
use crate::commands::demo::{self, DemoArgs};
use crate::commands::docs::{self, CompletionsArgs, ManpageArgs};
use crate::commands::report::{self, ReportArgs, RunFacts};
use crate::commands::run::{self, RunArgs};
use crate::commands::select::{self, SelectArgs};
use crate::commands::simulate::{self, SimulateArgs};
use crate::commands::tag::{self, TagArgs};
use crate::commands::tenants;
use crate::commands::track::{self, TrackArgs, WaitArgs};
use crate::error::{Error, exit_code};
use crate::settings;
use crate::ui::logging::{self, LogFormat};
use crate::ui::output;

/// The exit codes, for every help that needs them. Each line fits 78 columns, so clap, which wraps help to
/// the terminal, never breaks one (a test renders the help at 80 and 120 columns).
pub const EXIT_CODES: &str = "\
Exit codes:
  0    every row ended submitted, already_pending, already_offboarded or
       duplicate (a dry run: would_submit too; with --wait and track: and
       every action Succeeded); protected rows exit 3
  1    the run could not run, and nothing was offboarded (settings, sign-in,
       a missing permission, the pre-flight, input or output, or another run
       holds the lock or the results file)
  2    usage error, or a confirmation was needed and could not be asked
  3    the run finished but some rows did not end well (see the results
       file); with --wait and track, also an action that ended Failed,
       TimeOut or Cancelled, or was still open when the wait ended
  4    stopped part way (an output failure, sign-in refused for good, the
       API refusing the token): the results so far are valid; --resume
       continues
  130  interrupted (Ctrl-C or SIGTERM)";

/// The heading of the options every command takes, apart from each command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(name = "mde-offboard", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// More log detail on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose", help_heading = GLOBAL)]
    pub quiet: bool,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, help_heading = GLOBAL)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Offboard every machine listed in a CSV file.
    #[command(after_help = EXIT_CODES)]
    Run(RunCommand),
    /// Choose the machines to offboard from the inventory (stale, by health, platform, group, tag, name, or
    /// duplicate records) and write them as a CSV that `run` reads. Never offboards.
    Select(SelectArgs),
    /// Follow the offboard actions of a results file until they are final, updating the file.
    #[command(after_help = EXIT_CODES)]
    Track(TrackArgs),
    /// Cancel the offboard actions of a results file that are still open (Pending, InProgress).
    #[command(after_help = EXIT_CODES)]
    Cancel(CancelArgs),
    /// Add a tag to the machines a run offboarded (or remove it), 500 a call.
    Tag(TagArgs),
    /// Write a results file as a report: one self-contained HTML page, or Markdown for a change ticket.
    Report(ReportArgs),
    /// Check the settings, the sign-in, the token's roles and the API host: run it first.
    Check(CheckArgs),
    /// See the whole job work against the built-in simulator: no tenant needed.
    Demo(DemoArgs),
    /// Serve the built-in simulator of the Defender for Endpoint API and Entra ID sign-in.
    Simulate(SimulateArgs),
    /// Print the shell completions: bash, zsh, fish, powershell or elvish (see the README to install them).
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write one per command with --dir.
    Manpage(ManpageArgs),
}

/// `run`, and the tracking that may follow it.
#[derive(clap::Args, Debug)]
pub struct RunCommand {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten, next_help_heading = "Tracking after the run")]
    pub wait: WaitArgs,
}

/// The whole program, argv to exit code.
pub fn main() -> u8 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let e = plain_usage(e, &args);
            let _ = e.print();
            return if e.use_stderr() { exit_code::USAGE } else { exit_code::OK };
        }
    };
    logging::init(cli.verbose, cli.quiet, cli.log_format);
    // A blocking thread idle for a second ends (tokio's default is ten): each tenant of a run of many starts
    // with file work of its own on the blocking pool, and the threads (their stacks) would outlive it.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // The client's async work (calls, limiter, dispatch) runs on one worker thread; file work goes to the
    // blocking pool, the journal's fsyncs to a thread of their own. The quotas allow a tenant a few calls a
    // second, and even unthrottled one thread keeps up with the service: a second worker added lock waits,
    // not speed, as a row or an answer made on one thread was freed on the other (glibc's allocator takes
    // the other thread's arena lock for it; BENCHMARKS.md figure 2). The simulator serves many clients at
    // once: it keeps one worker per core.
    if !matches!(cli.command, Command::Simulate(_)) {
        runtime.worker_threads(1);
    }
    let runtime = match runtime.enable_all().thread_keep_alive(std::time::Duration::from_secs(1)).build() {
        Ok(runtime) => runtime,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"));
            return exit_code::CANNOT_RUN;
        }
    };
    let stopping = match cli.command {
        Command::Simulate(_) => "stopping the simulator (interrupt again to exit at once)",
        _ => "interrupted: finishing the calls in flight (interrupt again to exit at once)",
    };
    // On a worker thread of the runtime, not on this one: the tasks of a run wake the dispatcher for every
    // machine, and waking a task on a worker is cheap where waking a parked thread is a system call.
    let command = runtime.spawn(async move {
        let mut shutdown = Box::pin(shutdown_signal(stopping));
        // Listen from now on, not from when the command first waits on it: a signal sent as soon as the
        // simulator says where it listens must stop it, not kill it.
        std::future::poll_fn(|cx| {
            let _ = shutdown.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
        dispatch(cli.command, shutdown).await
    });
    let code = match runtime.block_on(command).unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) {
        Ok(code) => code,
        Err(e) => {
            output::error(&e.to_string());
            e.exit_code()
        }
    };
    // Without waiting for a thread still blocked reading the terminal (a prompt a signal ended).
    runtime.shutdown_background();
    code
}

async fn dispatch(command: Command, shutdown: impl Future<Output = ()>) -> Result<u8, Error> {
    match command {
        Command::Run(RunCommand { run: mut args, wait }) => {
            args.wait = wait.wait.then(|| wait.options());
            let settings = resolve_settings(&args.settings)?;
            let report_to = args.report.clone();
            // The run and the tracking after it both stop on the one signal.
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let signal = async move {
                shutdown.await;
                let _ = stop.send(true);
                std::future::pending::<()>().await
            };
            let stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let work = async {
                // The run and the tracking after it spend one quota: one session (sign-in, limiter, lock) serves both.
                let (summary, session) = run::command(args, settings.clone(), stopped(stop_rx.clone())).await?;
                let mut facts = RunFacts {
                    ended_at: Some(std::time::SystemTime::now()),
                    exit_code: Some(summary.exit_code()),
                    ended_by: Some(if summary.interrupted { "run (interrupted)" } else { "run" }.into()),
                    calls: Some(summary.calls),
                    tags: summary.tags.as_ref().map(tag::TagSummary::brief),
                };
                if !wait.wait || summary.interrupted {
                    if let Some(out) = &report_to {
                        report::refresh(&summary.results, out, &facts);
                    }
                    return Ok(summary.exit_code());
                }
                let (results, options) = (&summary.results, wait.options());
                // A run of several tenants tracked each tenant right after its run, in its own session.
                if let Some(tracked) = summary.tracking {
                    // The rows of a tenant that could not start are not tracked: the run's code counts them.
                    let code = tenants::worst([tracked, summary.exit_code()]);
                    if let Some(out) = &report_to {
                        (facts.ended_at, facts.exit_code) = (Some(std::time::SystemTime::now()), Some(code));
                        facts.ended_by = Some("run --wait (tracked the actions after the run)".into());
                        report::refresh(results, out, &facts);
                    }
                    return Ok(code);
                }
                // The offboards are done: a tracking that cannot go on stops part way (exit 4), never "could
                // not run" (exit 1).
                let tracked = track::track_file(results, &settings, session, options, stopped(stop_rx.clone()))
                    .await
                    .map_err(|e| match e {
                        Error::Interrupted | Error::Stopped(_) | Error::TrackingStopped { .. } => e,
                        e => Error::TrackingStopped { results: results.clone(), source: Box::new(e) },
                    });
                let tracked = match tracked {
                    Ok(tracked) => tracked,
                    Err(e) => {
                        if let Some(out) = &report_to {
                            facts.exit_code = Some(e.exit_code());
                            report::refresh(results, out, &facts);
                        }
                        return Err(e);
                    }
                };
                output::stdout(&tracked.render());
                if let Some(out) = &report_to {
                    facts.ended_at = Some(std::time::SystemTime::now());
                    facts.exit_code = Some(tracked.exit_code());
                    facts.ended_by = Some("run --wait (tracked the actions after the run)".into());
                    facts.calls = Some(summary.calls + tracked.calls);
                    report::refresh(results, out, &facts);
                }
                Ok(tracked.exit_code())
            };
            tokio::select! {
                result = work => result,
                () = signal => unreachable!("the signal future never ends"),
            }
        }
        Command::Track(args) => {
            let settings = resolve_settings(&args.settings())?;
            let code = match tenants::tenants_of(&args.results)? {
                Some(each) => tenants::track(&args, &settings, each, shutdown).await?,
                None => {
                    let summary = track::track_file(&args.results, &settings, None, args.options(), shutdown).await?;
                    output::stdout(&summary.render());
                    summary.exit_code()
                }
            };
            if let Some(out) = &args.report {
                let facts = RunFacts {
                    ended_at: Some(std::time::SystemTime::now()),
                    ended_by: Some("track (the run's own exit code is not known here: derived from the rows)".into()),
                    ..RunFacts::default()
                };
                report::refresh(&args.results, out, &facts);
            }
            Ok(code)
        }
        Command::Select(args) => {
            let settings = resolve_settings(&args.settings)?;
            let selection = select::select(args, settings, shutdown).await?;
            output::stdout(&selection.render());
            Ok(exit_code::OK)
        }
        Command::Cancel(args) => {
            let settings = resolve_settings(&args.settings())?;
            match tenants::tenants_of(&args.results)? {
                Some(each) => tenants::cancel(&args, &settings, each, shutdown).await,
                None => cancel::command(args, settings, shutdown).await,
            }
        }
        Command::Tag(args) => {
            let settings = resolve_settings(&args.settings())?;
            match tenants::tenants_of(&args.results)? {
                Some(each) => tenants::tag(&args, &settings, each, shutdown).await,
                None => tag::command(args, settings, shutdown).await,
            }
        }
        Command::Report(args) => report::command(&args),
        Command::Check(args) => check::check(&args, &|k| std::env::var(k).ok()).await,
        Command::Demo(args) => {
            // The demo's input holds bad rows on purpose: it succeeded when it ran to the end.
            let summary = demo::demo(args, shutdown).await?;
            Ok(if summary.interrupted { exit_code::INTERRUPTED } else { exit_code::OK })
        }
        Command::Simulate(args) => {
            simulate::simulate(args, shutdown).await?;
            Ok(exit_code::OK)
        }
        Command::Completions(args) => {
            docs::completions(&args, Cli::command());
            Ok(exit_code::OK)
        }
        Command::Manpage(args) => {
            docs::manpage(&args, Cli::command())?;
            Ok(exit_code::OK)
        }
    }
}

/// clap's usage line in an error lists the flags it saw, those set by environment variables included
/// (`--tenant-id <ID>` from MDE_TENANT_ID): give the plain usage of the command instead.
fn plain_usage(mut e: clap::Error, args: &[OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    if e.get(ContextKind::Usage).is_none() {
        return e;
    }
    let mut cli = Cli::command();
    cli.build();
    // Only global flags come before the subcommand, and no value of theirs is a subcommand's name.
    let name = args.iter().skip(1).filter_map(|a| a.to_str()).find(|a| cli.find_subcommand(a).is_some());
    let usage = match name.and_then(|name| cli.find_subcommand_mut(name)) {
        Some(command) => command.render_usage(),
        None => cli.render_usage(),
    };
    e.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
    e
}

/// Settings from the flags, the environment and the config file, with their warnings logged.
fn resolve_settings(args: &settings::SettingsArgs) -> Result<settings::Settings, Error> {
    let settings = settings::resolve(args, &|k| std::env::var(k).ok())?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// Resolves on the first Ctrl-C (or SIGTERM on Unix), saying `stopping`: the run stops dispatching and
/// drains (the simulator stops serving). A second one exits at once; every row written so far is already
/// on disk.
async fn shutdown_signal(stopping: &'static str) {
    // Listened for on a task of its own: what a command polls (a run, at every machine) is then a Notify,
    // not three signal streams. The streams are set up here, at the first poll, not when the task first runs.
    let mut listening = Box::pin(signal());
    if std::future::poll_fn(|cx| std::task::Poll::Ready(listening.as_mut().poll(cx).is_pending())).await {
        let signalled = std::sync::Arc::new(tokio::sync::Notify::new());
        let notify = signalled.clone();
        tokio::spawn(async move {
            listening.await;
            notify.notify_one();
        });
        signalled.notified().await;
    }
    output::notice("interrupt", stopping);
    tokio::spawn(async {
        signal().await;
        output::notice("interrupt", "interrupted again: exiting now");
        run::before_exit_now();
        std::process::exit(i32::from(exit_code::INTERRUPTED));
    });
}

/// Ctrl-C, or on Unix SIGTERM or SIGHUP (a closed terminal: the same as SIGTERM).
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let wait = |kind: SignalKind| async move {
            match signal(kind) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = wait(SignalKind::terminate()) => {}
            _ = wait(SignalKind::hangup()) => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
