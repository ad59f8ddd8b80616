//! Sliding-window quotas: at most `limit` calls in any window of `period` (scaled to real time), kept per
//! API (each API's page states its own limits: the default) or per app (one budget for every call).
//!
//! A call counts when it arrives; a call answered 429 by the quota does not count (it was not served).
//! Each window keeps the exact arrival instants of the calls it counts, so a call is admitted only if every
//! window has room, and `Retry-After` is the exact time until the fullest window frees a slot.
//!
//! Besides the served calls, each window also tracks *offered* calls (every arrival of the client's,
//! 429s included) so a test can see whether a client ever sent more than a window allows. That log is
//! capped at ten times the limit to keep memory bounded under a storm: `max_offered` is exact up to that.
//!
//! Another client of the same app registration (`background`) spends the same quota: its calls count as
//! offboard calls (per API) or as the app's (per app), and are never offered. It is at least as quick as any
//! client: a call it makes when the budget is full waits, and takes the first slot that frees, before any
//! call of ours (it retries the moment there is room). So it gets its share whatever our client does, as
//! long as its rate is within the quota; calls it could not place within one period are dropped.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::stats::WindowStats;
use crate::rate::Rate;

const OFFERED_CAP_FACTOR: usize = 10;

/// How the service counts its quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuotaScope {
    /// One budget per API (each API's page states its limits): the documented reading.
    #[default]
    Api,
    /// One budget for every call of the app registration.
    App,
}

impl QuotaScope {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaScope::Api => "api",
            QuotaScope::App => "app",
        }
    }
}

/// The budget the background client's calls count against under [`QuotaScope::Api`].
pub(crate) const BACKGROUND_API: &str = "offboard";
/// The one budget's name under [`QuotaScope::App`].
const APP: &str = "app";

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

impl Window {
    fn expire(&mut self, now: Instant) {
        while self.served.front().is_some_and(|&t| now.saturating_duration_since(t) >= self.period) {
            self.served.pop_front();
        }
        while self.offered.front().is_some_and(|&t| now.saturating_duration_since(t) >= self.period) {
            self.offered.pop_front();
        }
    }

    /// How long until a call arriving at `now` has room (zero: now).
    fn wait(&self, now: Instant) -> Duration {
        if self.served.len() >= self.rate.limit as usize {
            // Expired calls are gone, so the oldest one left frees the next slot.
            (self.served[0] + self.period).saturating_duration_since(now)
        } else {
            Duration::ZERO
        }
    }

    fn serve(&mut self, now: Instant) {
        self.served.push_back(now);
        self.max_served = self.max_served.max(self.served.len() as u32);
    }

    fn stats(&self) -> WindowStats {
        WindowStats {
            quota: self.rate.to_string(),
            limit: self.rate.limit,
            period_ms: self.period.as_millis() as u64,
            max_seen: self.max_served,
            max_offered: self.max_offered,
        }
    }
}

pub(crate) struct Quotas {
    scope: QuotaScope,
    rates: Vec<Rate>,
    /// Turns a service period into real time.
    real: Box<dyn Fn(Duration) -> Duration + Send>,
    /// The windows of each budget (an API's name, or [`APP`]), made at its first call.
    budgets: BTreeMap<&'static str, Vec<Window>>,
    /// The background client's calls served, waiting for room, and dropped (they waited longer than the
    /// quota's limit allows: its rate is above the quota).
    pub(crate) background_served: u64,
    background_waiting: u64,
    pub(crate) background_refused: u64,
}

impl Quotas {
    /// `real` turns a service period into real time.
    pub(crate) fn new(
        rates: &[Rate],
        scope: QuotaScope,
        real: impl Fn(Duration) -> Duration + Send + 'static,
    ) -> Quotas {
        Quotas {
            scope,
            rates: rates.to_vec(),
            real: Box::new(real),
            budgets: BTreeMap::new(),
            background_served: 0,
            background_waiting: 0,
            background_refused: 0,
        }
    }

    /// The windows a call to `api` counts in.
    fn windows(&mut self, api: &'static str) -> &mut Vec<Window> {
        let key = match self.scope {
            QuotaScope::Api => api,
            QuotaScope::App => APP,
        };
        let (rates, real) = (&self.rates, &self.real);
        self.budgets.entry(key).or_insert_with(|| {
            rates
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
                .collect()
        })
    }

    /// Counts a call to `api` arriving at `now`, or says how long until every window of its budget has room.
    pub(crate) fn admit(&mut self, api: &'static str, now: Instant) -> Result<(), Duration> {
        if self.scope == QuotaScope::App || api == BACKGROUND_API {
            // The background client's waiting calls take the room first.
            self.place_background(now);
        }
        let windows = self.windows(api);
        let mut wait = Duration::ZERO;
        for w in windows.iter_mut() {
            w.expire(now);
            if w.offered.len() >= w.rate.limit as usize * OFFERED_CAP_FACTOR {
                w.offered.pop_front();
            }
            w.offered.push_back(now);
            w.max_offered = w.max_offered.max(w.offered.len() as u32);
            wait = wait.max(w.wait(now));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        windows.iter_mut().for_each(|w| w.serve(now));
        Ok(())
    }

    /// A call of the background client at `now`: served now if its budget has room, else it waits for the
    /// first slot that frees (dropped if as many as the smallest limit wait already).
    pub(crate) fn background(&mut self, now: Instant) {
        let most = self.rates.iter().map(|r| u64::from(r.limit)).min().unwrap_or(0);
        if self.background_waiting >= most {
            self.background_refused += 1;
        } else {
            self.background_waiting += 1;
        }
        self.place_background(now);
    }

    /// Serves the background client's waiting calls while its budget has room.
    fn place_background(&mut self, now: Instant) {
        if self.background_waiting == 0 {
            return;
        }
        let waiting = self.background_waiting;
        let windows = self.windows(BACKGROUND_API);
        windows.iter_mut().for_each(|w| w.expire(now));
        let mut placed = 0;
        while placed < waiting && windows.iter().all(|w| w.wait(now).is_zero()) {
            windows.iter_mut().for_each(|w| w.serve(now));
            placed += 1;
        }
        self.background_waiting -= placed;
        self.background_served += placed;
    }

    /// Per quota, the busiest window over every budget.
    pub(crate) fn stats(&self) -> Vec<WindowStats> {
        let mut most: Vec<WindowStats> = self
            .rates
            .iter()
            .map(|rate| WindowStats {
                quota: rate.to_string(),
                limit: rate.limit,
                period_ms: (self.real)(rate.period).as_millis() as u64,
                max_seen: 0,
                max_offered: 0,
            })
            .collect();
        for windows in self.budgets.values() {
            for (into, w) in most.iter_mut().zip(windows) {
                into.max_seen = into.max_seen.max(w.max_served);
                into.max_offered = into.max_offered.max(w.max_offered);
            }
        }
        most
    }

    /// The busiest window of each quota, by budget (an API's name, or `app`).
    pub(crate) fn stats_by_budget(&self) -> BTreeMap<String, Vec<WindowStats>> {
        self.budgets
            .iter()
            .map(|(name, windows)| (name.to_string(), windows.iter().map(Window::stats).collect()))
            .collect()
    }

    pub(crate) fn scope(&self) -> QuotaScope {
        self.scope
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
        let mut q = Quotas::new(&[rate("3/1s"), rate("5/10s")], QuotaScope::App, |d| d);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(q.admit("offboard", t0 + Duration::from_millis(i * 100)), Ok(()));
        }
        // The per-second window is full until the first call is a second old.
        assert_eq!(q.admit("offboard", t0 + Duration::from_millis(500)), Err(Duration::from_millis(500)));
        assert_eq!(q.admit("offboard", t0 + Duration::from_millis(1000)), Ok(()));
        assert_eq!(q.admit("offboard", t0 + Duration::from_millis(1100)), Ok(()));
        // Five calls in ten seconds: the ten-second window now binds.
        assert_eq!(q.admit("offboard", t0 + Duration::from_millis(2500)), Err(Duration::from_millis(7500)));
        let stats = q.stats();
        assert_eq!((stats[0].max_seen, stats[1].max_seen), (3, 5));
        assert_eq!(stats[1].max_offered, 7);
        assert_eq!(stats[0].quota, "3/1s");
    }

    #[test]
    fn scaled_periods() {
        let mut q = Quotas::new(&[rate("1/1m")], QuotaScope::App, |d| d / 100);
        let t0 = Instant::now();
        assert_eq!(q.admit("offboard", t0), Ok(()));
        assert_eq!(q.admit("offboard", t0 + Duration::from_millis(100)), Err(Duration::from_millis(500)));
        assert_eq!(q.admit("offboard", t0 + Duration::from_millis(600)), Ok(()));
    }

    #[test]
    fn per_api_each_api_has_its_own_budget_and_per_app_they_share_one() {
        let t0 = Instant::now();
        let mut per_api = Quotas::new(&[rate("2/1s")], QuotaScope::Api, |d| d);
        let mut per_app = Quotas::new(&[rate("2/1s")], QuotaScope::App, |d| d);
        for q in [&mut per_api, &mut per_app] {
            assert_eq!(q.admit("list machines", t0), Ok(()));
            assert_eq!(q.admit("offboard", t0), Ok(()));
        }
        assert_eq!(per_api.admit("offboard", t0), Ok(()));
        assert_eq!(per_api.admit("offboard", t0), Err(Duration::from_secs(1)));
        assert_eq!(per_app.admit("offboard", t0), Err(Duration::from_secs(1)));
        let by_budget = per_api.stats_by_budget();
        assert_eq!((by_budget["offboard"][0].max_seen, by_budget["list machines"][0].max_seen), (2, 1));
        assert_eq!(per_app.stats_by_budget().keys().collect::<Vec<_>>(), ["app"]);
    }

    #[test]
    fn the_background_client_spends_the_offboards_budget_and_takes_freed_room_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = Quotas::new(&[rate("3/1s")], QuotaScope::Api, |d| d);
        q.background(t0);
        assert_eq!(q.admit("list machines", t0), Ok(()));
        assert_eq!(q.admit("offboard", t0), Ok(()));
        assert_eq!(q.admit("offboard", t0), Ok(()));
        assert_eq!(q.admit("offboard", t0), Err(Duration::from_secs(1)));
        // Full: its next call waits, and takes the first slot that frees before ours.
        q.background(t0 + ms(500));
        assert_eq!((q.background_served, q.background_waiting), (1, 1));
        assert_eq!(q.admit("offboard", t0 + ms(1000)), Ok(()));
        assert_eq!((q.background_served, q.background_waiting), (2, 0));
        // Its calls are served, never offered: a client's overshoot is its own.
        assert_eq!((q.stats()[0].max_seen, q.stats()[0].max_offered), (3, 3));
        // More waiting than the limit: dropped.
        for _ in 0..5 {
            q.background(t0 + ms(1100));
        }
        assert_eq!((q.background_waiting, q.background_refused), (3, 1));
    }
}
