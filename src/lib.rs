//! mde-offboard: offboard fleets of machines from Microsoft Defender for Endpoint, paced to the API's quotas.
//! The simulator it is tested against is a crate of its own (`crates/mde-sim`).
//!
//! The layers, top down; a module uses only those below it (and `ui` and `error`, which every layer may).
//! `rustfmt.toml` keeps them in this order (`reorder_modules = false`).

/// The command line: parse, set up logging, dispatch to a command, turn the outcome into an exit code.
pub mod cli;
/// One module (or folder) per subcommand: `run` (its plan, dispatch, pre-flight and resume), `track`,
/// `check`, `demo`, `simulate`; and `session`, the set-up each of them that calls the service opens (sign-in,
/// limiter, `Api`, run lock). A new subcommand goes here, opens a session and uses the layers below.
pub mod commands;
/// The input list: scanned, copied, checked, streamed row by row.
pub mod input;
/// The files a command keeps besides its input: results, journal, locks, the external sort.
pub mod files;
/// The Defender for Endpoint service: sign-in, the rate limiter, the API calls, its timestamps.
pub mod defender;
/// Flags, environment and config file resolved once into settings; clouds; credentials.
pub mod settings;
/// The tool's own words, one type and one parser each: machine ids, action statuses and types, outcomes.
pub mod domain;
/// What a person sees: text on stdout and stderr, log lines, the progress bar.
pub mod ui;
/// Why a command could not run, and the exit codes.
pub mod error;
