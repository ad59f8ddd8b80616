//! Integration tests: one crate, so one link step. Each module drives the simulator over loopback HTTP.

mod bad_inputs;
mod common;
mod faults;
mod identity;
mod incomplete_reads;
mod preflight;
mod run;
mod secrets;
mod settings;
mod sim;
mod track;
mod unattended;
