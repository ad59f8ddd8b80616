//! The run journal: what a run was for, and which machines it was about to call, so an interrupted run can
//! be resumed without offboarding anything twice.
//!
//! It lives beside the results file (`<results>.journal`). Its first line is the run's identity as JSON
//! (input and a hash of its content, tenant, app, the comment as written and as sent, run id); every further
//! line is an *intent*, `line,machine_id,unix_ms`, written and flushed before the machine's first offboard
//! call. On `--resume`, a machine with an intent but no final results row may have been offboarded by a
//! call whose answer was lost, so it is looked up among the service's actions before it is called again.
//!
//! Every intent of a line counts (the lookup goes back to the earliest). A torn last line (a kill mid-write)
//! is ignored, as its machine had not been called yet, and cut before anything is appended; a line that
//! cannot be read is skipped, never the end of the reading. When a run completes, intents are kept only for
//! the machines whose row says their call may have gone through ([`results::in_doubt_lines`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::domain::MachineId;
use crate::error::{Error, Result};
use crate::files::results;
use crate::files::sync::Synced;

/// What a run was for; a resume must be for the same.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunIdentity {
    pub run_id: String,
    /// The input as given (a path, or `<stdin>`).
    pub input: String,
    /// Rows and valid ids the input held.
    pub input_rows: u64,
    pub input_valid: u64,
    /// SHA-256 of the input's content (hex). `None` in journals written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_sha256: Option<String>,
    pub tenant_id: String,
    pub client_id: String,
    /// The comment as written, before `{run_id}` and `{date}` are filled in.
    pub comment: String,
    /// The comment as sent, filled in when the run began; every session of the run sends (and looks up)
    /// this one, whatever the date. `None` in journals written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_comment: Option<String>,
    pub started_at: String,
    /// The person who signed in (device code sign-in); `None` for an app's sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

impl RunIdentity {
    /// Why a resume of `self` cannot continue `earlier`, if it cannot.
    pub fn mismatch(&self, earlier: &RunIdentity) -> Option<String> {
        let differs = |what: &str, was: &str, now: &str| Some(format!("it was written for {what} {was}, not {now}"));
        let new_run = "to offboard this list, start a new run (without --resume) with another --output, or with \
                       --overwrite to replace these results; --resume only continues the same list. A list that \
                       changes from one night to the next is a new run each night with its own results file (e.g. \
                       --output results-{date}.csv): machines already offboarded or pending cost no call";
        if self.input != earlier.input {
            return differs("input", &earlier.input, &self.input);
        }
        if (self.input_rows, self.input_valid) != (earlier.input_rows, earlier.input_valid) {
            return Some(format!(
                "the input has changed since: it held {} rows ({} machine ids), now {} ({}); {new_run}",
                earlier.input_rows, earlier.input_valid, self.input_rows, self.input_valid
            ));
        }
        if let (Some(was), Some(now)) = (&earlier.input_sha256, &self.input_sha256)
            && was != now
        {
            return Some(format!(
                "the input has changed since: it has as many rows ({}) but not the same content (SHA-256 {}, \
                 now {}), so it is not the list these results are for; {new_run}",
                self.input_rows,
                &was[..was.len().min(12)],
                &now[..now.len().min(12)]
            ));
        }
        // Ids in any letter case are the same tenant and app (as for the run lock).
        if !self.tenant_id.trim().eq_ignore_ascii_case(earlier.tenant_id.trim()) {
            return differs("tenant", &earlier.tenant_id, &self.tenant_id);
        }
        if !self.client_id.trim().eq_ignore_ascii_case(earlier.client_id.trim()) {
            return differs("app (client id)", &earlier.client_id, &self.client_id);
        }
        if self.comment != earlier.comment {
            return differs("comment", &format!("{:?}", earlier.comment), &format!("{:?}", self.comment));
        }
        None
    }
}

/// Fills `{run_id}` and `{date}` (UTC, YYYY-MM-DD) into a results path (`--output results-{date}.csv`).
pub fn expand_output(path: &Path, run_id: &str, now: SystemTime) -> PathBuf {
    match path.to_str() {
        Some(text) if text.contains('{') => PathBuf::from(expand_comment(text, run_id, now)),
        _ => path.to_owned(),
    }
}

/// Fills `{run_id}` and `{date}` (UTC, YYYY-MM-DD) into a comment.
pub fn expand_comment(template: &str, run_id: &str, now: SystemTime) -> String {
    let date = humantime::format_rfc3339_seconds(now).to_string()[..10].to_string();
    template.replace("{run_id}", run_id).replace("{date}", &date)
}

impl RunIdentity {
    /// The comment a run sends, in every session: the one resolved when it began. A journal from before
    /// that was kept: filled with the date the run began, which its first session used.
    pub fn comment_sent(&self) -> String {
        self.resolved_comment.clone().unwrap_or_else(|| {
            let began = self
                .started_at
                .parse::<jiff::Timestamp>()
                .ok()
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or_else(SystemTime::now);
            expand_comment(&self.comment, &self.run_id, began)
        })
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
    file: Mutex<File>,
    /// Intents reach the OS at once; the sync thread syncs them to disk about once a second.
    synced: Synced,
}

impl Journal {
    /// Starts a new journal for a run (replacing any earlier one).
    pub fn create(path: &Path, identity: &RunIdentity) -> Result<Journal> {
        let mut file = File::create(path).map_err(|e| fail(path, "create", e))?;
        let header = serde_json::to_string(identity).expect("the identity serialises");
        writeln!(file, "{header}").and_then(|_| file.sync_all()).map_err(|e| fail(path, "write", e))?;
        let synced = Synced::new(&file).map_err(|e| fail(path, "open", e))?;
        Ok(Journal { path: path.to_owned(), file: Mutex::new(file), synced })
    }

    /// Reopens an existing journal to append further intents, after cutting a torn last line (else the
    /// next intent would be glued to it, and lost).
    pub fn reopen(path: &Path) -> Result<Journal> {
        let mut file = OpenOptions::new().read(true).append(true).open(path).map_err(|e| fail(path, "open", e))?;
        let len = file.metadata().map_err(|e| fail(path, "read", e))?.len();
        match end_of_last_line(&mut file, len).map_err(|e| fail(path, "read", e))? {
            Some(keep) if keep < len => {
                tracing::warn!("cut a torn last line ({} bytes) from {}", len - keep, path.display());
                file.set_len(keep).and_then(|_| file.sync_all()).map_err(|e| fail(path, "repair", e))?;
            }
            Some(_) => {}
            // Only the identity, which the resume has read whole, without its line break.
            None => file.write_all(b"\n").map_err(|e| fail(path, "repair", e))?,
        }
        let synced = Synced::new(&file).map_err(|e| fail(path, "open", e))?;
        Ok(Journal { path: path.to_owned(), file: Mutex::new(file), synced })
    }

    /// Records that `machine_id` (input line `line`) is about to be called. Returns once the OS has it.
    pub fn intent(&self, line: u64, machine_id: &MachineId) -> Result<()> {
        self.intents([(line, machine_id)])
    }

    /// Records that each machine of `intents` (input line, machine) is about to be called, in one write
    /// (one system call for a run's next machines, not one each). Returns once the OS has them all. A
    /// machine recorded and then never called (the run stopped first) is looked up on `--resume` like one
    /// whose answer was lost: a lookup more, never an offboard twice.
    pub fn intents<'a>(&self, intents: impl IntoIterator<Item = (u64, &'a MachineId)>) -> Result<()> {
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
        // `{line},{machine_id},{now_ms}\n` each, made without the formatting machinery (a record a machine).
        let now_ms = now_ms.to_string();
        let intents = intents.into_iter();
        // A record is `{line},{hex},{now_ms}\n`, 43 bytes and two numbers (a line mostly no longer than the
        // time): one allocation for them all.
        let mut records = Vec::with_capacity(intents.size_hint().0 * (43 + 2 * now_ms.len()));
        for (line, machine_id) in intents {
            results::push_number(&mut records, line);
            records.push(b',');
            records.extend_from_slice(&machine_id.hex());
            records.push(b',');
            records.extend_from_slice(now_ms.as_bytes());
            records.push(b'\n');
        }
        self.file.lock().unwrap().write_all(&records).map_err(|e| fail(&self.path, "write", e))?;
        self.synced.written().map_err(|e| fail(&self.path, "sync", e))
    }

    /// The run is complete: keep the identity line, and the intents of the machines whose last row in the
    /// results says their call may have gone through, `in_doubt` ([`results::in_doubt_lines`], or as
    /// [`results::verify`] read them): a later `--resume` looks those up before calling again, and retries
    /// the other failed rows.
    pub fn complete(self, identity: &RunIdentity, in_doubt: &results::LineSet) -> Result<()> {
        let Journal { path, file, synced } = self;
        // Every handle on the journal closed before it is replaced.
        drop((synced, file));
        let tmp = path.with_extension("journal.tmp");
        let header = serde_json::to_string(identity).expect("the identity serialises");
        let mut out = BufWriter::new(File::create(&tmp).map_err(|e| fail(&tmp, "create", e))?);
        writeln!(out, "{header}").map_err(|e| fail(&tmp, "write", e))?;
        let mut earlier = BufReader::new(File::open(&path).map_err(|e| fail(&path, "open", e))?);
        skip_line(&mut earlier).map_err(|e| fail(&path, "read", e))?;
        let mut written = Ok(());
        // With no line in doubt (a run whose calls all answered) no intent is kept: none need be read.
        let earlier = earlier.take(if in_doubt.is_empty() { 0 } else { u64::MAX });
        read_intents(earlier, |line, machine_id, at_ms| {
            if in_doubt.contains(line) && written.is_ok() {
                written = writeln!(out, "{line},{machine_id},{at_ms}");
            }
        })
        .map_err(|e| fail(&path, "read", e))?;
        written
            .and_then(|_| out.into_inner().map_err(|e| e.into_error()))
            .and_then(|file| file.sync_all())
            .map_err(|e| fail(&tmp, "write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(&path, "replace", e))
    }

    /// Flushes intents to disk (at the end of a run, or on interrupt).
    pub fn sync(&self) {
        let _ = self.file.lock().unwrap().sync_data();
    }
}

/// One recorded intent: the machine was about to be called at `at_ms` (unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub machine_id: MachineId,
    pub at_ms: u64,
}

/// When `machine_id` was first about to be called, among a line's intents: a lookup must go back to the
/// earliest call that may have gone through.
pub fn earliest(intents: &[Intent], machine_id: &MachineId) -> Option<u64> {
    intents.iter().filter(|i| i.machine_id == *machine_id).map(|i| i.at_ms).min()
}

/// What an earlier run's journal says.
pub struct Earlier {
    pub identity: RunIdentity,
    /// Every intent by input line, in the order written.
    pub intents: HashMap<u64, Vec<Intent>>,
}

/// Reads an earlier run's journal; `keep(line, machine_id)` says which intents matter (those without a
/// final row for that machine), so memory stays small however long the run was.
pub fn read(path: &Path, keep: impl Fn(u64, &str) -> bool) -> Result<Earlier> {
    let file = File::open(path).map_err(|e| fail(path, "open", e))?;
    let mut reader = BufReader::new(file);
    let mut header = Vec::new();
    reader.read_until(b'\n', &mut header).map_err(|e| fail(path, "read", e))?;
    if header.is_empty() {
        return Err(Error::Output { path: path.to_owned(), message: "the journal is empty".into() });
    }
    let identity: RunIdentity = serde_json::from_slice(&header).map_err(|e| Error::Output {
        path: path.to_owned(),
        message: format!("not an mde-offboard journal ({e}); without it the run cannot be resumed safely"),
    })?;
    let mut intents: HashMap<u64, Vec<Intent>> = HashMap::new();
    read_intents(reader, |line, machine_id, at_ms| {
        if let Some(id) = MachineId::parse(machine_id)
            && keep(line, machine_id)
        {
            intents.entry(line).or_default().push(Intent { machine_id: id, at_ms });
        }
    })
    .map_err(|e| fail(path, "read", e))?;
    Ok(Earlier { identity, intents })
}

/// Calls `each(line, machine_id, unix_ms)` for every intent line after the identity. A line without its
/// line break is torn (its machine was never called) and one that is not an intent (not UTF-8, damaged) is
/// skipped: neither hides the intents after it.
fn read_intents(mut reader: impl BufRead, mut each: impl FnMut(u64, &str, u64)) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let Some(text) = buf.strip_suffix(b"\n") else { continue };
        let Ok(text) = std::str::from_utf8(text) else { continue };
        let mut parts = text.trim_end_matches('\r').split(',');
        let (Some(line), Some(id), Some(ms), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(line), Ok(ms)) = (line.parse::<u64>(), ms.parse::<u64>())
            && id.len() == 40
        {
            each(line, id, ms);
        }
    }
}

fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    let mut buf = Vec::new();
    reader.read_until(b'\n', &mut buf).map(drop)
}

/// The offset just past the file's last line break, looking back from `len` a block at a time.
fn end_of_last_line(file: &mut File, len: u64) -> std::io::Result<Option<u64>> {
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(pos) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + pos as u64 + 1));
        }
        end = start;
    }
    Ok(None)
}

fn fail(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::write(path, format!("{what} the run journal"), e)
}

/// A new run id: the UTC start time and a random suffix, e.g. `20261129T090429Z-3f9a`.
pub fn new_run_id(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string().replace(['-', ':'], "");
    format!("{stamp}-{:04x}", fastrand::u16(..))
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
            input_sha256: Some("ab".repeat(32)),
            tenant_id: "t".into(),
            client_id: "c".into(),
            comment: "bye {run_id} {date}".into(),
            resolved_comment: Some("bye r1 2026-11-29".into()),
            started_at: "2026-11-29T00:00:00Z".into(),
            account: None,
        }
    }

    fn id(c: char) -> String {
        c.to_string().repeat(40)
    }

    fn mid(c: char) -> MachineId {
        MachineId::parse(&id(c)).expect("hex")
    }

    fn append(path: &Path, bytes: &[u8]) {
        OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
    }

    #[test]
    fn intents_survive_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("m.results.csv"));
        assert!(path.ends_with("m.results.csv.journal"));
        let journal = Journal::create(&path, &identity()).unwrap();
        journal.intent(2, &mid('a')).unwrap();
        journal.intent(3, &mid('b')).unwrap();
        drop(journal);
        // A kill in the middle of a write leaves half a line, even one that parses.
        append(&path, format!("4,{},17000", id('c')).as_bytes());
        let earlier = read(&path, |line, _| line != 3).unwrap();
        assert_eq!(earlier.identity, identity());
        assert_eq!(earlier.intents.len(), 1);
        assert_eq!(earlier.intents[&2], [Intent { machine_id: mid('a'), at_ms: earlier.intents[&2][0].at_ms }]);
    }

    #[test]
    fn every_intent_of_a_line_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("m.results.csv"));
        drop(Journal::create(&path, &identity()).unwrap());
        // Two sessions' intents for line 4, 11 minutes apart, and one for another machine on the same line.
        append(&path, format!("4,{a},1000\n4,{a},661000\n4,{b},500\n", a = id('a'), b = id('b')).as_bytes());
        let earlier = read(&path, |_, machine| machine != id('c')).unwrap();
        assert_eq!(earlier.intents[&4].len(), 3);
        assert_eq!(earliest(&earlier.intents[&4], &mid('a')), Some(1000));
        assert_eq!(earliest(&earlier.intents[&4], &mid('A')), Some(1000));
        assert_eq!(earliest(&earlier.intents[&4], &mid('c')), None);
        // Only what `keep` wants is held.
        let earlier = read(&path, |_, machine| machine == id('b')).unwrap();
        assert_eq!(earlier.intents[&4].len(), 1);
    }

    #[test]
    fn reopen_cuts_a_torn_line_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("m.results.csv"));
        Journal::create(&path, &identity()).unwrap().intent(2, &mid('a')).unwrap();
        append(&path, b"4,cccc");
        Journal::reopen(&path).unwrap().intent(5, &mid('e')).unwrap();
        let earlier = read(&path, |_, _| true).unwrap();
        assert_eq!((earlier.intents.len(), earlier.intents[&5][0].machine_id), (2, mid('e')));
        assert!(!std::fs::read_to_string(&path).unwrap().contains("cccc"));

        // A journal whose identity lost its line break gets it back, and keeps the identity.
        let header = serde_json::to_string(&identity()).unwrap();
        std::fs::write(&path, &header).unwrap();
        Journal::reopen(&path).unwrap().intent(6, &mid('f')).unwrap();
        let earlier = read(&path, |_, _| true).unwrap();
        assert_eq!((earlier.identity, earlier.intents.len()), (identity(), 1));
    }

    #[test]
    fn a_line_that_cannot_be_read_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("m.results.csv"));
        Journal::create(&path, &identity()).unwrap().intent(2, &mid('a')).unwrap();
        append(&path, b"3,\xff\xfe,12\n\x00\x00\ngarbage\n");
        Journal::reopen(&path).unwrap().intent(4, &mid('d')).unwrap();
        let earlier = read(&path, |_, _| true).unwrap();
        let mut lines: Vec<u64> = earlier.intents.keys().copied().collect();
        lines.sort();
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn complete_keeps_the_intents_of_machines_in_doubt() {
        use crate::domain::Outcome;
        use crate::files::results::{ResultRow, ResultsWriter};
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("m.results.csv");
        let path = path_for(&results);
        let journal = Journal::create(&path, &identity()).unwrap();
        let mut writer = ResultsWriter::create(&results, false).unwrap();
        for (line, c) in [(2, 'a'), (3, 'b'), (4, 'c'), (5, 'd')] {
            journal.intent(line, &mid(c)).unwrap();
        }
        writer.write(&ResultRow::new(2, id('a'), Outcome::Submitted)).unwrap();
        let mut timed_out = ResultRow::new(3, id('b'), Outcome::Failed);
        (timed_out.attempts, timed_out.error_code) = (1, Some("Timeout".into()));
        writer.write(&timed_out).unwrap();
        let mut refused = ResultRow::new(4, id('c'), Outcome::Failed);
        (refused.attempts, refused.http_status, refused.error_code) = (1, Some(400), Some("BadRequest".into()));
        writer.write(&refused).unwrap();
        let mut unconfirmed = ResultRow::new(5, id('d'), Outcome::Failed);
        (unconfirmed.attempts, unconfirmed.http_status) = (1, Some(200));
        unconfirmed.error_code = Some("UnconfirmedAnswer".into());
        writer.write(&unconfirmed).unwrap();
        writer.finish().unwrap();

        journal.complete(&identity(), &results::in_doubt_lines(&results).unwrap()).unwrap();
        let earlier = read(&path, |_, _| true).unwrap();
        let mut lines: Vec<u64> = earlier.intents.keys().copied().collect();
        lines.sort();
        assert_eq!(lines, [3, 5]);
        assert_eq!(earlier.identity, identity());
    }

    #[test]
    fn a_resume_names_what_differs() {
        let a = identity();
        assert_eq!(a.mismatch(&a), None);
        let b = RunIdentity { tenant_id: "other".into(), ..identity() };
        assert!(b.mismatch(&a).unwrap().contains("tenant t"));
        let upper = RunIdentity { tenant_id: "T".into(), client_id: "C".into(), ..identity() };
        assert_eq!(upper.mismatch(&a), None, "ids in another letter case are the same tenant and app");
        let c = RunIdentity { input_rows: 9, ..identity() };
        assert!(c.mismatch(&a).unwrap().contains("changed"));
        let d = RunIdentity { comment: "x".into(), ..identity() };
        assert!(d.mismatch(&a).unwrap().contains("comment"));
        let e = RunIdentity {
            run_id: "r2".into(),
            started_at: "later".into(),
            resolved_comment: Some("bye r1 2026-11-30".into()),
            ..identity()
        };
        assert_eq!(e.mismatch(&a), None);
        // The same number of rows, another list.
        let f = RunIdentity { input_sha256: Some("cd".repeat(32)), ..identity() };
        let why = f.mismatch(&a).unwrap();
        assert!(why.contains("changed") && why.contains("--output") && why.contains("--overwrite"), "{why}");
        // A journal from before the hash cannot tell.
        let old = RunIdentity { input_sha256: None, resolved_comment: None, ..identity() };
        assert_eq!(f.mismatch(&old), None);
    }

    #[test]
    fn a_journal_from_before_the_hash_and_resolved_comment_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let old = r#"{"run_id":"r1","input":"m.csv","input_rows":3,"input_valid":2,"tenant_id":"t","client_id":"c","comment":"bye {run_id}","started_at":"2026-11-29T00:00:00Z"}"#;
        std::fs::write(&path, format!("{old}\n")).unwrap();
        let earlier = read(&path, |_, _| true).unwrap();
        assert_eq!((earlier.identity.input_sha256, earlier.identity.resolved_comment), (None, None));
    }
}
