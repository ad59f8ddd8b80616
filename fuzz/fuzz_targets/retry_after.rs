//! `Retry-After` on any text: no panic, and any wait it accepts is between one second and an hour.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use mde_offboard::defender::api::parse_retry_after;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(wait) = parse_retry_after(text, now) {
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(3600), "{text:?} -> {wait:?}");
    }
});
