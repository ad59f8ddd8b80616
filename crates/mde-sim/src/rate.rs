//! A quota as the service keeps it: at most `limit` calls in any window of `period`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The documented quotas of the offboard and machine APIs: 100 calls a minute and 1,500 an hour
/// (Microsoft's documentation).
pub const DEFAULT_RATES: [&str; 2] = ["100/1m", "1500/1h"];

/// A quota: at most `limit` calls in any window of `period` (service time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub limit: u32,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected N/PERIOD, for example 100/1m or 1500/1h";
        let (n, period) = s.trim().split_once('/').ok_or_else(|| expected.to_string())?;
        let limit = n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| format!("`{n}`: {expected}"))?;
        let period = humantime::parse_duration(period.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("`{period}`: {expected}"))?;
        Ok(Rate { limit, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, humantime::format_duration(self.period))
    }
}
