//! An action call's answer, any bytes: no panic; where the hand reader of the service's usual answer reads
//! an action, serde reads the same one; and a body read as an action has a non-empty id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mde_offboard::defender::api::{hand_reader_agrees, read_answer};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(hand_reader_agrees(text), "{text}");
    }
    if let Ok(answer) = read_answer(data) {
        assert!(answer.id.as_deref().is_some_and(|id| !id.trim().is_empty()));
    }
});
