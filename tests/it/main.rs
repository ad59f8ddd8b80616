//! Integration tests: one crate, so one link step. Each module drives the simulator over loopback HTTP.

mod answers;
mod api;
mod bad_inputs;
mod common;
mod faults;
mod first_hour;
mod identity;
mod incomplete_reads;
mod legacy_type;
mod locks;
mod preflight;
mod promises;
mod real_time;
mod resume_safety;
mod run;
mod secrets;
mod settings;
mod signals;
mod sim;
mod temp_files;
mod throttling;
mod track;
mod truth;
mod unattended;
mod up_front;
