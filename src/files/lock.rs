//! One run at a time per tenant and app registration: they share one quota, so two runs would only
//! throttle each other.
//!
//! The lock is an operating-system file lock (`File::try_lock`) on a file named for the tenant and client,
//! in the state directory. The tenant is named by its id, in lowercase, however it was given: a domain name
//! (`contoso.onmicrosoft.com`) is the same tenant as its GUID, and the token says which GUID ([`TokenCache::tenant_id`](crate::defender::auth::TokenCache::tenant_id)). The OS drops it when the holder dies, however it dies, so a lock left by a
//! crashed run is never in the way. Beside it, a `.holder` file names the holder's run id, pid and start
//! time (a separate file: Windows locks are mandatory, so the locked file itself cannot be read), so a
//! refused run can name who holds it, and a run that finds a holder named but no lock held says it is
//! taking over from a run that did not end cleanly.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Overrides where lock files live (tests, or hosts with a shared state directory).
pub const STATE_DIR_ENV: &str = "MDE_STATE_DIR";

/// The directory for lock files: `MDE_STATE_DIR`, else the platform's per-user state directory.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    #[cfg(windows)]
    let base = std::env::var_os("LOCALAPPDATA").map(PathBuf::from);
    #[cfg(not(windows))]
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")));
    base.unwrap_or_else(std::env::temp_dir).join("mde-offboard")
}

/// A held run lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    holder_path: PathBuf,
}

fn write_holder(path: &Path, holder: &str) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(holder.as_bytes())?;
    file.sync_all()
}

impl RunLock {
    /// Takes the lock for `tenant` + `client` in `dir` (ids compared ignoring case and surrounding spaces), or
    /// says who holds it. `tenant` is the tenant's id: see [`TokenCache::tenant_id`](crate::defender::auth::TokenCache::tenant_id).
    pub fn acquire(dir: &Path, tenant: &str, client: &str, run_id: &str) -> Result<RunLock> {
        let fail = |path: &Path, e: std::io::Error| Error::write(path, "use the run lock file", e);
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        let safe = |s: &str| {
            let s = s.trim().to_ascii_lowercase();
            s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect::<String>()
        };
        let path = dir.join(format!("{}-{}.lock", safe(tenant), safe(client)));
        let holder_path = path.with_extension("holder");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| fail(&path, e))?;
        let previous = std::fs::read_to_string(&holder_path).unwrap_or_default();
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = previous.trim();
                return Err(Error::Busy(format!(
                    "another run for this tenant and app is in progress ({}); they share one API quota, so \
                     wait for it to end (lock file {})",
                    if holder.is_empty() { "holder unknown" } else { holder },
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(&path, e)),
        }
        if !previous.trim().is_empty() {
            tracing::warn!(
                "taking over the run lock from a run that did not end cleanly ({}); if it was offboarding, resume it with --resume",
                previous.trim()
            );
        }
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let holder = format!("run {run_id}, pid {}, started {started}", std::process::id());
        write_holder(&holder_path, &holder).map_err(|e| fail(&holder_path, e))?;
        Ok(RunLock { file, path, holder_path })
    }
}

impl RunLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // A clean end removes the holder's name, so the next run knows no run died holding the lock.
        let _ = std::fs::remove_file(&self.holder_path);
        let _ = self.file.unlock();
    }
}

/// A held lock on one results file, so that two commands never write it at once (a `track` started with
/// another state directory, so not meeting the run lock, once rewrote a file under a running run). It is an
/// OS lock on `<results>.lock` beside the file, taken by every command that writes a results file, and
/// dropped with the process however it ends.
#[derive(Debug)]
pub struct ResultsLock {
    file: File,
    /// The lock file, and the results file it guards.
    path: PathBuf,
    results: PathBuf,
}

impl ResultsLock {
    /// Takes the lock of the results file `results`, or says that another command is writing it.
    pub fn acquire(results: &Path) -> Result<ResultsLock> {
        let mut name = results.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".lock");
        let path = results.with_file_name(name);
        let fail = |e: std::io::Error| Error::write(results, format!("use its lock file {}", path.display()), e);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(fail)?;
        match file.try_lock() {
            Ok(()) => Ok(ResultsLock { file, path, results: results.to_owned() }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy(format!(
                "another mde-offboard command (a run, a resume or track) is writing {} right now; wait for it to \
                 end (lock file {})",
                results.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
        }
    }
}

impl Drop for ResultsLock {
    fn drop(&mut self) {
        // A command that stopped before writing anything (a sign-in refused, a results file that was not
        // there) leaves no lock file behind: with no results file there is nothing to guard. Removed while
        // still held, so no other command can be holding it.
        if !self.results.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path(), "t", "c", "run-1").unwrap();
        let msg = RunLock::acquire(dir.path(), "t", "c", "run-2").unwrap_err().to_string();
        assert!(msg.contains("run-1") && msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        // Another app registration has its own quota and its own lock.
        let other = RunLock::acquire(dir.path(), "t", "other", "run-3").unwrap();
        drop(first);
        assert!(RunLock::acquire(dir.path(), "t", "c", "run-4").is_ok());
        drop(other);
    }

    #[test]
    fn a_tenant_and_app_take_one_lock_in_any_letter_case() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = "0D3E5C1A-7B2F-4E8D-9A61-5F4C3B2A1D00";
        let _held = RunLock::acquire(dir.path(), tenant, "APP-ID", "run-1").unwrap();
        let msg = RunLock::acquire(dir.path(), &tenant.to_lowercase(), " app-id", "run-2").unwrap_err().to_string();
        assert!(msg.contains("run-1"), "{msg}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| n.to_string_lossy() == n.to_string_lossy().to_lowercase()), "{names:?}");
    }

    #[test]
    fn a_results_file_is_written_by_one_command_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("m.results.csv");
        let first = ResultsLock::acquire(&results).unwrap();
        let msg = ResultsLock::acquire(&results).unwrap_err().to_string();
        assert!(msg.contains("is writing") && msg.contains("m.results.csv"), "{msg}");
        // Another results file has its own lock.
        let _other = ResultsLock::acquire(&dir.path().join("n.results.csv")).unwrap();
        drop(first);
        assert!(ResultsLock::acquire(&results).is_ok());
    }

    /// Before: `track nosuch.csv`, or a run whose sign-in was refused, left `<results>.lock` behind.
    #[test]
    fn a_lock_without_a_results_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("m.results.csv");
        drop(ResultsLock::acquire(&results).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a lock file was left behind");
        std::fs::write(&results, "written").unwrap();
        drop(ResultsLock::acquire(&results).unwrap());
        assert!(dir.path().join("m.results.csv.lock").exists(), "the lock of a written file stays");
    }

    #[test]
    fn a_lock_left_by_a_dead_run_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // What a killed run leaves: the file with its details, and no OS lock.
        std::fs::write(dir.path().join("t-c.holder"), "run dead, pid 1, started 2026-01-01T00:00:00Z").unwrap();
        let lock = RunLock::acquire(dir.path(), "t", "c", "run-5").unwrap();
        let text = std::fs::read_to_string(&lock.holder_path).unwrap();
        assert!(text.starts_with("run run-5"), "{text}");
    }
}
