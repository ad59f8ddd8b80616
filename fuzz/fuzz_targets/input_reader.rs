//! The machine-list reader on any bytes: an error or rows, never a panic; and when it reads the input, the
//! second pass agrees with the first and lines only go up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mde_offboard::input::{self, RowKind};

fuzz_target!(|data: &[u8]| {
    let Ok(scan) = input::scan_reader(data, None) else { return };
    let rows: Vec<_> = match scan.rows() {
        Ok(rows) => rows.collect::<Result<_, _>>().expect("the second pass agrees with the first"),
        Err(e) => panic!("scanned, then could not be read again: {e}"),
    };
    assert_eq!(rows.len() as u64, scan.rows);
    // A header with a name column and no id column makes the input by name: its rows are names, and count.
    let valid = rows.iter().filter(|r| matches!(r.kind, RowKind::Valid(_) | RowKind::Name(_))).count() as u64;
    assert_eq!(valid, scan.valid);
    assert!(rows.windows(2).all(|w| w[0].line < w[1].line), "lines go up");
    for row in &rows {
        if let RowKind::Valid(id) = &row.kind {
            let id = id.to_string();
            assert!(id.len() == 40 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
});
