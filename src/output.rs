//! Text for a person on stdout and stderr. Either may be closed or full (`| head -0`, `> /dev/full`,
//! a terminal that went away): that is never a reason to stop offboarding, nor to lose the results file or
//! the summary JSON, so a failed write here is dropped, never a panic (as `print!` would).

use std::io::Write;

/// Writes `text` to stdout as it is.
pub fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes `text` to stderr as it is (around a progress bar, if one is shown).
pub fn stderr(text: &str) {
    let _ = crate::progress::LogWriter.write_all(text.as_bytes()).and_then(|()| std::io::stderr().flush());
}
