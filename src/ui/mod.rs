//! What a person sees: the text on stdout and stderr (one owner, [`output`]), the log lines, and the
//! progress bar.

pub mod logging;
pub mod output;
pub mod progress;
