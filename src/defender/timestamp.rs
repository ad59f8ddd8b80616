//! The service's timestamps (`creationDateTimeUtc`, `lastSeen`, ...): RFC 3339, read and written with one
//! well-kept crate (jiff), never by hand.

use std::time::SystemTime;

/// Parses an RFC 3339 timestamp (`2024-05-01T12:34:56.1234567Z`; other offsets are converted). A time
/// without an offset is taken as UTC, as every time the service writes is (be lenient: some answers have
/// been seen without the `Z`). `None` for anything else.
pub fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let at = match text.parse::<jiff::Timestamp>() {
        Ok(at) => at,
        Err(_) => jiff::tz::Offset::UTC.to_timestamp(text.parse::<jiff::civil::DateTime>().ok()?).ok()?,
    };
    SystemTime::try_from(at).ok()
}

/// `2024-05-01T12:34:56.1234567Z`: RFC 3339 in UTC with seven fractional digits, as the service writes it
/// (and OData filters take it).
pub fn format(t: SystemTime) -> String {
    let t = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{}.{:07}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_nanosecond() / 100)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn the_services_timestamps_read_and_filters_written() {
        let t = UNIX_EPOCH + Duration::new(1_714_566_896, 123_456_700);
        assert_eq!(parse("2024-05-01T12:34:56.1234567Z"), Some(t));
        assert_eq!(parse("2024-05-01T14:34:56.1234567+02:00"), Some(t));
        assert_eq!(format(t), "2024-05-01T12:34:56.1234567Z");
        assert_eq!(parse("2024-05-01T12:34:56.1234567"), Some(t), "no offset: UTC");
        for bad in ["2024-13-01T00:00:00Z", "2024-05-01T25:00:00", "soon", ""] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
