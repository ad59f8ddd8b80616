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
use std::sync::{Arc, Mutex, OnceLock, Weak};
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

/// The files the sync thread looks after.
static FILES: OnceLock<Mutex<Vec<Weak<Entry>>>> = OnceLock::new();

impl Synced {
    /// Hands `file` to the sync thread (started with the first file).
    pub fn new(file: &File) -> io::Result<Synced> {
        let entry = Arc::new(Entry {
            file: file.try_clone()?,
            dirty: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let mut started = Ok(());
        let files = FILES.get_or_init(|| {
            started = std::thread::Builder::new().name("mde-offboard-sync".into()).spawn(sync_thread).map(drop);
            Mutex::default()
        });
        started?;
        files.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&entry));
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

/// Every [`SYNC_EVERY`], syncs the files written since; forgets the files dropped.
fn sync_thread() {
    loop {
        std::thread::sleep(SYNC_EVERY);
        let Some(files) = FILES.get() else { continue };
        let live: Vec<Arc<Entry>> = {
            let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
            files.retain(|f| f.strong_count() > 0);
            files.iter().filter_map(Weak::upgrade).collect()
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
}
