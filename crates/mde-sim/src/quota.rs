//! Sliding-window quotas: at most `limit` calls in any window of `period` (scaled to real time).
//!
//! A call counts when it arrives; a call answered 429 by the quota does not count (it was not served).
//! Each window keeps the exact arrival instants of the calls it counts, so a call is admitted only if every
//! window has room, and `Retry-After` is the exact time until the fullest window frees a slot.
//!
//! Besides the served calls, each window also tracks *offered* calls (every arrival, 429s included) so a
//! test can see whether a client ever sent more than a window allows. That log is capped at ten times the
//! limit to keep memory bounded under a storm: `max_offered` is exact up to that.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::stats::WindowStats;
use crate::rate::Rate;

const OFFERED_CAP_FACTOR: usize = 10;

#[derive(Debug)]
struct Window {
    rate: Rate,
    /// The period in real time.
    period: Duration,
    served: VecDeque<Instant>,
    offered: VecDeque<Instant>,
    max_served: u32,
    max_offered: u32,
}

#[derive(Debug)]
pub(crate) struct Quotas {
    windows: Vec<Window>,
}

impl Quotas {
    /// `real` turns a service period into real time.
    pub(crate) fn new(rates: &[Rate], real: impl Fn(Duration) -> Duration) -> Quotas {
        let windows = rates
            .iter()
            .map(|&rate| Window {
                rate,
                period: real(rate.period),
                // Grown as calls come: a limit of billions must not allocate up front.
                served: VecDeque::with_capacity((rate.limit as usize).min(4096)),
                offered: VecDeque::new(),
                max_served: 0,
                max_offered: 0,
            })
            .collect();
        Quotas { windows }
    }

    /// Counts a call arriving at `now`, or says how long until every window has room.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        for w in &mut self.windows {
            while w.served.front().is_some_and(|&t| now.saturating_duration_since(t) >= w.period) {
                w.served.pop_front();
            }
            while w.offered.front().is_some_and(|&t| now.saturating_duration_since(t) >= w.period) {
                w.offered.pop_front();
            }
            if w.offered.len() >= w.rate.limit as usize * OFFERED_CAP_FACTOR {
                w.offered.pop_front();
            }
            w.offered.push_back(now);
            w.max_offered = w.max_offered.max(w.offered.len() as u32);
            if w.served.len() >= w.rate.limit as usize {
                // Expired calls are gone, so the oldest one left frees the next slot.
                let oldest = w.served[0];
                wait = wait.max((oldest + w.period).saturating_duration_since(now));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for w in &mut self.windows {
            w.served.push_back(now);
            w.max_served = w.max_served.max(w.served.len() as u32);
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> Vec<WindowStats> {
        self.windows
            .iter()
            .map(|w| WindowStats {
                quota: w.rate.to_string(),
                limit: w.rate.limit,
                period_ms: w.period.as_millis() as u64,
                max_seen: w.max_served,
                max_offered: w.max_offered,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn every_window_binds_and_waits_are_exact() {
        let mut q = Quotas::new(&[rate("3/1s"), rate("5/10s")], |d| d);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(q.admit(t0 + Duration::from_millis(i * 100)), Ok(()));
        }
        // The per-second window is full until the first call is a second old.
        assert_eq!(q.admit(t0 + Duration::from_millis(500)), Err(Duration::from_millis(500)));
        assert_eq!(q.admit(t0 + Duration::from_millis(1000)), Ok(()));
        assert_eq!(q.admit(t0 + Duration::from_millis(1100)), Ok(()));
        // Five calls in ten seconds: the ten-second window now binds.
        assert_eq!(q.admit(t0 + Duration::from_millis(2500)), Err(Duration::from_millis(7500)));
        let stats = q.stats();
        assert_eq!((stats[0].max_seen, stats[1].max_seen), (3, 5));
        assert_eq!(stats[1].max_offered, 7);
        assert_eq!(stats[0].quota, "3/1s");
    }

    #[test]
    fn scaled_periods() {
        let mut q = Quotas::new(&[rate("1/1m")], |d| d / 100);
        let t0 = Instant::now();
        assert_eq!(q.admit(t0), Ok(()));
        assert_eq!(q.admit(t0 + Duration::from_millis(100)), Err(Duration::from_millis(500)));
        assert_eq!(q.admit(t0 + Duration::from_millis(600)), Ok(()));
    }
}
