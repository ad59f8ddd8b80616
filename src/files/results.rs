//! The results CSV: one row per input row, written and flushed the moment its outcome is known.
//!
//! One task owns the file (see [`ResultsWriter`]); everybody else sends it rows. Rows arrive in the order
//! machines finish, not input order: the `line` column ties each to its input row. A resume appends to the
//! file (the same writer, after [`cut_torn_row`]); an error message is always written on one line.
//!
//! Every command that reads a results file reads it through [`ResultsFile`], streamed (never loaded whole),
//! and every command that replaces one does it through [`Rewrite`], atomically. The messages of the rows the
//! tool decides itself are in [`crate::domain::message`], beside [`Outcome`].

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::domain::Outcome;
use crate::error::{Error, Result};
use crate::files::sync::Synced;

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
    let fail = |message: String| Error::Output { path: path.to_owned(), message };
    // Said at once: no flag makes a directory a file.
    if path.is_dir() {
        return Err(fail("is a directory; name a file with --output".into()));
    }
    if path.exists() && !overwrite {
        return Err(fail("already exists; pass --overwrite to replace it, or --output to write elsewhere".into()));
    }
    // The directory must take new files (the results, its journal, the compacted copy): try one now,
    // rather than fail after the first API calls.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.exists() {
        return Err(fail(format!(
            "the folder {} does not exist; create it, or choose another place with --output",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(fail(format!("{} is not a folder; choose another place with --output", dir.display())));
    }
    // The probe's own name means nothing to the user: only the kind of failure is said.
    tempfile::NamedTempFile::new_in(dir).map(drop).map_err(|e| {
        fail(format!(
            "cannot write in {}: {}; choose another place with --output",
            dir.display(),
            std::io::Error::from(e.kind())
        ))
    })
}

/// Checks that the results file at `path` still holds what this run wrote: the header and `expected` rows,
/// each a readable CSV record. Something else may have replaced, truncated or deleted the file while the run
/// was writing it (another program, or a `track` that did not see the lock); then the rows written are not
/// where the summary would say they are, and the run must not claim them.
///
/// Returns the lines in doubt ([`in_doubt_lines`]), read in the same pass: what the journal keeps when
/// the run completes. Given what the writer put in a file it wrote whole ([`ResultsWriter::finish`]), a file
/// that still holds exactly those bytes (its length, then a hash of it) needs no reading as CSV: its rows and
/// lines in doubt are the writer's. Any other file is read row by row.
pub fn verify(path: &Path, expected: u64, written: Option<Written>) -> Result<LineSet> {
    if let Some(written) = written
        && written.readable
        && written.rows == expected
        && written.matches(path)
    {
        return Ok(written.doubt);
    }
    let changed = |what: String| Error::Output {
        path: path.to_owned(),
        message: format!(
            "{what}, though this run wrote {expected} row(s) there: something changed the file while the run was \
             writing it; the journal beside it still lists every call made, so keep both and run again with \
             --resume to check and finish"
        ),
    };
    let mut found = 0u64;
    let mut doubt = LineSet::default();
    for row in read_rows(path).map_err(|e| changed(format!("it can no longer be read as results ({e})")))? {
        let (line, outcome, record) = row.map_err(|e| changed(format!("it holds a row that cannot be read ({e})")))?;
        note_doubt(&mut doubt, line, outcome, &record);
        found += 1;
    }
    if found != expected {
        return Err(changed(format!("it holds {found} row(s)")));
    }
    Ok(doubt)
}

/// The rows of a results file (its header checked, every row read).
pub fn count_rows(path: &Path) -> Result<u64> {
    let mut n = 0;
    for row in read_rows(path)? {
        row?;
        n += 1;
    }
    Ok(n)
}

/// Owns the results file.
pub struct ResultsWriter {
    path: PathBuf,
    file: File,
    /// The bytes of the rows being written (kept for the next rows: no allocation per row).
    buf: Vec<u8>,
    /// Each row reaches the OS at once (a kill -9 loses nothing); the sync thread syncs them to disk about
    /// once a second, which bounds what a power loss could take.
    synced: Synced,
    /// What this writer put in the file, when it wrote all of it (it created the file).
    written: Option<Written>,
}

/// What a writer put in a file it wrote from its first byte: how long it is, a hash of its bytes, its rows
/// and the lines whose rows leave them in doubt ([`may_have_gone_through`]). With it, [`verify`] proves the
/// file unchanged without reading it as CSV again.
#[derive(Debug)]
pub struct Written {
    len: u64,
    hash: Fingerprint,
    rows: u64,
    doubt: LineSet,
    /// Every row a reader takes as this tool's (a line from 1 to [`MAX_LINE`]).
    readable: bool,
}

impl Written {
    fn add(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.hash.add(bytes);
    }

    /// Notes a row as a reader of the file would see it (see [`note_doubt`]).
    fn note(&mut self, row: &ResultRow) {
        self.rows += 1;
        self.readable &= (1..=MAX_LINE).contains(&row.line);
        let code = row.error_code.as_deref().unwrap_or("").trim();
        if may_have_gone_through(row.outcome, row.http_status, row.attempts, code) {
            self.doubt.insert(row.line);
        } else {
            self.doubt.remove(row.line);
        }
    }

    /// Whether the file at `path` holds exactly the bytes written: its length, then a hash of it, read a
    /// block at a time.
    fn matches(&self, path: &Path) -> bool {
        let Ok(mut file) = File::open(path) else { return false };
        if file.metadata().map(|m| m.len()).ok() != Some(self.len) {
            return false;
        }
        let mut hash = Fingerprint::default();
        let mut block = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            match file.read(&mut block) {
                Ok(0) => break,
                Ok(n) => {
                    len += n as u64;
                    hash.add(&block[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        len == self.len && hash.finish() == self.hash.finish()
    }
}

/// A hash of a stream of bytes, the same however the stream is cut into pieces: each 8 bytes are mixed in
/// by a step that is one-to-one both in the hash so far and in the 8 bytes, so two streams as long that
/// differ in one 8-byte word always hash apart (the length is compared on its own). Not a defence against
/// someone forging a file, which whoever can write the file needs no forgery for: a check that the file is
/// still what the writer wrote, at a fraction of a byte-by-byte hash's cost.
#[derive(Debug, Default)]
struct Fingerprint {
    hash: u64,
    /// The bytes after the last whole word.
    tail: [u8; 8],
    in_tail: usize,
}

impl Fingerprint {
    /// An odd multiplier (so multiplying by it is one-to-one) with its bits well spread.
    const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

    fn add(&mut self, mut bytes: &[u8]) {
        if self.in_tail > 0 {
            let take = (8 - self.in_tail).min(bytes.len());
            self.tail[self.in_tail..self.in_tail + take].copy_from_slice(&bytes[..take]);
            self.in_tail += take;
            bytes = &bytes[take..];
            if self.in_tail < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.tail));
            self.in_tail = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.in_tail = rest.len();
    }

    fn mix(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(23) ^ word).wrapping_mul(Self::MULTIPLIER);
    }

    fn finish(&self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.in_tail].copy_from_slice(&self.tail[..self.in_tail]);
        (self.hash.rotate_left(23) ^ u64::from_le_bytes(last)).wrapping_mul(Self::MULTIPLIER)
    }
}

/// The results file's fields are separated by commas and its records end with `\n`; a field holding a comma,
/// a quote or a line break is quoted, with its quotes doubled: what the `csv` crate's writer does with its
/// defaults, byte for byte (a test pins it), written straight from the row.
fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    // A fold, not `any`: without an early exit the check runs many bytes at a time.
    if field.iter().fold(false, |special, &b| special | matches!(b, b',' | b'"' | b'\r' | b'\n')) {
        out.push(b'"');
        for &b in field {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field);
    }
}

/// `n` in decimal.
pub(crate) fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// One row as a record of the results file (see [`push_field`]), its error message on one line: line breaks
/// become spaces (an HTML error page has many).
fn push_row(out: &mut Vec<u8>, row: &ResultRow) {
    let optional = |out: &mut Vec<u8>, field: &Option<String>| {
        if let Some(field) = field {
            push_field(out, field.as_bytes());
        }
        out.push(b',');
    };
    push_number(out, row.line);
    out.push(b',');
    push_field(out, row.machine_id.as_bytes());
    out.push(b',');
    out.extend_from_slice(row.outcome.as_str().as_bytes());
    out.push(b',');
    optional(out, &row.action_id);
    optional(out, &row.action_status);
    if let Some(status) = row.http_status {
        push_number(out, status.into());
    }
    out.push(b',');
    push_number(out, row.attempts.into());
    out.push(b',');
    optional(out, &row.error_code);
    match &row.error_message {
        Some(message) if message.contains(['\r', '\n']) => {
            push_field(out, message.replace(['\r', '\n'], " ").as_bytes());
            out.push(b',');
        }
        message => optional(out, message),
    }
    optional(out, &row.computer_dns_name);
    optional(out, &row.os_platform);
    optional(out, &row.health_status);
    optional(out, &row.last_seen);
    optional(out, &row.submitted_at);
    if let Some(updated_at) = &row.updated_at {
        push_field(out, updated_at.as_bytes());
    }
    out.push(b'\n');
}

impl ResultsWriter {
    /// Creates the file (refusing an existing one unless `overwrite`) and writes the header.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self> {
        let fail = |e: std::io::Error| Error::write(path, "create it", e);
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
        let synced = Synced::new(&file).map_err(fail)?;
        let written =
            Written { len: 0, hash: Fingerprint::default(), rows: 0, doubt: LineSet::default(), readable: true };
        let mut writer = ResultsWriter { path: path.to_owned(), file, buf: Vec::new(), synced, written: Some(written) };
        for (i, column) in COLUMNS.iter().enumerate() {
            if i > 0 {
                writer.buf.push(b',');
            }
            push_field(&mut writer.buf, column.as_bytes());
        }
        writer.buf.push(b'\n');
        writer.flush("write the header")?;
        Ok(writer)
    }

    /// Opens an existing results file to append rows: a resume, once [`cut_torn_row`] has cut a torn last row.
    pub fn append(path: &Path) -> Result<Self> {
        let file = OpenOptions::new().append(true).open(path).map_err(|e| Error::write(path, "open it", e))?;
        let synced = Synced::new(&file).map_err(|e| Error::write(path, "open it", e))?;
        Ok(ResultsWriter { path: path.to_owned(), file, buf: Vec::new(), synced, written: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one row and hands it to the operating system at once, so a crash loses nothing written.
    pub fn write(&mut self, row: &ResultRow) -> Result<()> {
        self.write_all(std::slice::from_ref(row))
    }

    /// Writes `rows` and hands them to the operating system at once, in one write: the rows a writer finds
    /// waiting together cost one system call, and none waits for a later one. The error message goes on
    /// one line (an HTML error page has many): line breaks become spaces.
    pub fn write_all(&mut self, rows: &[impl std::borrow::Borrow<ResultRow>]) -> Result<()> {
        for row in rows {
            let row = row.borrow();
            push_row(&mut self.buf, row);
            if let Some(written) = &mut self.written {
                written.note(row);
            }
        }
        self.flush("write a row")?;
        self.synced.written().map_err(|e| Error::write(&self.path, "sync", e))
    }

    /// Hands the bytes waiting to the operating system.
    fn flush(&mut self, action: &str) -> Result<()> {
        use std::io::Write;
        if let Err(e) = self.file.write_all(&self.buf) {
            // How much of it reached the file is unknown: the file is no longer known byte for byte.
            self.written = None;
            return Err(Error::write(&self.path, action, e));
        }
        if let Some(written) = &mut self.written {
            written.add(&self.buf);
        }
        self.buf.clear();
        Ok(())
    }

    /// Syncs to disk. Returns what was written, when this writer wrote the whole file (see [`verify`]).
    pub fn finish(self) -> Result<Option<Written>> {
        self.file.sync_all().map_err(|e| Error::write(&self.path, "sync", e))?;
        Ok(self.written)
    }
}

/// Values by line number (or row index), kept in pages of `N` (by default [`PAGE`]) allocated as numbers are
/// met: memory follows the numbers present, not the largest one (a stray huge number costs one page, not an
/// allocation its size).
#[derive(Debug)]
struct Paged<T, const N: usize = PAGE> {
    pages: HashMap<u64, Box<[T; N]>>,
}

/// Numbers per page of a [`Paged`] that holds a value for most numbers (every row of a file).
const PAGE: usize = 4096;

impl<T, const N: usize> Default for Paged<T, N> {
    fn default() -> Self {
        Paged { pages: HashMap::new() }
    }
}

impl<T: Copy + Default, const N: usize> Paged<T, N> {
    fn get(&self, n: u64) -> T {
        self.pages.get(&(n / N as u64)).map_or_else(T::default, |page| page[(n % N as u64) as usize])
    }

    fn get_mut(&mut self, n: u64) -> &mut T {
        let page = self.pages.entry(n / N as u64).or_insert_with(|| Box::new([T::default(); N]));
        &mut page[(n % N as u64) as usize]
    }

    /// The slot of `n` if its page exists (for clearing: nothing to allocate).
    fn existing_mut(&mut self, n: u64) -> Option<&mut T> {
        self.pages.get_mut(&(n / N as u64)).map(|page| &mut page[(n % N as u64) as usize])
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.pages.values().flat_map(|page| page.iter())
    }
}

/// A set of input line numbers (or row indexes), one bit each (1,000,000 lines: 125 KB), in pages of 4,096
/// lines (512 bytes): a set usually holds a few lines (those in doubt), in a writer kept by each tenant of a
/// run of many.
#[derive(Default, Debug)]
pub struct LineSet(Paged<u64, LINE_SET_PAGE>);

/// Words (of 64 lines) per page of a [`LineSet`].
const LINE_SET_PAGE: usize = 64;

impl LineSet {
    pub fn insert(&mut self, line: u64) {
        *self.0.get_mut(line / 64) |= 1 << (line % 64);
    }

    pub fn remove(&mut self, line: u64) {
        if let Some(w) = self.0.existing_mut(line / 64) {
            *w &= !(1 << (line % 64));
        }
    }

    pub fn len(&self) -> u64 {
        self.0.values().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, line: u64) -> bool {
        self.0.get(line / 64) & (1 << (line % 64)) != 0
    }
}

/// Cuts a torn last row (a kill in the middle of a write) off a results file, so rows appended later
/// start on a line of their own. Returns how many bytes were cut.
///
/// The cut is at the end of the last complete record, which is not always the last line break: a quoted
/// field (an HTML error message from an older version, a multi-line invalid cell) holds line breaks of its
/// own, and a row torn after one of them would leave an open quote that swallows every row appended later.
pub fn cut_torn_row(path: &Path) -> Result<u64> {
    let fail = |e: std::io::Error| Error::write(path, "repair it", e);
    let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len();
    let Some(keep) = end_of_complete_records(&mut file).map_err(fail)? else {
        return Err(Error::Output {
            path: path.to_owned(),
            message: "holds no complete line, not even the header".into(),
        });
    };
    if keep < len {
        file.set_len(keep).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    Ok(len - keep)
}

/// The offset just past the last complete CSV record: the last line break outside quotes. The csv writer
/// quotes every field holding a quote, a comma or a line break and doubles the quotes inside, so a line
/// break is outside a quoted field exactly when the quotes before it are even in number. One pass from the
/// start, a block at a time.
fn end_of_complete_records(mut input: impl Read) -> std::io::Result<Option<u64>> {
    let mut block = vec![0u8; 64 * 1024];
    let (mut offset, mut quoted, mut end) = (0u64, false, None);
    loop {
        let n = match input.read(&mut block) {
            Ok(0) => return Ok(end),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for (i, &b) in block[..n].iter().enumerate() {
            match b {
                b'"' => quoted = !quoted,
                b'\n' if !quoted => end = Some(offset + i as u64 + 1),
                _ => {}
            }
        }
        offset += n as u64;
    }
}

/// The largest input line a results row may name: no machine list has more lines (it would hold 170 GB of
/// ids). A row naming a larger one (or line 0) is damage, refused with the file and the row named.
pub const MAX_LINE: u64 = u32::MAX as u64;

/// A results file opened for reading: its header read, its rows streamed from the start as often as asked
/// (a million rows take as little memory as ten). Every command that reads a results file reads it
/// through this: by line and outcome (a resume, the journal, the tally, which check that its header is this
/// tool's) or by column name, keeping columns it does not know ([`ResultsFile::records`]: tracking).
pub struct ResultsFile {
    path: PathBuf,
    headers: csv::StringRecord,
    /// The file's bytes, when it is read from memory ([`read_bytes`]).
    bytes: Option<std::sync::Arc<[u8]>>,
}

/// One row of a results file as written: its cells, and its number as a person finds it in the file (the
/// header is row 1; a quoted cell may hold line breaks, so this counts records, not lines).
pub struct Record {
    pub row: u64,
    pub cells: csv::StringRecord,
}

/// Rows as [`ResultsFile::records`] streams them.
pub type Records = Box<dyn Iterator<Item = Result<Record>>>;

/// A results file's rows as (line, outcome, record): see [`ResultsFile::rows`].
type Rows = Box<dyn Iterator<Item = Result<(u64, Outcome, csv::StringRecord)>>>;

impl ResultsFile {
    /// Opens the results file at `path` and reads its header.
    pub fn open(path: &Path) -> Result<ResultsFile> {
        let file = ResultsFile { path: path.to_owned(), headers: csv::StringRecord::new(), bytes: None };
        file.with_headers()
    }

    /// A results file held in memory, named `<bytes>` in errors.
    fn from_bytes(bytes: &[u8]) -> Result<ResultsFile> {
        let file = ResultsFile {
            path: PathBuf::from("<bytes>"),
            headers: csv::StringRecord::new(),
            bytes: Some(bytes.into()),
        };
        file.with_headers()
    }

    fn with_headers(mut self) -> Result<ResultsFile> {
        let mut reader = self.reader()?;
        self.headers = reader.headers().map_err(|e| self.error(format!("cannot read it: {e}")))?.clone();
        Ok(self)
    }

    fn reader(&self) -> Result<csv::Reader<Box<dyn Read>>> {
        let input: Box<dyn Read> = match &self.bytes {
            Some(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
            None => Box::new(File::open(&self.path).map_err(|e| self.error(format!("cannot read it: {e}")))?),
        };
        // Flexible: a row shorter than the header (an older version's, a hand-made one) is read as it is;
        // what a short row means is each reader's to say.
        Ok(csv::ReaderBuilder::new().flexible(true).from_reader(input))
    }

    fn error(&self, message: String) -> Error {
        Error::Output { path: self.path.clone(), message }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn headers(&self) -> &csv::StringRecord {
        &self.headers
    }

    /// The index of the column `name`, or an error saying the file is not a results file.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.headers.iter().position(|h| h == name).ok_or_else(|| {
            self.error(format!("has no `{name}` column; give the results file an mde-offboard run wrote"))
        })
    }

    /// Every row, in order, read anew from the start of the file.
    pub fn records(&self) -> Result<Records> {
        let mut reader = self.reader()?;
        reader.headers().map_err(|e| self.error(format!("cannot read it: {e}")))?;
        let path = self.path.clone();
        let mut row = 1;
        Ok(Box::new(reader.into_records().map(move |cells| {
            row += 1;
            let cells = cells
                .map_err(|e| Error::Output { path: path.clone(), message: format!("cannot read row {row}: {e}") })?;
            Ok(Record { row, cells })
        })))
    }

    /// Every row as (line, outcome, record), after checking that the header is this tool's ([`COLUMNS`]) and
    /// that every row has a line number from 1 to [`MAX_LINE`] and an outcome: how a resume, the journal and
    /// the tally read a results file.
    fn rows(&self) -> Result<Rows> {
        if self.headers.iter().ne(COLUMNS) {
            return Err(self.error("is not an mde-offboard results file (its header differs)".into()));
        }
        let path = self.path.clone();
        Ok(Box::new(self.records()?.map(move |record| {
            let Record { row, cells } = record?;
            let bad = |message: String| Error::Output { path: path.clone(), message };
            let cell = |i: usize| clip_cell(cells.get(i).unwrap_or(""));
            let Some(line) =
                cells.get(0).and_then(|l| l.trim().parse::<u64>().ok()).filter(|l| (1..=MAX_LINE).contains(l))
            else {
                return Err(bad(format!(
                    "row {row} is damaged: its line `{}` is not an input line number (1 to {MAX_LINE}); fix or \
                     delete that row, or start a new run with another --output",
                    cell(0)
                )));
            };
            match cells.get(2).and_then(Outcome::parse) {
                Some(outcome) => Ok((line, outcome, cells)),
                None => Err(bad(format!(
                    "row {row} is not a results row: its outcome `{}` is not one this tool writes",
                    cell(2)
                ))),
            }
        })))
    }
}

/// Reads a results file by line and outcome: see [`ResultsFile::rows`].
fn read_rows(path: &Path) -> Result<Rows> {
    ResultsFile::open(path)?.rows()
}

/// Replaces a results file atomically: the new rows go to a temporary file beside it (the same directory,
/// so the rename cannot cross file systems), which [`Rewrite::commit`] syncs and renames over the file,
/// with the file's permissions. Until then the file is as it was; a rewrite dropped uncommitted leaves
/// nothing behind.
pub struct Rewrite {
    path: PathBuf,
    csv: csv::Writer<BufWriter<tempfile::NamedTempFile>>,
}

impl Rewrite {
    /// Starts the replacement of `path`, writing `headers` first.
    pub fn start<I, T>(path: &Path, headers: I) -> Result<Rewrite>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".mde-offboard-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| Error::write(path, "create a temporary file beside it", e))?;
        // Flexible: rows pass through as wide as they were read.
        let csv = csv::WriterBuilder::new().flexible(true).from_writer(BufWriter::new(temp));
        let mut rewrite = Rewrite { path: path.to_owned(), csv };
        rewrite.write(headers)?;
        Ok(rewrite)
    }

    /// Writes one row of the replacement.
    pub fn write<I, T>(&mut self, record: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.csv.write_record(record).map_err(|e| Error::write(&self.path, "write its replacement", e))
    }

    /// Puts the replacement in the file's place.
    pub fn commit(self) -> Result<()> {
        let fail = |action: &str, e: std::io::Error| Error::write(&self.path, action, e);
        let temp = self
            .csv
            .into_inner()
            .map_err(|e| fail("write its replacement", e.into_error()))?
            .into_inner()
            .map_err(|e| fail("write its replacement", e.into_error()))?;
        temp.as_file().sync_all().map_err(|e| fail("sync its replacement", e))?;
        if let Ok(meta) = std::fs::metadata(&self.path) {
            let _ = std::fs::set_permissions(temp.path(), meta.permissions());
        }
        temp.persist(&self.path).map_err(|e| fail("replace it", e.error))?;
        Ok(())
    }
}

/// A cell quoted in a message: at most 40 characters of it.
fn clip_cell(cell: &str) -> String {
    match cell.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &cell[..end]),
        None => cell.to_string(),
    }
}

/// The input lines an earlier run finished with, each with the machine its row names: a line is done only
/// for the same machine (a different list under the same name is not done). One fingerprint per line
/// (8 bytes; 1,000,000 lines: 8 MB).
#[derive(Default, Debug)]
pub struct Finished(Paged<u64>);

impl Finished {
    pub fn insert(&mut self, line: u64, machine_id: &str) {
        *self.0.get_mut(line) = Finished::fingerprint(machine_id);
    }

    pub fn remove(&mut self, line: u64) {
        if let Some(slot) = self.0.existing_mut(line) {
            *slot = 0;
        }
    }

    /// Whether `line` is done, and for `machine_id` (compared ignoring case and surrounding spaces).
    pub fn contains(&self, line: u64, machine_id: &str) -> bool {
        self.fingerprint_of(line) == Some(Finished::fingerprint(machine_id))
    }

    /// Whether `line` is done, whatever its machine.
    pub fn has_line(&self, line: u64) -> bool {
        self.fingerprint_of(line).is_some()
    }

    pub fn len(&self) -> u64 {
        self.0.values().filter(|&&f| f != 0).count() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fingerprint_of(&self, line: u64) -> Option<u64> {
        Some(self.0.get(line)).filter(|&f| f != 0)
    }

    /// A hash of the id as a resume compares it; never 0 (an empty slot).
    fn fingerprint(machine_id: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        machine_id.trim().to_ascii_lowercase().hash(&mut hasher);
        hasher.finish().max(1)
    }
}

/// The input lines an earlier run finished with (their last row is final), and how many of those rows
/// are machines (not `invalid_id` or `duplicate` rows).
pub fn final_lines(path: &Path) -> Result<(Finished, u64)> {
    final_lines_of(read_rows(path)?)
}

fn final_lines_of(rows: Rows) -> Result<(Finished, u64)> {
    let mut done = Finished::default();
    let mut machines = LineSet::default();
    for row in rows {
        let (line, outcome, record) = row?;
        if outcome.is_final() {
            done.insert(line, record.get(1).unwrap_or(""));
        } else {
            done.remove(line);
        }
        if outcome.is_final() && !matches!(outcome, Outcome::InvalidId | Outcome::Duplicate) {
            machines.insert(line);
        } else {
            machines.remove(line);
        }
    }
    Ok((done, machines.len()))
}

/// Error codes of `failed` rows whose machine may have been offboarded all the same: a 2xx answer that did
/// not show the action, and a lookup of an earlier call that could not be made.
pub const IN_DOUBT_CODES: [&str; 2] = ["UnconfirmedAnswer", "InDoubt"];

/// Codes of failures that, with no request made (`attempts` 0), certainly sent nothing.
const NEVER_SENT_CODES: [&str; 2] = ["Interrupted", "SignInFailed"];

/// Whether a `failed` row's call may have reached the service and created an action: an in-doubt code, a
/// 5xx or 408 (the service may have acted before failing), or no answer at all (a timeout, a lost
/// connection, a machine given up while its call was in flight) unless no request was made. Such a machine
/// is looked up before it is called again.
pub fn may_have_gone_through(outcome: Outcome, http_status: Option<u16>, attempts: u32, error_code: &str) -> bool {
    let never_sent = attempts == 0 && NEVER_SENT_CODES.contains(&error_code);
    outcome == Outcome::Failed
        && (IN_DOUBT_CODES.contains(&error_code)
            || match http_status {
                Some(status) => status >= 500 || status == 408,
                None => !never_sent,
            })
}

/// The lines whose last row is a failure that [`may_have_gone_through`]: their journal intents must outlive
/// the run, so that `--resume` looks them up.
pub fn in_doubt_lines(path: &Path) -> Result<LineSet> {
    in_doubt_lines_of(read_rows(path)?)
}

fn in_doubt_lines_of(rows: Rows) -> Result<LineSet> {
    let mut doubt = LineSet::default();
    for row in rows {
        let (line, outcome, record) = row?;
        note_doubt(&mut doubt, line, outcome, &record);
    }
    Ok(doubt)
}

/// Puts `line` in `doubt` or takes it out, by its row (a later row of a line replaces an earlier one).
fn note_doubt(doubt: &mut LineSet, line: u64, outcome: Outcome, record: &csv::StringRecord) {
    let field = |i: usize| record.get(i).unwrap_or("").trim();
    let status = field(5).parse::<u16>().ok();
    let attempts = field(6).parse::<u32>().unwrap_or(0);
    if may_have_gone_through(outcome, status, attempts, field(7)) {
        doubt.insert(line);
    } else {
        doubt.remove(line);
    }
}

/// Counts the outcomes of a results file where each line's last row counts; with `compact`, rewrites the
/// file ([`Rewrite`]) so it holds exactly that last row per line.
pub fn tally(path: &Path, compact: bool) -> Result<BTreeMap<Outcome, u64>> {
    // Pass 1: the index of each line's last row. Pass 2: count (and keep) only those rows.
    let file = ResultsFile::open(path)?;
    let last = last_rows(file.rows()?)?;
    let mut out = if compact { Some(Rewrite::start(path, COLUMNS)?) } else { None };
    let counts = count_last_rows(file.rows()?, &last, |record| match &mut out {
        Some(rewrite) => rewrite.write(record),
        None => Ok(()),
    })?;
    if let Some(rewrite) = out {
        rewrite.commit()?;
    }
    Ok(counts)
}

/// The index (from 1) of each line's last row.
fn last_rows(rows: Rows) -> Result<Paged<u32>> {
    let mut last: Paged<u32> = Paged::default();
    for (index, row) in rows.enumerate() {
        let (line, _, _) = row?;
        *last.get_mut(line) = index as u32 + 1;
    }
    Ok(last)
}

/// Counts the outcomes of the rows that are their line's last (as [`last_rows`] found them), giving each
/// such row to `keep`.
fn count_last_rows(
    rows: Rows,
    last: &Paged<u32>,
    mut keep: impl FnMut(&csv::StringRecord) -> Result<()>,
) -> Result<BTreeMap<Outcome, u64>> {
    let mut counts = BTreeMap::new();
    for (index, row) in rows.enumerate() {
        let (line, outcome, record) = row?;
        if last.get(line) == index as u32 + 1 {
            *counts.entry(outcome).or_insert(0) += 1;
            keep(&record)?;
        }
    }
    Ok(counts)
}

/// What a resume reads of a results file, read from bytes: for fuzzing and tests.
#[derive(Debug)]
pub struct Reading {
    /// Where [`cut_torn_row`] would cut (`None`: not even a header line).
    pub complete_up_to: Option<u64>,
    /// As [`final_lines`] gives them.
    pub finished: Finished,
    pub finished_machines: u64,
    /// As [`in_doubt_lines`] gives them.
    pub in_doubt: LineSet,
    /// As [`tally`] counts them: one per distinct line.
    pub tally: BTreeMap<Outcome, u64>,
}

/// Reads `bytes` as a results file the way `--resume` and the journal do (the same reader, every pass), or
/// fails as they would.
pub fn read_bytes(bytes: &[u8]) -> Result<Reading> {
    let file = ResultsFile::from_bytes(bytes)?;
    let rows = || file.rows();
    let complete_up_to = end_of_complete_records(bytes).expect("reading memory does not fail");
    let (finished, finished_machines) = final_lines_of(rows()?)?;
    let in_doubt = in_doubt_lines_of(rows()?)?;
    let last = last_rows(rows()?)?;
    let tally = count_last_rows(rows()?, &last, |_| Ok(()))?;
    Ok(Reading { complete_up_to, finished, finished_machines, in_doubt, tally })
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
    fn torn_rows_are_cut_and_the_last_row_per_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, false).unwrap();
        w.write(&ResultRow::new(2, "a", Outcome::Failed)).unwrap();
        w.write(&ResultRow::new(3, "b", Outcome::Submitted)).unwrap();
        w.write(&ResultRow::new(4, "c", Outcome::Failed)).unwrap();
        w.finish().unwrap();
        // A kill mid-row.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text += "5,dddd,subm";
        std::fs::write(&path, &text).unwrap();
        assert_eq!(cut_torn_row(&path).unwrap(), 11);
        assert_eq!(cut_torn_row(&path).unwrap(), 0);

        let (done, machines) = final_lines(&path).unwrap();
        assert_eq!(machines, 1);
        assert!(done.contains(3, "b") && !done.has_line(2) && !done.has_line(4) && !done.has_line(5));

        // A resume retries line 2 (now submitted) and adds line 5.
        let mut w = ResultsWriter::append(&path).unwrap();
        w.write(&ResultRow::new(2, "a", Outcome::Submitted)).unwrap();
        w.write(&ResultRow::new(5, "d", Outcome::NotFound)).unwrap();
        w.finish().unwrap();
        let counts = tally(&path, true).unwrap();
        assert_eq!(counts[&Outcome::Submitted], 2);
        assert_eq!(counts[&Outcome::Failed], 1);
        assert_eq!(counts[&Outcome::NotFound], 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(lines, ["3", "4", "2", "5"]);
    }

    #[test]
    fn a_row_torn_inside_a_quoted_field_is_cut_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, false).unwrap();
        w.write(&ResultRow::new(2, "a", Outcome::Submitted)).unwrap();
        w.finish().unwrap();
        // A complete row with a line break in a quoted cell, then a row torn after a line break inside its
        // quoted error message (as an older version wrote them).
        let whole = "3,\"x\ny\",invalid_id,,,,0,,,,,,,,\n";
        let torn = "4,c,failed,,,502,1,HTTP502,\"<html>\n<body>Bad gateway";
        let mut text = std::fs::read_to_string(&path).unwrap();
        text += whole;
        text += torn;
        std::fs::write(&path, &text).unwrap();
        assert_eq!(cut_torn_row(&path).unwrap(), torn.len() as u64);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with(whole));

        let mut w = ResultsWriter::append(&path).unwrap();
        w.write(&ResultRow::new(4, "c", Outcome::Submitted)).unwrap();
        w.finish().unwrap();
        let counts = tally(&path, true).unwrap();
        assert_eq!((counts[&Outcome::Submitted], counts[&Outcome::InvalidId]), (2, 1));

        std::fs::write(&path, "line,machine_id").unwrap();
        assert!(cut_torn_row(&path).unwrap_err().to_string().contains("no complete line"));
    }

    /// The rows are written straight from their fields, as the `csv` crate's writer writes them: quotes,
    /// commas, line breaks (in any field but the message, which goes on one line), non-ASCII text.
    #[test]
    fn rows_are_written_as_the_csv_writer_writes_them() {
        let tricky = [
            "",
            "plain",
            "a,b",
            "say \"hi\"",
            "\"",
            "x\ny",
            "cr\rhere",
            "\r\n",
            " spaced ",
            "#hash",
            "tab\there",
            "Zürich ☃ 東京, \"ü\"",
            "'single'",
            "\\back\\slash",
        ];
        let mut rows = vec![ResultRow::new(1, "", Outcome::Submitted)];
        for (i, text) in tricky.iter().enumerate() {
            let mut row = ResultRow::new(i as u64 * 977 + 2, *text, Outcome::ALL[i % Outcome::ALL.len()]);
            let some = |s: &str| Some(s.to_string());
            (row.action_id, row.action_status, row.http_status) = (some(text), some(text), Some(i as u16 * 100));
            (row.attempts, row.error_code, row.error_message) = (u32::MAX - i as u32, some(text), some(text));
            (row.computer_dns_name, row.os_platform, row.health_status) = (some(text), some(text), some(text));
            (row.last_seen, row.submitted_at, row.updated_at) = (some(text), some(text), some(text));
            rows.push(row);
        }
        rows.push(ResultRow { line: u64::MAX, http_status: Some(0), ..ResultRow::new(0, "z", Outcome::Failed) });
        let mut expected = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
        expected.write_record(COLUMNS).unwrap();
        let mut ours = Vec::new();
        for row in &rows {
            let mut row = row.clone();
            row.error_message = row.error_message.map(|m| m.replace(['\r', '\n'], " "));
            expected.serialize(&row).unwrap();
            push_row(&mut ours, &row);
        }
        let expected = expected.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, false).unwrap();
        w.write_all(&rows).unwrap();
        w.finish().unwrap();
        assert_eq!(String::from_utf8_lossy(&std::fs::read(&path).unwrap()), String::from_utf8_lossy(&expected));
        assert!(expected.ends_with(&ours));
    }

    /// The end's check takes a file holding exactly what the writer wrote on the writer's word, and reads
    /// any other file row by row: a file replaced by one as long, or cut, or gone, is told as before.
    #[test]
    fn the_end_check_reads_the_file_unless_it_is_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let write = |rows: &[ResultRow]| {
            let mut w = ResultsWriter::create(&path, true).unwrap();
            for chunk in rows.chunks(2) {
                w.write_all(chunk).unwrap();
            }
            w.finish().unwrap().expect("a new file is known whole")
        };
        let mut timed_out = ResultRow::new(3, "b", Outcome::Failed);
        (timed_out.attempts, timed_out.error_code) = (1, Some(" Timeout ".into()));
        let mut unconfirmed = ResultRow::new(5, "d", Outcome::Failed);
        (unconfirmed.attempts, unconfirmed.http_status) = (1, Some(200));
        unconfirmed.error_code = Some(" UnconfirmedAnswer ".into());
        let rows = [
            ResultRow::new(2, "a", Outcome::Submitted),
            timed_out,
            ResultRow::new(4, "c", Outcome::NotFound),
            unconfirmed,
            ResultRow::new(3, "b", Outcome::Submitted),
        ];
        let doubt = verify(&path, 5, Some(write(&rows))).unwrap();
        let read = in_doubt_lines(&path).unwrap();
        assert!((1..8).all(|line| doubt.contains(line) == read.contains(line)) && doubt.len() == 1);
        assert!(doubt.contains(5));
        // A hash of the file read in blocks is the hash of what was written in batches.
        assert!(write(&rows).matches(&path));
        let bytes: Vec<u8> = (0..200u8).collect();
        let whole = |bytes: &[u8]| {
            let mut hash = Fingerprint::default();
            hash.add(bytes);
            hash.finish()
        };
        for cut in [0, 1, 7, 8, 9, 100, 199, 200] {
            for second in [cut, (cut + 3).min(200), 200] {
                let mut pieces = Fingerprint::default();
                for piece in [&bytes[..cut], &bytes[cut..second], &bytes[second..]] {
                    pieces.add(piece);
                }
                assert_eq!(pieces.finish(), whole(&bytes), "{cut} {second}");
            }
            // One byte changed, anywhere, changes the hash.
            if cut < 200 {
                let mut changed = bytes.clone();
                changed[cut] ^= 0x20;
                assert_ne!(whole(&changed), whole(&bytes), "{cut}");
            }
        }

        // The same rows, one letter changed: as long, and still readable results (the rows read count).
        let written = write(&rows);
        let text = std::fs::read_to_string(&path).unwrap().replace("2,a,", "2,e,");
        std::fs::write(&path, text).unwrap();
        assert!(!written.matches(&path));
        assert_eq!(verify(&path, 5, Some(written)).unwrap().len(), 1);
        // Cut: the rows read are told.
        let written = write(&rows);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 40]).unwrap();
        let e = verify(&path, 5, Some(written)).unwrap_err().to_string();
        assert!(e.contains("it holds 4 row(s)"), "{e}");
        // Replaced by something else as long.
        let written = write(&rows);
        std::fs::write(&path, "x".repeat(text.len())).unwrap();
        let e = verify(&path, 5, Some(written)).unwrap_err().to_string();
        assert!(e.contains("can no longer be read as results"), "{e}");
        // Gone.
        let written = write(&rows);
        std::fs::remove_file(&path).unwrap();
        let e = verify(&path, 5, Some(written)).unwrap_err().to_string();
        assert!(e.contains("can no longer be read as results"), "{e}");
        // Fewer rows written than the run counts: read.
        let e = verify(
            &{
                write(&rows);
                path.clone()
            },
            6,
            Some(write(&rows)),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("it holds 5 row(s)"), "{e}");
    }

    #[test]
    fn error_messages_are_written_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, false).unwrap();
        let mut row = ResultRow::new(2, "a", Outcome::Failed);
        row.error_message = Some("<html>\r\n<body>Bad gateway</body>\n</html>".into());
        w.write(&row).unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("<html>  <body>Bad gateway</body> </html>"), "{text}");
    }

    #[test]
    fn lines_cost_memory_by_the_lines_present_not_the_largest() {
        let mut done = Finished::default();
        let mut set = LineSet::default();
        for line in [2, 3, MAX_LINE, u64::MAX] {
            done.insert(line, "aa");
            set.insert(line);
        }
        assert_eq!((done.len(), set.len()), (4, 4));
        assert!(done.contains(MAX_LINE, "aa") && set.contains(u64::MAX) && !set.contains(u64::MAX - 1));
        assert!(done.0.pages.len() <= 3 && set.0.pages.len() <= 3, "a page each, not an allocation their size");
        done.remove(3);
        set.remove(u64::MAX);
        set.remove(1 << 50);
        assert!(!done.has_line(3) && !set.contains(u64::MAX) && set.0.pages.len() <= 3);
    }

    #[test]
    fn a_set_of_a_few_lines_costs_a_page_of_half_a_kilobyte() {
        // Each tenant of a run of many keeps one (the lines in doubt): a page of 32 KB for a line or two was
        // 3 MB over 100 tenants.
        let mut set = LineSet::default();
        for line in [2, 40, 4095] {
            set.insert(line);
        }
        assert_eq!(set.0.pages.len(), 1);
        assert_eq!(std::mem::size_of_val(&**set.0.pages.values().next().unwrap()), 512);
        set.insert(4096);
        assert_eq!(set.0.pages.len(), 2);
        assert!(set.contains(4095) && set.contains(4096) && !set.contains(4097));
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn damaged_line_numbers_are_refused_with_the_row_named() {
        let header = COLUMNS.join(",");
        for (line, ok) in
            [("2", true), ("4294967295", true), ("4294967296", false), ("0", false), ("-1", false), ("", false)]
        {
            let text = format!("{header}\n2,aa,submitted\n{line},bb,failed,,,500,1\n");
            match read_bytes(text.as_bytes()) {
                Ok(reading) => {
                    assert!(ok, "line `{line}` was read");
                    assert_eq!(reading.tally.values().sum::<u64>(), if line == "2" { 1 } else { 2 });
                }
                Err(e) => {
                    let message = e.to_string();
                    assert!(!ok, "line `{line}`: {message}");
                    assert!(
                        message.contains("row 3 is damaged") && message.contains(&format!("`{line}`")),
                        "{message}"
                    );
                }
            }
        }
        let message = read_bytes(format!("{header}\n2,aa,offboarded\n").as_bytes()).unwrap_err().to_string();
        assert!(message.contains("row 2 is not a results row") && message.contains("`offboarded`"), "{message}");
    }

    #[test]
    fn a_line_is_done_only_for_the_same_machine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, false).unwrap();
        w.write(&ResultRow::new(2, "aa", Outcome::Submitted)).unwrap();
        w.write(&ResultRow::new(3, "bb", Outcome::Failed)).unwrap();
        w.write(&ResultRow::new(4, " Not An Id ", Outcome::InvalidId)).unwrap();
        w.finish().unwrap();
        let (done, machines) = final_lines(&path).unwrap();
        assert_eq!((done.len(), machines), (2, 1));
        assert!(done.contains(2, "aa") && done.contains(2, "AA ") && !done.contains(2, "cc"));
        assert!(!done.contains(3, "bb") && !done.has_line(3));
        assert!(done.contains(4, "not an id") && !done.contains(5, "aa"));
    }

    #[test]
    fn failures_that_may_have_gone_through_are_in_doubt() {
        use Outcome::*;
        assert!(may_have_gone_through(Failed, None, 1, "Timeout"));
        assert!(may_have_gone_through(Failed, Some(503), 3, "ServiceUnavailable"));
        assert!(may_have_gone_through(Failed, Some(200), 1, "UnconfirmedAnswer"));
        assert!(may_have_gone_through(Failed, Some(403), 1, "InDoubt"));
        assert!(!may_have_gone_through(Failed, None, 0, "Interrupted"), "never sent");
        assert!(may_have_gone_through(Failed, None, 2, "Interrupted"), "sent before the interrupt");
        assert!(may_have_gone_through(Failed, None, 0, "GivenUp"), "in flight when given up");
        assert!(!may_have_gone_through(Failed, Some(400), 1, "InvalidRequestBody"));
        assert!(!may_have_gone_through(Failed, Some(429), 5, "TooManyRequests"));
        assert!(!may_have_gone_through(Submitted, Some(201), 1, ""));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, false).unwrap();
        let failed = |line, status, code: &str| {
            let mut row = ResultRow::new(line, "a", Failed);
            (row.http_status, row.attempts, row.error_code) = (status, 1, Some(code.to_string()));
            row
        };
        w.write(&failed(2, Some(503), "ServiceUnavailable")).unwrap();
        w.write(&failed(3, Some(400), "BadRequest")).unwrap();
        w.write(&failed(4, None, "Timeout")).unwrap();
        w.write(&ResultRow::new(4, "a", Submitted)).unwrap();
        w.finish().unwrap();
        let doubt = in_doubt_lines(&path).unwrap();
        assert!(doubt.contains(2) && !doubt.contains(3) && !doubt.contains(4));
    }

    #[test]
    fn a_foreign_file_is_not_taken_for_results() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "MachineId\nabc\n").unwrap();
        assert!(final_lines(&path).unwrap_err().to_string().contains("not an mde-offboard results file"));
    }

    #[test]
    fn an_unwritable_place_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("r.csv");
        let msg = check_writable(&missing, false).unwrap_err().to_string();
        let folder = format!("the folder {} does not exist", missing.parent().unwrap().display());
        assert!(msg.contains(&folder) && msg.contains("--output") && !msg.contains("at path"), "{msg}");
        std::fs::create_dir(dir.path().join("d")).unwrap();
        for overwrite in [false, true] {
            let msg = check_writable(&dir.path().join("d"), overwrite).unwrap_err().to_string();
            assert!(msg.contains("is a directory"), "{msg}");
        }
        std::fs::remove_dir(dir.path().join("d")).unwrap();
        assert!(check_writable(&dir.path().join("r.csv"), false).is_ok());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe left a file behind");
    }

    #[test]
    fn default_path_sits_beside_the_input() {
        assert_eq!(default_path(Some(Path::new("/x/fleet.csv"))), Path::new("/x/fleet.results.csv"));
        assert_eq!(default_path(None), Path::new("results.csv"));
    }
}
