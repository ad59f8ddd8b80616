//! The subcommands. Each takes its resolved settings and the shutdown signal, and returns what it did for
//! `cli` to print and turn into an exit code.

pub mod cancel;
pub mod check;
pub mod demo;
pub mod docs;
pub mod report;
pub mod run;
pub mod select;
pub mod session;
pub mod simulate;
pub mod tag;
pub mod tenants;
pub mod track;
