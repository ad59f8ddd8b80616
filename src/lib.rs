//! mde-offboard: offboard fleets of machines from Microsoft Defender for Endpoint, paced to the API's quotas,
//! with a built-in simulator of the service for tests, the demo and the benchmarks.

pub mod api;
pub mod auth;
pub mod certificate;
pub mod check;
pub mod cli;
pub mod cloud;
pub mod demo;
pub mod error;
pub mod extsort;
pub mod input;
pub mod inventory;
pub mod journal;
pub mod limiter;
pub mod lock;
pub mod logging;
pub mod output;
pub mod preflight;
pub mod progress;
pub mod results;
pub mod run;
pub mod settings;
pub mod timestamp;
pub mod track;
