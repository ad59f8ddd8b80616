//! Keeping file work off the async runtime's threads, so that one task's disk (a results file of a
//! million rows, an fsync on a busy disk) never delays another's calls: many tenants run in one process.
//!
//! - [`Synced`]: a file written as the run goes (the results, the journal) is synced to disk by one thread
//!   of the process ([`SYNC_EVERY`] apart), never by the writer. A write hands its bytes to the operating
//!   system at once (a kill -9 loses nothing written) and marks the file for the next sync, which bounds
//!   what a power loss could take; it wakes nobody. A sync that failed is the next write's error.
//! - [`off_runtime`]: file work that reads or rewrites a whole file (a resume's reads, tracking's rewrite)
//!   runs with the runtime's worker handing its other tasks on first.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often files written as the run goes are synced to disk.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// A file synced by the sync thread while it is written. Dropping it stops its syncs (the owner syncs
/// at the end itself).
#[derive(Debug)]
pub struct Synced {
    entry: Arc<Entry>,
}

#[derive(Debug)]
struct Entry {
    /// A handle of its own on the file, for `sync_data`.
    file: File,
    dirty: AtomicBool,
    failed: AtomicBool,
    error: Mutex<Option<io::Error>>,
}

/// The files the sync thread looks after, and whether it runs.
static FILES: Registry = Registry::new();

/// The files of one sync thread, and whether that thread was started.
struct Registry {
    state: Mutex<State>,
}

struct State {
    files: Vec<Weak<Entry>>,
    started: bool,
}

impl Registry {
    const fn new() -> Registry {
        Registry { state: Mutex::new(State { files: Vec::new(), started: false }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `entry`, starting the thread with `start` first when none was started. A start that failed is
    /// the caller's error and leaves no thread marked started: the next file tries again, so no file is
    /// ever handed to a thread that does not run.
    fn add(
        &'static self,
        entry: &Arc<Entry>,
        start: impl FnOnce(&'static Registry) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut state = self.state();
        if !state.started {
            start(self)?;
            state.started = true;
        }
        state.files.push(Arc::downgrade(entry));
        Ok(())
    }
}

impl Synced {
    /// Hands `file` to the sync thread (started with the first file; if that start failed, with the next).
    pub fn new(file: &File) -> io::Result<Synced> {
        let entry = Arc::new(Entry {
            file: file.try_clone()?,
            dirty: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        FILES.add(&entry, spawn)?;
        Ok(Synced { entry })
    }

    /// Bytes were written: the next round syncs them. Returns the error of a sync that failed since.
    pub fn written(&self) -> io::Result<()> {
        self.entry.dirty.store(true, Ordering::Relaxed);
        if self.entry.failed.load(Ordering::Relaxed)
            && let Some(e) = self.entry.error.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            return Err(e);
        }
        Ok(())
    }
}

/// Starts the sync thread of `files`.
fn spawn(files: &'static Registry) -> io::Result<()> {
    std::thread::Builder::new().name("mde-offboard-sync".into()).spawn(move || sync_thread(files)).map(drop)
}

/// Every [`SYNC_EVERY`], syncs the files written since; forgets the files dropped.
fn sync_thread(files: &'static Registry) {
    loop {
        std::thread::sleep(SYNC_EVERY);
        let live: Vec<Arc<Entry>> = {
            let mut state = files.state();
            state.files.retain(|f| f.strong_count() > 0);
            state.files.iter().filter_map(Weak::upgrade).collect()
        };
        for entry in live {
            if entry.dirty.swap(false, Ordering::Relaxed)
                && let Err(e) = entry.file.sync_data()
            {
                entry.error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                entry.failed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Runs blocking file work without holding up the runtime's other tasks: on a multi-thread runtime the
/// worker hands its other tasks to another thread first ([`tokio::task::block_in_place`]); outside one (a
/// test's single thread, plain code) it simply runs.
pub fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_synced_by_the_thread() {
        let file = tempfile::tempfile().unwrap();
        let synced = Synced::new(&file).unwrap();
        synced.written().unwrap();
        let deadline = std::time::Instant::now() + 10 * SYNC_EVERY;
        while synced.entry.dirty.load(Ordering::Relaxed) {
            assert!(std::time::Instant::now() < deadline, "never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A sync thread that could not be started is the first file's error, and the next file starts it:
    /// before, the first file's failed start left every later file with no thread to sync it.
    #[test]
    fn a_failed_start_is_the_callers_error_and_the_next_file_starts_the_thread() {
        let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
        let entry = |file: &File| {
            Arc::new(Entry {
                file: file.try_clone().unwrap(),
                dirty: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                error: Mutex::new(None),
            })
        };
        let (first, second, third) =
            (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let first = entry(&first);
        let refused = registry.add(&first, |_| Err(io::Error::other("no thread for you")));
        assert_eq!(refused.unwrap_err().to_string(), "no thread for you");
        assert!(registry.state().files.is_empty(), "a file no thread looks after is not listed");

        let second = entry(&second);
        registry.add(&second, spawn).unwrap();
        // Started once: a third file joins the running thread.
        let third = entry(&third);
        registry.add(&third, |_| panic!("the thread runs already")).unwrap();
        for entry in [&second, &third] {
            entry.dirty.store(true, Ordering::Relaxed);
        }
        let deadline = std::time::Instant::now() + 10 * SYNC_EVERY;
        while second.dirty.load(Ordering::Relaxed) || third.dirty.load(Ordering::Relaxed) {
            assert!(std::time::Instant::now() < deadline, "never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
