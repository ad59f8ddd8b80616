//! The results CSV: one row per input row, written and flushed the moment its outcome is known.
//!
//! One task owns the file (see [`ResultsWriter`]); everybody else sends it rows. Rows arrive in the order
//! machines finish, not input order: the `line` column ties each to its input row.

use std::fs::{File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// What happened to one input row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The offboard action was created (requested, not yet done: see `action_status`).
    Submitted,
    /// Dry run: the machine is in the inventory with no open offboard action; a real run would submit it.
    WouldSubmit,
    /// An open offboard action already exists for the machine.
    AlreadyPending,
    NotFound,
    /// A computer name (input by name) that matches several machines: never guessed.
    Ambiguous,
    Forbidden,
    /// The service does not support offboarding this machine's OS or sensor version.
    Unsupported,
    InvalidId,
    Duplicate,
    /// Anything else: `error_code` and `error_message` say what the service or the transport did.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Submitted,
        Outcome::WouldSubmit,
        Outcome::AlreadyPending,
        Outcome::NotFound,
        Outcome::Ambiguous,
        Outcome::Forbidden,
        Outcome::Unsupported,
        Outcome::InvalidId,
        Outcome::Duplicate,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Submitted => "submitted",
            Outcome::WouldSubmit => "would_submit",
            Outcome::AlreadyPending => "already_pending",
            Outcome::NotFound => "not_found",
            Outcome::Ambiguous => "ambiguous",
            Outcome::Forbidden => "forbidden",
            Outcome::Unsupported => "unsupported",
            Outcome::InvalidId => "invalid_id",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed => "failed",
        }
    }

    /// Whether this outcome leaves the exit code at 0.
    pub fn is_ok(self) -> bool {
        matches!(self, Outcome::Submitted | Outcome::WouldSubmit | Outcome::AlreadyPending | Outcome::Duplicate)
    }
}

/// One row of the results CSV; the field order is the column order.
#[derive(Clone, Debug, Serialize)]
pub struct ResultRow {
    pub line: u64,
    pub machine_id: String,
    pub outcome: Outcome,
    pub action_id: Option<String>,
    pub action_status: Option<String>,
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub computer_dns_name: Option<String>,
    pub os_platform: Option<String>,
    pub health_status: Option<String>,
    pub last_seen: Option<String>,
    pub submitted_at: Option<String>,
    pub updated_at: Option<String>,
}

impl ResultRow {
    /// A row for `machine_id` with only the outcome known.
    pub fn new(line: u64, machine_id: impl Into<String>, outcome: Outcome) -> Self {
        ResultRow {
            line,
            machine_id: machine_id.into(),
            outcome,
            action_id: None,
            action_status: None,
            http_status: None,
            attempts: 0,
            error_code: None,
            error_message: None,
            computer_dns_name: None,
            os_platform: None,
            health_status: None,
            last_seen: None,
            submitted_at: None,
            updated_at: None,
        }
    }
}

pub const COLUMNS: [&str; 15] = [
    "line",
    "machine_id",
    "outcome",
    "action_id",
    "action_status",
    "http_status",
    "attempts",
    "error_code",
    "error_message",
    "computer_dns_name",
    "os_platform",
    "health_status",
    "last_seen",
    "submitted_at",
    "updated_at",
];

/// The default results path: `<input stem>.results.csv` beside the input, `results.csv` for stdin.
pub fn default_path(input: Option<&Path>) -> PathBuf {
    match input {
        Some(path) => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "input".into());
            path.with_file_name(format!("{stem}.results.csv"))
        }
        None => PathBuf::from("results.csv"),
    }
}

/// Checks, before any API call, that the results file may be written.
pub fn check_writable(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(Error::Output {
            path: path.to_owned(),
            message: "already exists; pass --overwrite to replace it, or --output to write elsewhere".into(),
        });
    }
    if path.is_dir() {
        return Err(Error::Output { path: path.to_owned(), message: "is a directory".into() });
    }
    Ok(())
}

/// Owns the results file.
pub struct ResultsWriter {
    path: PathBuf,
    csv: csv::Writer<BufWriter<File>>,
}

impl ResultsWriter {
    /// Creates the file (refusing an existing one unless `overwrite`) and writes the header.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self> {
        let fail =
            |e: std::io::Error| Error::Output { path: path.to_owned(), message: format!("cannot create it: {e}") };
        let mut options = OpenOptions::new();
        options.write(true);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Output {
                    path: path.to_owned(),
                    message: "already exists; pass --overwrite to replace it, or --output to write elsewhere".into(),
                }
            } else {
                fail(e)
            }
        })?;
        let mut csv = csv::WriterBuilder::new().has_headers(false).from_writer(BufWriter::new(file));
        csv.write_record(COLUMNS).map_err(|e| Error::Output { path: path.to_owned(), message: e.to_string() })?;
        let mut writer = ResultsWriter { path: path.to_owned(), csv };
        writer.flush()?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one row and hands it to the operating system at once, so a crash loses nothing written.
    pub fn write(&mut self, row: &ResultRow) -> Result<()> {
        self.csv
            .serialize(row)
            .map_err(|e| Error::Output { path: self.path.clone(), message: format!("cannot write a row: {e}") })?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.csv.flush().map_err(|e| Error::Output { path: self.path.clone(), message: format!("cannot write: {e}") })
    }

    /// Flushes and syncs to disk.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let file =
            self.csv.into_inner().map_err(|e| Error::Output { path: self.path.clone(), message: e.to_string() })?;
        file.into_inner()
            .map_err(|e| Error::Output { path: self.path.clone(), message: e.to_string() })?
            .sync_all()
            .map_err(|e| Error::Output { path: self.path.clone(), message: format!("cannot sync: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_the_documented_columns_and_empty_unknowns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, false).unwrap();
        let mut row = ResultRow::new(7, "ab", Outcome::AlreadyPending);
        row.http_status = Some(400);
        row.error_message = Some("Action is already in progress, \"quoted\"".into());
        w.write(&row).unwrap();
        // Visible before finish: each row is flushed.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().next().unwrap(), COLUMNS.join(","));
        assert_eq!(
            text.lines().nth(1).unwrap(),
            r#"7,ab,already_pending,,,400,0,,"Action is already in progress, ""quoted""",,,,,,"#
        );
        w.finish().unwrap();
        assert!(ResultsWriter::create(&path, false).err().unwrap().to_string().contains("--overwrite"));
        assert!(ResultsWriter::create(&path, true).is_ok());
    }

    #[test]
    fn default_path_sits_beside_the_input() {
        assert_eq!(default_path(Some(Path::new("/x/fleet.csv"))), Path::new("/x/fleet.results.csv"));
        assert_eq!(default_path(None), Path::new("results.csv"));
    }
}
