//! Integration tests: one crate, so one link step. Each module drives the simulator over loopback HTTP.

mod common;
mod identity;
mod preflight;
mod run;
mod sim;
mod track;
mod unattended;
