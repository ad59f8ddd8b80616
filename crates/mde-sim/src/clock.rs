//! Service time, timestamps and ids.
//!
//! The simulated service runs `time_scale` times faster than real time from the moment it starts: its clock
//! reads the wall clock at start plus the scaled real time since. Timestamps it shows (action times) are
//! service time, so they agree with the durations of the lifecycle; quota windows and token expiry are
//! kept in real `Instant`s, scaled once.

use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
    wall_start: SystemTime,
    scale: f64,
}

impl Clock {
    pub(crate) fn new(scale: f64) -> Clock {
        Clock { start: Instant::now(), wall_start: SystemTime::now(), scale }
    }

    /// Service time elapsed between two real instants (zero if `to` is earlier).
    pub(crate) fn service_between(&self, from: Instant, to: Instant) -> Duration {
        to.saturating_duration_since(from).mul_f64(self.scale)
    }

    /// The service's wall-clock time at a real instant.
    pub(crate) fn service_time(&self, at: Instant) -> SystemTime {
        self.wall_start + self.service_between(self.start, at)
    }

    /// Real time since the simulator started.
    pub(crate) fn real_elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    /// How long a service duration lasts in real time (at least a nanosecond).
    pub(crate) fn real(&self, service: Duration) -> Duration {
        service.div_f64(self.scale).max(Duration::from_nanos(1))
    }
}

/// `2024-05-01T12:34:56.1234567Z`: RFC 3339 in UTC with seven fractional digits, as the API writes it.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{}.{:07}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_nanosecond() / 100)
}

/// `2024-05-01 12:34:56Z`: how Entra ID writes the `timestamp` of an error.
pub(crate) fn entra_timestamp(t: SystemTime) -> String {
    let t = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:34:56Z`, fractions and `+01:00` offsets allowed).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    s.parse::<jiff::Timestamp>().ok().and_then(|t| SystemTime::try_from(t).ok())
}

/// A well-mixed 64-bit hash of some parts: the simulator's only source of seeded decisions.
pub(crate) fn mix(seed: u64, parts: &[&[u8]]) -> u64 {
    // FNV-1a over the bytes, then the splitmix64 finalizer so that nearby inputs land far apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in parts {
        for &byte in *part {
            h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A hash as a number in `[0, 1)`.
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A GUID in the usual 8-4-4-4-12 form, version 4.
pub(crate) fn guid(bits: u128) -> String {
    let b = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        b >> 96,
        (b >> 80) & 0xffff,
        (b >> 64) & 0xffff,
        (b >> 48) & 0xffff,
        b & 0xffff_ffff_ffff
    )
}

/// A fresh random GUID (correlation ids and the like).
pub(crate) fn random_guid() -> String {
    guid(fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_714_566_896, 123_456_700);
        assert_eq!(rfc3339(t), "2024-05-01T12:34:56.1234567Z");
        assert_eq!(parse_rfc3339("2024-05-01T12:34:56.1234567Z"), Some(t));
        assert_eq!(parse_rfc3339("2024-05-01T14:34:56.1234567+02:00"), Some(t));
        assert_eq!(entra_timestamp(t), "2024-05-01 12:34:56Z");
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(UNIX_EPOCH + Duration::from_secs(951_782_400)));
        for bad in [
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T00:00:00",
            "2024-05-01T00:00:00.Z",
            "x024-05-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn guids_look_like_guids() {
        let g = guid(u128::MAX);
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        assert!(random_guid() != random_guid());
    }

    #[test]
    fn scaled_clock() {
        let c = Clock::new(100.0);
        assert_eq!(c.real(Duration::from_secs(60)), Duration::from_millis(600));
        let later = c.start + Duration::from_millis(10);
        assert_eq!(c.service_between(c.start, later), Duration::from_secs(1));
    }
}
