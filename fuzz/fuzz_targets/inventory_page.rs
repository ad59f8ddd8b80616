//! An inventory page, any bytes: no panic; read with its entries by hand (serde reading what the hand reader
//! does not), it gives the same entries, count and error as serde alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mde_offboard::commands::run::inventory::hand_reader_agrees;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(hand_reader_agrees(text), "{text}");
    }
});
