//! Sorting and keeping more than memory should hold: what keeps a run's memory flat however long its input.
//!
//! - [`Sorter`] sorts fixed-size [`Record`]s: up to [`BUDGET`] bytes in memory, sorted runs spilled to
//!   anonymous temporary files beyond that, merged back as one sorted stream ([`Sorted`]). An input that fits
//!   never touches the disk.
//! - [`RecordFile`] keeps records in the order written, to be read back any number of times.
//! - [`Store`] keeps variable-length texts (a machine's name, an action's id), each found again by the
//!   [`Ref`] that storing it returned, with one positioned read.
//!
//! Every temporary file is anonymous ([`temp_file`]): it has no name from the moment it is open (on Windows,
//! it is deleted when its last handle closes), so the system reclaims it however the process ends, kill -9
//! included. A file read by several readers is shared open ([`SharedReader`]), never reopened by name.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::sync::Arc;

use crate::domain::MachineId;

/// Bytes of records a [`Sorter`] holds in memory before it spills a sorted run to disk.
pub const BUDGET: usize = 4 << 20;
/// Runs merged at once; beyond this, runs are merged into longer ones first (open files and read buffers
/// stay bounded).
const FAN_IN: usize = 64;
/// Read buffer of each run being merged.
const RUN_BUFFER: usize = 32 << 10;
/// Records a [`Sorter`] makes room for first.
const GROW_FROM: usize = 1024;
/// Bytes of records past which a [`Sorter`] makes room for its whole budget.
const GROW_TO: usize = 256 << 10;

/// The message for a temporary file that could not be used (`doing`: "write", "read", ...): where, why,
/// and what to do.
pub fn temp_message(doing: &str, e: &io::Error) -> String {
    format!(
        "cannot {doing} a temporary file in {}: {e}; point TMPDIR (TEMP on Windows) at a writable directory with \
         room for about 300 bytes per machine of the list",
        std::env::temp_dir().display()
    )
}

/// A fixed-size record. `Ord` must compare every field: records that compare equal are identical.
pub trait Record: Copy + Ord {
    const SIZE: usize;
    fn put(&self, out: &mut [u8]);
    fn get(bytes: &[u8]) -> Self;
}

impl Record for u64 {
    const SIZE: usize = 8;
    fn put(&self, out: &mut [u8]) {
        Field::put(self, out);
    }
    fn get(bytes: &[u8]) -> Self {
        Field::get(bytes)
    }
}

/// A fixed-size part of a [`Record`], big-endian so that bytes sort like values.
pub trait Field: Sized {
    const SIZE: usize;
    fn put(&self, out: &mut [u8]);
    fn get(bytes: &[u8]) -> Self;
}

impl<const N: usize> Field for [u8; N] {
    const SIZE: usize = N;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
    fn get(bytes: &[u8]) -> Self {
        bytes.try_into().expect("N bytes")
    }
}

macro_rules! int_field {
    ($($int:ty),+) => {$(
        impl Field for $int {
            const SIZE: usize = size_of::<$int>();
            fn put(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_be_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$int>::from_be_bytes(bytes.try_into().expect("the integer's size"))
            }
        }
    )+};
}
int_field!(u8, u32, u64);

impl Field for MachineId {
    const SIZE: usize = 20;
    fn put(&self, out: &mut [u8]) {
        out.copy_from_slice(self.as_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        MachineId::from_bytes(Field::get(bytes))
    }
}

impl Field for Ref {
    const SIZE: usize = 8;
    fn put(&self, out: &mut [u8]) {
        Field::put(&self.0, out);
    }
    fn get(bytes: &[u8]) -> Self {
        Ref(<u64 as Field>::get(bytes))
    }
}

/// Declares a struct of [`Field`]s and makes it a [`Record`]: its fields one after the other, in order.
macro_rules! record {
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty),+ $(,)?
    }) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),+
        }

        impl $crate::files::extsort::Record for $name {
            const SIZE: usize = 0 $(+ <$ty as $crate::files::extsort::Field>::SIZE)+;
            fn put(&self, out: &mut [u8]) {
                let mut at = 0;
                $(
                    let end = at + <$ty as $crate::files::extsort::Field>::SIZE;
                    $crate::files::extsort::Field::put(&self.$field, &mut out[at..end]);
                    #[allow(unused_assignments)]
                    {
                        at = end;
                    }
                )+
            }
            #[allow(unused_assignments)]
            fn get(bytes: &[u8]) -> Self {
                let mut at = 0;
                $name {
                    $($field: {
                        let end = at + <$ty as $crate::files::extsort::Field>::SIZE;
                        let value = <$ty as $crate::files::extsort::Field>::get(&bytes[at..end]);
                        at = end;
                        value
                    }),+
                }
            }
        }
    };
}
pub(crate) use record;

/// A new temporary file in the temporary directory (`TMPDIR`, `TEMP` on Windows), without a name: unlinked
/// as it is created (`O_TMPFILE` where Linux has it, else created and unlinked at once); on Windows opened
/// delete-on-close. Share it with [`SharedReader`] or `try_clone`; it cannot be opened again.
pub fn temp_file() -> io::Result<File> {
    tempfile::tempfile()
}

/// A reader of a shared file from its start, with a position of its own: it reads with positioned reads, so
/// any number of readers (and a writer through another handle) never move each other's place.
#[derive(Debug)]
pub struct SharedReader {
    file: Arc<File>,
    at: u64,
}

impl SharedReader {
    pub fn new(file: Arc<File>) -> SharedReader {
        SharedReader { file, at: 0 }
    }
}

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_at(&self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Writes `records` to a new anonymous temporary file.
fn write_run<R: Record>(records: impl IntoIterator<Item = io::Result<R>>) -> io::Result<File> {
    let mut file = BufWriter::with_capacity(RUN_BUFFER, temp_file()?);
    let mut bytes = vec![0u8; R::SIZE];
    for record in records {
        record?.put(&mut bytes);
        file.write_all(&bytes)?;
    }
    file.into_inner().map_err(io::IntoInnerError::into_error)
}

/// Records read back in the order they were written.
pub struct RecordReader<R> {
    input: BufReader<SharedReader>,
    bytes: Vec<u8>,
    _record: PhantomData<R>,
}

impl<R: Record> RecordReader<R> {
    fn new(file: Arc<File>) -> Self {
        RecordReader::with_buffer(file, RUN_BUFFER)
    }

    fn with_buffer(file: Arc<File>, buffer: usize) -> Self {
        RecordReader {
            input: BufReader::with_capacity(buffer, SharedReader::new(file)),
            bytes: vec![0u8; R::SIZE],
            _record: PhantomData,
        }
    }
}

impl<R: Record> Iterator for RecordReader<R> {
    type Item = io::Result<R>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.input.read_exact(&mut self.bytes) {
            Ok(()) => Some(Ok(R::get(&self.bytes))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Sorts records in bounded memory: see the module's documentation.
pub struct Sorter<R> {
    buffer: Vec<R>,
    capacity: usize,
    runs: Vec<File>,
}

impl<R: Record> Default for Sorter<R> {
    fn default() -> Self {
        Sorter::with_budget(BUDGET)
    }
}

impl<R: Record> Sorter<R> {
    /// A sorter holding at most `bytes` of records in memory (at least two records).
    pub fn with_budget(bytes: usize) -> Self {
        Sorter { buffer: Vec::new(), capacity: (bytes / size_of::<R>()).max(2), runs: Vec::new() }
    }

    pub fn push(&mut self, record: R) -> io::Result<()> {
        if self.buffer.len() == self.buffer.capacity() {
            // Room grows with the records, doubling: a sorter of a few records (each of many tenants' runs
            // has several) holds about their size, not the budget. Past [`GROW_TO`] it takes the whole budget
            // at once, as one block whose pages are touched as records come, rather than leaving the
            // allocator a trail of freed halves.
            let len = self.buffer.len();
            let more = if len * size_of::<R>() >= GROW_TO { self.capacity - len } else { len.max(GROW_FROM) };
            self.buffer.reserve_exact(more.min(self.capacity - len));
        }
        self.buffer.push(record);
        if self.buffer.len() >= self.capacity { self.spill() } else { Ok(()) }
    }

    fn spill(&mut self) -> io::Result<()> {
        self.buffer.sort_unstable();
        let run = write_run(self.buffer.drain(..).map(Ok))?;
        self.runs.push(run);
        Ok(())
    }

    /// Everything pushed, in order.
    pub fn finish(mut self) -> io::Result<Sorted<R>> {
        if self.runs.is_empty() {
            self.buffer.sort_unstable();
            return Ok(Sorted::Memory(self.buffer.into_iter()));
        }
        if !self.buffer.is_empty() {
            self.spill()?;
        }
        drop(std::mem::take(&mut self.buffer));
        let mut runs = self.runs;
        while runs.len() > FAN_IN {
            let rest = runs.split_off(FAN_IN);
            let merged = write_run(Sorted::<R>::merge(runs)?)?;
            runs = rest;
            runs.push(merged);
        }
        Sorted::merge(runs)
    }
}

/// A [`Sorter`]'s records, in order: from memory, or merged from its runs.
pub enum Sorted<R> {
    Memory(std::vec::IntoIter<R>),
    Merge { runs: Vec<RecordReader<R>>, heads: BinaryHeap<Reverse<(R, usize)>> },
}

impl<R: Record> Sorted<R> {
    fn merge(files: Vec<File>) -> io::Result<Sorted<R>> {
        let mut runs: Vec<RecordReader<R>> = files.into_iter().map(|f| RecordReader::new(Arc::new(f))).collect();
        let mut heads = BinaryHeap::with_capacity(runs.len());
        for (i, run) in runs.iter_mut().enumerate() {
            if let Some(record) = run.next() {
                heads.push(Reverse((record?, i)));
            }
        }
        Ok(Sorted::Merge { runs, heads })
    }
}

impl<R: Record> Iterator for Sorted<R> {
    type Item = io::Result<R>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(records) => records.next().map(Ok),
            Sorted::Merge { runs, heads } => {
                let Reverse((record, i)) = heads.pop()?;
                match runs[i].next() {
                    Some(Ok(next)) => heads.push(Reverse((next, i))),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
                Some(Ok(record))
            }
        }
    }
}

/// A sorted stream of records looked up by ascending keys: the merge step of a join. Each lookup passes
/// over the records that sort before its key; an error in the stream is returned by the lookup that meets it.
pub struct Cursor<R, I: Iterator<Item = io::Result<R>>> {
    records: std::iter::Peekable<I>,
}

impl<R: Copy, I: Iterator<Item = io::Result<R>>> Cursor<R, I> {
    pub fn new(records: I) -> Self {
        Cursor { records: records.peekable() }
    }

    /// The first record whose key is `key`, left in place (a later lookup of the same key finds it again).
    pub fn find<K: Ord>(&mut self, key: &K, key_of: impl Fn(&R) -> K) -> io::Result<Option<R>> {
        loop {
            let head = match self.records.peek() {
                None => return Ok(None),
                Some(Ok(head)) => *head,
                Some(Err(_)) => return Err(self.records.next().and_then(Result::err).expect("an error was peeked")),
            };
            match key_of(&head).cmp(key) {
                std::cmp::Ordering::Less => {
                    self.records.next();
                }
                std::cmp::Ordering::Equal => return Ok(Some(head)),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }

    /// As [`Cursor::find`], taking the record: called again, it gives the next one with that key.
    pub fn next_at<K: Ord>(&mut self, key: &K, key_of: impl Fn(&R) -> K) -> io::Result<Option<R>> {
        let found = self.find(key, key_of)?;
        if found.is_some() {
            self.records.next();
        }
        Ok(found)
    }
}

/// Records kept in the order written, in a temporary file, read back with [`RecordFile::read`].
pub struct RecordFile<R> {
    file: Arc<File>,
    len: u64,
    _record: PhantomData<R>,
}

impl<R> Clone for RecordFile<R> {
    fn clone(&self) -> Self {
        RecordFile { file: Arc::clone(&self.file), len: self.len, _record: PhantomData }
    }
}

impl<R> std::fmt::Debug for RecordFile<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordFile({} records)", self.len)
    }
}

impl<R: Record> RecordFile<R> {
    /// Writes `records` in their order.
    pub fn write(records: impl IntoIterator<Item = io::Result<R>>) -> io::Result<RecordFile<R>> {
        let file = temp_file()?;
        let mut out = BufWriter::with_capacity(RUN_BUFFER, &file);
        let mut bytes = vec![0u8; R::SIZE];
        let mut len = 0;
        for record in records {
            record?.put(&mut bytes);
            out.write_all(&bytes)?;
            len += 1;
        }
        out.flush()?;
        drop(out);
        Ok(RecordFile { file: Arc::new(file), len, _record: PhantomData })
    }

    /// Records written.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The records from the first, with a reader of their own.
    pub fn read(&self) -> io::Result<RecordReader<R>> {
        self.read_buffered(RUN_BUFFER)
    }

    /// As [`RecordFile::read`], the reader's buffer at most `most` bytes (a file read at the pace of calls).
    pub fn read_buffered(&self, most: usize) -> io::Result<RecordReader<R>> {
        // A buffer no larger than the file: a small one (a tenant's, or the duplicates of most lists) is small.
        let buffer =
            usize::try_from(self.len).unwrap_or(usize::MAX).saturating_mul(R::SIZE).clamp(R::SIZE, most.max(R::SIZE));
        Ok(RecordReader::with_buffer(Arc::clone(&self.file), buffer))
    }
}

/// Where [`Store::put`] put a text: its offset (48 bits) and length (16 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ref(u64);

impl Ref {
    /// No text.
    pub const NONE: Ref = Ref(u64::MAX);

    pub fn is_none(self) -> bool {
        self == Ref::NONE
    }
}

/// Texts in a temporary file: each a few short fields, written once and read back by [`Ref`].
pub struct Store {
    out: BufWriter<File>,
    len: u64,
}

impl Store {
    pub fn new() -> io::Result<Store> {
        Ok(Store { out: BufWriter::with_capacity(RUN_BUFFER, temp_file()?), len: 0 })
    }

    /// Keeps `fields`. An entry is at most 65,535 bytes: a field is cut to what fits (at a character
    /// boundary), and fields past that are dropped (names and times are far shorter).
    pub fn put(&mut self, fields: &[&str]) -> io::Result<Ref> {
        const MAX: usize = u16::MAX as usize;
        let mut entry = Vec::with_capacity(fields.iter().map(|f| f.len() + 2).sum::<usize>().min(MAX));
        for field in fields {
            if entry.len() + 2 > MAX {
                break;
            }
            let field = clip(field, MAX - entry.len() - 2);
            entry.extend_from_slice(&(field.len() as u16).to_be_bytes());
            entry.extend_from_slice(field.as_bytes());
        }
        self.out.write_all(&entry)?;
        let at = Ref((self.len << 16) | entry.len() as u64);
        self.len += entry.len() as u64;
        Ok(at)
    }

    /// Done writing: the texts, for reading.
    pub fn freeze(self) -> io::Result<Frozen> {
        let file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(Frozen { file })
    }
}

/// A [`Store`] done writing.
pub struct Frozen {
    file: File,
}

impl Frozen {
    /// The fields stored at `at`.
    pub fn get(&self, at: Ref) -> io::Result<Vec<String>> {
        self.get_with(at, |fields| fields.iter().map(|field| field.to_string()).collect())
    }

    /// The fields stored at `at`, lent to `read`: what [`Frozen::get`] gives, without a `String` made for
    /// each (an entry of a few hundred bytes, and its first fields, are read on the stack).
    pub fn get_with<T>(&self, at: Ref, read: impl FnOnce(&[Cow<'_, str>]) -> T) -> io::Result<T> {
        const ON_STACK: usize = 512;
        const FIELDS_ON_STACK: usize = 8;
        let (offset, len) = (at.0 >> 16, (at.0 & 0xFFFF) as usize);
        let (mut small, mut large) = ([0u8; ON_STACK], Vec::new());
        let entry = if len <= ON_STACK {
            &mut small[..len]
        } else {
            large.resize(len, 0);
            &mut large[..]
        };
        read_exact_at(&self.file, entry, offset)?;
        let (mut first, mut more): ([Cow<str>; FIELDS_ON_STACK], Vec<Cow<str>>) = Default::default();
        let mut count = 0;
        let mut rest = &entry[..];
        while rest.len() >= 2 {
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            // What `from_utf8_lossy` gives, without its slower walk over valid text (every field stored is).
            let field = &rest[2..2 + n];
            let field = std::str::from_utf8(field).map_or_else(|_| String::from_utf8_lossy(field), Cow::Borrowed);
            match first.get_mut(count) {
                Some(slot) => *slot = field,
                None => {
                    if more.is_empty() {
                        more.extend(first.iter_mut().map(std::mem::take));
                    }
                    more.push(field);
                }
            }
            count += 1;
            rest = &rest[2 + n..];
        }
        Ok(read(if more.is_empty() { &first[..count] } else { &more }))
    }
}

/// Reads at `offset` without using the file's own position (which handles made by `try_clone` share).
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

/// Reads at `offset`; on Windows this moves the handle's position, which no reader here relies on (they
/// all read at an offset of their own, and writing is done before reading starts).
#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// At most `room` bytes of `s`, cut at a character boundary.
fn clip(s: &str, room: usize) -> &str {
    let mut end = s.len().min(room);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    record! {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        struct Pair {
            key: u64,
            n: u64,
        }
    }

    #[test]
    fn a_sorter_holds_room_for_its_records_not_its_budget() {
        let mut sorter = Sorter::<u64>::default();
        for n in (0..10u64).rev() {
            sorter.push(n).unwrap();
        }
        assert!(sorter.buffer.capacity() <= GROW_FROM, "{}", sorter.buffer.capacity());
        // It grows, doubling, up to its budget, and spills there.
        let mut sorter = Sorter::<u64>::with_budget(3000 * 8);
        for n in (0..5000u64).rev() {
            sorter.push(n).unwrap();
            assert!(sorter.buffer.capacity() <= 3000);
        }
        assert_eq!(sorter.runs.len(), 1);
        let all: Vec<u64> = sorter.finish().unwrap().map(Result::unwrap).collect();
        assert_eq!(all, (0..5000).collect::<Vec<_>>());
    }

    fn sorted(budget: usize, input: &[Pair]) -> Vec<Pair> {
        let mut sorter = Sorter::with_budget(budget);
        for &p in input {
            sorter.push(p).unwrap();
        }
        sorter.finish().unwrap().collect::<io::Result<_>>().unwrap()
    }

    #[test]
    fn sorts_in_memory_and_through_runs_alike() {
        let mut rng = fastrand::Rng::with_seed(7);
        let input: Vec<Pair> = (0..20_000).map(|n| Pair { key: rng.u64(..1000), n }).collect();
        assert_eq!(<Pair as Record>::SIZE, 16, "the fields' sizes, added up");
        let mut expected = input.clone();
        expected.sort();
        assert_eq!(sorted(BUDGET, &input), expected, "in memory");
        // 16 records a run: 1,250 runs, merged in two levels.
        assert_eq!(sorted(16 * 16, &input), expected, "through runs");
        assert!(sorted(64, &[]).is_empty());
    }

    #[test]
    fn cursors_find_by_ascending_keys_and_report_errors_where_met() {
        let records = [1u64, 3, 3, 5, 8].map(Ok).into_iter().chain([Err(io::Error::other("disk")), Ok(9)]);
        let mut cursor = Cursor::new(records);
        assert_eq!(cursor.find(&0, |r| *r).unwrap(), None);
        assert_eq!(cursor.find(&3, |r| *r).unwrap(), Some(3));
        assert_eq!(cursor.find(&3, |r| *r).unwrap(), Some(3), "find leaves it in place");
        assert_eq!(cursor.next_at(&3, |r| *r).unwrap(), Some(3));
        assert_eq!(cursor.next_at(&3, |r| *r).unwrap(), Some(3), "the second 3");
        assert_eq!(cursor.next_at(&3, |r| *r).unwrap(), None);
        assert_eq!(cursor.find(&6, |r| *r).unwrap(), None, "5 passed over, 8 is beyond");
        assert_eq!(cursor.find(&8, |r| *r).unwrap(), Some(8));
        assert_eq!(cursor.find(&9, |r| *r).unwrap_err().to_string(), "disk");
        assert_eq!(cursor.find(&9, |r| *r).unwrap(), Some(9));
    }

    #[test]
    fn record_files_read_back_in_order_any_number_of_times() {
        let file = RecordFile::write((0..1000u64).rev().map(Ok)).unwrap();
        assert_eq!(file.len(), 1000);
        for _ in 0..2 {
            let back: Vec<u64> = file.read().unwrap().collect::<io::Result<_>>().unwrap();
            assert_eq!(back, (0..1000u64).rev().collect::<Vec<_>>());
        }
        // Readers of the one open file keep their own places, however they interleave.
        let (mut a, mut b) = (file.read().unwrap(), file.read().unwrap());
        for n in (500..1000u64).rev() {
            assert_eq!(a.next().unwrap().unwrap(), n);
        }
        assert_eq!(b.next().unwrap().unwrap(), 999);
        assert_eq!(a.next().unwrap().unwrap(), 499);
        assert_eq!(b.count(), 999);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn temporary_files_have_no_name_once_open() {
        use std::os::fd::AsRawFd;
        let file = temp_file().unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert!(link.to_string_lossy().ends_with(" (deleted)"), "{}", link.display());
    }

    #[test]
    fn stores_give_back_what_was_put() {
        let mut store = Store::new().unwrap();
        let a = store.put(&["pc-1.contoso.local", "", "Windows11"]).unwrap();
        let long = "é".repeat(40_000);
        let b = store.put(&[&long, "x"]).unwrap();
        let store = store.freeze().unwrap();
        assert_eq!(store.get(a).unwrap(), vec!["pc-1.contoso.local", "", "Windows11"]);
        let back = store.get(b).unwrap();
        assert_eq!(back.len(), 1, "no room left for the second field");
        assert!(back[0].len() == u16::MAX as usize - 3 && back[0].chars().all(|c| c == 'é'), "cut at a boundary");
        assert!(Ref::NONE.is_none() && !a.is_none());
    }

    #[test]
    fn fields_lent_are_the_fields_stored() {
        let mut store = Store::new().unwrap();
        let many: Vec<String> = (0..20).map(|i| format!("field {i}")).collect();
        let long = "x".repeat(600);
        let entries: Vec<Vec<&str>> = vec![
            vec![],
            vec![""],
            many[..8].iter().map(String::as_str).collect(),
            many[..9].iter().map(String::as_str).collect(),
            many.iter().map(String::as_str).collect(),
            vec!["a", &long, "b"],
        ];
        let at: Vec<Ref> = entries.iter().map(|fields| store.put(fields).unwrap()).collect();
        let store = store.freeze().unwrap();
        for (fields, at) in entries.iter().zip(at) {
            let lent = store.get_with(at, |lent| lent.iter().map(|f| f.to_string()).collect::<Vec<_>>()).unwrap();
            assert_eq!(&lent, fields);
            assert_eq!(store.get(at).unwrap(), lent);
        }
    }
}
