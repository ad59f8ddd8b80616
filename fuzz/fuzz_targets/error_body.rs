//! An error answer's body, any bytes with any status: no panic, always a code and a message for the row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mde_offboard::defender::api::http_failure;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, body @ ..] => (u16::from_le_bytes([*a, *b]), body),
        _ => (500, data),
    };
    let failure = http_failure(status, body);
    assert_eq!(failure.status, Some(status));
    assert!(!failure.code.is_empty() && !failure.message.is_empty());
});
