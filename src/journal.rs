//! The run journal: what a run was for, and which machines it was about to call, so an interrupted run can
//! be resumed without offboarding anything twice.
//!
//! It lives beside the results file (`<results>.journal`). Its first line is the run's identity as JSON
//! (input, tenant, app, comment, run id); every further line is an *intent*, `line,machine_id,unix_ms`,
//! written and flushed before the machine's first offboard call. On `--resume`, a machine with an intent
//! but no final results row may have been offboarded by a call whose answer was lost, so it is looked up
//! among the service's actions before it is called again. A torn last line (a kill mid-write) is ignored:
//! its machine had not been called yet.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How often intents are synced to disk (they are flushed to the OS at once, which a kill -9 cannot lose;
/// the sync guards against power loss).
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What a run was for; a resume must be for the same.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunIdentity {
    pub run_id: String,
    /// The input as given (a path, or `<stdin>`).
    pub input: String,
    /// Rows and valid ids the input held, as a fingerprint of its content.
    pub input_rows: u64,
    pub input_valid: u64,
    pub tenant_id: String,
    pub client_id: String,
    /// The comment as written, before `{run_id}` and `{date}` are filled in.
    pub comment: String,
    pub started_at: String,
}

impl RunIdentity {
    /// Why a resume of `self` cannot continue `earlier`, if it cannot.
    pub fn mismatch(&self, earlier: &RunIdentity) -> Option<String> {
        let differs = |what: &str, was: &str, now: &str| Some(format!("it was written for {what} {was}, not {now}"));
        if self.input != earlier.input {
            return differs("input", &earlier.input, &self.input);
        }
        if (self.input_rows, self.input_valid) != (earlier.input_rows, earlier.input_valid) {
            return Some(format!(
                "the input has changed since: it held {} rows ({} machine ids), now {} ({})",
                earlier.input_rows, earlier.input_valid, self.input_rows, self.input_valid
            ));
        }
        if self.tenant_id != earlier.tenant_id {
            return differs("tenant", &earlier.tenant_id, &self.tenant_id);
        }
        if self.client_id != earlier.client_id {
            return differs("app (client id)", &earlier.client_id, &self.client_id);
        }
        if self.comment != earlier.comment {
            return differs("comment", &format!("{:?}", earlier.comment), &format!("{:?}", self.comment));
        }
        None
    }
}

/// The journal path for a results file.
pub fn path_for(results: &Path) -> PathBuf {
    let mut name = results.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".journal");
    results.with_file_name(name)
}

/// An open journal; workers record intents through it.
pub struct Journal {
    path: PathBuf,
    state: Mutex<(File, Instant)>,
}

impl Journal {
    /// Starts a new journal for a run (replacing any earlier one).
    pub fn create(path: &Path, identity: &RunIdentity) -> Result<Journal> {
        let mut file = File::create(path).map_err(|e| fail(path, "create", e))?;
        let header = serde_json::to_string(identity).expect("the identity serialises");
        writeln!(file, "{header}").and_then(|_| file.sync_all()).map_err(|e| fail(path, "write", e))?;
        Ok(Journal { path: path.to_owned(), state: Mutex::new((file, Instant::now())) })
    }

    /// Reopens an existing journal to append further intents.
    pub fn reopen(path: &Path) -> Result<Journal> {
        let file = OpenOptions::new().append(true).open(path).map_err(|e| fail(path, "open", e))?;
        Ok(Journal { path: path.to_owned(), state: Mutex::new((file, Instant::now())) })
    }

    /// Records that `machine_id` (input line `line`) is about to be called. Returns once the OS has it.
    pub fn intent(&self, line: u64, machine_id: &str) -> Result<()> {
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
        let record = format!("{line},{machine_id},{now_ms}\n");
        let mut state = self.state.lock().unwrap();
        let (file, last_sync) = &mut *state;
        file.write_all(record.as_bytes()).map_err(|e| fail(&self.path, "write", e))?;
        if last_sync.elapsed() >= SYNC_EVERY {
            file.sync_data().map_err(|e| fail(&self.path, "sync", e))?;
            *last_sync = Instant::now();
        }
        Ok(())
    }

    /// The run is complete: keep only the identity line (a later `--resume` may still retry failed rows).
    pub fn complete(self, identity: &RunIdentity) -> Result<()> {
        let (file, _) = self.state.into_inner().unwrap();
        drop(file);
        let tmp = self.path.with_extension("journal.tmp");
        let header = serde_json::to_string(identity).expect("the identity serialises");
        let mut out = File::create(&tmp).map_err(|e| fail(&tmp, "create", e))?;
        writeln!(out, "{header}").and_then(|_| out.sync_all()).map_err(|e| fail(&tmp, "write", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| fail(&self.path, "replace", e))
    }

    /// Flushes intents to disk (at the end of a run, or on interrupt).
    pub fn sync(&self) {
        let state = self.state.lock().unwrap();
        let _ = state.0.sync_data();
    }
}

/// What an earlier run's journal says.
pub struct Earlier {
    pub identity: RunIdentity,
    /// Intents by input line: (machine id, when, unix ms).
    pub intents: HashMap<u64, (String, u64)>,
}

/// Reads an earlier run's journal; `keep(line)` says which intents matter (those without a final row),
/// so memory stays small however long the run was.
pub fn read(path: &Path, keep: impl Fn(u64) -> bool) -> Result<Earlier> {
    let file = File::open(path).map_err(|e| fail(path, "open", e))?;
    let mut lines = BufReader::new(file).lines();
    let header = lines
        .next()
        .and_then(|l| l.ok())
        .ok_or_else(|| Error::Output { path: path.to_owned(), message: "the journal is empty".into() })?;
    let identity: RunIdentity = serde_json::from_str(&header).map_err(|e| Error::Output {
        path: path.to_owned(),
        message: format!("not an mde-offboard journal ({e}); without it the run cannot be resumed safely"),
    })?;
    let mut intents = HashMap::new();
    for text in lines {
        let Ok(text) = text else { break };
        let mut parts = text.split(',');
        let (Some(line), Some(id), Some(ms), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            continue; // a torn last line
        };
        let (Ok(line), Ok(ms)) = (line.parse::<u64>(), ms.parse::<u64>()) else { continue };
        if id.len() == 40 && keep(line) {
            intents.insert(line, (id.to_string(), ms));
        }
    }
    Ok(Earlier { identity, intents })
}

fn fail(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::Output { path: path.to_owned(), message: format!("cannot {what} the run journal: {e}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> RunIdentity {
        RunIdentity {
            run_id: "r1".into(),
            input: "m.csv".into(),
            input_rows: 3,
            input_valid: 2,
            tenant_id: "t".into(),
            client_id: "c".into(),
            comment: "bye {run_id}".into(),
            started_at: "2026-11-29T00:00:00Z".into(),
        }
    }

    #[test]
    fn intents_survive_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("m.results.csv"));
        assert!(path.ends_with("m.results.csv.journal"));
        let journal = Journal::create(&path, &identity()).unwrap();
        journal.intent(2, &"a".repeat(40)).unwrap();
        journal.intent(3, &"b".repeat(40)).unwrap();
        drop(journal);
        // A kill in the middle of a write leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "4,cccc").unwrap();
        let earlier = read(&path, |line| line != 3).unwrap();
        assert_eq!(earlier.identity, identity());
        assert_eq!(earlier.intents.len(), 1);
        assert_eq!(earlier.intents[&2].0, "a".repeat(40));

        Journal::reopen(&path).unwrap().complete(&identity()).unwrap();
        assert!(read(&path, |_| true).unwrap().intents.is_empty());
    }

    #[test]
    fn a_resume_names_what_differs() {
        let a = identity();
        assert_eq!(a.mismatch(&a), None);
        let b = RunIdentity { tenant_id: "other".into(), ..identity() };
        assert!(b.mismatch(&a).unwrap().contains("tenant t"));
        let c = RunIdentity { input_rows: 9, ..identity() };
        assert!(c.mismatch(&a).unwrap().contains("changed"));
        let d = RunIdentity { comment: "x".into(), ..identity() };
        assert!(d.mismatch(&a).unwrap().contains("comment"));
        let e = RunIdentity { run_id: "r2".into(), started_at: "later".into(), ..identity() };
        assert_eq!(e.mismatch(&a), None);
    }
}
