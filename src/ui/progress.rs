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
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} rows  {rate}  ETA {eta}  {msg}")
                    .expect("the template is valid")
                    .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&human_rate(state.per_sec()));
                    })
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

/// A rate as a person reads it: whole numbers with thousands separators from 10 a second up (`14,006/s`),
/// one decimal below (`1.7/s`), per minute below one a second (`12.5/min`).
pub fn human_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        return "0/s".into();
    }
    if per_sec < 1.0 {
        return format!("{:.1}/min", per_sec * 60.0);
    }
    if per_sec < 10.0 {
        return format!("{per_sec:.1}/s");
    }
    let digits = format!("{:.0}", per_sec.round());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out + "/s"
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

#[cfg(test)]
mod tests {
    use super::human_rate;

    /// Before: the bar showed indicatif's `{per_sec}`, e.g. `14,005.7915/s`.
    #[test]
    fn rates_read_as_a_person_writes_them() {
        assert_eq!(human_rate(14_005.791_5), "14,006/s");
        assert_eq!(human_rate(1_234_567.0), "1,234,567/s");
        assert_eq!(human_rate(999.5), "1,000/s");
        assert_eq!(human_rate(12.4), "12/s");
        assert_eq!(human_rate(1.66), "1.7/s");
        assert_eq!(human_rate(1.0 / 6.0), "10.0/min");
        assert_eq!(human_rate(0.0), "0/s");
        assert_eq!(human_rate(f64::NAN), "0/s");
    }
}
