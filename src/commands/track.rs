//! Following offboard actions to their end: `run --wait` and `mde-offboard track RESULTS.csv`.
//!
//! A 201 only means the offboarding was requested. Tracking updates `action_status` and `updated_at` of
//! every `submitted` or `already_pending` row ([`Outcome::has_action`]) until the action is final
//! (`Succeeded`, `Failed`, `TimeOut`, `Cancelled`: [`ActionStatus::is_final`]) or the wait ends. It never asks
//! per action: each pass lists the offboard actions (of either type, [`crate::domain::OFFBOARD_TYPES`])
//! created since the earliest tracked one (`GET /api/machineactions`, `$top`/`$skip` pages of up to 10,000),
//! so tracking 10,000 actions costs a page or two per pass, at most one pass per poll interval, through the
//! process's one limiter. Rows without an action id (`already_pending`: the open action was created before
//! the run) are matched by machine id to its open, else latest, Offboard action; while any is unmatched the
//! pass lists without the date filter, and a row still unmatched after such a full pass is given up on
//! (reported).
//!
//! The results file is read by column name ([`ResultsFile::records`]), so columns other than the ones
//! tracking updates pass through untouched, in their order, and it is replaced atomically after each pass
//! that changed something ([`Rewrite`]: a temporary file in the same directory, synced, then renamed over it).
//!
//! Memory stays flat in the size of the file: it is streamed, never loaded. A pass sorts the open rows by
//! action key (or machine) and the listed actions likewise, on disk beyond a few MiB ([`crate::files::extsort`]),
//! merges them into updates sorted by row, and applies those while streaming the file into its replacement.
//! Between passes only one bit per row is kept: the rows given up on.
//!
//! A pass that cannot read the whole list (a failed call, a page that repeats an earlier one because the
//! service ignored `$skip`, the page cap, the end of the wait) applies what it did read, gives up on no row,
//! and is tried again at the next pass. The summary never claims more than was read: when the last pass
//! could not read everything, it says the statuses are as of the last read, and the exit code is 1 if
//! nothing could be read at all (4 after a run, whose rows stand), 4 otherwise.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::commands::run::inventory::MAX_PAGES;
use crate::commands::session::Session;
use crate::defender::api::{ActionQuery, Api, MachineAction, Page};
use crate::defender::limiter::Limiter;
use crate::defender::timestamp;
use crate::domain::{ActionStatus, MachineId, Outcome};
use crate::error::{Error, Result, exit_code};
use crate::files::extsort::{Cursor, Frozen, Ref, Sorter, Store, record};
use crate::files::lock::{self, ResultsLock};
use crate::files::results::{LineSet, ResultsFile, Rewrite};
use crate::files::sync::off_runtime;
use crate::settings::{ApiArgs, RetryArgs, Settings, SettingsArgs};
use crate::ui::progress::Progress;

/// The largest `$top` the list endpoint takes (Microsoft's documentation).
pub const PAGE_MAX: u64 = 10_000;
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(3600);
/// What the summary calls a row whose action could not be found.
const NO_ACTION: &str = "no action found";

/// `run --wait` and its options.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct WaitArgs {
    /// After submitting, track every action until it is final or --wait-timeout passes, updating the results file.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait tracks at most, e.g. 30m or 2h (at most 30d). [default: 1h]
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = positive_duration)]
    pub wait_timeout: Option<Duration>,
    /// At most one status pass per interval while waiting (at most 30d). [default: 1m]
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
            after_run: true,
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
    /// How long to track at most, e.g. 30m or 2h (at most 30d). [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub wait_timeout: Option<Duration>,
    /// At most one status pass per interval (at most 30d). [default: 1m]
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub poll_interval: Option<Duration>,
    /// Actions asked for per page (the API takes up to 10000).
    #[arg(long, hide = true, default_value_t = PAGE_MAX, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub page_size: u64,
    /// Write (or refresh) the report when tracking ends: HTML, or Markdown for a .md name.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ApiArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

impl TrackArgs {
    /// The flags that feed the settings (tracking offboards nothing: the run's own come from the config).
    pub fn settings(&self) -> SettingsArgs {
        SettingsArgs { api: self.settings.clone(), retry: self.retry.clone(), ..Default::default() }
    }

    pub fn options(&self) -> TrackOptions {
        TrackOptions {
            timeout: self.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT),
            interval: self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
            page_size: self.page_size,
            once: self.once,
            after_run: false,
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
    /// Tracking follows the run that wrote the file (`run --wait`): its offboards happened whatever
    /// tracking can read.
    pub after_run: bool,
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
    /// Why the last pass could not read every action, if it could not: the statuses are as of the last read.
    pub unread: Option<String>,
    /// List pages read by every pass together: none means tracking learnt nothing.
    pub pages_read: u64,
    /// See [`TrackOptions::after_run`].
    pub after_run: bool,
}

impl TrackSummary {
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            exit_code::INTERRUPTED
        } else if self.unread.is_some() {
            if self.read_nothing() && !self.after_run { exit_code::CANNOT_RUN } else { exit_code::STOPPED }
        } else if self.rows_not_ok > 0 {
            exit_code::SOME_FAILED
        } else {
            exit_code::OK
        }
    }

    /// The last pass could not read every action, and no pass read anything.
    fn read_nothing(&self) -> bool {
        self.unread.is_some() && self.pages_read == 0
    }

    pub fn open(&self) -> u64 {
        self.by_status.iter().filter(|(s, _)| !is_final(s) && s.as_str() != NO_ACTION).map(|(_, n)| n).sum()
    }

    pub fn render(&self) -> String {
        let again = format!("mde-offboard track {}", self.results.display());
        if let (true, Some(why)) = (self.read_nothing(), &self.unread) {
            let rows =
                if self.after_run { "the run's rows are as it wrote them" } else { "the results file is unchanged" };
            return format!(
                "Could not track {} actions: no pass could read them ({why}); {rows}. Run `{again}` to follow them.\n\
                 Results: {}\n",
                self.tracked,
                self.results.display()
            );
        }
        let mut out = format!(
            "{} {} actions: {} {}, {} API calls, {}\n",
            if self.interrupted { "Interrupted while tracking" } else { "Tracked" },
            self.tracked,
            self.passes,
            if self.passes == 1 { "pass" } else { "passes" },
            self.calls,
            humantime::format_duration(Duration::from_secs(self.duration.as_secs()))
        );
        for status in ActionStatus::FINAL {
            if let Some(n) = self.by_status.get(status.as_str()) {
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
            let when = if self.unread.is_some() {
                "as last read"
            } else if self.timed_out {
                "when the wait ended"
            } else {
                "now"
            };
            out += &format!("  {:<16} {} ({}) {when}\n", "still open", self.open(), open.join(", "));
        }
        if let Some(n) = self.by_status.get(NO_ACTION) {
            out += &format!("  {NO_ACTION:<16} {n}\n");
        }
        if let Some(why) = &self.unread {
            out += &format!(
                "The last pass could not read every action ({why}): the statuses above are as of the last read. \
                 Run `{again}` to go on.\n"
            );
        }
        out += &format!("Rows not ok: {} of {}\n", self.rows_not_ok, self.rows);
        out += &format!("Results: {}\n", self.results.display());
        out
    }
}

/// Whether a status, as a results file or the summary holds it, is final.
fn is_final(status: &str) -> bool {
    ActionStatus::parse(status).is_final()
}

/// Whether a status, as a results file holds it, is `Succeeded`.
fn is_succeeded(status: &str) -> bool {
    ActionStatus::parse(status) == ActionStatus::Succeeded
}

/// The longest `--wait-timeout` or `--poll-interval`: an offboard that has not ended in 30 days is not going
/// to (the service times actions out within days), and a deadline centuries ahead cannot be represented.
pub const TRACK_DURATION_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

fn positive_duration(s: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{s}` is not a duration above zero, such as 30s, 5m or 2h"))?;
    if d > TRACK_DURATION_MAX {
        return Err(format!("`{s}` is longer than the 30 days tracking waits at most"));
    }
    Ok(d)
}

/// Whether an action is still open (no final status yet: an unknown status is followed on).
fn is_open(action: &MachineAction) -> bool {
    !action.status.as_ref().is_some_and(ActionStatus::is_final)
}

fn created(action: &MachineAction) -> Option<SystemTime> {
    action.creation_date_time_utc.as_deref().and_then(timestamp::parse)
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

/// The results file being tracked, streamed at each step and never held in memory. What a pass learns is
/// sorted on disk and merged back in row order (see [`crate::files::extsort`]).
struct Tracked {
    file: ResultsFile,
    col: Columns,
    /// Tracked rows (by index) whose action a full listing did not show: no longer looked for.
    given_up: LineSet,
}

record! {
    /// A tracked row still open, by its action's key.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct RowByAction {
        key: [u8; 16],
        row: u64,
    }
}

record! {
    /// A tracked row still open without an action id, by its machine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct RowByMachine {
        machine: MachineId,
        row: u64,
    }
}

record! {
    /// A listed action, by its key: where it is stored.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct ActionByKey {
        key: [u8; 16],
        at: Ref,
    }
}

record! {
    /// A listed action, by machine, the best first: open before final, then the latest created.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct ActionByMachine {
        machine: MachineId,
        /// 0 open, 1 final.
        closed: u8,
        /// `u64::MAX` minus the creation time in seconds (none: `u64::MAX`), so that the latest sorts first.
        age: u64,
        at: Ref,
    }
}

record! {
    /// What a row's action is now: the row, and where the action is stored.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Update {
        row: u64,
        at: Ref,
    }
}

/// The 128-bit key of an action id, in any case (two 64-bit hashes; a match is checked against the id).
fn action_key(id: &str) -> [u8; 16] {
    let id = id.trim().to_ascii_lowercase();
    let hash = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        (salt, &id).hash(&mut h);
        h.finish().to_be_bytes()
    };
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&hash(1));
    key[8..].copy_from_slice(&hash(2));
    key
}

/// The open rows a pass looks for, sorted on disk.
struct OpenRows {
    count: u64,
    /// The earliest creation among their actions; `None` when some row has none (list everything).
    since: Option<SystemTime>,
    /// Some rows have no action id: they are matched by machine, on a full listing.
    unmatched: bool,
    by_action: Sorter<RowByAction>,
    by_machine: Sorter<RowByMachine>,
}

/// The listed actions of a pass, stored and sorted on disk.
struct Listed {
    store: Store,
    by_key: Sorter<ActionByKey>,
    by_machine: Sorter<ActionByMachine>,
}

impl Listed {
    fn new() -> std::io::Result<Listed> {
        Ok(Listed { store: Store::new()?, by_key: Sorter::default(), by_machine: Sorter::default() })
    }

    fn keep(&mut self, action: &MachineAction, by_machine: bool) -> std::io::Result<()> {
        let at = self.store.put(&[
            text(action.id.as_ref()),
            action.status.as_ref().map_or("", ActionStatus::as_str),
            text(action.updated_at()),
            text(action.creation_date_time_utc.as_ref()),
        ])?;
        if let Some(id) = action.id.as_deref().filter(|id| !id.trim().is_empty()) {
            self.by_key.push(ActionByKey { key: action_key(id), at })?;
        }
        if by_machine && let Some(machine) = action.machine_id.as_deref().and_then(MachineId::parse) {
            let secs = created(action).and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs());
            let age = u64::MAX - secs.unwrap_or(0);
            self.by_machine.push(ActionByMachine { machine, closed: u8::from(!is_open(action)), age, at })?;
        }
        Ok(())
    }
}

fn text(s: Option<&String>) -> &str {
    s.map(String::as_str).unwrap_or_default()
}

/// An action as stored by [`Listed::keep`].
struct Stored {
    id: String,
    status: String,
    updated: String,
    created: String,
}

impl Stored {
    fn read(store: &Frozen, at: Ref) -> std::io::Result<Stored> {
        let mut fields = store.get(at)?.into_iter();
        let mut next = || fields.next().unwrap_or_default();
        Ok(Stored { id: next(), status: next(), updated: next(), created: next() })
    }
}

impl Tracked {
    fn open(path: &Path) -> Result<Tracked> {
        let file = ResultsFile::open(path)?;
        let col = Columns {
            machine_id: file.column("machine_id")?,
            outcome: file.column("outcome")?,
            action_id: file.column("action_id")?,
            action_status: file.column("action_status")?,
            submitted_at: file.column("submitted_at")?,
            updated_at: file.column("updated_at")?,
        };
        Ok(Tracked { file, col, given_up: LineSet::default() })
    }

    fn path(&self) -> &Path {
        self.file.path()
    }

    fn disk(&self, e: &std::io::Error) -> Error {
        Error::Output { path: self.path().to_owned(), message: crate::files::extsort::temp_message("use", e) }
    }

    /// Every row, in order, with its index (from 0). Each row must be as wide as the header: tracking
    /// writes every cell back where it was.
    fn rows(&self) -> Result<impl Iterator<Item = Result<(u64, Vec<String>)>> + '_> {
        let width = self.file.headers().len();
        Ok(self.file.records()?.enumerate().map(move |(index, record)| {
            let record = record?;
            if record.cells.len() != width {
                return Err(Error::Output {
                    path: self.path().to_owned(),
                    message: format!(
                        "row {} has {} cells where the header has {width}; give the results file an mde-offboard \
                         run wrote",
                        record.row,
                        record.cells.len()
                    ),
                });
            }
            Ok((index as u64, record.cells.iter().map(str::to_owned).collect()))
        }))
    }

    fn is_tracked(&self, row: &[String]) -> bool {
        Outcome::parse(&row[self.col.outcome]).is_some_and(Outcome::has_action)
    }

    fn is_open(&self, index: u64, row: &[String]) -> bool {
        self.is_tracked(row) && !self.given_up.contains(index) && !is_final(&row[self.col.action_status])
    }

    /// The rows still open, sorted for the pass's joins. A row with neither an action id nor a machine id
    /// can never be matched: it is given up on here.
    fn open_rows(&mut self) -> Result<OpenRows> {
        let c = &self.col;
        let mut open = OpenRows {
            count: 0,
            since: None,
            unmatched: false,
            by_action: Sorter::default(),
            by_machine: Sorter::default(),
        };
        let mut all_dated = true;
        let mut unmatchable = Vec::new();
        for row in self.rows()? {
            let (i, row) = row?;
            if !self.is_open(i, &row) {
                continue;
            }
            let action = row[c.action_id].trim();
            let machine = MachineId::parse(&row[c.machine_id]);
            if action.is_empty() && machine.is_none() {
                unmatchable.push(i);
                continue;
            }
            open.count += 1;
            match timestamp::parse(&row[c.submitted_at]) {
                Some(at) => open.since = Some(open.since.map_or(at, |s| s.min(at))),
                None => all_dated = false,
            }
            let pushed = match machine {
                _ if !action.is_empty() => open.by_action.push(RowByAction { key: action_key(action), row: i }),
                Some(machine) => {
                    open.unmatched = true;
                    open.by_machine.push(RowByMachine { machine, row: i })
                }
                None => unreachable!("rows with neither are set aside above"),
            };
            pushed.map_err(|e| self.disk(&e))?;
        }
        for i in unmatchable {
            tracing::warn!(row = i + 2, "a tracked row has neither an action id nor a machine id; it is not tracked");
            self.given_up.insert(i);
        }
        if !all_dated || open.unmatched {
            open.since = None;
        }
        Ok(open)
    }

    /// Rewrites the file with `updates` (sorted by row) applied ([`Rewrite`]: atomically), unless nothing
    /// changed. Returns the rows still open.
    fn rewrite(
        &self,
        updates: impl Iterator<Item = std::io::Result<Update>>,
        store: &Frozen,
        progress: &Progress,
    ) -> Result<u64> {
        let mut out = Rewrite::start(self.path(), self.file.headers())?;
        let mut updates = Cursor::new(updates);
        let (mut changed, mut still_open) = (false, 0);
        for row in self.rows()? {
            let (i, mut row) = row?;
            while let Some(update) = updates.next_at(&i, |u| u.row).map_err(|e| self.disk(&e))? {
                let action = Stored::read(store, update.at).map_err(|e| self.disk(&e))?;
                let was_final = is_final(&row[self.col.action_status]);
                changed |= self.apply(&mut row, &action);
                let status = &row[self.col.action_status];
                if !was_final && is_final(status) {
                    tracing::debug!(machine = %row[self.col.machine_id], status, "action final");
                    progress.row_done(is_succeeded(status));
                }
            }
            still_open += u64::from(self.is_open(i, &row));
            out.write(&row)?;
        }
        // Unchanged: the replacement is dropped, and the file left as it is.
        if changed {
            out.commit()?;
        }
        Ok(still_open)
    }

    /// Writes what `action` says into `row`; true if anything changed. An action found by its id must
    /// carry the row's id (the key is a hash).
    fn apply(&self, row: &mut [String], action: &Stored) -> bool {
        let c = &self.col;
        let own = row[c.action_id].trim();
        if !own.is_empty() && !own.eq_ignore_ascii_case(action.id.trim()) {
            return false;
        }
        let mut changed = false;
        for (col, value) in
            [(c.action_id, &action.id), (c.action_status, &action.status), (c.updated_at, &action.updated)]
        {
            if !value.is_empty() && row[col] != *value {
                row[col] = value.clone();
                changed = true;
            }
        }
        if row[c.submitted_at].is_empty() && !action.created.is_empty() {
            row[c.submitted_at] = action.created.clone();
            changed = true;
        }
        changed
    }

    /// Joins the open rows with the listed actions (merges of sorted streams) and rewrites the file with
    /// what changed; returns the rows still open. Only a `complete` listing gives up on a row: an action an
    /// incomplete one did not show may exist.
    fn update(&mut self, open: OpenRows, listed: Listed, complete: bool, progress: &Progress) -> Result<u64> {
        let disk = |e: std::io::Error| self.disk(&e);
        let store = listed.store.freeze().map_err(disk)?;
        let mut updates = Sorter::<Update>::default();
        // Rows with an action id: that action.
        let mut actions = Cursor::new(listed.by_key.finish().map_err(disk)?);
        for row in open.by_action.finish().map_err(disk)? {
            let row = row.map_err(disk)?;
            if let Some(action) = actions.find(&row.key, |a| a.key).map_err(disk)? {
                updates.push(Update { row: row.row, at: action.at }).map_err(disk)?;
            }
        }
        // Rows without one: the machine's best action (the first of its machine's run), listed without a date
        // filter; a row whose machine has none in a complete listing is given up on.
        let mut best = Cursor::new(listed.by_machine.finish().map_err(disk)?);
        let mut given_up = Vec::new();
        for row in open.by_machine.finish().map_err(disk)? {
            let row = row.map_err(disk)?;
            match best.find(&row.machine, |a| a.machine).map_err(disk)? {
                Some(action) => updates.push(Update { row: row.row, at: action.at }).map_err(disk)?,
                None if !complete => {}
                None => {
                    tracing::warn!(
                        machine = %row.machine,
                        "no Offboard action found for this machine; it is not tracked further"
                    );
                    given_up.push(row.row);
                }
            }
        }
        for row in given_up {
            self.given_up.insert(row);
        }
        let updates = updates.finish().map_err(|e| self.disk(&e))?;
        self.rewrite(updates, &store, progress)
    }

    fn summary(&self) -> Result<TrackSummary> {
        let mut s = TrackSummary { results: self.path().to_owned(), ..Default::default() };
        for row in self.rows()? {
            let (i, row) = row?;
            s.rows += 1;
            let outcome = row[self.col.outcome].as_str();
            let ok = if self.is_tracked(&row) {
                s.tracked += 1;
                let status = row[self.col.action_status].as_str();
                let key = if self.given_up.contains(i) {
                    NO_ACTION
                } else if status.is_empty() {
                    "unknown"
                } else {
                    status
                };
                *s.by_status.entry(key.to_string()).or_insert(0) += 1;
                is_succeeded(status)
            } else {
                Outcome::parse(outcome).is_some_and(Outcome::is_ok)
            };
            if !ok {
                s.rows_not_ok += 1;
            }
        }
        Ok(s)
    }
}

/// Tracks the actions of the results file `path` until each is final, `options.timeout` passes, or
/// `shutdown` resolves; updates the file after each pass that changed something.
/// After a run (`run --wait`) `session` is the run's own: both spend one quota, and one sign-in, one limiter
/// and one lock serve both; `None` opens a session of its own.
pub async fn track_file(
    path: &Path,
    settings: &Settings,
    session: Option<Session>,
    options: TrackOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<TrackSummary> {
    let started = Instant::now();
    // Tracking rewrites the file: never while another command writes it, whatever its state directory.
    let _results_lock = ResultsLock::acquire(path)?;
    let mut file = Tracked::open(path)?;
    // The whole file is read: off the runtime.
    let (tracked, open, succeeded, ended_otherwise) = off_runtime(|| {
        let (mut tracked, mut open, mut succeeded, mut ended_otherwise) = (0u64, 0u64, 0u64, 0u64);
        for row in file.rows()? {
            let (i, row) = row?;
            if !file.is_tracked(&row) {
                continue;
            }
            tracked += 1;
            let status = &row[file.col.action_status];
            if file.is_open(i, &row) {
                open += 1;
            } else if is_succeeded(status) {
                succeeded += 1;
            } else {
                ended_otherwise += 1;
            }
        }
        Ok::<_, Error>((tracked, open, succeeded, ended_otherwise))
    })?;
    let progress = Progress::new(tracked, std::io::stderr().is_terminal());
    for ok in std::iter::repeat_n(true, succeeded as usize).chain(std::iter::repeat_n(false, ended_otherwise as usize))
    {
        progress.row_done(ok);
    }
    if open == 0 {
        progress.finish();
        let mut summary = off_runtime(|| file.summary())?;
        summary.duration = started.elapsed();
        return Ok(summary);
    }

    let mut session = match session {
        Some(session) => session,
        None => {
            let session = Session::open(
                settings,
                settings.credentials()?.needing(false, true),
                Limiter::new(&settings.rates, settings.quota_scope),
            )?;
            // Tracking changes nothing: a token cache's refresh token is enough without a terminal.
            session.require_person(true)?;
            session
        }
    };
    // Tracking spends the same quota as a run: one at a time per tenant (by its id) and app.
    let run_id = crate::files::journal::new_run_id(SystemTime::now());
    session.lock(&lock::state_dir(), &run_id).await?;
    tokio::pin!(shutdown);
    // A person's sign-in may wait minutes for a code: a signal ends it at once.
    tokio::select! {
        biased;
        _ = &mut shutdown => return Err(Error::Interrupted),
        signed = session.sign_in(|_| Ok(())) => { signed?; }
    }
    let api = session.api();
    // The calls tracking makes (a session handed over by a run has made the run's).
    let calls_before = api.counters.calls.load(Ordering::Relaxed);

    let deadline = started + options.timeout;
    let (mut passes, mut complete_passes, mut pages_read) = (0, 0, 0);
    let mut unread: Option<String> = None;
    let mut interrupted = false;
    loop {
        let pass_started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = &mut shutdown => { interrupted = true; break; }
            result = pass(api, &mut file, options.page_size, deadline, &progress) => result,
        };
        passes += 1;
        let end = match result {
            Ok(end) => end,
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        };
        pages_read += end.pages;
        match end.incomplete {
            None => {
                complete_passes += 1;
                unread = None;
            }
            // The wait ended during a pass: what an earlier complete pass read stands, as any timeout's, and
            // so does why an earlier pass could not read (the wait ending is not the cause).
            Some(Incomplete::WaitEnded) if complete_passes > 0 || unread.is_some() => {}
            Some(why) => {
                let why = why.to_string();
                tracing::warn!("a tracking pass could not read every action ({why}); the next pass tries again");
                unread = Some(why);
            }
        }
        let still_open = end.still_open;
        if options.once || still_open == 0 {
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
    let mut summary = off_runtime(|| file.summary())?;
    summary.passes = passes;
    summary.calls = api.counters.calls.load(Ordering::Relaxed) - calls_before;
    summary.duration = started.elapsed();
    summary.interrupted = interrupted;
    summary.timed_out = !interrupted && !options.once && summary.open() > 0;
    summary.pages_read = pages_read;
    summary.after_run = options.after_run;
    if !interrupted && let Some(why) = unread {
        tracing::error!("tracking could not read every action on its last pass ({why})");
        summary.unread = Some(why);
    }
    Ok(summary)
}

/// Why a pass did not read the whole list.
#[derive(Debug)]
enum Incomplete {
    /// A call failed for a passing reason (a 5xx after its retries, a timeout, ...).
    Failed(String),
    /// A page started as an earlier one did: the service ignored `$skip`.
    RepeatedPage(usize),
    /// The list did not end within [`MAX_PAGES`] pages.
    PageCap,
    /// The wait ended during the pass.
    WaitEnded,
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incomplete::Failed(why) => write!(f, "{why}"),
            Incomplete::RepeatedPage(page) => {
                write!(f, "page {} repeats an earlier page: the service ignored $skip", page + 1)
            }
            Incomplete::PageCap => write!(f, "the list did not end within {MAX_PAGES} pages"),
            Incomplete::WaitEnded => write!(f, "the wait ended before a pass could read every action"),
        }
    }
}

/// How a pass ended.
struct PassEnd {
    /// Tracked rows still open after it.
    still_open: u64,
    /// List pages it read.
    pages: u64,
    /// Why it did not read the whole list, if it did not.
    incomplete: Option<Incomplete>,
}

/// One pass: list the Offboard actions (every page, up to `deadline`), update the rows, save if anything
/// changed. A pass that cannot read the whole list for a passing reason applies what it read and says why
/// (see [`Incomplete`]); one the app is not allowed to make, or whose sign-in failed for good, ends tracking
/// with an error.
async fn pass(
    api: &Api,
    file: &mut Tracked,
    page_size: u64,
    deadline: Instant,
    progress: &Progress,
) -> Result<PassEnd> {
    // Reading, sorting and rewriting the file: off the runtime (another tenant's calls go on meanwhile).
    let open = off_runtime(|| file.open_rows())?;
    if open.count == 0 {
        return Ok(PassEnd { still_open: 0, pages: 0, incomplete: None });
    }
    let mut query = ActionQuery::offboards(Page::nth(0, 0)).created_since(open.since);
    let disk = |e: std::io::Error| file.disk(&e);
    let mut listed = Listed::new().map_err(disk)?;
    let page_size = usize::try_from(page_size).unwrap_or(usize::MAX);
    let mut skip = 0usize;
    let mut pages = 0u64;
    // The first action id of each page read: a page that starts the same way means `$skip` was ignored.
    let mut firsts: Vec<String> = Vec::new();
    let incomplete = loop {
        if pages >= MAX_PAGES as u64 {
            break Some(Incomplete::PageCap);
        }
        query.page = Page { top: page_size, skip };
        let read = api.list_actions(&query);
        let (_, page) = tokio::select! {
            biased;
            answer = read => answer,
            _ = tokio::time::sleep_until(deadline) => break Some(Incomplete::WaitEnded),
        };
        let page = match page {
            Ok(page) => page,
            Err(f) => {
                if let Some(e) = api.fatal() {
                    return Err(Error::Auth(e.clone()));
                }
                if let Some(status @ (401 | 403)) = f.status {
                    return Err(Error::ReadRefused {
                        what: "list machine actions",
                        status,
                        code: f.code,
                        message: f.message,
                        needs: "tracking needs the application permission Machine.Read.All or Machine.ReadWrite.All \
                                with admin consent",
                    });
                }
                let status = f.status.map(|s| format!("HTTP {s} ")).unwrap_or_default();
                let message = f.message.split_whitespace().collect::<Vec<_>>().join(" ");
                break Some(Incomplete::Failed(format!("listing the actions failed: {status}{}: {message}", f.code)));
            }
        };
        if let Some(first) = page.first().and_then(|a| a.id.clone()) {
            if firsts.contains(&first) {
                break Some(Incomplete::RepeatedPage(pages as usize));
            }
            firsts.push(first);
        }
        pages += 1;
        // Either type is an offboard action (the filter asks for both); another type is not.
        for action in page.iter().filter(|a| a.is_offboard()) {
            listed.keep(action, open.unmatched).map_err(disk)?;
        }
        if page.len() < page_size {
            break None;
        }
        skip += page_size;
    };
    // Nothing read: nothing to apply (and no row to give up on).
    let still_open = if pages == 0 {
        open.count
    } else {
        off_runtime(|| file.update(open, listed, incomplete.is_none(), progress))?
    };
    Ok(PassEnd { still_open, pages, incomplete })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "line,machine_id,outcome,action_id,action_status,http_status,extra,submitted_at,updated_at\n";
    const AA: &str = "aa00000000000000000000000000000000000000";
    const BB: &str = "bb00000000000000000000000000000000000000";

    fn results(rows: &str) -> (tempfile::TempDir, Tracked) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, format!("{HEADER}{}", rows.replace("aa", AA).replace("bb", BB))).unwrap();
        let file = Tracked::open(&path).unwrap();
        (dir, file)
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

    fn listing(open: &OpenRows, actions: &[MachineAction]) -> Listed {
        let mut listed = Listed::new().unwrap();
        for a in actions {
            listed.keep(a, open.unmatched).unwrap();
        }
        listed
    }

    #[test]
    fn rows_are_tracked_by_outcome_and_saved_with_unknown_columns_kept() {
        let (_dir, mut file) = results(
            "2,aa,submitted,A1,Pending,201,x,2026-01-01T00:00:00Z,\n\
             3,bb,already_pending,,,400,\"y, z\",,\n\
             4,cc,not_found,,,404,,,\n\
             5,dd,duplicate,,,,,,\n",
        );
        let open = file.open_rows().unwrap();
        assert_eq!((open.count, open.unmatched, open.since), (2, true, None), "a row without an id: list everything");
        let listed = listing(
            &open,
            &[
                action("a1", AA, "Succeeded", "2026-01-01T00:00:00Z"),
                // The machine's older, final action loses to its open one.
                action("B6", BB, "Failed", "2025-12-30T00:00:00Z"),
                action("B7", BB, "InProgress", "2025-12-31T00:00:00Z"),
                action("C1", "cc00000000000000000000000000000000000000", "Pending", "2026-01-01T00:00:00Z"),
            ],
        );
        assert_eq!(file.update(open, listed, true, &Progress::new(2, false)).unwrap(), 1, "B7 is still open");
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(
            text.contains(&format!("2,{AA},submitted,a1,Succeeded,201,x,2026-01-01T00:00:00Z,2026-01-01T00:05:00Z"))
        );
        assert!(
            text.contains(&format!(
                "3,{BB},already_pending,B7,InProgress,400,\"y, z\",2025-12-31T00:00:00Z,2026-01-01T00:05:00Z"
            )),
            "{text}"
        );
        assert!(text.contains("4,cc,not_found,,,404,,,"), "other rows untouched: {text}");
        let s = file.summary().unwrap();
        // not_found and the open action are not ok; duplicate and the success are.
        assert_eq!((s.tracked, s.rows_not_ok, s.open()), (2, 2, 1));
        assert_eq!(s.exit_code(), exit_code::SOME_FAILED);
        assert_eq!(std::fs::read_dir(file.path().parent().unwrap()).unwrap().count(), 1, "no temporary file left");

        // Now B7 has an id: the next pass lists by date, and nothing new leaves the file as it is.
        let open = file.open_rows().unwrap();
        assert_eq!((open.count, open.unmatched), (1, false));
        assert_eq!(open.since, timestamp::parse("2025-12-31T00:00:00Z"));
        let modified = std::fs::metadata(file.path()).unwrap().modified().unwrap();
        let listed = listing(&open, &[action("B7", BB, "InProgress", "2025-12-31T00:00:00Z")]);
        assert_eq!(file.update(open, listed, true, &Progress::new(2, false)).unwrap(), 1);
        assert_eq!(std::fs::metadata(file.path()).unwrap().modified().unwrap(), modified, "not rewritten");
    }

    #[test]
    fn a_machine_without_any_action_is_given_up_on() {
        let (_dir, mut file) = results("2,aa,already_pending,,,400,,,\n3,not-an-id,already_pending,,,400,,,\n");
        let open = file.open_rows().unwrap();
        assert_eq!(open.count, 1, "a row with neither id is set aside at once");
        let listed = listing(&open, &[action("B7", BB, "Pending", "2025-12-31T00:00:00Z")]);
        assert_eq!(file.update(open, listed, true, &Progress::new(2, false)).unwrap(), 0);
        let s = file.summary().unwrap();
        assert_eq!(s.by_status.get(NO_ACTION), Some(&2));
        assert_eq!(file.open_rows().unwrap().count, 0);
    }

    #[test]
    fn many_rows_are_matched_through_sorted_runs() {
        // More rows than a sorter keeps in memory (4 MiB of 24-byte records: about 175,000).
        const N: u64 = 200_000;
        let mut rows = String::new();
        let mut actions = Vec::new();
        for n in 0..N {
            let machine = format!("{n:040x}");
            rows.push_str(&format!("{},{machine},submitted,ACT-{n},Pending,201,,2026-01-01T00:00:00Z,\n", n + 2));
            if n % 3 != 0 {
                actions.push(action(&format!("act-{n}"), &machine, "Succeeded", "2026-01-01T00:00:00Z"));
            }
        }
        let (_dir, mut file) = results(&rows);
        let open = file.open_rows().unwrap();
        let listed = listing(&open, &actions);
        assert_eq!(file.update(open, listed, true, &Progress::new(N, false)).unwrap(), N.div_ceil(3));
        let s = file.summary().unwrap();
        assert_eq!(s.by_status.get("Succeeded"), Some(&(N - N.div_ceil(3))));
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains(&format!("8,{:040x},submitted,ACT-6,Pending,", 6)), "not listed: unchanged");
        assert!(text.contains(&format!("9,{:040x},submitted,act-7,Succeeded", 7)), "ids take the service's spelling");
    }

    #[test]
    fn a_last_pass_that_could_not_read_never_claims_a_state() {
        let unread = |pages_read, after_run| TrackSummary {
            tracked: 2,
            by_status: BTreeMap::from([("Pending".to_string(), 2)]),
            rows: 2,
            rows_not_ok: 2,
            timed_out: true,
            unread: Some("listing the actions failed: HTTP 503".into()),
            pages_read,
            after_run,
            ..TrackSummary::default()
        };
        // Nothing read: no statuses shown; tracking alone could not run, after a run the rows stand.
        let nothing = unread(0, false);
        assert_eq!(nothing.exit_code(), exit_code::CANNOT_RUN);
        let text = nothing.render();
        assert!(text.contains("no pass could read them") && !text.contains("Pending"), "{text}");
        assert_eq!(unread(0, true).exit_code(), exit_code::STOPPED);
        // An earlier pass read: the statuses are as of that read, and tracking stopped part way.
        let earlier = unread(3, false);
        assert_eq!(earlier.exit_code(), exit_code::STOPPED);
        let text = earlier.render();
        assert!(text.contains("(Pending 2) as last read") && text.contains("HTTP 503"), "{text}");
        let read = TrackSummary { unread: None, ..unread(3, false) };
        assert_eq!(read.exit_code(), exit_code::SOME_FAILED);
        assert!(read.render().contains("when the wait ended"));
    }

    #[test]
    fn a_file_without_the_columns_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machines.csv");
        std::fs::write(&path, "MachineId\naa\n").unwrap();
        let msg = Tracked::open(&path).err().unwrap().to_string();
        assert!(msg.contains("machine_id") && msg.contains("results file"), "{msg}");
    }
}
