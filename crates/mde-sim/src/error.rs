//! Why a simulator could not be set up or started.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting the simulator cannot run with, or a listener it cannot open.
    #[error("simulator: {0}")]
    Simulator(String),
    /// A fleet file that cannot be read.
    #[error("input {}: {message}", path.display())]
    Input { path: PathBuf, message: String },
}
