//! The command line: parse, set up logging, dispatch, and turn the outcome into an exit code.

use std::future::Future;

use clap::{Parser, Subcommand};

use crate::demo::{self, DemoArgs};
use crate::error::{Error, exit_code};
use crate::logging::{self, LogFormat};
use crate::run::{self, RunArgs};
use crate::settings;
use crate::sim::{self, SimulateArgs};

const EXIT_CODES: &str = "\
Exit codes:
  0    every row ended submitted, already_pending or duplicate (a dry run: would_submit too)
  1    the run could not run (settings, sign-in, a missing permission, the pre-flight, input or output)
  2    usage error, or a confirmation was needed and could not be asked
  3    the run finished but some rows did not end well (see the results file)
  130  interrupted (Ctrl-C or SIGTERM)";

#[derive(Parser, Debug)]
#[command(name = "mde-offboard", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// More log detail on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Offboard every machine listed in a CSV file.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// See the whole job work against the built-in simulator: no tenant needed.
    Demo(DemoArgs),
    /// Serve the built-in simulator of the Defender for Endpoint API and Entra ID sign-in.
    Simulate(SimulateArgs),
}

/// The whole program, argv to exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit_code::USAGE } else { exit_code::OK };
        }
    };
    logging::init(cli.verbose, cli.quiet, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit_code::CANNOT_RUN;
        }
    };
    match runtime.block_on(dispatch(cli.command, shutdown_signal())) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(command: Command, shutdown: impl Future<Output = ()>) -> Result<u8, Error> {
    match command {
        Command::Run(args) => {
            let settings = settings::resolve(&args.settings, &|k| std::env::var(k).ok())?;
            for warning in &settings.warnings {
                tracing::warn!("{warning}");
            }
            let job = run::prepare(args, settings)?;
            let summary = run::execute(job, shutdown).await?;
            print!("{}", summary.render());
            Ok(summary.exit_code())
        }
        Command::Demo(args) => {
            // The demo's input holds bad rows on purpose: it succeeded when it ran to the end.
            let summary = demo::demo(args, shutdown).await?;
            Ok(if summary.interrupted { exit_code::INTERRUPTED } else { exit_code::OK })
        }
        Command::Simulate(args) => {
            sim::simulate(args, shutdown).await?;
            Ok(exit_code::OK)
        }
    }
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
