//! The progress bar, shown on stderr only when it is a terminal, and the log writer that keeps log lines
//! from tearing it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar in use, if any: log lines are printed above it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Progress of a run: rows done out of rows in the input.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    failures: Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    /// A bar for `total` rows; hidden when `show` is false (no terminal).
    pub fn new(total: u64, show: bool) -> Self {
        let bar = show.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}")
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            *ACTIVE.lock().unwrap() = Some(bar.clone());
            bar
        });
        Progress { bar, failures: Default::default() }
    }

    pub fn row_done(&self, ok: bool) {
        if let Some(bar) = &self.bar {
            if !ok {
                self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            bar.inc(1);
        }
    }

    pub fn is_shown(&self) -> bool {
        self.bar.is_some()
    }

    /// Updates the note beside the bar: rows not ok, 429s so far, and a pause in force.
    pub fn status(&self, throttled: u64, paused_for: Option<std::time::Duration>) {
        if let Some(bar) = &self.bar {
            let failures = self.failures.load(std::sync::atomic::Ordering::Relaxed);
            let mut note = format!("{failures} not ok, {throttled} throttled");
            if let Some(wait) = paused_for {
                note += &format!(", paused by a 429 for {}s", wait.as_secs() + 1);
            }
            bar.set_message(note);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            *ACTIVE.lock().unwrap() = None;
        }
    }
}

/// Writes log lines to stderr, above the progress bar when one is shown.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().unwrap().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)).map(|_| buf.len()),
            None => std::io::stderr().write_all(buf).map(|_| buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
