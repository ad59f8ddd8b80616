//! tracing on stderr: `-q` errors only, default warnings, `-v` info, `-vv` debug, `-vvv` trace; RUST_LOG
//! overrides. `--log-format json` gives one JSON object per line for log collectors.

use tracing_subscriber::EnvFilter;

use crate::ui::progress::LogWriter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(verbose: u8, quiet: bool, format: LogFormat) {
    crate::ui::output::configure(format == LogFormat::Json, quiet);
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    // Our own crate at the chosen level; the HTTP stack stays at warn unless RUST_LOG asks.
    let default = format!("warn,mde_offboard={level}");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A full or closed stderr loses log lines, never the run: no "unable to write" report (an `eprintln!`,
    // which would panic on that same stderr).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_target(false)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}
