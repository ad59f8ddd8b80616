//! `mde-offboard simulate`: serves the built-in simulator (the `mde-sim` crate) until shutdown.

use std::future::Future;

pub use mde_sim::SimulateArgs;

use crate::error::Result;

/// Serves the simulator described by `args` until `shutdown` resolves.
pub async fn simulate(args: SimulateArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    Ok(mde_sim::simulate(args, shutdown).await?)
}
