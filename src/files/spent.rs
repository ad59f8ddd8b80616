//! What the calls of a run spent of the app's quotas, kept beside its run lock (`<tenant>-<client>.calls`)
//! for the next run of the same tenant and app: a `--resume` right after a crash or an interrupt, or a
//! second run right after the first. The service still counts those calls for up to an hour; a run that
//! started with empty budgets would spend the same windows again and be answered 429.
//!
//! The run writes it about once a second while it holds the lock ([`Keeper`]), and once more as the lock
//! goes. Each line is one budget (an API's, or `app` for the one of every call) and the instants its calls
//! were answered (Unix milliseconds), those still counting in its longest quota; a call in flight counts as
//! answered at the end of its timeout, the latest its answer can come. A run that takes the lock reads it
//! and counts those calls in its budgets before its first call ([`Limiter::count_earlier`]): each in every
//! quota of its budget until one period after its answer. A call sent in the last second before a crash is
//! not on record. A file that cannot be read costs a warning, not the run: it is a help to pacing, which a
//! 429 still corrects.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::defender::limiter::{Endpoint, Limiter};

/// The first line of the file.
const HEADER: &str = "mde-offboard calls 1";
/// How often a run's [`Keeper`] writes the file, when its calls changed.
const WRITE_EVERY: Duration = Duration::from_secs(1);
/// One file written at a time in the process: the tenants of a run of many each keep theirs, and their
/// snapshots (some 30 KB for an hour's 1,500 calls) are made one after the other, not all at once.
static WRITING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
/// The most instants read for one budget: past the limits of any quota in use, with room.
const INSTANTS_MAX: usize = 100_000;
/// Instants further from now than this (the longest quota period the settings take is a day) are ignored:
/// a clock set far back or forth, or a file from long ago.
const HORIZON: Duration = Duration::from_secs(2 * 24 * 3600);

/// What [`Limiter::spent`] gives and [`Limiter::count_earlier`] takes: per budget, when its calls were answered.
pub type Spent = Vec<(Option<Endpoint>, Vec<Instant>)>;

/// The file beside the run lock file `lock`.
pub fn path_for(lock: &Path) -> PathBuf {
    lock.with_extension("calls")
}

/// Reads `path` (no file: nothing spent). Unknown budgets and damaged entries are left out.
pub fn read(path: &Path) -> std::io::Result<Spent> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an mde-offboard calls file"));
    }
    let clock = Clock::now();
    let mut spent = Vec::new();
    for line in lines {
        let mut fields = line.split(' ');
        let budget = match fields.next() {
            Some("app") => None,
            Some(name) => match Endpoint::ALL.iter().find(|e| tag(**e) == name) {
                Some(endpoint) => Some(*endpoint),
                None => continue,
            },
            None => continue,
        };
        let mut at: Vec<Instant> = fields.filter_map(|ms| ms.parse().ok()).filter_map(|ms| clock.instant(ms)).collect();
        if at.len() > INSTANTS_MAX {
            at.sort_unstable();
            at.drain(..at.len() - INSTANTS_MAX);
        }
        if !at.is_empty() {
            spent.push((budget, at));
        }
    }
    Ok(spent)
}

/// Writes `spent` to `path`, atomically (a temporary file, then a rename; not synced to disk: a file lost
/// with the machine costs the next run a 429, not a row).
pub fn write(path: &Path, spent: &Spent) -> std::io::Result<()> {
    let clock = Clock::now();
    let mut text = format!("{HEADER}\n");
    for (budget, at) in spent {
        text.push_str(budget.map_or("app", tag));
        for instant in at {
            text.push(' ');
            text.push_str(&clock.unix_ms(*instant).to_string());
        }
        text.push('\n');
    }
    let tmp = path.with_extension("calls.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A budget's name in the file: its API in a word.
fn tag(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Offboard => "offboard",
        Endpoint::ListMachines => "list-machines",
        Endpoint::GetMachine => "get-machine",
        Endpoint::ListActions => "list-actions",
        Endpoint::CancelAction => "cancel-action",
        Endpoint::Tags => "tags",
    }
}

/// The wall clock and the monotonic one read together: instants to Unix milliseconds and back.
struct Clock {
    wall: SystemTime,
    now: Instant,
}

impl Clock {
    fn now() -> Clock {
        Clock { wall: SystemTime::now(), now: Instant::now() }
    }

    fn unix_ms(&self, at: Instant) -> u64 {
        let wall = if at <= self.now { self.wall - (self.now - at) } else { self.wall + (at - self.now) };
        wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// The instant of `ms`, if within [`HORIZON`] of now.
    fn instant(&self, ms: u64) -> Option<Instant> {
        let wall = UNIX_EPOCH + Duration::from_millis(ms);
        match wall.duration_since(self.wall) {
            Ok(ahead) if ahead <= HORIZON => Some(self.now + ahead),
            Ok(_) => None,
            Err(behind) if behind.duration() <= HORIZON => self.now.checked_sub(behind.duration()),
            Err(_) => None,
        }
    }
}

/// Keeps the file of a run's session up to date while the session holds its run lock: about once a second
/// when the calls changed, and once more when dropped.
pub struct Keeper {
    path: PathBuf,
    limiter: Arc<Limiter>,
    /// A call's timeout: a call in flight is answered by then.
    timeout: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    pub fn start(path: PathBuf, limiter: Arc<Limiter>, timeout: Duration) -> Keeper {
        let task = {
            let (path, limiter) = (path.clone(), limiter.clone());
            tokio::spawn(async move {
                let mut written = None;
                let mut every = tokio::time::interval(WRITE_EVERY);
                loop {
                    every.tick().await;
                    let stats = limiter.stats();
                    let now = (stats.acquired, stats.in_flight);
                    if written == Some(now) || (written.is_none() && now == (0, 0)) {
                        continue;
                    }
                    let _turn = WRITING.acquire().await.expect("the semaphore is never closed");
                    let spent = limiter.spent(Instant::now() + timeout);
                    let to = path.clone();
                    match tokio::task::spawn_blocking(move || write(&to, &spent)).await {
                        Ok(Ok(())) => written = Some(now),
                        Ok(Err(e)) => tracing::debug!("cannot write {}: {e}", path.display()),
                        Err(_) => return,
                    }
                }
            })
        };
        Keeper { path, limiter, timeout, task }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
        // A small file, once, as the session ends (the lock goes with it): written before the lock goes, and
        // off the runtime's worker, whose other tasks (the other tenants of a run of many) go on meanwhile.
        let spent = self.limiter.spent(Instant::now() + self.timeout);
        if let Err(e) = super::sync::off_runtime(|| write(&self.path, &spent)) {
            tracing::debug!("cannot write {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is written is read back to the millisecond, budget by budget; an unknown budget, a damaged
    /// entry and an instant days away are left out; another file is refused; no file is nothing spent.
    #[test]
    fn spent_calls_are_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t-c.calls");
        assert!(read(&path).unwrap().is_empty());
        let now = Instant::now();
        let at = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap();
        let spent: Spent = vec![(Some(Endpoint::Offboard), vec![at(5_000), at(1_000)]), (None, vec![at(300)])];
        write(&path, &spent).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        for ((budget, at), (was_budget, was_at)) in back.iter().zip(&spent) {
            assert_eq!(budget, was_budget);
            for (a, b) in at.iter().zip(was_at) {
                let apart = if a > b { *a - *b } else { *b - *a };
                assert!(apart <= Duration::from_millis(2), "{apart:?}");
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let old = Clock::now().unix_ms(now) - 3 * 24 * 3600 * 1000;
        std::fs::write(&path, format!("{text}later-api 1 2 3\nlist-actions x {old}\n")).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2, "the unknown budget and the stale entries are left out");
        std::fs::write(&path, "something else\n").unwrap();
        assert!(read(&path).is_err());
    }

    /// The last write, as the session ends, is made where the keeper is dropped, with the calls spent: in a
    /// task on the tool's runtime (multi-thread, one worker: the write hands the worker's other tasks on
    /// first), on a single-thread runtime (a test's), and outside any runtime.
    #[test]
    fn the_keeper_writes_the_calls_spent_as_it_is_dropped() {
        use crate::settings::{QuotaScope, Rate};
        let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let single = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rates = [Rate { limit: 100, period: Duration::from_secs(60) }];
        for (n, runtime) in [Some(&multi), Some(&single), None].into_iter().enumerate() {
            let path = dir.path().join(format!("{n}.calls"));
            let limiter = Limiter::new(&rates, QuotaScope::Api);
            let dropped = {
                let (path, limiter) = (path.clone(), limiter.clone());
                let session = async move {
                    let keeper = Keeper::start(path, limiter.clone(), Duration::from_secs(30));
                    limiter.acquire(Endpoint::Offboard).await.finish();
                    keeper
                };
                match runtime {
                    Some(runtime) => runtime.block_on(async { tokio::spawn(async { drop(session.await) }).await }),
                    None => {
                        let keeper = multi.block_on(session);
                        drop(keeper);
                        Ok(())
                    }
                }
            };
            dropped.unwrap();
            let spent = read(&path).unwrap();
            let offboards: Vec<_> = spent.iter().filter(|(budget, _)| *budget == Some(Endpoint::Offboard)).collect();
            assert_eq!(offboards.len(), 1, "runtime {n}: {spent:?}");
            assert_eq!(offboards[0].1.len(), 1, "runtime {n}: one call spent");
        }
    }
}
