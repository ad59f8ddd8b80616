//! The machine list: a CSV file (or standard input) read as a stream, never loaded whole.
//!
//! Reading is two passes. [`scan`] reads everything once to reject a bad input before any API call and to
//! count what the run will touch (for the confirmation prompt and `--max-machines`); [`Scan::rows`] then
//! streams the same bytes again for the run. Standard input cannot be read twice, so the scan copies it,
//! as it streams, to a temporary file that the second pass reads (an anonymous one, see
//! [`extsort::temp_file`]: it goes with the last handle on it, or with the process however it ends).
//!
//! Memory stays flat in the number of rows: nothing the passes learn is kept in memory per row or per id.
//! Every input, a file or standard input, is copied as the scan streams it to a temporary file that the
//! second pass reads, so both passes see the same bytes (editing the file during a run changes nothing).
//! The scan sorts, on disk when it is large (see [`crate::files::extsort`]), a [`Key`] per row with an id (the id's
//! 20 bytes: exact) or a name (a 64-bit SipHash of it, with keys drawn per scan: two names share it with
//! probability about n² / 2⁶⁵, and the second would then be reported `duplicate`, the safe direction), with
//! the row's line. From that it keeps two files: the first line of each distinct key, sorted by key
//! ([`Scan::firsts`], what the pre-flight joins with the inventory), and the lines of the duplicates, in
//! order, which the second pass reads alongside the rows. Besides, a [`Filter`] of the keys (at most 1 MiB,
//! sized to them) lets the pre-flight drop most inventory entries the input does not ask about before they
//! reach the disk.

//! What the file may look like: a header naming the id column (`MachineId`, `Device ID`, `DeviceId`,
//! `machine_id`, `Id`, matched ignoring case, spaces and underscores, or the name given with
//! `--id-column`), or no header at all when the first field of the first row is already a machine id.
//! A UTF-8 byte-order mark, CRLF, quoted fields, blank lines, extra columns and ragged rows are normal.
//! An id is 40 hexadecimal characters after trimming (a [`crate::domain::MachineId`]), and is compared and
//! sent in lowercase.
//!
//! Input by name: with `--by-name` (see [`scan_with`]), or when the header has no id column but a computer
//! name column (`computerDnsName`, `DeviceName`, `ComputerName`, `DNS Name`, `Hostname`, `Name`, matched the
//! same way), rows are [`RowKind::Name`]s: trimmed, lowercased, a trailing dot dropped. With `--by-name`, a
//! file of one column whose first row is no known header is a plain list of names. The pre-flight resolves
//! them to ids. Entra device ids ([`Lookup::AadDeviceId`]: `--by-aad-device-id`, or an `AzureADDeviceId`,
//! `aadDeviceId`, `Entra Device ID` or `Azure AD Device ID` column with no id column) are resolved the same way,
//! their rows [`RowKind::Name`]s holding the GUID in lowercase.
//!
//! Fields are separated by commas, or by what the first line shows instead (`;` or a tab, as spreadsheets
//! save CSV in many regions), or by what `--delimiter` says. A field longer than [`FIELD_MAX`] stops the
//! scan: such a file is not a machine list, and an invalid id is echoed in the results at most
//! [`ECHO_MAX`] characters long.

pub mod tenants;

use std::borrow::Cow;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::domain::MachineId;
use crate::error::{Error, Result};
use crate::files::extsort::{self, Cursor, RecordFile, RecordReader, SharedReader, Sorter, record};

/// The header names taken as the id column, most specific first, compared after [`normalise_header`].
const ID_HEADERS: [&str; 3] = ["machineid", "deviceid", "id"];
/// The header names taken as a computer name column, most specific first, compared the same way.
const NAME_HEADERS: [&str; 6] = ["computerdnsname", "devicename", "computername", "dnsname", "hostname", "name"];
/// The header names taken as an Entra (Azure AD) device id column (Intune and Entra exports).
const AAD_HEADERS: [&str; 4] = ["azureaddeviceid", "aaddeviceid", "entradeviceid", "entraiddeviceid"];
/// The longest field read: a longer one means the file is not a machine list (it stops the scan).
pub const FIELD_MAX: usize = 1 << 20;
/// The most characters of an invalid id echoed in the results (the rest is cut, and the cell says so).
pub const ECHO_MAX: usize = 100;

/// What the rows name a machine by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lookup {
    /// Its machine id.
    #[default]
    Id,
    /// Its computer name, resolved through the inventory.
    Name,
    /// Its Entra (Azure AD) device id, resolved through the inventory (`aadDeviceId`).
    AadDeviceId,
}

/// How to read the input: what the command line says; what it leaves out is read from the file.
#[derive(Clone, Debug, Default)]
pub struct Format {
    /// The column to read (`--id-column`), matched ignoring case, spaces and underscores.
    pub column: Option<String>,
    /// What the column holds (`--by-name`, `--by-aad-device-id`); otherwise told by the header.
    pub lookup: Option<Lookup>,
    /// The field separator (`--delimiter`); otherwise the first line's (`,`, `;` or a tab).
    pub delimiter: Option<u8>,
    /// The list is one tenant's share of a list of several ([`tenants::partition`]): each record's first
    /// field is its line in that list, which its rows keep.
    pub numbered: bool,
}

/// Where the machine list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Stdin,
}

impl Source {
    /// `-` is standard input; anything else a path.
    pub fn parse(arg: &str) -> Source {
        if arg == "-" { Source::Stdin } else { Source::Path(PathBuf::from(arg)) }
    }

    /// How messages name the input: its path, or `<stdin>`.
    pub fn display(&self) -> String {
        match self {
            Source::Path(path) => path.display().to_string(),
            Source::Stdin => "<stdin>".to_string(),
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Input { path: PathBuf::from(self.display()), message: message.into() }
    }
}

/// What the first pass found: the input is good, and this is what the run will touch.
#[derive(Debug)]
pub struct Scan {
    pub source: Source,
    /// Data rows (the header and blank lines are not rows).
    pub rows: u64,
    /// Rows with a machine id (or, by name, a name) seen for the first time: the machines the run will touch.
    pub valid: u64,
    /// Rows whose id cell is not a machine id (never sent).
    pub invalid: u64,
    /// Rows repeating an id already seen, in any letter case (never sent twice).
    pub duplicates: u64,
    /// The id column's header as written; `None` when the file has no header row.
    pub id_column: Option<String>,
    /// The column holds computer names or Entra device ids, not machine ids: rows are [`RowKind::Name`],
    /// resolved through the inventory.
    pub by_name: bool,
    /// What the rows name machines by.
    pub lookup: Lookup,
    /// The header's tenant column (`TenantId`, `Tenant`) as written: the list names several tenants (see
    /// [`tenants`]).
    pub tenant_column: Option<String>,
    /// SHA-256 of the input's bytes as copied for the run (lowercase hex): a resume proves with it that the
    /// list is the one the run began with.
    pub sha256: String,
    layout: Layout,
    /// Each record's first field is its line ([`Format::numbered`]).
    numbered: bool,
    keys: Keys,
    /// The first row of each distinct key, sorted by key.
    firsts: RecordFile<Entry>,
    /// The lines of the rows repeating a key, ascending.
    dups: RecordFile<u64>,
    filter: Arc<Filter>,
    /// The copy of the input that the second pass reads; kept alive by every [`Rows`] reading it.
    spool: Arc<File>,
}

/// What a row asks about, as sorted and joined: a machine id's 20 bytes, or the hash of a name
/// ([`Keys::name`]) followed by zeros.
pub type Key = [u8; 20];

record! {
    /// One row with an id or a name: its key and line. Sorted by key, then line.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Entry {
        pub key: Key,
        pub line: u64,
    }
}

/// How a scan makes keys: ids as they are, names hashed with keys drawn for the scan.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    hasher: RandomState,
}

impl Keys {
    /// The key of a machine id (its 20 bytes).
    pub fn id(&self, id: &MachineId) -> Key {
        *id.as_bytes()
    }

    /// The key of a computer name as [`normalise_name`] gives it.
    pub fn name(&self, name: &str) -> Key {
        let mut key = [0u8; 20];
        key[..8].copy_from_slice(&self.hasher.hash_one(name.as_bytes()).to_be_bytes());
        key
    }

    fn bit(&self, key: &Key, bits: usize) -> usize {
        (self.hasher.hash_one(key) % bits as u64) as usize
    }
}

/// Bits of a [`Filter`] at most: 1 MiB.
const FILTER_BITS: usize = 1 << 23;
/// The bounds of the buffer a scanned list's rows are read through (see [`Scan::rows`]).
const ROWS_BUFFER_MIN: usize = 1 << 10;
const ROWS_BUFFER_MAX: usize = 8 << 10;
/// Bits of a [`Filter`] per key it holds, up to [`FILTER_BITS`]: about 3% of other keys pass.
const FILTER_BITS_PER_KEY: usize = 32;

/// A sieve of the input's keys (one bit each, a Bloom filter with one hash), sized to them (a list of
/// 1,500 ids takes 8 KiB, as each tenant of a list of many has): a key it does not hold is surely not in the
/// input; one it holds may be (about 3% of other keys pass, 11% at a million keys, where the filter is
/// 1 MiB at most).
pub struct Filter {
    keys: Keys,
    bits: Vec<u64>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: u32 = self.bits.iter().map(|w| w.count_ones()).sum();
        write!(f, "Filter({set} of {} bits set)", self.bits.len() * 64)
    }
}

impl Filter {
    /// A filter for up to `keys` keys.
    fn new(keys: Keys, n: u64) -> Filter {
        let bits = (n as usize).saturating_mul(FILTER_BITS_PER_KEY).next_power_of_two().clamp(1 << 16, FILTER_BITS);
        Filter { keys, bits: vec![0; bits / 64] }
    }

    fn insert(&mut self, key: &Key) {
        let bit = self.keys.bit(key, self.bits.len() * 64);
        self.bits[bit / 64] |= 1 << (bit % 64);
    }

    /// Whether the input may have `key`. A filter let go of ([`Scan::release_filter`]) passes every key.
    pub fn may_contain(&self, key: &Key) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        let bit = self.keys.bit(key, self.bits.len() * 64);
        self.bits[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// One data row of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRow {
    /// Line number in the input (the header is line 1); for a quoted field spanning lines, the row's first.
    pub line: u64,
    /// The id cell as written (empty when the row is too short to have one).
    pub raw: String,
    pub kind: RowKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// A machine id seen for the first time.
    Valid(MachineId),
    /// A computer name seen for the first time (input by name): trimmed, lowercase, no trailing dot. Or an
    /// Entra device id ([`Lookup::AadDeviceId`]): a GUID in lowercase, without braces.
    Name(String),
    /// Not a machine id: never sent.
    Invalid,
    /// An id already seen on an earlier row: never sent twice.
    Duplicate,
}

/// Reads the whole input once: validates it, finds the id column and counts the rows.
///
/// Any error here stops the run before its first API call; the error names the input, the line and the
/// problem. An input with only a header is not an error: it is an empty run.
pub fn scan(source: Source, id_column: Option<&str>) -> Result<Scan> {
    scan_with(source, id_column, false)
}

/// As [`scan`]; `by_name` reads the column as computer names (`column` then names the name column). Without
/// it, a header with no id column but a name column is read by name too.
pub fn scan_with(source: Source, column: Option<&str>, by_name: bool) -> Result<Scan> {
    let lookup = by_name.then_some(Lookup::Name);
    scan_format(source, &Format { column: column.map(str::to_owned), lookup, ..Format::default() })
}

/// As [`scan`], read as `format` says.
pub fn scan_format(source: Source, format: &Format) -> Result<Scan> {
    match &source {
        Source::Path(path) => {
            let file = File::open(path).map_err(|e| source.error(format!("cannot open: {e}")))?;
            scan_spooled(source, file, format)
        }
        Source::Stdin => scan_spooled(source, io::stdin().lock(), format),
    }
}

/// [`scan`] of any reader, read once (like standard input, which it is named as): for fuzzing and tests.
pub fn scan_reader(input: impl Read, id_column: Option<&str>) -> Result<Scan> {
    scan_spooled(Source::Stdin, input, &Format { column: id_column.map(str::to_owned), ..Format::default() })
}

/// The scan: every byte read is also copied to a temporary file, which the second pass reads.
fn scan_spooled(source: Source, input: impl Read, format: &Format) -> Result<Scan> {
    let spool_error = |e: io::Error| source.error(extsort::temp_message("copy the input to", &e));
    let spool = extsort::temp_file().map_err(spool_error)?;
    let mut tee = Tee {
        input,
        copy: BufWriter::new(spool.try_clone().map_err(spool_error)?),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
        failed: None,
    };
    let result = read_all(&source, &mut tee, format);
    if let Some(e) = tee.failed.take() {
        return Err(spool_error(e));
    }
    let mut first = result?;
    tee.copy.flush().map_err(spool_error)?;
    let sha256 = tee.hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let temp_error = |e: io::Error| source.error(extsort::temp_message("write", &e));
    let (counts, firsts, dups, filter) = first.finish().map_err(temp_error)?;
    Ok(Scan {
        rows: counts.rows,
        valid: counts.valid,
        invalid: counts.invalid,
        duplicates: counts.duplicates,
        id_column: first.layout.header.clone(),
        by_name: first.layout.lookup != Lookup::Id,
        lookup: first.layout.lookup,
        tenant_column: first.tenant_column.clone(),
        sha256,
        source,
        layout: first.layout,
        numbered: format.numbered,
        keys: first.keys,
        firsts,
        dups,
        filter: Arc::new(filter),
        spool: Arc::new(spool),
    })
}

impl Scan {
    /// The first row of each distinct id (or name), sorted by [`Key`].
    pub fn firsts(&self) -> &RecordFile<Entry> {
        &self.firsts
    }

    /// How this scan made its keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A sieve of the input's keys.
    pub fn filter(&self) -> Arc<Filter> {
        Arc::clone(&self.filter)
    }

    /// Lets go of the sieve once the pre-flight has read the inventory through it (it is not read again): a
    /// run holds its scan as long as it runs, each tenant of a run of many its own. From then on the scan's
    /// sieve passes every key.
    pub fn release_filter(&mut self) {
        self.filter = Arc::new(Filter { keys: self.keys.clone(), bits: Vec::new() });
    }

    /// Streams the rows again, from the scan's copy of the input, for the run.
    pub fn rows(&self) -> Result<Rows> {
        let temp_error = |e: io::Error| self.source.error(extsort::temp_message("read", &e));
        let file = SharedReader::new(Arc::clone(&self.spool));
        // Read through at most a 64th of the list at a time (and at most csv's usual 8 KiB): a paced run holds
        // its reader as long as it runs, and a tenant of a run of many has a list of its own, of a few pages.
        let length = self.spool.metadata().map_or(u64::MAX, |m| m.len());
        let buffer = usize::try_from(length / 64).unwrap_or(usize::MAX).clamp(ROWS_BUFFER_MIN, ROWS_BUFFER_MAX);
        let mut reader =
            RowReader::open(&self.source, file, self.keys.clone(), Some(self.layout.delimiter), Some(buffer))?;
        reader.numbered = self.numbered;
        reader.dups = Some(Cursor::new(self.dups.read().map_err(temp_error)?));
        // Decide the layout the same way the scan did, and insist it came out the same.
        let first = reader.next_record()?.ok_or_else(|| self.changed())?;
        let lookup = (self.layout.lookup != Lookup::Id).then_some(self.layout.lookup);
        let header = if self.layout.headerless { None } else { self.layout.header.as_deref() };
        let layout = Layout::decide(&self.source, &first, header, lookup, self.layout.delimiter)?;
        if layout.column != self.layout.column
            || layout.headerless != self.layout.headerless
            || layout.lookup != self.layout.lookup
        {
            return Err(self.changed());
        }
        if layout.headerless {
            reader.pending = Some(first);
        }
        Ok(Rows { reader, layout, expected: self.counts(), seen: Counts::default(), done: false })
    }

    /// The input's path; `None` for standard input.
    pub fn input_path(&self) -> Option<&Path> {
        match &self.source {
            Source::Path(path) => Some(path),
            Source::Stdin => None,
        }
    }

    fn counts(&self) -> Counts {
        Counts { rows: self.rows, valid: self.valid, invalid: self.invalid, duplicates: self.duplicates }
    }

    fn changed(&self) -> Error {
        self.source.error(CHANGED)
    }
}

/// The rows of a scanned input, in order.
pub struct Rows {
    reader: RowReader<SharedReader>,
    layout: Layout,
    expected: Counts,
    seen: Counts,
    done: bool,
}

impl Iterator for Rows {
    type Item = Result<InputRow>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let row = match self.reader.next_row(&self.layout) {
            Ok(Some(row)) => row,
            Ok(None) => {
                self.done = true;
                return (self.seen != self.expected).then(|| Err(self.reader.source.error(CHANGED)));
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        self.seen.count(&row.kind);
        if self.seen.rows > self.expected.rows || self.seen.valid > self.expected.valid {
            self.done = true;
            return Some(Err(self.reader.source.error(CHANGED)));
        }
        Some(Ok(row))
    }
}

const CHANGED: &str = "changed since it was checked at the start of the run; run again";
/// A tenant's share of a list ([`Format::numbered`]) whose record does not start with its line.
const NOT_NUMBERED: &str = "does not start with the row's line in the list of several tenants, as the run's split \
                            of that list does; run the list itself again";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    rows: u64,
    valid: u64,
    invalid: u64,
    duplicates: u64,
}

impl Counts {
    fn count(&mut self, kind: &RowKind) {
        self.rows += 1;
        match kind {
            RowKind::Valid(_) | RowKind::Name(_) => self.valid += 1,
            RowKind::Invalid => self.invalid += 1,
            RowKind::Duplicate => self.duplicates += 1,
        }
    }
}

/// Where the ids (or names) are: which column, whether the first row is a header, how fields are separated.
#[derive(Clone, Debug)]
struct Layout {
    column: usize,
    header: Option<String>,
    headerless: bool,
    /// What the column holds.
    lookup: Lookup,
    delimiter: u8,
}

impl Layout {
    /// Decides from the first non-blank record (read with `delimiter`).
    fn decide(
        source: &Source,
        first: &Record,
        id_column: Option<&str>,
        lookup: Option<Lookup>,
        delimiter: u8,
    ) -> Result<Layout> {
        let at = |message: String| source.error(format!("line {}: {message}", first.line));
        let headers = &first.fields;
        let layout = |column: usize, lookup: Lookup| Layout::at_header(headers, column, lookup, delimiter);
        let headerless = |lookup: Lookup| Layout { column: 0, header: None, headerless: true, lookup, delimiter };
        match lookup {
            Some(lookup @ (Lookup::Name | Lookup::AadDeviceId)) => {
                let (known, flag, what) = match lookup {
                    Lookup::Name => (&NAME_HEADERS[..], "--by-name", "computer name"),
                    _ => (&AAD_HEADERS[..], "--by-aad-device-id", "Entra device id"),
                };
                if let Some(column) = named_or_first(headers, id_column, known) {
                    return Ok(layout(column, lookup));
                }
                // One column and no header it knows: a plain list, one a line.
                if id_column.is_none() && headers.len() == 1 {
                    return Ok(headerless(lookup));
                }
                let missing = format!(
                    "no {what} column for {flag}; the header has {{listed}}. Name the column {}, or pass --id-column NAME",
                    if lookup == Lookup::Name {
                        "computerDnsName, DeviceName, ComputerName, Hostname or Name"
                    } else {
                        "AzureADDeviceId, aadDeviceId or Entra Device ID"
                    }
                );
                return Err(no_column(source, first, id_column, &missing, delimiter));
            }
            Some(Lookup::Id) | None => {}
        }
        let looks_like_id = headers.first().is_some_and(|f| MachineId::parse(f).is_some());
        if looks_like_id {
            if let Some(name) = id_column {
                return Err(at(format!(
                    "--id-column `{name}` was given, but the file has no header row (its first row is already a machine id); drop --id-column"
                )));
            }
            return Ok(headerless(Lookup::Id));
        }
        if let Some(column) = named_or_first(headers, id_column, &ID_HEADERS) {
            return Ok(layout(column, Lookup::Id));
        }
        // No id column: an Entra device id or a name column is the only usable one, and says what the rows are.
        if id_column.is_none() && lookup.is_none() {
            if let Some(column) = find_header(headers, &AAD_HEADERS) {
                return Ok(layout(column, Lookup::AadDeviceId));
            }
            if let Some(column) = find_header(headers, &NAME_HEADERS) {
                return Ok(layout(column, Lookup::Name));
            }
        }
        let mut missing = "no machine id column; the header has {listed}. Name the column MachineId, DeviceId or Id (or, to list computer names, computerDnsName, DeviceName or Name), or pass --id-column NAME. A file without a header must start with a machine id (40 hexadecimal characters)".to_string();
        if let Some(hint) = by_name_hint(headers) {
            missing = format!("{missing}. {hint}");
        }
        Err(no_column(source, first, id_column, &missing, delimiter))
    }

    fn at_header(headers: &[String], column: usize, lookup: Lookup, delimiter: u8) -> Layout {
        Layout { column, header: Some(headers[column].trim().to_string()), headerless: false, lookup, delimiter }
    }
}

/// What to do when the first row has no id column but looks like names: a header that speaks of names or
/// hosts, a first row that is an Entra device id, or one field that could be a computer name.
fn by_name_hint(headers: &[String]) -> Option<String> {
    let named = headers.iter().find(|h| {
        let h = normalise_header(h);
        h.contains("name") || h.contains("host")
    });
    if let Some(header) = named {
        return Some(format!(
            "The column `{}` looks like computer names: pass --by-name --id-column \"{}\"",
            list_one(header),
            header.trim()
        ));
    }
    if headers.first().is_some_and(|f| normalise_aad_device_id(f).is_some()) {
        return Some(
            "The first row is a GUID, as Entra device ids are: to list them, pass --by-aad-device-id".to_string(),
        );
    }
    let looks_like_a_name = |f: &str| {
        let f = f.trim();
        !f.is_empty() && f.len() <= 255 && f.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    };
    (headers.len() == 1 && looks_like_a_name(&headers[0]))
        .then(|| "If the file is a plain list of computer names, one a line, pass --by-name".to_string())
}

/// The column `--id-column` names (matched leniently), or else the first of `defaults` the header has.
fn named_or_first(headers: &[String], named: Option<&str>, defaults: &[&str]) -> Option<usize> {
    match named {
        Some(name) => {
            let wanted = normalise_header(name);
            headers.iter().position(|h| normalise_header(h) == wanted)
        }
        None => find_header(headers, defaults),
    }
}

/// The error for a header without the column wanted: `missing` (with `{listed}` for the headers found), or
/// what `--id-column` named, and a hint when the file looks like it uses another delimiter.
fn no_column(source: &Source, first: &Record, named: Option<&str>, missing: &str, delimiter: u8) -> Error {
    let listed = list_headers(&first.fields);
    let mut message = match named {
        Some(name) => format!("no column named `{name}` (from --id-column); the header has {listed}"),
        None => missing.replace("{listed}", &listed),
    };
    if let Some(hint) = delimiter_hint(&first.fields, delimiter) {
        message.push_str("; ");
        message.push_str(&hint);
    }
    source.error(format!("line {}: {message}", first.line))
}

/// The first of `wanted` (normalised names, most specific first) that the header has.
fn find_header(headers: &[String], wanted: &[&str]) -> Option<usize> {
    wanted.iter().find_map(|wanted| headers.iter().position(|h| normalise_header(h) == *wanted))
}

/// Longest header shown: a file whose first line is 10 MB long is named, not printed.
const HEADER_SHOWN: usize = 60;

/// One header as messages show it (without the backquotes), cut to [`HEADER_SHOWN`] characters.
fn list_one(h: &str) -> String {
    match h.char_indices().nth(HEADER_SHOWN) {
        Some((end, _)) => format!("{}...", &h[..end]),
        None => h.to_string(),
    }
}

fn list_headers(headers: &[String]) -> String {
    const SHOWN: usize = 20;
    let shorten = |h: &String| match h.char_indices().nth(HEADER_SHOWN) {
        Some((end, _)) => format!("`{}...` ({} characters)", &h[..end], h.chars().count()),
        None => format!("`{h}`"),
    };
    let mut listed: Vec<String> = headers.iter().take(SHOWN).map(shorten).collect();
    if headers.len() > SHOWN {
        listed.push(format!("and {} more", headers.len() - SHOWN));
    }
    listed.join(", ")
}

/// A hint when the header looks separated by something other than what it was read with (`--delimiter`
/// was given, or the first line was ambiguous).
fn delimiter_hint(headers: &[String], delimiter: u8) -> Option<String> {
    let line = headers.join("");
    [b',', b';', b'\t', b'|'].into_iter().find(|&d| d != delimiter && line.contains(char::from(d))).map(|d| {
        format!("the header looks separated by {}; pass --delimiter {}", describe_delimiter(d), flag_delimiter(d))
    })
}

/// A delimiter in words, for messages.
pub fn describe_delimiter(d: u8) -> String {
    if d == b'\t' { "tabs".into() } else { format!("`{}`", char::from(d)) }
}

fn flag_delimiter(d: u8) -> String {
    match d {
        b'\t' => "tab".into(),
        b';' => "';'".into(),
        b'|' => "'|'".into(),
        d => char::from(d).to_string(),
    }
}

/// `--delimiter`: one ASCII character, or `tab`.
pub fn parse_delimiter(text: &str) -> std::result::Result<u8, String> {
    match text {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        t if t.len() == 1 && t.is_ascii() && !matches!(t.as_bytes()[0], b'"' | b'\n' | b'\r') => Ok(t.as_bytes()[0]),
        _ => Err("expected one character such as `,`, `;` or `|`, or `tab`".into()),
    }
}

/// The separator the first line shows: the most frequent of `,`, `;` and tab outside quotes (a comma when
/// none is, or on a tie with it).
fn detect_delimiter(first_line: &[u8]) -> u8 {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in first_line {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3).max_by_key(|&i| (counts[i], std::cmp::Reverse(i))).unwrap_or(0);
    if counts[best] == 0 { b',' } else { [b',', b';', b'\t'][best] }
}

pub use crate::domain::aad_device_id as normalise_aad_device_id;

/// Header names compare ignoring case, spaces and underscores: `Device ID`, `machine_id`, `MachineId`.
fn normalise_header(name: &str) -> String {
    name.chars().filter(|c| !c.is_whitespace() && *c != '_').flat_map(char::to_lowercase).collect()
}

/// A computer name as compared: trimmed, lowercase, without a trailing dot (`pc1.contoso.com.`). `None` if empty.
pub fn normalise_name(cell: &str) -> Option<String> {
    let name = cell.trim().trim_end_matches('.').trim();
    (!name.is_empty()).then(|| name.to_lowercase())
}

/// A record that is valid UTF-8 text without NUL bytes.
#[derive(Clone, Debug)]
struct Record {
    line: u64,
    fields: Vec<String>,
}

/// Reads the input through once, validating every row and gathering its keys.
fn read_all(source: &Source, input: impl Read, format: &Format) -> Result<FirstPass> {
    let keys = Keys::default();
    let mut reader = RowReader::open(source, input, keys.clone(), format.delimiter, None)?;
    reader.numbered = format.numbered;
    reader.entries = Some(Sorter::default());
    let first =
        reader.next_record()?.ok_or_else(|| source.error("is empty: it has neither a header nor a machine id"))?;
    let layout = Layout::decide(source, &first, format.column.as_deref(), format.lookup, reader.delimiter)?;
    let tenant_column = (!layout.headerless).then(|| tenants::header_of(&first.fields)).flatten();
    if layout.headerless {
        reader.pending = Some(first);
    }
    let mut counts = Counts::default();
    while let Some((row, _)) = reader.next_keyed_row(&layout)? {
        counts.count(&row.kind);
    }
    let entries = reader.entries.take().unwrap_or_default();
    Ok(FirstPass { layout, counts, keys, entries, tenant_column })
}

/// What the scan's pass gathered, before its keys are sorted.
struct FirstPass {
    layout: Layout,
    tenant_column: Option<String>,
    /// Every row with an id or a name counted valid, so far.
    counts: Counts,
    keys: Keys,
    entries: Sorter<Entry>,
}

impl FirstPass {
    /// Sorts the keys: the first row of each distinct key, and the lines of the others (the duplicates);
    /// and sieves the keys.
    fn finish(&mut self) -> io::Result<(Counts, RecordFile<Entry>, RecordFile<u64>, Filter)> {
        let sorted = std::mem::take(&mut self.entries).finish()?;
        let mut dups = Sorter::<u64>::default();
        let mut filter = Filter::new(self.keys.clone(), self.counts.valid);
        let mut last: Option<Key> = None;
        let firsts = RecordFile::write(sorted.filter_map(|entry| match entry {
            Err(e) => Some(Err(e)),
            Ok(entry) if last == Some(entry.key) => dups.push(entry.line).err().map(Err),
            Ok(entry) => {
                last = Some(entry.key);
                filter.insert(&entry.key);
                Some(Ok(entry))
            }
        }))?;
        let dups = RecordFile::write(dups.finish()?)?;
        let mut counts = self.counts;
        counts.duplicates += counts.valid - firsts.len();
        counts.valid = firsts.len();
        Ok((counts, firsts, dups, filter))
    }
}

/// Records, validated, blank ones skipped; rows, classified. The scan gives it a sorter for the keys; the
/// second pass, the lines of the duplicates.
struct RowReader<R> {
    source: Source,
    csv: csv::Reader<Prepared<R>>,
    record: csv::ByteRecord,
    /// A record read ahead that is data (the first row of a headerless file).
    pending: Option<Record>,
    /// The line of the last record returned: lines only go up.
    last_line: u64,
    /// Where the fields of the record read last start: 1 in a numbered record, whose first is its line.
    first_field: usize,
    /// Each record's first field is its line ([`Format::numbered`]), taken out of its fields.
    numbered: bool,
    /// Where the last record returned starts (after the blank records before it; not after blank lines).
    start: u64,
    keys: Keys,
    /// The scan: every row's key and line, to sort.
    entries: Option<Sorter<Entry>>,
    /// The second pass: the lines of the duplicates, ascending.
    dups: Option<Cursor<u64, RecordReader<u64>>>,
    /// The field separator, given or detected from the first line.
    delimiter: u8,
}

impl<R: Read> RowReader<R> {
    /// Reads `input`, its fields separated by `delimiter`, or by what its first line shows, through a buffer
    /// of `buffer` bytes (csv's default without).
    fn open(
        source: &Source,
        input: R,
        keys: Keys,
        delimiter: Option<u8>,
        buffer: Option<usize>,
    ) -> Result<RowReader<R>> {
        let input = Prepared::new(input).map_err(|e| source.error(format!("cannot read: {e}")))?;
        if input.utf16 {
            return Err(source.error(
                "is UTF-16 text, not UTF-8 (PowerShell's Out-File default); save it as UTF-8, e.g. Export-Csv -Encoding UTF8 or Out-File -Encoding utf8",
            ));
        }
        let delimiter = delimiter.unwrap_or_else(|| detect_delimiter(input.first_line()));
        // Records end at `\n` only: a `\r` before it is stripped from the last field. With every record
        // ending in a `\n` (see `Prepared`), a record's first line is simply the reader's line after it
        // minus one, minus the line breaks inside its quoted fields. (The line csv records for the start of
        // a record is counted before the blank lines and the `\n` of a CRLF that precede it.)
        let mut csv = csv::ReaderBuilder::new();
        if let Some(buffer) = buffer {
            csv.buffer_capacity(buffer);
        }
        let csv = csv
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(input);
        Ok(RowReader {
            source: source.clone(),
            csv,
            record: csv::ByteRecord::new(),
            pending: None,
            last_line: 0,
            first_field: 0,
            numbered: false,
            start: 0,
            keys,
            entries: None,
            dups: None,
            delimiter,
        })
    }

    /// The next record with at least one non-blank field.
    fn next_record(&mut self) -> Result<Option<Record>> {
        let Some(line) = self.advance()? else { return Ok(None) };
        let fields = (0..self.fields()).map(|i| self.field(i).into_owned()).collect();
        Ok(Some(Record { line, fields }))
    }

    /// Reads the next record with at least one non-blank field, checked, into `self.record` (its fields as
    /// [`RowReader::field`] gives them, nothing copied), and returns its line.
    fn advance(&mut self) -> Result<Option<u64>> {
        loop {
            self.start = self.csv.position().byte();
            let more = self.csv.read_byte_record(&mut self.record).map_err(|e| self.csv_error(e))?;
            if !more {
                return Ok(None);
            }
            let bytes = self.record.as_slice();
            let breaks_inside = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            let line = self.csv.position().line().saturating_sub(1 + breaks_inside).max(1);
            if let Some((column, field)) = self.record.iter().enumerate().find(|(_, f)| f.len() > FIELD_MAX) {
                return Err(self.source.error(format!(
                    "line {line}: field {} is {} bytes long, more than a machine list ever holds ({} at most): this is not a machine list; nothing was done",
                    column + 1,
                    field.len(),
                    FIELD_MAX
                )));
            }
            if bytes.contains(&0) {
                return Err(self
                    .source
                    .error(format!("line {line}: binary data (a NUL byte): this is not a CSV file")));
            }
            if let Err(e) = std::str::from_utf8(bytes) {
                let column = self.column_of_byte(e.valid_up_to());
                return Err(self.source.error(format!(
                    "line {line}: not valid UTF-8 text (in field {column}); save the file as UTF-8 (in Excel: \"CSV UTF-8\")"
                )));
            }
            self.first_field = 0;
            let line = match self.numbered {
                true => match self.field(0).parse::<u64>().ok().filter(|&n| n > self.last_line) {
                    Some(n) => {
                        self.first_field = 1;
                        n
                    }
                    None => return Err(self.source.error(format!("line {line}: {NOT_NUMBERED}"))),
                },
                false => line,
            };
            if (0..self.fields()).all(|i| self.field(i).trim().is_empty()) {
                continue;
            }
            // A quote left open at the end of the input swallows the last line break, so the count above
            // comes out one short for that record: never let it share its line with the record before.
            let line = line.max(self.last_line + 1);
            self.last_line = line;
            return Ok(Some(line));
        }
    }

    /// How many fields the record read last has (its line, in a numbered record, is not one).
    fn fields(&self) -> usize {
        self.record.len().saturating_sub(self.first_field)
    }

    /// Field `i` of the record read last (empty past its end): the last field without the `\r` of a CRLF.
    fn field(&self, i: usize) -> Cow<'_, str> {
        let at = i + self.first_field;
        let Some(mut bytes) = self.record.get(at) else { return Cow::Borrowed("") };
        if at + 1 == self.record.len()
            && let Some(stripped) = bytes.strip_suffix(b"\r")
        {
            bytes = stripped;
        }
        // What `from_utf8_lossy` gives, without its slower walk over text that is valid (as every field of a
        // record that passed the check above is).
        std::str::from_utf8(bytes).map_or_else(|_| String::from_utf8_lossy(bytes), Cow::Borrowed)
    }

    /// The next data row, classified.
    fn next_row(&mut self, layout: &Layout) -> Result<Option<InputRow>> {
        Ok(self.next_keyed_row(layout)?.map(|(row, _)| row))
    }

    /// The next data row, classified, and its key if it has an id or a name.
    fn next_keyed_row(&mut self, layout: &Layout) -> Result<Option<(InputRow, Option<Key>)>> {
        let (line, raw) = match self.pending.take() {
            Some(record) => (record.line, record.fields.into_iter().nth(layout.column).unwrap_or_default()),
            None => match self.advance()? {
                Some(line) => (line, self.field(layout.column).into_owned()),
                None => return Ok(None),
            },
        };
        let by_name = |name: Option<String>| match name {
            None => (RowKind::Invalid, None),
            Some(name) => {
                let key = self.keys.name(&name);
                (RowKind::Name(name), Some(key))
            }
        };
        let (kind, key) = match layout.lookup {
            Lookup::Name => by_name(normalise_name(&raw)),
            Lookup::AadDeviceId => by_name(normalise_aad_device_id(&raw)),
            Lookup::Id => match MachineId::parse(&raw) {
                None => (RowKind::Invalid, None),
                Some(id) => (RowKind::Valid(id), Some(self.keys.id(&id))),
            },
        };
        let raw = if kind == RowKind::Invalid { echo(raw) } else { raw };
        let kind = match key {
            Some(key) if !self.first_of(key, line)? => RowKind::Duplicate,
            _ => kind,
        };
        Ok(Some((InputRow { line, raw, kind }, key)))
    }

    /// Whether the row at `line` is the first with `key`: the scan keeps every key to sort, and says yes;
    /// the second pass knows the duplicates' lines.
    fn first_of(&mut self, key: Key, line: u64) -> Result<bool> {
        let temp_error = |e: io::Error| self.source.error(extsort::temp_message("use", &e));
        if let Some(entries) = &mut self.entries {
            entries.push(Entry { key, line }).map_err(temp_error)?;
            return Ok(true);
        }
        let Some(dups) = &mut self.dups else { return Ok(true) };
        Ok(dups.next_at(&line, |&d| d).map_err(temp_error)?.is_none())
    }

    /// 1-based field number holding byte `offset` of the record's concatenated fields.
    fn column_of_byte(&self, offset: usize) -> usize {
        let mut end = 0;
        for (i, field) in self.record.iter().enumerate() {
            end += field.len();
            if offset < end {
                return i + 1;
            }
        }
        self.record.len().max(1)
    }

    fn csv_error(&self, e: csv::Error) -> Error {
        let line = e.position().map(|p| p.line());
        let message = match e.into_kind() {
            csv::ErrorKind::Io(e) => format!("cannot read: {e}"),
            other => format!("not a valid CSV file: {other:?}"),
        };
        match line {
            Some(line) => self.source.error(format!("line {line}: {message}")),
            None => self.source.error(message),
        }
    }
}

/// An invalid cell as the results echo it: whole up to [`ECHO_MAX`] characters, else cut, saying so.
fn echo(raw: String) -> String {
    match raw.char_indices().nth(ECHO_MAX) {
        Some((end, _)) => format!("{}... (cut: {} characters in all)", &raw[..end], raw.chars().count()),
        None => raw,
    }
}

/// The input as the parser should see it: without a UTF-8 byte-order mark (a UTF-16 one is noted) and
/// ending with a line break, so that every record ends with one.
struct Prepared<R> {
    /// The first bytes, read to look for a mark, still to be served.
    start: Vec<u8>,
    served: usize,
    inner: R,
    utf16: bool,
    last: Option<u8>,
    ended: bool,
}

impl<R: Read> Prepared<R> {
    fn new(mut inner: R) -> io::Result<Self> {
        let mut start = Vec::with_capacity(3);
        let mut chunk = [0u8; 3];
        // A pipe may deliver fewer bytes than the mark's length: read until there are 3 or the input ends.
        while start.len() < 3 {
            match inner.read(&mut chunk[..3 - start.len()]) {
                Ok(0) => break,
                Ok(n) => start.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let utf16 = start.starts_with(&[0xFF, 0xFE]) || start.starts_with(&[0xFE, 0xFF]);
        if start == [0xEF, 0xBB, 0xBF] {
            start.clear();
        }
        // And the first line (up to a bound), to see how its fields are separated.
        let mut chunk = [0u8; 4096];
        while !utf16 && !start.contains(&b'\n') && start.len() < FIRST_LINE_MAX {
            match inner.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => start.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Prepared { start, served: 0, inner, utf16, last: None, ended: false })
    }

    /// The first line, as far as it was read ahead.
    fn first_line(&self) -> &[u8] {
        let end = self.start.iter().position(|&b| b == b'\n').unwrap_or(self.start.len());
        &self.start[..end]
    }
}

/// How much of the first line is read ahead to see its separator.
const FIRST_LINE_MAX: usize = 64 * 1024;

impl<R: Read> Read for Prepared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.ended {
            return Ok(0);
        }
        let n = if self.served < self.start.len() {
            let n = (self.start.len() - self.served).min(buf.len());
            buf[..n].copy_from_slice(&self.start[self.served..self.served + n]);
            self.served += n;
            if self.served == self.start.len() {
                // Served: its room (a few KiB) goes back rather than being held as long as the reader.
                (self.start, self.served) = (Vec::new(), 0);
            }
            n
        } else {
            self.inner.read(buf)?
        };
        if n > 0 {
            self.last = Some(buf[n - 1]);
            return Ok(n);
        }
        self.ended = true;
        if self.last.is_some_and(|b| b != b'\n') {
            buf[0] = b'\n';
            return Ok(1);
        }
        Ok(0)
    }
}

/// Copies every byte read from `input` to `copy`; a failed copy is kept for the caller and ends the input.
struct Tee<R, W> {
    input: R,
    copy: W,
    /// Of every byte copied: the copy is what the run reads.
    hash: ring::digest::Context,
    failed: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        if let Err(e) = self.copy.write_all(&buf[..n]) {
            self.failed = Some(e);
            return Err(io::Error::other("cannot copy standard input to a temporary file"));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
    const B: &str = "2f6cd0e8f524eee8013d3043f529813c95e1dd18";
    const C: &str = "3a7de1f9a635fff9124e4154a63a924da6f2ee29";

    fn file(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machines.csv");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    /// Scans `content` from a file and streams its rows.
    fn read(content: &[u8], id_column: Option<&str>) -> Result<(Scan, Vec<InputRow>)> {
        let (_dir, path) = file(content);
        let scan = scan(Source::Path(path), id_column)?;
        let rows = scan.rows()?.collect::<Result<Vec<_>>>()?;
        assert_eq!(rows.len() as u64, scan.rows);
        Ok((scan, rows))
    }

    #[test]
    fn the_filter_is_sized_to_the_keys_and_holds_each() {
        let (scan, _) = read(format!("MachineId\n{A}\n{B}\n{A}\n").as_bytes(), None).unwrap();
        let filter = scan.filter();
        // 64 Kbit for a few keys (a tenant's), where every list had 8 Mbit.
        assert_eq!(filter.bits.len() * 64, 1 << 16);
        let keys = scan.keys();
        for id in [A, B] {
            assert!(filter.may_contain(&keys.id(&MachineId::parse(id).unwrap())));
        }
        let other = (0..1000u32).filter(|n| filter.may_contain(&keys.name(&n.to_string()))).count();
        assert!(other < 50, "{other} of 1,000 other keys pass");
        // A large list's is 1 MiB at most.
        assert_eq!(Filter::new(Keys::default(), 10_000_000).bits.len() * 64, FILTER_BITS);
    }

    #[test]
    fn a_released_filter_keeps_no_bits_and_passes_every_key() {
        let (mut scan, _) = read(format!("MachineId\n{A}\n").as_bytes(), None).unwrap();
        let keys = scan.keys().clone();
        let other = keys.name("not in the list");
        // Before: the list's one key, one bit (a key outside it passes only if it hashes to that bit).
        assert_eq!(scan.filter().bits.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        scan.release_filter();
        let filter = scan.filter();
        assert!(filter.bits.is_empty());
        assert!(filter.may_contain(&other) && filter.may_contain(&keys.id(&MachineId::parse(A).unwrap())));
    }

    fn error(content: &[u8], id_column: Option<&str>) -> String {
        let (_dir, path) = file(content);
        let message = scan(Source::Path(path.clone()), id_column).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "the file is not named: {message}");
        message
    }

    fn valid(id: &str) -> RowKind {
        RowKind::Valid(MachineId::parse(id).unwrap())
    }

    #[test]
    fn every_header_spelling_finds_the_id_column() {
        for header in
            ["MachineId", "machineid", "Device ID", "DeviceId", "machine_id", "Id", " id ", "DEVICE_ID", "Machine Id"]
        {
            let content = format!("Name,\"{header}\",Other\nhost,{A},x\n");
            let (scan, rows) = read(content.as_bytes(), None).unwrap();
            assert_eq!(scan.id_column.as_deref(), Some(header.trim()), "{header}");
            assert_eq!(rows, vec![InputRow { line: 2, raw: A.into(), kind: valid(A) }]);
        }
    }

    #[test]
    fn the_most_specific_header_wins() {
        let content = format!("Id,DeviceId,MachineId\nx,y,{A}\n");
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!(scan.id_column.as_deref(), Some("MachineId"));
        assert_eq!(rows[0].kind, valid(A));
    }

    #[test]
    fn a_list_without_header_starts_with_an_id() {
        let content = format!("  {A}  \n{B},extra\n");
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!(scan.id_column, None);
        assert_eq!((scan.rows, scan.valid), (2, 2));
        assert_eq!(rows[0], InputRow { line: 1, raw: format!("  {A}  "), kind: valid(A) });
        assert_eq!(rows[1], InputRow { line: 2, raw: B.into(), kind: valid(B) });
    }

    #[test]
    fn bom_and_crlf_are_normal() {
        let content = format!("\u{FEFF}MachineId,Name\r\n{A},one\r\n{B},two\r\n");
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!(scan.id_column.as_deref(), Some("MachineId"));
        assert_eq!(
            rows.iter().map(|r| (r.line, r.kind.clone())).collect::<Vec<_>>(),
            vec![(2, valid(A)), (3, valid(B))]
        );
        assert_eq!(rows[0].raw, A);
        // Quoted cells before a CRLF, and a last line without a line break.
        let content = format!("MachineId,Name\r\n\"{A}\",\"one\"\r\n\"{B}\"\r\n{C}");
        let (_, rows) = read(content.as_bytes(), None).unwrap();
        let got: Vec<_> = rows.iter().map(|r| (r.line, r.raw.as_str(), r.kind.clone())).collect();
        assert_eq!(got, vec![(2, A, valid(A)), (3, B, valid(B)), (4, C, valid(C))]);
        // A BOM before a headerless list too.
        let (scan, rows) = read(format!("\u{FEFF}{A}\r\n").as_bytes(), None).unwrap();
        assert_eq!((scan.id_column, rows[0].kind.clone()), (None, valid(A)));
    }

    #[test]
    fn quoted_fields_spanning_lines_keep_line_numbers_right() {
        let content = format!("Name,MachineId\n\"two\nlines\",{A}\n\"with, comma\",\"{B}\"\nlast,{C}\n");
        let (_, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 4, 5]);
        assert!(rows.iter().all(|r| matches!(r.kind, RowKind::Valid(_))));
        // CRLF inside and around quoted fields, and a multi-line last row without a final line break.
        let content = format!("Name,MachineId\r\n\"a\r\nb\r\nc\",{A}\r\n\r\nx,{B}\r\n\"end\r\n\",{C}");
        let (_, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 6, 7]);
        assert_eq!(rows[2].kind, valid(C));
    }

    #[test]
    fn a_quote_left_open_at_the_end_keeps_its_own_line() {
        let (_, rows) = read(format!("MachineId\n{A}\n\"{B}\n").as_bytes(), None).unwrap();
        assert_eq!(
            rows.iter().map(|r| (r.line, r.kind.clone())).collect::<Vec<_>>(),
            vec![(2, valid(A)), (3, valid(B))]
        );
    }

    #[test]
    fn a_huge_header_is_named_not_printed() {
        let message = error(format!("{}\n{A}\n", "x".repeat(100_000)).as_bytes(), None);
        assert!(message.len() < 1000 && message.contains("100000 characters"), "{}", &message[..200]);
    }

    #[test]
    fn blank_lines_are_skipped_and_not_rows() {
        let content = format!("\nMachineId\n\n{A}\n   \n,,\n{B}\n\n");
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!(scan.rows, 2);
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![4, 7]);
    }

    #[test]
    fn extra_and_ragged_columns_are_normal() {
        let content = format!("Name,MachineId,Extra\nx,{A},1,2,3\nshort\ny,{B}\n");
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!((scan.rows, scan.valid, scan.invalid), (3, 2, 1));
        assert_eq!(rows[1], InputRow { line: 3, raw: String::new(), kind: RowKind::Invalid });
    }

    #[test]
    fn ids_are_trimmed_and_lowercased() {
        let upper = A.to_uppercase();
        let content = format!("MachineId\n {upper}\t\n\"  {B}\"\n");
        let (_, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!(rows[0], InputRow { line: 2, raw: format!(" {upper}\t"), kind: valid(A) });
        assert_eq!(rows[1].kind, valid(B));
    }

    #[test]
    fn malformed_ids_are_invalid() {
        let short = &A[..39];
        let long = format!("{A}0");
        let non_hex = format!("g{}", &A[1..]);
        let guid = "c6a3f5e2-1b4d-4e8f-9a7b-2d1c0e3f4a5b";
        let inner_space = format!("{} {}", &A[..20], &A[21..]);
        let content =
            format!("Name,MachineId\na,{short}\nb,{long}\nc,{non_hex}\nd,\ne,{guid}\nf,{inner_space}\ng,{A}\n");
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!((scan.rows, scan.valid, scan.invalid, scan.duplicates), (7, 1, 6, 0));
        assert!(rows[..6].iter().all(|r| r.kind == RowKind::Invalid));
        assert_eq!(rows[3].raw, "");
        assert_eq!(rows[0].raw, short);
    }

    #[test]
    fn repeated_ids_are_duplicates_in_any_case() {
        let content = format!("MachineId\n{A}\n{B}\n{}\n {A}\n{C}\n{B}\n", A.to_uppercase());
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!((scan.rows, scan.valid, scan.invalid, scan.duplicates), (6, 3, 0, 3));
        let kinds: Vec<RowKind> = rows.into_iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![valid(A), valid(B), RowKind::Duplicate, RowKind::Duplicate, valid(C), RowKind::Duplicate]
        );
    }

    #[test]
    fn a_garbled_id_header_beside_a_name_column_reads_by_name_in_both_passes() {
        // Found by the input_reader fuzz target: `Machi\x11neId` is no id column, so `Name` makes the input
        // by name, although the first column holds ids; both passes must agree on that.
        let content = format!("\u{feff}Machi\u{11}neId,Name\r\n{},one\r\n{},two\r\n", "1".repeat(40), "2".repeat(40));
        let scan = scan_reader(content.as_bytes(), None).unwrap();
        assert!(scan.by_name);
        let rows: Vec<InputRow> = scan.rows().unwrap().collect::<Result<_>>().unwrap();
        let names: Vec<RowKind> = rows.into_iter().map(|r| r.kind).collect();
        assert_eq!(names, vec![RowKind::Name("one".into()), RowKind::Name("two".into())]);
        assert_eq!(scan.valid, 2);
    }

    #[test]
    fn id_column_override_is_matched_leniently() {
        let content = format!("MachineId,Host Id\n{A},{B}\n");
        let (scan, rows) = read(content.as_bytes(), Some("host_ID")).unwrap();
        assert_eq!(scan.id_column.as_deref(), Some("Host Id"));
        assert_eq!(rows[0].kind, valid(B));
    }

    #[test]
    fn a_wrong_override_lists_the_headers() {
        let message = error(format!("MachineId,Name\n{A},x\n").as_bytes(), Some("DeviceGuid"));
        assert!(
            message.contains("DeviceGuid") && message.contains("`MachineId`, `Name`") && message.contains("line 1"),
            "{message}"
        );
        let message = error(format!("{A}\n").as_bytes(), Some("MachineId"));
        assert!(message.contains("no header row"), "{message}");
    }

    #[test]
    fn no_id_column_names_the_file_and_headers() {
        let message = error(b"Computer,Owner\npc1,me\n", None);
        assert!(message.contains("no machine id column") && message.contains("`Computer`, `Owner`"), "{message}");
        assert!(!message.contains("separated"), "{message}");
    }

    #[test]
    fn other_delimiters_are_detected_or_get_a_hint() {
        for content in [format!("MachineId;Name\n{A};x\n"), format!("Name\tMachineId\nx\t{A}\n")] {
            let (scan, rows) = read(content.as_bytes(), None).unwrap();
            assert_eq!((scan.id_column.as_deref(), &rows[0].kind), (Some("MachineId"), &valid(A)), "{content:?}");
        }
        // Quoted separators do not count; a comma wins a tie.
        assert_eq!(detect_delimiter(b"\"a;b;c\",MachineId"), b',');
        assert_eq!(detect_delimiter(b"Name;Id,x"), b',');
        assert_eq!(detect_delimiter(b"MachineId"), b',');
        // Read with another separator than the header's: the hint names the flag that reads it.
        let (_dir, path) = file(format!("Name;MachineId\nx;{A}\n").as_bytes());
        let format = Format { delimiter: Some(b','), ..Format::default() };
        let message = scan_format(Source::Path(path), &format).unwrap_err().to_string();
        assert!(message.contains("`;`") && message.contains("--delimiter ';'"), "{message}");
    }

    #[test]
    fn binary_garbage_is_not_csv() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut garbage: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        garbage[10] = 0;
        let message = error(&garbage, None);
        assert!(message.contains("not a CSV file") || message.contains("UTF-8"), "{message}");
        let message = error(b"MachineId\nabc\0def\n", None);
        assert!(message.contains("line 2") && message.contains("NUL"), "{message}");
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let mut content = format!("MachineId,Name\n{A},ok\n\"{B}\",\"two\nlines\"\n{C},caf").into_bytes();
        content.extend_from_slice(b"\xe9\n");
        let message = error(&content, None);
        assert!(message.contains("line 5") && message.contains("UTF-8") && message.contains("field 2"), "{message}");
    }

    #[test]
    fn utf16_gets_a_hint() {
        let content: Vec<u8> =
            [0xFF, 0xFE].into_iter().chain("MachineId\n".encode_utf16().flat_map(u16::to_le_bytes)).collect();
        let message = error(&content, None);
        assert!(message.contains("UTF-16"), "{message}");
    }

    #[test]
    fn an_empty_file_is_an_error_but_only_a_header_is_an_empty_run() {
        assert!(error(b"", None).contains("is empty"));
        assert!(error(b"\n\n\r\n", None).contains("is empty"));
        assert!(error("\u{FEFF}".as_bytes(), None).contains("is empty"));
        let (scan, rows) = read(b"Device ID\r\n", None).unwrap();
        assert_eq!((scan.rows, scan.valid, scan.id_column.as_deref()), (0, 0, Some("Device ID")));
        assert!(rows.is_empty());
    }

    #[test]
    fn a_missing_file_is_named() {
        let message = scan(Source::Path("/nonexistent/machines.csv".into()), None).unwrap_err().to_string();
        assert!(message.contains("/nonexistent/machines.csv") && message.contains("cannot open"), "{message}");
    }

    #[test]
    fn sources_parse_and_display() {
        assert_eq!(Source::parse("-"), Source::Stdin);
        assert_eq!(Source::parse("a.csv"), Source::Path("a.csv".into()));
        assert_eq!(Source::Stdin.display(), "<stdin>");
    }

    /// Whether an open file has no name in the file system (Linux says so of its link in /proc).
    #[cfg(target_os = "linux")]
    fn nameless(file: &File) -> bool {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        link.to_string_lossy().ends_with(" (deleted)")
    }

    #[test]
    fn rows_longer_than_the_read_buffer_are_read_whole() {
        // A short list reads through the least buffer: a row (with its other columns) and a quoted field
        // with a line break, each longer than it, come out whole, on their lines.
        let note = "x".repeat(3 * ROWS_BUFFER_MIN);
        let content = format!("DeviceId,Note\n{A},{note}\n\"{B}\",\"{note}\n{note}\"\n{A},short\n");
        let scan = scan_reader(content.as_bytes(), None).unwrap();
        assert_eq!((scan.rows, scan.valid, scan.duplicates), (3, 2, 1));
        let rows: Vec<InputRow> = scan.rows().unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 3, 5]);
        assert_eq!((&rows[0].kind, &rows[1].kind, &rows[2].kind), (&valid(A), &valid(B), &RowKind::Duplicate));
    }

    #[test]
    fn stdin_is_spooled_and_read_twice() {
        let content = format!("\u{FEFF}DeviceId\r\n{A}\r\n{B}\r\nbad\r\n");
        // A reader that hands out one byte at a time, like a slow pipe.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        let scan = scan_spooled(Source::Stdin, Trickle(content.as_bytes()), &Format::default()).unwrap();
        assert_eq!((scan.rows, scan.valid, scan.invalid), (3, 2, 1));
        assert_eq!(scan.input_path(), None);
        #[cfg(target_os = "linux")]
        assert!(nameless(&scan.spool), "the copy has no name: nothing to leave behind");
        for _ in 0..2 {
            let rows: Vec<InputRow> = scan.rows().unwrap().collect::<Result<_>>().unwrap();
            assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 3, 4]);
            assert_eq!(rows[0].kind, valid(A));
        }
        // Rows outlive the scan's handle on the spool; the spool goes with the last of them.
        let rows = scan.rows().unwrap();
        let spool = Arc::downgrade(&scan.spool);
        drop(scan);
        assert_eq!(rows.count(), 3);
        assert!(spool.upgrade().is_none(), "closed with the last reader");
        let message = scan_spooled(Source::Stdin, &b"Owner\nx\n"[..], &Format::default()).unwrap_err().to_string();
        assert!(message.starts_with("input <stdin>: line 1: no machine id column"), "{message}");
    }

    #[test]
    fn the_scan_hashes_the_copy_the_run_reads() {
        let content = format!("MachineId\n{A}\n{B}\n");
        let (_dir, path) = file(content.as_bytes());
        let scan = scan(Source::Path(path), None).unwrap();
        let mut spooled = Vec::new();
        SharedReader::new(Arc::clone(&scan.spool)).read_to_end(&mut spooled).unwrap();
        assert_eq!(spooled, content.as_bytes());
        let expected: String = ring::digest::digest(&ring::digest::SHA256, content.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(scan.sha256, expected);
        // Another list of the same length and shape differs.
        let other = scan_reader(format!("MachineId\n{A}\n{C}\n").as_bytes(), None).unwrap();
        assert_eq!((other.rows, other.valid), (scan.rows, scan.valid));
        assert_ne!(other.sha256, scan.sha256);
    }

    #[test]
    fn an_input_edited_after_the_scan_changes_nothing() {
        let (_dir, path) = file(format!("MachineId\n{A}\n{A}\n").as_bytes());
        let scanned = scan(Source::Path(path.clone()), None).unwrap();
        std::fs::write(&path, format!("MachineId\n{B}\n{C}\n{A}\n")).unwrap();
        let rows: Vec<InputRow> = scanned.rows().unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(rows.iter().map(|r| r.kind.clone()).collect::<Vec<_>>(), vec![valid(A), RowKind::Duplicate]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(scanned.rows().unwrap().count(), 2, "the run reads the scan's copy");
    }

    fn read_names(content: &str, column: Option<&str>, by_name: bool) -> Result<(Scan, Vec<InputRow>)> {
        let (_dir, path) = file(content.as_bytes());
        let scan = scan_with(Source::Path(path), column, by_name)?;
        let rows = scan.rows()?.collect::<Result<Vec<_>>>()?;
        Ok((scan, rows))
    }

    #[test]
    fn a_name_column_alone_is_read_by_name() {
        for header in ["computerDnsName", "DeviceName", "Device Name", "name", "computer_dns_name"] {
            let content = format!("Owner,{header}\nme, PC-1.Contoso.local. \nyou,\nthem,pc-1.contoso.local\nus,pc-2\n");
            let (scan, rows) = read_names(&content, None, false).unwrap();
            assert!(scan.by_name, "{header}");
            assert_eq!(scan.id_column.as_deref(), Some(header));
            assert_eq!((scan.rows, scan.valid, scan.invalid, scan.duplicates), (4, 2, 1, 1), "{header}");
            let kinds: Vec<RowKind> = rows.into_iter().map(|r| r.kind).collect();
            assert_eq!(
                kinds,
                vec![
                    RowKind::Name("pc-1.contoso.local".into()),
                    RowKind::Invalid,
                    RowKind::Duplicate,
                    RowKind::Name("pc-2".into())
                ]
            );
        }
    }

    #[test]
    fn an_id_column_wins_over_a_name_column_unless_by_name() {
        let content = format!("Name,MachineId\npc-1,{A}\n");
        let (scan, rows) = read_names(&content, None, false).unwrap();
        assert!(!scan.by_name);
        assert_eq!(rows[0].kind, valid(A));
        let (scan, rows) = read_names(&content, None, true).unwrap();
        assert!(scan.by_name);
        assert_eq!(rows[0].kind, RowKind::Name("pc-1".into()));
        // --by-name with --id-column names the name column; the classic interface is unchanged.
        let content = "Host,Other\npc-9,x\n";
        let (_, rows) = read_names(content, Some("host"), true).unwrap();
        assert_eq!(rows[0].kind, RowKind::Name("pc-9".into()));
        let (_dir, path) = file(content.as_bytes());
        let message = scan_with(Source::Path(path), None, true).unwrap_err().to_string();
        assert!(message.contains("no computer name column") && message.contains("`Host`"), "{message}");
    }

    #[test]
    fn two_hundred_thousand_rows_stream_with_right_counts() {
        // Every 10th row's id is malformed; every 7th repeats, uppercased, the id 5 rows back.
        let (mut valid, mut invalid, mut duplicates) = (0u64, 0u64, 0u64);
        let mut content = String::with_capacity(200_000 * 60);
        content.push_str("Device ID,Name\r\n");
        let id = |n: u64| format!("{:040x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15);
        for n in 0..200_000u64 {
            if n % 10 == 0 {
                content.push_str(&format!("{},host{n}\r\n", &id(n)[1..]));
                invalid += 1;
            } else if n % 7 == 0 && (n - 5) % 10 != 0 {
                content.push_str(&format!("{},host{n}\r\n", id(n - 5).to_uppercase()));
                duplicates += 1;
            } else {
                content.push_str(&format!("{},host{n}\r\n", id(n)));
                valid += 1;
            }
        }
        let started = std::time::Instant::now();
        let (scan, rows) = read(content.as_bytes(), None).unwrap();
        assert_eq!((scan.rows, scan.valid, scan.invalid, scan.duplicates), (200_000, valid, invalid, duplicates));
        assert_eq!(rows.last().unwrap().line, 200_001);
        assert_eq!(rows.iter().filter(|r| matches!(r.kind, RowKind::Valid(_))).count() as u64, valid);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }
}
