//! Integration tests: one crate, so one link step. Each module drives the simulator over loopback HTTP.

mod bad_inputs;
mod common;
mod faults;
mod identity;
mod preflight;
mod resume_safety;
mod run;
mod secrets;
mod settings;
mod sim;
mod track;
mod unattended;
