//! Following offboard actions to their end: `run --wait` and `mde-offboard track RESULTS.csv`.
//!
//! A 201 only means the offboarding was requested. Tracking updates `action_status` and `updated_at` of
//! every `submitted` or `already_pending` row until the action is final (`Succeeded`, `Failed`, `TimeOut`,
//! `Cancelled`) or the wait ends. It never asks per action: each pass lists the Offboard actions created since
//! the earliest tracked one (`GET /api/machineactions`, `$top`/`$skip` pages of up to 10,000), so tracking
//! 10,000 actions costs a page or two per pass, at most one pass per poll interval, through the process's
//! one limiter. Rows without an action id (`already_pending`: the open action was created before the run)
//! are matched by machine id to its open, else latest, Offboard action; while any is unmatched the pass lists
//! without the date filter, and a row still unmatched after such a full pass is given up on (reported).
//!
//! The results file is read as plain CSV by column name, so columns other than the ones tracking updates pass
//! through untouched, and it is replaced atomically after each pass that changed something (a temporary
//! file in the same directory, synced, then renamed over it).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::api::{Api, ListPage, MachineAction, RetryPolicy};
use crate::auth::TokenCache;
use crate::error::{Error, Result, exit_code};
use crate::limiter::Limiter;
use crate::lock::{self, RunLock};
use crate::progress::Progress;
use crate::results::Outcome;
use crate::settings::{Settings, SettingsArgs};
use crate::sim::clock::{parse_rfc3339, rfc3339};

/// Final action statuses (Microsoft's documentation).
pub const FINAL_STATUSES: [&str; 4] = ["Succeeded", "Failed", "TimeOut", "Cancelled"];
/// The largest `$top` the list endpoint takes (Microsoft's documentation).
pub const PAGE_MAX: u64 = 10_000;
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Outcomes whose rows have an offboard action to follow.
const TRACKED_OUTCOMES: [&str; 2] = ["submitted", "already_pending"];
/// What the summary calls a row whose action could not be found.
const NO_ACTION: &str = "no action found";

/// `run --wait` and its options.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct WaitArgs {
    /// After submitting, track every action until it is final or --wait-timeout passes, updating the results file.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait tracks at most, e.g. 30m or 2h. [default: 1h]
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = positive_duration)]
    pub wait_timeout: Option<Duration>,
    /// At most one status pass per interval while waiting. [default: 1m]
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = positive_duration)]
    pub poll_interval: Option<Duration>,
}

impl WaitArgs {
    pub fn options(&self) -> TrackOptions {
        TrackOptions {
            timeout: self.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT),
            interval: self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
            page_size: PAGE_MAX,
            once: false,
        }
    }
}

/// `mde-offboard track RESULTS.csv`.
#[derive(clap::Args, Debug)]
pub struct TrackArgs {
    /// Results CSV of an earlier run; updated in place.
    #[arg(value_name = "RESULTS.csv")]
    pub results: PathBuf,
    /// Make one pass and stop (for scheduled checks).
    #[arg(long, conflicts_with_all = ["wait_timeout", "poll_interval"])]
    pub once: bool,
    /// How long to track at most, e.g. 30m or 2h. [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub wait_timeout: Option<Duration>,
    /// At most one status pass per interval. [default: 1m]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub poll_interval: Option<Duration>,
    /// Actions asked for per page (the API takes up to 10000).
    #[arg(long, hide = true, default_value_t = PAGE_MAX, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub page_size: u64,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

impl TrackArgs {
    pub fn options(&self) -> TrackOptions {
        TrackOptions {
            timeout: self.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT),
            interval: self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
            page_size: self.page_size,
            once: self.once,
        }
    }
}

/// How tracking runs.
#[derive(Clone, Copy, Debug)]
pub struct TrackOptions {
    /// Stop tracking after this long, finished or not.
    pub timeout: Duration,
    /// At most one pass per interval.
    pub interval: Duration,
    pub page_size: u64,
    /// One pass only.
    pub once: bool,
}

/// What tracking found.
#[derive(Debug, Default)]
pub struct TrackSummary {
    pub results: PathBuf,
    /// Rows with an action to follow.
    pub tracked: u64,
    /// Tracked rows by action status (open statuses too, and "no action found").
    pub by_status: BTreeMap<String, u64>,
    pub rows: u64,
    /// Rows that do not end well: a failed outcome, an action that did not succeed, or one still open.
    pub rows_not_ok: u64,
    pub passes: u64,
    pub calls: u64,
    pub duration: Duration,
    pub interrupted: bool,
    /// The wait ended with actions still open.
    pub timed_out: bool,
}

impl TrackSummary {
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            exit_code::INTERRUPTED
        } else if self.rows_not_ok > 0 {
            exit_code::SOME_FAILED
        } else {
            exit_code::OK
        }
    }

    pub fn open(&self) -> u64 {
        self.by_status.iter().filter(|(s, _)| !is_final(s) && s.as_str() != NO_ACTION).map(|(_, n)| n).sum()
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {} actions: {} {}, {} API calls, {}\n",
            if self.interrupted { "Interrupted while tracking" } else { "Tracked" },
            self.tracked,
            self.passes,
            if self.passes == 1 { "pass" } else { "passes" },
            self.calls,
            humantime::format_duration(Duration::from_secs(self.duration.as_secs()))
        );
        for status in FINAL_STATUSES {
            if let Some(n) = self.by_status.get(status) {
                out += &format!("  {status:<16} {n}\n");
            }
        }
        let open: Vec<String> = self
            .by_status
            .iter()
            .filter(|(s, _)| !is_final(s) && s.as_str() != NO_ACTION)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        if !open.is_empty() {
            let when = if self.timed_out { "when the wait ended" } else { "now" };
            out += &format!("  {:<16} {} ({}) {when}\n", "still open", self.open(), open.join(", "));
        }
        if let Some(n) = self.by_status.get(NO_ACTION) {
            out += &format!("  {NO_ACTION:<16} {n}\n");
        }
        out += &format!("Rows not ok: {} of {}\n", self.rows_not_ok, self.rows);
        out += &format!("Results: {}\n", self.results.display());
        out
    }
}

fn is_final(status: &str) -> bool {
    FINAL_STATUSES.iter().any(|f| f.eq_ignore_ascii_case(status))
}

fn positive_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{s}` is not a duration above zero, such as 30s, 5m or 2h"))
}

/// Whether an action is still open (no final status yet).
fn is_open(action: &MachineAction) -> bool {
    !action.status.as_deref().is_some_and(is_final)
}

fn created(action: &MachineAction) -> Option<SystemTime> {
    action.creation_date_time_utc.as_deref().and_then(parse_rfc3339)
}

/// The columns tracking reads and writes.
struct Columns {
    machine_id: usize,
    outcome: usize,
    action_id: usize,
    action_status: usize,
    submitted_at: usize,
    updated_at: usize,
}

/// A results file in memory.
struct Table {
    path: PathBuf,
    headers: csv::StringRecord,
    rows: Vec<Vec<String>>,
    col: Columns,
    /// Rows (indexes) with an action to follow.
    tracked: Vec<usize>,
    /// Tracked rows whose action could not be found in a full listing: no longer looked for.
    given_up: Vec<bool>,
}

impl Table {
    fn load(path: &Path) -> Result<Table> {
        let fail = |message: String| Error::Input { path: path.to_owned(), message };
        let mut reader = csv::Reader::from_path(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let headers = reader.headers().map_err(|e| fail(format!("cannot read its header: {e}")))?.clone();
        let find = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| fail(format!("has no `{name}` column; give the results file an mde-offboard run wrote")))
        };
        let col = Columns {
            machine_id: find("machine_id")?,
            outcome: find("outcome")?,
            action_id: find("action_id")?,
            action_status: find("action_status")?,
            submitted_at: find("submitted_at")?,
            updated_at: find("updated_at")?,
        };
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| fail(format!("row {}: {e}", i + 2)))?;
            let mut row: Vec<String> = record.iter().map(str::to_owned).collect();
            row.resize(headers.len(), String::new());
            rows.push(row);
        }
        let tracked: Vec<usize> =
            (0..rows.len()).filter(|&i| TRACKED_OUTCOMES.contains(&rows[i][col.outcome].as_str())).collect();
        let given_up = vec![false; rows.len()];
        Ok(Table { path: path.to_owned(), headers, rows, col, tracked, given_up })
    }

    fn get(&self, row: usize, col: usize) -> &str {
        &self.rows[row][col]
    }

    /// Tracked rows still to follow.
    fn open_rows(&self) -> Vec<usize> {
        self.tracked
            .iter()
            .copied()
            .filter(|&i| !self.given_up[i] && !is_final(self.get(i, self.col.action_status)))
            .collect()
    }

    /// Writes what `action` says into row `i`; true if anything changed.
    fn apply(&mut self, i: usize, action: &MachineAction) -> bool {
        let c = &self.col;
        let updates = [
            (c.action_id, action.id.clone()),
            (c.action_status, action.status.clone()),
            (c.updated_at, action.updated_at().cloned()),
        ];
        let mut changed = false;
        for (col, value) in updates {
            if let Some(value) = value.filter(|v| !v.is_empty())
                && self.rows[i][col] != value
            {
                self.rows[i][col] = value;
                changed = true;
            }
        }
        if self.rows[i][c.submitted_at].is_empty()
            && let Some(created) = action.creation_date_time_utc.clone()
        {
            self.rows[i][c.submitted_at] = created;
            changed = true;
        }
        changed
    }

    /// Replaces the file atomically: a temporary file beside it, synced, renamed over it.
    fn save(&self) -> Result<()> {
        let fail = |message: String| Error::Output { path: self.path.clone(), message };
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut temp = tempfile::Builder::new()
            .prefix(".mde-offboard-track-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| fail(format!("cannot create a temporary file beside it: {e}")))?;
        {
            let mut csv = csv::Writer::from_writer(temp.as_file_mut());
            csv.write_record(&self.headers).map_err(|e| fail(e.to_string()))?;
            for row in &self.rows {
                csv.write_record(row).map_err(|e| fail(e.to_string()))?;
            }
            csv.flush().map_err(|e| fail(format!("cannot write: {e}")))?;
        }
        temp.as_file().sync_all().map_err(|e| fail(format!("cannot sync: {e}")))?;
        if let Ok(meta) = std::fs::metadata(&self.path) {
            let _ = std::fs::set_permissions(temp.path(), meta.permissions());
        }
        temp.persist(&self.path).map_err(|e| fail(format!("cannot replace it: {}", e.error)))?;
        Ok(())
    }

    fn summary(&self) -> TrackSummary {
        let mut s = TrackSummary { results: self.path.clone(), rows: self.rows.len() as u64, ..Default::default() };
        for (i, row) in self.rows.iter().enumerate() {
            let outcome = row[self.col.outcome].as_str();
            let ok = if TRACKED_OUTCOMES.contains(&outcome) {
                s.tracked += 1;
                let status = row[self.col.action_status].as_str();
                let key = if self.given_up[i] {
                    NO_ACTION
                } else if status.is_empty() {
                    "unknown"
                } else {
                    status
                };
                *s.by_status.entry(key.to_string()).or_insert(0) += 1;
                status.eq_ignore_ascii_case("Succeeded")
            } else {
                Outcome::parse(outcome).is_some_and(Outcome::is_ok)
            };
            if !ok {
                s.rows_not_ok += 1;
            }
        }
        s
    }
}

/// Tracks the actions of the results file `path` until each is final, `options.timeout` passes, or
/// `shutdown` resolves; updates the file after each pass that changed something.
/// `limiter` paces the calls, and `tokens` signs in: after a run (`run --wait`) both are the run's own, as
/// both spend one quota and one sign-in serves both; `None` signs in anew.
pub async fn track_file(
    path: &Path,
    settings: &Settings,
    limiter: Arc<Limiter>,
    tokens: Option<Arc<TokenCache>>,
    options: TrackOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<TrackSummary> {
    let started = Instant::now();
    let mut table = Table::load(path)?;
    let progress = Progress::new(table.tracked.len() as u64, std::io::stderr().is_terminal());
    for &i in &table.tracked {
        let status = table.get(i, table.col.action_status);
        if is_final(status) {
            progress.row_done(status.eq_ignore_ascii_case("Succeeded"));
        }
    }
    if table.open_rows().is_empty() {
        progress.finish();
        let mut summary = table.summary();
        summary.duration = started.elapsed();
        return Ok(summary);
    }

    let credentials = settings.credentials()?;
    // Tracking spends the same quota as a run: one at a time per tenant and app.
    let run_id = crate::run::new_run_id(SystemTime::now());
    let _lock = RunLock::acquire(&lock::state_dir(), &credentials.tenant_id, &credentials.client_id, &run_id)?;
    let tokens = match tokens {
        Some(tokens) => tokens,
        None => Arc::new(TokenCache::new(crate::run::http_client(settings)?, credentials)),
    };
    let http = tokens.http();
    tokens.get().await.map_err(|e| Error::Auth(e.to_string()))?;
    let policy = RetryPolicy { max_attempts: settings.max_attempts, retry_delay: settings.retry_delay };
    let api = Api::new(http, &settings.api_base, tokens, limiter, policy);

    let deadline = started + options.timeout;
    let mut passes = 0;
    let mut interrupted = false;
    tokio::pin!(shutdown);
    loop {
        let pass_started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = &mut shutdown => { interrupted = true; break; }
            result = pass(&api, &mut table, options.page_size, &progress) => result,
        };
        passes += 1;
        if let Err(e) = result {
            progress.finish();
            return Err(e);
        }
        if options.once || table.open_rows().is_empty() {
            break;
        }
        let next = pass_started + options.interval;
        if next > deadline {
            break;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => { interrupted = true; break; }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    progress.finish();
    let mut summary = table.summary();
    summary.passes = passes;
    summary.calls = api.counters.calls.load(Ordering::Relaxed);
    summary.duration = started.elapsed();
    summary.interrupted = interrupted;
    summary.timed_out = !interrupted && !options.once && summary.open() > 0;
    Ok(summary)
}

/// One pass: list the Offboard actions (all pages), update the rows, save if anything changed.
/// A pass that cannot be completed for a passing reason is skipped with a warning; one the app is not
/// allowed to make, or whose sign-in failed for good, ends tracking with an error.
async fn pass(api: &Api, table: &mut Table, page_size: u64, progress: &Progress) -> Result<()> {
    let open = table.open_rows();
    let c = &table.col;
    let unmatched: Vec<usize> = open.iter().copied().filter(|&i| table.get(i, c.action_id).is_empty()).collect();
    // The earliest creation among the open actions; without one for every open row, list them all.
    let since = if unmatched.is_empty() {
        open.iter()
            .map(|&i| parse_rfc3339(table.get(i, c.submitted_at)))
            .collect::<Option<Vec<_>>>()
            .and_then(|t| t.into_iter().min())
    } else {
        None
    };
    let mut filter = String::from("type eq 'Offboard'");
    if let Some(since) = since {
        filter += &format!(" and creationDateTimeUtc ge {}", rfc3339(since));
    }
    let mut actions: Vec<MachineAction> = Vec::new();
    let page_size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let mut skip = 0usize;
    loop {
        let (_, page) = api
            .list_page("/api/machineactions", Some(&filter), page_size, skip, |body| {
                serde_json::from_slice::<ListPage<MachineAction>>(body).map(|p| p.value).map_err(|e| e.to_string())
            })
            .await;
        let page = match page {
            Ok(page) => page,
            Err(f) => {
                if let Some(e) = api.fatal() {
                    return Err(Error::Auth(e.to_string()));
                }
                if matches!(f.status, Some(401 | 403)) {
                    return Err(Error::Auth(format!(
                        "the API refused to list machine actions ({} {}: {}); tracking needs the application permission \
                         Machine.Read.All or Machine.ReadWrite.All with admin consent",
                        f.status.unwrap_or_default(),
                        f.code,
                        f.message
                    )));
                }
                tracing::warn!(code = %f.code, "a tracking pass failed and is skipped: {}", f.message);
                return Ok(());
            }
        };
        let short = page.len() < page_size;
        actions.extend(page);
        if short {
            break;
        }
        skip += page_size;
    }

    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut by_machine: HashMap<String, usize> = HashMap::new();
    for (n, a) in actions.iter().enumerate() {
        if let Some(id) = &a.id {
            by_id.insert(id.to_ascii_lowercase(), n);
        }
        if let Some(machine) = &a.machine_id {
            let key = machine.to_ascii_lowercase();
            // Prefer the open action, then the latest created.
            let better = match by_machine.get(&key) {
                None => true,
                Some(&m) => {
                    let other = &actions[m];
                    (is_open(a), created(a)) > (is_open(other), created(other))
                }
            };
            if better {
                by_machine.insert(key, n);
            }
        }
    }

    let mut changed = false;
    for &i in &open {
        let id = table.get(i, table.col.action_id).to_ascii_lowercase();
        let found = if id.is_empty() {
            by_machine.get(&table.get(i, table.col.machine_id).to_ascii_lowercase())
        } else {
            by_id.get(&id)
        };
        match found {
            Some(&n) => {
                let was_final = is_final(table.get(i, table.col.action_status));
                changed |= table.apply(i, &actions[n]);
                let status = table.get(i, table.col.action_status);
                if !was_final && is_final(status) {
                    tracing::debug!(machine = %table.get(i, table.col.machine_id), status, "action final");
                    progress.row_done(status.eq_ignore_ascii_case("Succeeded"));
                }
            }
            None if id.is_empty() => {
                // A full listing (no date filter) without it: stop looking.
                tracing::warn!(
                    machine = %table.get(i, table.col.machine_id),
                    "no Offboard action found for this machine; it is not tracked further"
                );
                table.given_up[i] = true;
            }
            None => {}
        }
    }
    if changed {
        table.save()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "line,machine_id,outcome,action_id,action_status,http_status,extra,submitted_at,updated_at\n";

    fn table(rows: &str) -> (tempfile::TempDir, Table) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, format!("{HEADER}{rows}")).unwrap();
        let table = Table::load(&path).unwrap();
        (dir, table)
    }

    fn action(id: &str, machine: &str, status: &str, created: &str) -> MachineAction {
        MachineAction {
            id: Some(id.into()),
            machine_id: Some(machine.into()),
            status: Some(status.into()),
            creation_date_time_utc: Some(created.into()),
            last_update_date_time_utc: Some("2026-01-01T00:05:00Z".into()),
            ..MachineAction::default()
        }
    }

    #[test]
    fn rows_are_tracked_by_outcome_and_saved_with_unknown_columns_kept() {
        let (_dir, mut t) = table(
            "2,aa,submitted,A1,Pending,201,x,2026-01-01T00:00:00Z,\n\
             3,bb,already_pending,,,400,\"y, z\",,\n\
             4,cc,not_found,,,404,,,\n\
             5,dd,duplicate,,,,,,\n",
        );
        assert_eq!(t.tracked, vec![0, 1]);
        assert_eq!(t.open_rows(), vec![0, 1]);
        assert!(t.apply(0, &action("A1", "aa", "Succeeded", "2026-01-01T00:00:00Z")));
        assert!(t.apply(1, &action("B7", "bb", "InProgress", "2025-12-31T00:00:00Z")));
        t.save().unwrap();
        let text = std::fs::read_to_string(&t.path).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("2,aa,submitted,A1,Succeeded,201,x,2026-01-01T00:00:00Z,2026-01-01T00:05:00Z"), "{text}");
        assert!(
            text.contains("3,bb,already_pending,B7,InProgress,400,\"y, z\",2025-12-31T00:00:00Z,2026-01-01T00:05:00Z")
        );
        let s = Table::load(&t.path).unwrap().summary();
        // not_found and the open action are not ok; duplicate and the success are.
        assert_eq!((s.tracked, s.rows_not_ok, s.open()), (2, 2, 1));
        assert_eq!(s.exit_code(), exit_code::SOME_FAILED);
        assert_eq!(std::fs::read_dir(t.path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_file_without_the_columns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machines.csv");
        std::fs::write(&path, "MachineId\naa\n").unwrap();
        let msg = Table::load(&path).err().unwrap().to_string();
        assert!(msg.contains("machine_id") && msg.contains("results file"), "{msg}");
    }
}
