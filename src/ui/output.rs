//! Text for a person on stdout and stderr: the one owner of every byte written there outside the log
//! lines (which `tracing` writes, through [`crate::ui::progress::LogWriter`]).
//!
//! It knows the log format and the verbosity: with `--log-format json` every line on stderr is one JSON
//! object (a notice or a fatal error is an event with fields, like a log line), and with `-q` only errors
//! reach stderr. Either stream may be closed or full (`| head -0`, `> /dev/full`, a terminal that went
//! away): that is never a reason to stop offboarding, nor to lose the results file or the summary JSON, so
//! a failed write here is dropped, never a panic (as `print!` would).

use std::io::Write;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, Default)]
struct Style {
    json: bool,
    quiet: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

fn style() -> Style {
    STYLE.get().copied().unwrap_or_default()
}

/// Sets the format and verbosity once, with the logging (later calls change nothing).
pub fn configure(json: bool, quiet: bool) {
    let _ = STYLE.set(Style { json, quiet });
}

/// Writes `text` to stdout as it is (a summary, a report).
pub fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A notice for the person running the command (the plan, what the pre-flight read, an interrupt): a line
/// of text on stderr, or an event with `kind` and `message` in JSON; nothing with `-q`.
pub fn notice(kind: &str, text: &str) {
    let style = style();
    if style.quiet {
        return;
    }
    write_stderr(style, "INFO", kind, text);
}

/// What a person must see to go on (the device code to enter), shown even with `-q`: a line of text on
/// stderr, or an event with `kind` and `message` in JSON.
pub fn for_person(kind: &str, text: &str) {
    write_stderr(style(), "INFO", kind, text);
}

/// A fatal error, always shown: `error: ...` as text, an ERROR event in JSON.
pub fn error(text: &str) {
    write_stderr(style(), "ERROR", "error", text);
}

/// A question on the terminal (asked only when there is one), as text whatever the log format; no line
/// break, so the answer follows it.
pub fn prompt(text: &str) {
    raw_stderr(text);
}

fn write_stderr(style: Style, level: &str, kind: &str, text: &str) {
    let text = text.trim_end();
    if style.json {
        let line = serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": level,
            "fields": { "message": text, "kind": kind },
        });
        raw_stderr(&format!("{line}\n"));
    } else if level == "ERROR" {
        raw_stderr(&format!("error: {text}\n"));
    } else {
        raw_stderr(&format!("{text}\n"));
    }
}

/// Writes to stderr, above the progress bar if one is shown.
fn raw_stderr(text: &str) {
    let _ = crate::ui::progress::LogWriter.write_all(text.as_bytes()).and_then(|()| std::io::stderr().flush());
}

/// A duration as a person writes it on a command line: whole days as `30d`, whole hours as `48h`, else as
/// humantime writes it.
pub fn short_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        _ if d.subsec_nanos() != 0 || secs == 0 => humantime::format_duration(d).to_string(),
        _ if secs.is_multiple_of(86_400) && secs >= 3 * 86_400 => format!("{}d", secs / 86_400),
        _ if secs.is_multiple_of(3600) => format!("{}h", secs / 3600),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// `text` safe to show on a terminal: control characters (an escape sequence in a name or a message from
/// the service) are shown as `\u{..}` escapes; line breaks and tabs stay.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}
