//! The results-file reader of `--resume` and the journal on any bytes: an error or a reading, never a panic
//! and never an allocation the size of a number in the file; and a reading agrees with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mde_offboard::domain::Outcome;
use mde_offboard::files::results;

fuzz_target!(|data: &[u8]| {
    let Ok(reading) = results::read_bytes(data) else { return };
    assert!(reading.complete_up_to.is_some_and(|end| end <= data.len() as u64), "a read file has a header line");
    // One tally per distinct line; a line is finished, in doubt, or neither.
    let lines: u64 = reading.tally.values().sum();
    assert!(reading.finished.len() <= lines && reading.in_doubt.len() <= lines);
    assert!(reading.finished_machines <= reading.finished.len());
    let failed = reading.tally.get(&Outcome::Failed).copied().unwrap_or(0);
    assert_eq!(reading.finished.len(), lines - failed, "every last row but a failure is final");
    assert!(reading.in_doubt.len() <= failed, "only failures are in doubt");
});
