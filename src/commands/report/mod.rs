//! `mde-offboard report RESULTS`, `run --report` and `track --report`: a results file made readable, as one
//! self-contained HTML page ([`html`]) or Markdown for a change ticket ([`markdown`]).
//!
//! What the report says comes from two files only: the results CSV (read by column name, so an older or
//! tracked file reads as well) and, when it is beside it, the run's journal (the run id, tenant, app,
//! comment and start). A run or a tracking that writes the report itself hands it what only it knows (the
//! end, the exit code, the API calls made): [`RunFacts`].
//!
//! Memory stays flat however long the file: it is streamed, never loaded. A first pass counts (per outcome,
//! per action status, per minute of action creation for the chart: at most [`CHART_MINUTES_MAX`] minutes
//! are kept); the writers then stream the file again, once for the rows that did not end well (every one
//! of them is in the report) and once for the first [`OTHER_ROWS_MAX`] of the others, and say how many
//! were left out. Everything that came from the service or the input is escaped where it is written.
//!
//! The one results file of a run of several tenants (a `tenant_id` column) is reported with its tenant in
//! every row and the counts per tenant (as many entries as tenants, in the file's order); the run's lines
//! then come from the first tenant's journal (each tenant ran a run of its own, in `<results
//! stem>.tenants/`).

pub mod html;
pub mod markdown;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::commands::tenants::{TENANT_COLUMN, tenant_results, tenants_dir};
use crate::defender::timestamp;
use crate::domain::{ActionStatus, Outcome};
use crate::error::{Error, Result, exit_code};
use crate::files::journal;
use crate::files::results::ResultsFile;

/// Rows that ended well shown in the table at most (the rows that did not are all shown): a report of a
/// million rows stays a page a browser opens.
pub const OTHER_ROWS_MAX: u64 = 1_000;
/// Minutes of action creation the chart keeps at most (a year of a run at most: far beyond the 28 days a
/// million machines take at 1,500 an hour).
pub const CHART_MINUTES_MAX: usize = 527_040;
/// The documented quotas of the offboard API (Microsoft's documentation): the chart's reference lines.
pub const QUOTA_PER_MINUTE: u64 = 100;
pub const QUOTA_PER_HOUR: u64 = 1_500;

/// `mde-offboard report RESULTS.csv`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Results CSV of a run (tracked or not).
    #[arg(value_name = "RESULTS.csv")]
    pub results: PathBuf,
    /// Write the report as one self-contained HTML page (sortable, filterable, printable).
    #[arg(long, value_name = "FILE", required_unless_present = "markdown")]
    pub html: Option<PathBuf>,
    /// Write the run, the counts and the rows that did not end well as Markdown (for a change ticket).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
}

/// `mde-offboard report`: writes the files asked for and says where.
pub fn command(args: &ReportArgs) -> Result<u8> {
    let facts = RunFacts::default();
    if let Some(path) = &args.html {
        write(&args.results, path, Format::Html, &facts)?;
        crate::ui::output::stdout(&format!("Report: {}\n", path.display()));
    }
    if let Some(path) = &args.markdown {
        write(&args.results, path, Format::Markdown, &facts)?;
        crate::ui::output::stdout(&format!("Report: {}\n", path.display()));
    }
    Ok(exit_code::OK)
}

/// The two forms of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Markdown,
}

impl Format {
    /// The form a file name asks for: Markdown for `.md`, HTML otherwise.
    pub fn for_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("md") || ext.eq_ignore_ascii_case("markdown") => Format::Markdown,
            _ => Format::Html,
        }
    }
}

/// What the command that wrote the results knows and the files do not say.
#[derive(Clone, Debug, Default)]
pub struct RunFacts {
    /// When the run (or the tracking) ended.
    pub ended_at: Option<SystemTime>,
    /// The exit code it ended with; without it the report derives one from the rows and says so.
    pub exit_code: Option<u8>,
    /// What the command was: "run", "run (interrupted)", "track".
    pub ended_by: Option<String>,
    /// API calls it made (every call: reads, retries, offboards).
    pub calls: Option<u64>,
    /// How the run's `--tag` went, in a few words.
    pub tags: Option<String>,
}

/// Writes the report of `results` to `out` in `format`, atomically (a temporary file beside it, then a
/// rename): a reader never sees half a report, and a failure leaves an earlier one in place.
pub fn write(results: &Path, out: &Path, format: Format, facts: &RunFacts) -> Result<()> {
    let report = Report::read(results, facts.clone()).map_err(|e| as_input(results, e))?;
    let fail = |e: std::io::Error| Error::write(out, "write it", e);
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new().prefix(".mde-offboard-report-").tempfile_in(dir).map_err(fail)?;
    let mut writer = BufWriter::new(temp);
    let written = match format {
        Format::Html => html::write(&report, &mut writer),
        Format::Markdown => markdown::write(&report, &mut writer),
    };
    // A failed write names the report's path ([`put`] does not know it); a failed read names the results',
    // the report's input.
    written.map_err(|e| match e {
        Error::Write { path, action, source } if path.as_os_str() == REPORT => {
            Error::Write { path: out.to_owned(), action, source }
        }
        e => as_input(results, e),
    })?;
    let temp = writer.into_inner().map_err(|e| fail(e.into_error()))?;
    temp.as_file().sync_all().map_err(fail)?;
    // A report is for sharing: readable by others, as any file the user writes (a temporary file is 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644)).map_err(fail)?;
    }
    temp.persist(out).map_err(|e| fail(e.error))?;
    Ok(())
}

/// An error of the results file, which the results file's reader words as a file the command writes: to the
/// report it is the input, named so; one that cannot be opened says what to give instead.
fn as_input(results: &Path, e: Error) -> Error {
    match e {
        Error::Output { path, message } if path == results => {
            let message = if std::fs::metadata(&path).is_err() {
                format!(
                    "{message}; check the path: a report reads the results file a run wrote (by default \
                     <input>.results.csv beside the run's input, or the run's --output)"
                )
            } else {
                message
            };
            Error::Input { path, message }
        }
        e => e,
    }
}

/// Writes the report asked for at the end of a command (`run --report`, `track --report`): a failure is
/// told, never the command's end (its rows stand either way).
pub fn refresh(results: &Path, out: &Path, facts: &RunFacts) {
    match write(results, out, Format::for_path(out), facts) {
        Ok(()) => crate::ui::output::notice("report", &format!("Report: {}", out.display())),
        Err(e) => crate::ui::output::error(&format!("the report was not written: {e}")),
    }
}

/// The run as its journal tells it.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub run_id: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub comment: Option<String>,
    pub started_at: Option<String>,
    pub input: Option<String>,
    pub input_rows: Option<u64>,
    /// The person who signed in (device code sign-in); `None` for an app.
    pub account: Option<String>,
}

impl Identity {
    /// The lines a run of several tenants shares, from the journal of its first tenant's `results`: the
    /// comment, the app and the start (each tenant's run id, tenant and list are its own).
    fn of_first_tenant(results: &Path) -> Identity {
        let first = Identity::of(results);
        Identity {
            comment: first.comment,
            client_id: first.client_id,
            started_at: first.started_at,
            ..Identity::default()
        }
    }

    /// From the journal beside `results`, if there is one that reads.
    fn of(results: &Path) -> Identity {
        let path = journal::path_for(results);
        match journal::read(&path, |_, _| false) {
            Ok(earlier) => {
                let i = earlier.identity;
                Identity {
                    comment: Some(i.comment_sent()),
                    run_id: Some(i.run_id),
                    tenant_id: Some(i.tenant_id),
                    client_id: Some(i.client_id),
                    started_at: Some(i.started_at),
                    input: Some(i.input),
                    input_rows: Some(i.input_rows),
                    account: i.account,
                }
            }
            Err(_) => Identity::default(),
        }
    }
}

/// The columns a report shows, in order, and their headings.
pub const TABLE: [(&str, &str); 10] = [
    ("line", "Line"),
    ("machine_id", "Machine id"),
    ("computer_dns_name", "Computer name"),
    ("outcome", "Outcome"),
    ("action_status", "Action status"),
    ("http_status", "HTTP"),
    ("error_code", "Error code"),
    ("error_message", "Message"),
    ("submitted_at", "Submitted"),
    ("updated_at", "Updated"),
];

/// A results row as the report shows it: the cells of [`TABLE`], empty where the file has none, and its
/// tenant (empty in a file of one tenant).
pub struct Row {
    pub cells: [String; TABLE.len()],
    pub well: bool,
    pub tenant: String,
}

/// The rows of one tenant of a results file of several.
#[derive(Debug, PartialEq, Eq)]
pub struct TenantCount {
    pub tenant: String,
    pub rows: u64,
    pub not_well: u64,
}

impl Row {
    pub fn get(&self, column: &str) -> &str {
        TABLE.iter().position(|(c, _)| *c == column).map_or("", |i| &self.cells[i])
    }
}

/// Whether a row ended well: an outcome that leaves the exit code at 0, and an action (if any) that did not
/// end `Failed`, `TimeOut` or `Cancelled`. An open action is not a failure (a 201 is a request).
pub fn ends_well(outcome: &str, status: &str) -> bool {
    let outcome_ok = Outcome::parse(outcome).is_some_and(Outcome::is_ok);
    let status = ActionStatus::parse(status);
    outcome_ok && !matches!(status, ActionStatus::Failed | ActionStatus::TimeOut | ActionStatus::Cancelled)
}

/// The results file, counted, ready to be streamed into a report.
pub struct Report {
    pub results: PathBuf,
    pub identity: Identity,
    pub facts: RunFacts,
    pub rows: u64,
    pub by_outcome: BTreeMap<String, u64>,
    /// Rows with an action, by its status (none yet: "(none)").
    pub by_status: BTreeMap<String, u64>,
    pub not_well: u64,
    /// Offboard actions the run created (`submitted` rows), by the minute of their creation (unix minutes).
    pub created_per_minute: BTreeMap<i64, u64>,
    /// `submitted` rows whose creation time could not be read, or fell beyond [`CHART_MINUTES_MAX`].
    pub not_charted: u64,
    /// When the results file was last written.
    pub written_at: Option<SystemTime>,
    /// A results file of several tenants: the rows per tenant, in the order the file first names them.
    pub by_tenant: Vec<TenantCount>,
    file: ResultsFile,
    columns: [Option<usize>; TABLE.len()],
    tenant_column: Option<usize>,
}

impl Report {
    /// Opens `results` and counts it (one pass).
    pub fn read(results: &Path, facts: RunFacts) -> Result<Report> {
        let file = ResultsFile::open(results)?;
        file.column("outcome")?;
        file.column("machine_id")?;
        let columns = TABLE.map(|(name, _)| file.headers().iter().position(|h| h == name));
        let tenant_column = file.headers().iter().position(|h| h == TENANT_COLUMN);
        let mut report = Report {
            results: results.to_owned(),
            identity: Identity::of(results),
            facts,
            rows: 0,
            by_outcome: BTreeMap::new(),
            by_status: BTreeMap::new(),
            not_well: 0,
            created_per_minute: BTreeMap::new(),
            not_charted: 0,
            written_at: std::fs::metadata(results).and_then(|m| m.modified()).ok(),
            by_tenant: Vec::new(),
            file,
            columns,
            tenant_column,
        };
        for record in report.file.records()? {
            let row = report.row(&record?.cells);
            report.rows += 1;
            *report.by_outcome.entry(row.get("outcome").to_string()).or_insert(0) += 1;
            if Outcome::parse(row.get("outcome")).is_some_and(Outcome::has_action) {
                let status = row.get("action_status");
                let status = if status.is_empty() { "(none)" } else { status };
                *report.by_status.entry(status.to_string()).or_insert(0) += 1;
            }
            if !row.well {
                report.not_well += 1;
            }
            if report.has_tenants() {
                report.count_tenant(&row);
            }
            if row.get("outcome") == Outcome::Submitted.as_str() {
                let minute = timestamp::parse(row.get("submitted_at")).and_then(unix_minute);
                let full = report.created_per_minute.len() >= CHART_MINUTES_MAX;
                match minute {
                    Some(m) if !full || report.created_per_minute.contains_key(&m) => {
                        *report.created_per_minute.entry(m).or_insert(0) += 1;
                    }
                    _ => report.not_charted += 1,
                }
            }
        }
        if report.has_tenants() && report.identity.run_id.is_none() {
            report.identity = match report.by_tenant.first() {
                Some(first) => Identity::of_first_tenant(&tenant_results(&tenants_dir(results), &first.tenant)),
                None => Identity::default(),
            };
        }
        Ok(report)
    }

    /// Whether the file is the one results file of a run of several tenants (it has a `tenant_id` column).
    pub fn has_tenants(&self) -> bool {
        self.tenant_column.is_some()
    }

    /// Counts `row` in its tenant's entry: the file holds each tenant's rows together, so the last entry is
    /// nearly always the row's.
    fn count_tenant(&mut self, row: &Row) {
        let at = match self.by_tenant.iter().rposition(|t| t.tenant == row.tenant) {
            Some(at) => at,
            None => {
                self.by_tenant.push(TenantCount { tenant: row.tenant.clone(), rows: 0, not_well: 0 });
                self.by_tenant.len() - 1
            }
        };
        let count = &mut self.by_tenant[at];
        count.rows += 1;
        count.not_well += u64::from(!row.well);
    }

    fn row(&self, cells: &csv::StringRecord) -> Row {
        let tenant = self.tenant_column.and_then(|i| cells.get(i)).unwrap_or("").to_string();
        let cells = self.columns.map(|c| c.and_then(|i| cells.get(i)).unwrap_or("").to_string());
        let well = ends_well(&cells[3], &cells[4]);
        Row { cells, well, tenant }
    }

    /// Streams the rows that did not end well (all of them) and then the first [`OTHER_ROWS_MAX`] of the
    /// others, in file order each; returns how many others were left out.
    pub fn table_rows(&self, mut each: impl FnMut(&Row) -> Result<()>) -> Result<u64> {
        for record in self.file.records()? {
            let row = self.row(&record?.cells);
            if !row.well {
                each(&row)?;
            }
        }
        let mut shown = 0;
        for record in self.file.records()? {
            let row = self.row(&record?.cells);
            if row.well {
                if shown == OTHER_ROWS_MAX {
                    break;
                }
                each(&row)?;
                shown += 1;
            }
        }
        Ok(self.rows - self.not_well - shown)
    }

    /// Streams the rows that did not end well, in file order.
    pub fn not_well_rows(&self, mut each: impl FnMut(&Row) -> Result<()>) -> Result<()> {
        for record in self.file.records()? {
            let row = self.row(&record?.cells);
            if !row.well {
                each(&row)?;
            }
        }
        Ok(())
    }

    /// The exit code the report states: the command's own, else the one the rows show (0 or 3; 4 when the
    /// file holds fewer rows than the input had: the run did not finish), and where it came from.
    pub fn exit_code(&self) -> (u8, &'static str) {
        if let Some(code) = self.facts.exit_code {
            return (code, "as the command ended");
        }
        if self.identity.input_rows.is_some_and(|n| self.rows < n) {
            return (exit_code::STOPPED, "as the rows show: fewer rows than the input had, the run did not finish");
        }
        if self.not_well > 0 {
            (exit_code::SOME_FAILED, "as the rows show")
        } else {
            (exit_code::OK, "as the rows show")
        }
    }

    /// The run's lines as (label, value): every value as the files have it, for the writers to escape.
    pub fn run_lines(&self) -> Vec<(&'static str, String)> {
        let i = &self.identity;
        let none = || "unknown (no journal beside the results file)".to_string();
        let (run_id, tenant, app) = match self.has_tenants() {
            false => (
                i.run_id.clone().unwrap_or_else(none),
                i.tenant_id.clone().unwrap_or_else(none),
                i.client_id.clone().unwrap_or_else(none),
            ),
            true => (
                format!("one run per tenant (their journals are in {})", tenants_dir(&self.results).display()),
                format!("{} tenant(s) (the rows of each below)", self.by_tenant.len()),
                i.client_id.as_ref().map_or_else(none, |app| format!("{app} (the first tenant's run)")),
            ),
        };
        let mut lines = vec![
            ("Run id", run_id),
            ("Tenant", tenant),
            ("App (client id)", app),
            ("Comment", i.comment.clone().unwrap_or_else(none)),
            ("Input", i.input.clone().unwrap_or_else(none)),
            ("Started", i.started_at.clone().unwrap_or_else(none)),
        ];
        if let Some(account) = &i.account {
            lines.insert(3, ("Signed in as", account.clone()));
        }
        let ended = match (self.facts.ended_at, self.written_at) {
            (Some(at), _) => format!("{}", humantime::format_rfc3339_seconds(at)),
            (None, Some(at)) => {
                format!("{} (when the results file was last written)", humantime::format_rfc3339_seconds(at))
            }
            (None, None) => "unknown".into(),
        };
        lines.push(("Ended", ended));
        if let Some(by) = &self.facts.ended_by {
            lines.push(("Written by", by.clone()));
        }
        let (code, how) = self.exit_code();
        lines.push(("Exit code", format!("{code} ({}; {how})", exit_meaning(code))));
        if let Some(calls) = self.facts.calls {
            lines.push(("API calls", calls.to_string()));
        }
        if let Some(tags) = &self.facts.tags {
            lines.push(("Tags", tags.clone()));
        }
        lines.push(("Results file", self.results.display().to_string()));
        lines
    }

    /// Counts per outcome, in the order outcomes are documented (unknown texts after them).
    pub fn outcome_counts(&self) -> Vec<(String, u64, bool)> {
        let known = Outcome::ALL.iter().filter_map(|o| self.by_outcome.get(o.as_str()).map(|n| (o.as_str(), *n)));
        let unknown =
            self.by_outcome.iter().filter(|(o, _)| Outcome::parse(o).is_none()).map(|(o, n)| (o.as_str(), *n));
        known.chain(unknown).map(|(o, n)| (o.to_string(), n, Outcome::parse(o).is_some_and(Outcome::is_ok))).collect()
    }
}

/// What an exit code means, in a few words.
pub fn exit_meaning(code: u8) -> &'static str {
    match code {
        exit_code::OK => "every row ended well",
        exit_code::CANNOT_RUN => "could not run",
        exit_code::USAGE => "usage error",
        exit_code::SOME_FAILED => "some rows did not end well",
        exit_code::STOPPED => "stopped part way",
        exit_code::INTERRUPTED => "interrupted",
        _ => "unknown",
    }
}

fn unix_minute(at: SystemTime) -> Option<i64> {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs / 60).ok()
}

/// What [`put`] calls the file it writes to, for [`write`] to put the report's path in its place.
const REPORT: &str = "<report>";

/// Writes `text` to `out`.
pub(crate) fn put(out: &mut impl Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes()).map_err(|e| Error::write(REPORT, "write it", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_end_well_by_outcome_and_action() {
        assert!(ends_well("submitted", "Pending"));
        assert!(ends_well("submitted", "Succeeded"));
        assert!(ends_well("duplicate", ""));
        assert!(!ends_well("submitted", "Failed"));
        assert!(!ends_well("already_pending", "Cancelled"));
        assert!(!ends_well("not_found", ""));
        assert!(!ends_well("something else", ""));
    }

    #[test]
    fn a_file_name_chooses_the_form() {
        assert_eq!(Format::for_path(Path::new("r.md")), Format::Markdown);
        assert_eq!(Format::for_path(Path::new("r.html")), Format::Html);
        assert_eq!(Format::for_path(Path::new("r")), Format::Html);
    }
}
