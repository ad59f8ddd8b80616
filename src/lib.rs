//! mde-offboard: offboard fleets of machines from Microsoft Defender for Endpoint, paced to the API's quotas,
//! with a built-in simulator of the service for tests, the demo and the benchmarks.

pub mod error;
pub mod settings;
pub mod sim;
