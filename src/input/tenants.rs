//! A list of several tenants' machines: a tenant column (`TenantId` or `Tenant`, a GUID or a domain such as
//! `contoso.onmicrosoft.com`) beside the id column.
//!
//! [`tenant_column`] reads only the header, to tell a list of several tenants from one of a single tenant.
//! [`partition`] then reads the list once and splits it, on disk, into one file per tenant holding the
//! header and that tenant's rows only, each record as written in the list with its line in the list put
//! before it as a first field (the blank lines and records between rows left out). The single-tenant run
//! reads such a file as it reads any list, told that it is numbered ([`super::Format::numbered`]): it takes
//! each row's line from that field, so the `line` of the results, the duplicates and a resume are the
//! lines of the list, with nothing to translate. Memory stays flat in the rows (one write buffer per
//! tenant); the files together hold the list once, plus the line numbers: a tenant reads its own rows,
//! not the list's. Splitting the same list again writes the same files, so a resume finds each tenant's
//! list as it began.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Format, Keys, Prepared, RowReader, Source, find_header};
use crate::error::{Error, Result};
use crate::files::extsort::SharedReader;
pub use crate::settings::tenants::normalise_tenant;

/// The header names taken as the tenant column, compared after [`super::normalise_header`].
const TENANT_HEADERS: [&str; 2] = ["tenantid", "tenant"];
/// The write buffer of each tenant's file.
const BUFFER: usize = 8 << 10;

/// One tenant's share of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// As the list names it (a GUID or a domain), lowercase.
    pub tenant: String,
    /// The tenant's list: the header and its rows, each after its line in the list ([`super::Format::numbered`]).
    pub input: PathBuf,
    /// Its data rows.
    pub rows: u64,
    /// The fields' separator, as the list was read: the tenant's list is read with it.
    pub delimiter: u8,
}

/// The tenant column of the list's header (as written), if it has one. Reads the first line only.
pub fn tenant_column(path: &Path, format: &Format) -> Result<Option<String>> {
    let source = Source::Path(path.to_path_buf());
    let file = File::open(path).map_err(|e| source.error(format!("cannot open: {e}")))?;
    let mut reader = RowReader::open(&source, file, Keys::default(), format.delimiter, None)?;
    let Some(first) = reader.next_record()? else { return Ok(None) };
    Ok(header_of(&first.fields))
}

/// The tenant column among `headers`, as written.
pub(super) fn header_of(headers: &[String]) -> Option<String> {
    find_header(headers, &TENANT_HEADERS).map(|column| headers[column].trim().to_string())
}

/// Splits the list at `path` by its tenant column into one list per tenant in `dir` (created if need be),
/// in the order the tenants first appear. A row whose tenant cell is empty is `default_tenant`'s (the one
/// `--tenant-id` names); without one, or with a cell that names no tenant, the list is refused, naming the
/// line.
pub fn partition(path: &Path, format: &Format, default_tenant: Option<&str>, dir: &Path) -> Result<Vec<Partition>> {
    let source = Source::Path(path.to_path_buf());
    let file = Arc::new(File::open(path).map_err(|e| source.error(format!("cannot open: {e}")))?);
    let mut reader =
        RowReader::open(&source, SharedReader::new(file.clone()), Keys::default(), format.delimiter, None)?;
    // The same bytes the records are parsed from, copied as they are.
    let mut raw = Prepared::new(SharedReader::new(file)).map_err(|e| source.error(format!("cannot read: {e}")))?;
    let header = reader.next_record()?.ok_or_else(|| source.error("is empty: it has no header"))?;
    let column = find_header(&header.fields, &TENANT_HEADERS)
        .ok_or_else(|| source.error("has no tenant column (TenantId or Tenant)"))?;
    let default_tenant = default_tenant.and_then(normalise_tenant);
    let dir_error = |e: std::io::Error| Error::Output { path: dir.to_path_buf(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(dir_error)?;

    let delimiter = reader.delimiter;
    // The bytes of the record just read, as written in the list (the blank lines and records before it left
    // out), ending with a line break.
    let mut consumed = 0;
    let mut take = |reader: &RowReader<SharedReader>, slice: &mut Vec<u8>| -> Result<()> {
        let (start, end) = (reader.start, reader.csv.position().byte());
        let read_error = |e: std::io::Error| source.error(format!("cannot read: {e}"));
        std::io::copy(&mut (&mut raw).take(start - consumed), &mut std::io::sink()).map_err(read_error)?;
        slice.resize((end - start) as usize, 0);
        raw.read_exact(slice).map_err(read_error)?;
        consumed = end;
        slice.drain(..slice.iter().take_while(|&&b| b == b'\n').count());
        if slice.last() != Some(&b'\n') {
            slice.push(b'\n');
        }
        Ok(())
    };
    let mut head = Vec::new();
    take(&reader, &mut head)?;
    let head = [format!("{}{}", header.line, char::from(delimiter)).as_bytes(), &head].concat();
    let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
    let mut order = Vec::new();
    let mut slice = Vec::new();
    while let Some(record) = reader.next_record()? {
        take(&reader, &mut slice)?;
        let cell = record.fields.get(column).map(|c| c.trim()).unwrap_or_default();
        let tenant = match (cell.is_empty(), &default_tenant) {
            (true, Some(default)) => default.clone(),
            (true, None) => {
                return Err(source.error(format!(
                    "line {}: the tenant cell is empty; name the row's tenant (a GUID or a domain such as \
                     contoso.onmicrosoft.com), or give --tenant-id for the rows without one",
                    record.line
                )));
            }
            (false, _) => normalise_tenant(cell).ok_or_else(|| {
                source.error(format!(
                    "line {}: `{}` is not a tenant id (a GUID) or a domain such as contoso.onmicrosoft.com",
                    record.line,
                    super::list_one(&cell.escape_debug().to_string())
                ))
            })?,
        };
        if !tenants.contains_key(&tenant) {
            let input = dir.join(format!("{tenant}.input.csv"));
            let mut out = BufWriter::with_capacity(BUFFER, File::create(&input).map_err(dir_error)?);
            out.write_all(&head).map_err(dir_error)?;
            tenants.insert(tenant.clone(), Tenant { out, input, rows: 0 });
            order.push(tenant.clone());
        }
        let out = tenants.get_mut(&tenant).expect("inserted above");
        // The row as written, after its line in the list.
        write!(out.out, "{}{}", record.line, char::from(delimiter)).map_err(dir_error)?;
        out.out.write_all(&slice).map_err(dir_error)?;
        out.rows += 1;
    }
    let mut partitions = Vec::with_capacity(order.len());
    for tenant in order {
        let Tenant { out, input, rows } = tenants.remove(&tenant).expect("every tenant in order");
        out.into_inner().map_err(|e| dir_error(e.into_error()))?.sync_all().map_err(dir_error)?;
        partitions.push(Partition { tenant, input, rows, delimiter });
    }
    Ok(partitions)
}

/// A tenant's list being written.
struct Tenant {
    out: BufWriter<File>,
    input: PathBuf,
    rows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0d3e5c1a-7b2f-4e8d-9a61-5f4c3b2a1d00";

    fn lines_of(scan: &crate::input::Scan) -> Vec<(u64, String)> {
        scan.rows().unwrap().map(|r| r.unwrap()).map(|r| (r.line, r.raw)).collect()
    }

    #[test]
    fn each_tenant_gets_its_rows_at_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.csv");
        let (m1, m2, m3) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
        let text = format!(
            "\u{feff}MachineId;Tenant Id;Note\r\n{m1};{A};x\r\n\r\n{m2};Contoso.onmicrosoft.com;\"two\nlines\"\n{m3};;y\n{m1};contoso.onmicrosoft.com;z"
        );
        std::fs::write(&list, text).unwrap();
        let format = Format::default();
        assert_eq!(tenant_column(&list, &format).unwrap().as_deref(), Some("Tenant Id"));
        let parts = partition(&list, &format, Some(&A.to_uppercase()), &dir.path().join("t")).unwrap();
        let tenants: Vec<(&str, u64)> = parts.iter().map(|p| (p.tenant.as_str(), p.rows)).collect();
        assert_eq!(tenants, [(A, 2), ("contoso.onmicrosoft.com", 2)]);
        // Each holds its own rows as written, each after its line in the list.
        let text = |p: &Partition| std::fs::read_to_string(&p.input).unwrap();
        assert_eq!(text(&parts[0]), format!("1;MachineId;Tenant Id;Note\r\n2;{m1};{A};x\r\n6;{m3};;y\n"));
        assert_eq!(
            text(&parts[1]),
            format!(
                "1;MachineId;Tenant Id;Note\r\n4;{m2};Contoso.onmicrosoft.com;\"two\nlines\"\n7;{m1};contoso.onmicrosoft.com;z\n"
            )
        );
        let numbered = Format { numbered: true, delimiter: Some(parts[0].delimiter), ..Format::default() };
        let scan = |p: &Partition| crate::input::scan_format(Source::Path(p.input.clone()), &numbered).unwrap();
        assert_eq!(lines_of(&scan(&parts[0])), [(2, m1.clone()), (6, m3)]);
        assert_eq!(lines_of(&scan(&parts[1])), [(4, m2), (7, m1.clone())]);
        // Its lines are the list's: a row repeating an id is the duplicate of its tenant's first.
        assert_eq!(scan(&parts[1]).duplicates, 0);
        // Read as an ordinary list, a tenant's list is refused for what it is not.
        let wrong = crate::input::scan_format(Source::Path(dir.path().join("list.csv")), &numbered).unwrap_err();
        assert!(wrong.to_string().contains("line 1: does not start with the row's line"), "{wrong}");
        // The same list splits into the same files.
        let again = partition(&list, &format, Some(A), &dir.path().join("u")).unwrap();
        for (a, b) in parts.iter().zip(&again) {
            assert_eq!(std::fs::read(&a.input).unwrap(), std::fs::read(&b.input).unwrap());
        }
    }

    #[test]
    fn a_row_without_a_tenant_needs_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.csv");
        std::fs::write(&list, format!("MachineId,TenantId\n{},\n", "a".repeat(40))).unwrap();
        let err = partition(&list, &Format::default(), None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 2: the tenant cell is empty"), "{err}");
        std::fs::write(&list, format!("MachineId,TenantId\n{},contoso\n", "a".repeat(40))).unwrap();
        let err = partition(&list, &Format::default(), None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 2: `contoso` is not a tenant id"), "{err}");
        std::fs::write(&list, format!("MachineId\n{}\n", "a".repeat(40))).unwrap();
        assert_eq!(tenant_column(&list, &Format::default()).unwrap(), None);
    }
}
