//! The one rate limiter every API call of a run goes through.
//!
//! The Defender for Endpoint API allows 100 calls a minute and 1,500 an hour, and does not say whether its
//! windows slide. The limiter keeps to the strictest reading: in *any* window of a quota's period there are
//! never more calls than its limit, for every quota of every ledger at once, while never holding a call back
//! longer than the quotas force.
//!
//! # Ledgers: one per API, or one for the app
//!
//! Each API's page states its own limits ("rate limitations for this API are 100 calls per minute and 1500
//! calls per hour"), which reads as one budget per API; whether different APIs share one is stated nowhere.
//! Under [`QuotaScope::Api`] (the default) the limiter keeps one ledger per [`Endpoint`], each with every
//! quota: a list's pre-flight reads and `run --wait`'s tracking then take nothing from the offboards' hour.
//! Under [`QuotaScope::App`] every call passes one ledger. Each ledger is exact on its own (below).
//!
//! **The safe fallback.** A 429 under `Api` that starts a throttling spell is one the ledgers cannot explain:
//! the call's ledger had room for it in every window. The service counts otherwise (per app), or another
//! client spends the same quota; either way the limiter switches to `App` for the rest of the run: the
//! ledgers are merged into one, every call in flight and every release kept, so the merged ledger is as
//! exact as the single one would have been. If throttling spells keep coming under `App`, another client
//! is spending the quota: each spell lowers the run's own share of every quota by [`SHARE_STEP`] percent
//! (down to [`SHARE_MIN`]), and a spell of quiet as long as the longest quota's period raises it back one
//! step. Neither changes the throttling below: one 429 per pause, whatever the scope.
//!
//! # How
//!
//! **The ledger is the exact part.** The service counts a call when it *arrives*, somewhere between the
//! moment we send it and the moment its answer comes back; the client cannot see when. So a call occupies
//! its quotas from the instant its [`Permit`] is taken until one full period after its answer came back
//! ([`Permit::finish`], or the permit's drop). Per quota the ledger holds the number of calls in flight and a
//! queue of release instants (answer + period, to the millisecond and rounded up: a slot is never freed
//! early). A call may start only when, for every quota,
//! `in_flight + unexpired releases < limit`, and it then takes a slot in every quota at once (one mutex
//! guards all of them). Since a call's arrival lies inside its held span `[send, answer + period)`, any
//! window of the period that contains arrivals of `limit + 1` calls would need `limit + 1` held spans to
//! overlap at the start of the last of them, which the ledger refuses. This is also as fast as the quotas
//! allow (to within that millisecond): a call starts at the first instant every quota has room, so 100 calls under 100/1m all
//! start at once, and 1,500 calls under 100/1m + 1500/1h take about 15 minutes.
//!
//! **The GCRA is the steady-rate gate, built on governor.** Each quota also has a governor GCRA with rate
//! `limit / period` and burst `limit`, checked after the ledger agrees. A single GCRA cannot be the whole
//! limiter: with burst `limit` it lets through up to `2 * limit - 1` calls in one sliding window, and with
//! burst 1 it caps a run at the long window's average (1,500 calls in an hour instead of 15 minutes). Next
//! to the ledger it never slows a run down: the ledger spaces any `limit` starts at least one period apart,
//! so starts `n` and `n + k` are at least `floor(k / limit) * period` apart, which is what GCRA conformance
//! asks (`(k - limit + 1) * period / limit`; governor rounds `period / limit` down, which only loosens it).
//! It is the independent second statement of the long-run rate, computed from send times alone: should
//! the ledger ever admit a call the GCRA refuses, the call waits for the GCRA (the safe side) and a
//! warning is logged. Tests assert that this never happens.
//!
//! Both gates judge the same instant: the time is read once per decision, from [`tokio::time::Instant`]
//! (so tokio's paused test clock drives everything), and handed to governor through a `DecisionClock`.
//! [`earliest_schedule`] runs the very same gates over simulated time, so its answer is what the limiter
//! does.
//!
//! **Pauses.** After a 429, [`Limiter::pause_until`] stops every acquire until the given instant; the latest
//! pause wins and a pause never shortens an existing one.
//!
//! **Throttling.** A 429 says the service counts more than the ledger knows of (another tool spends the same
//! quota, or the service counts differently), so the pool, not the call, backs off ([`Permit::throttled`]):
//! 429s in a row across the pool lengthen the pause exponentially from the retry delay, up to
//! [`THROTTLE_PAUSE_MAX`], whatever `Retry-After` says (a longer `Retry-After` still wins). While the pool
//! is throttled only one call at a time is sent (the probe); the first answer that is not a 429 to a call
//! sent after the last 429 ([`Permit::answered`]) ends it, and every worker goes on. A 429 or an answer to a
//! call sent before the latest counted 429 judges a moment already judged: it neither lengthens the pause
//! nor ends it. So a service that throttles for a time `T` sees about `concurrency + log2(T / delay) +
//! T / THROTTLE_PAUSE_MAX` calls in it, whatever its `Retry-After`.
//!
//! **Waiting** never polls: a waiter sleeps until the earliest instant a full quota gains room (its oldest
//! release, the GCRA's not-before, or the end of a pause), or until a permit finishes (a [`Notify`]), since a
//! finish turns an in-flight call into a release the waiter did not know of. Timers fire at or after their
//! deadline, never before, and every decision re-reads the clock, so lateness costs time, never safety.
//! Waiters are not queued in order: whoever re-checks first after a change wins (workers are symmetric).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::settings::{QuotaScope, Rate};

/// The longest pause the pool's own backoff sets after 429s in a row (a `Retry-After` may ask for more): one
/// call every five minutes while the service keeps throttling.
pub const THROTTLE_PAUSE_MAX: Duration = Duration::from_secs(300);
/// How much of every quota a run gives up (percent) at each throttling spell under [`QuotaScope::App`], and
/// takes back after a quiet spell.
pub const SHARE_STEP: u32 = 10;
/// The least share of the quotas a run lowers itself to (percent).
pub const SHARE_MIN: u32 = 10;

/// An API the tool calls, each with its own page, and its own quotas under [`QuotaScope::Api`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// `POST /api/machines/{id}/offboard`.
    Offboard,
    /// `GET /api/machines`.
    ListMachines,
    /// `GET /api/machines/{id}`.
    GetMachine,
    /// `GET /api/machineactions`.
    ListActions,
    /// `POST /api/machineactions/{id}/cancel`.
    CancelAction,
    /// `POST /api/machines/{id}/tags` and `POST /api/machines/AddOrRemoveTagForMultipleMachines`: one budget
    /// for both (sharing one is the safe side).
    Tags,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Offboard,
        Endpoint::ListMachines,
        Endpoint::GetMachine,
        Endpoint::ListActions,
        Endpoint::CancelAction,
        Endpoint::Tags,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Offboard => "offboard",
            Endpoint::ListMachines => "list machines",
            Endpoint::GetMachine => "get machine",
            Endpoint::ListActions => "list actions",
            Endpoint::CancelAction => "cancel action",
            Endpoint::Tags => "tags",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Paces every API call of a run; share it as `Arc<Limiter>`.
pub struct Limiter {
    /// Time zero of the ledger and the GCRAs; instants are kept as nanoseconds since it.
    origin: Instant,
    state: Mutex<State>,
    /// Woken when a permit finishes: a waiter blocked only by calls in flight learns its release instant.
    finished: Notify,
}

struct State {
    /// The quotas as configured (each ledger keeps `share` percent of them).
    rates: Vec<Rate>,
    scope: QuotaScope,
    /// One per [`Endpoint`] under [`QuotaScope::Api`] (in [`Endpoint::ALL`]'s order), one under `App`.
    ledgers: Vec<Gates>,
    /// The scope was switched from `Api` to `App` by a 429 the per-API ledgers could not explain.
    switched: bool,
    /// The percentage of every quota this run allows itself, and the least it came to.
    share: u32,
    lowest_share: u32,
    /// When the share last changed: a quiet spell as long as the longest period from then raises it.
    share_changed: Instant,
    pause: Option<Instant>,
    acquired: u64,
    waited: Duration,
    pauses: u64,
    throttle: Throttle,
}

/// The pool's throttling (see the module doc).
#[derive(Debug, Default)]
struct Throttle {
    /// 429s in a row across the pool, counting only calls sent after the one before was counted.
    in_a_row: u32,
    /// Bumped at each counted 429: a permit taken in an earlier round answers for a moment already judged.
    round: u64,
    /// The one call out while the pool is throttled.
    probe_out: bool,
}

/// What the limiter has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Permits handed out.
    pub acquired: u64,
    /// 429s in a row across the pool now (0: not throttled).
    pub throttled_in_a_row: u32,
    /// Permits out now: calls sent whose answer has not come back.
    pub in_flight: u64,
    /// Total time spent in [`Limiter::acquire`] by the calls that got a permit (summed over callers).
    pub waited: Duration,
    /// Calls to [`Limiter::pause_until`] that set or lengthened a pause.
    pub pauses: u64,
    /// How the quotas are counted now, and whether a 429 switched the run from `Api` to `App`.
    pub scope: QuotaScope,
    pub switched: bool,
    /// The percentage of the quotas the run allows itself now, and the least it came to (100: never lowered).
    pub share: u32,
    pub lowest_share: u32,
}

/// What changed in the limiter's view of the quotas, for the log.
enum Verdict {
    Switched,
    Lowered(u32),
    Raised(u32),
}

/// The right to send one call. Finish it when the answer comes back; dropping it counts as finishing.
#[must_use = "a permit holds a slot in every quota until it is finished or dropped"]
pub struct Permit {
    limiter: Arc<Limiter>,
    endpoint: Endpoint,
    /// The throttling round it was taken in.
    round: u64,
    /// It is the one call out while the pool is throttled.
    probe: bool,
}

impl Limiter {
    /// A limiter keeping to every quota in `rates` at once, counted as `scope` says; no rates means no limit
    /// (pauses still apply).
    pub fn new(rates: &[Rate], scope: QuotaScope) -> Arc<Limiter> {
        let ledgers = match scope {
            QuotaScope::Api => Endpoint::ALL.iter().map(|_| Gates::new(rates, 100)).collect(),
            QuotaScope::App => vec![Gates::new(rates, 100)],
        };
        let origin = Instant::now();
        Arc::new(Limiter {
            origin,
            state: Mutex::new(State {
                rates: rates.to_vec(),
                scope,
                ledgers,
                switched: false,
                share: 100,
                lowest_share: 100,
                share_changed: origin,
                pause: None,
                acquired: 0,
                waited: Duration::ZERO,
                pauses: 0,
                throttle: Throttle::default(),
            }),
            finished: Notify::new(),
        })
    }

    /// Waits until every quota of `endpoint`'s ledger has room and no pause is in force, then takes a slot
    /// in every quota of it.
    ///
    /// Cancel-safe: dropping the future while it waits holds nothing.
    pub async fn acquire(self: &Arc<Self>, endpoint: Endpoint) -> Permit {
        let asked = Instant::now();
        loop {
            // Registered before looking at the state, so a finish between the look and the wait still wakes us.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let wake = {
                let mut state = self.lock();
                let now = Instant::now();
                let throttled = state.throttle.in_a_row > 0;
                match state.pause.filter(|until| *until > now) {
                    Some(until) => Some(until),
                    // Throttled, and the probe is out: its finish wakes us.
                    None if throttled && state.throttle.probe_out => None,
                    None => {
                        let at = self.nanos(now);
                        match state.ledger(endpoint).try_start(at) {
                            Ok(()) => {
                                state.acquired += 1;
                                state.waited += now.saturating_duration_since(asked);
                                state.throttle.probe_out |= throttled;
                                let round = state.throttle.round;
                                return Permit { limiter: Arc::clone(self), endpoint, round, probe: throttled };
                            }
                            Err(wake) => wake.map(|at| self.origin + Duration::from_nanos(at)),
                        }
                    }
                }
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = &mut finished => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => finished.await,
            }
        }
    }

    /// Holds every acquire until `until` (after a 429). A pause never shortens one already in force.
    pub fn pause_until(&self, until: Instant) {
        self.lock().pause_until(until);
        // Waiters sleeping towards an earlier instant re-check then and find the pause: no wake-up needed.
    }

    /// The end of the pause in force now, if any.
    pub fn paused_until(&self) -> Option<Instant> {
        let now = Instant::now();
        self.lock().pause.filter(|until| *until > now)
    }

    pub fn stats(&self) -> LimiterStats {
        let state = self.lock();
        LimiterStats {
            acquired: state.acquired,
            throttled_in_a_row: state.throttle.in_a_row,
            in_flight: state.ledgers.iter().map(|l| l.in_flight).sum(),
            waited: state.waited,
            pauses: state.pauses,
            scope: state.scope,
            switched: state.switched,
            share: state.share,
            lowest_share: state.lowest_share,
        }
    }

    /// The calls its ledgers count now, for a later session of the same app (the `.calls` file beside the
    /// run lock): per ledger (each API's under [`QuotaScope::Api`], `None` for the one of `App`), when each
    /// call still counting in some quota was answered, oldest first; a call in flight counts as answered at
    /// `in_flight_by`, the latest its answer can come.
    pub fn spent(&self, in_flight_by: Instant) -> Vec<(Option<Endpoint>, Vec<Instant>)> {
        let state = self.lock();
        let now = self.nanos(Instant::now());
        let endpoints: Vec<Option<Endpoint>> = match state.scope {
            QuotaScope::Api => Endpoint::ALL.iter().copied().map(Some).collect(),
            QuotaScope::App => vec![None],
        };
        let mut spent = Vec::new();
        for (endpoint, ledger) in endpoints.into_iter().zip(&state.ledgers) {
            // Every call is in every quota: the longest period's releases hold all that still count.
            let Some(quota) = ledger.quotas.iter().max_by_key(|q| q.period) else { continue };
            let period = Duration::from_nanos(quota.period);
            let mut answered: Vec<Instant> = quota
                .releases
                .iter()
                .filter(|&release| release > now)
                .filter_map(|release| (self.origin + Duration::from_nanos(release)).checked_sub(period))
                .collect();
            answered.extend(std::iter::repeat_n(in_flight_by, ledger.in_flight as usize));
            if !answered.is_empty() {
                spent.push((endpoint, answered));
            }
        }
        spent
    }

    /// Counts the calls an earlier session of the same app made, as [`Limiter::spent`] gave them: each holds
    /// a slot in every quota of its API's ledger (`None`: of every ledger) until one period after it was
    /// answered, as the service still counts it. Before the first call: the run starts with what the
    /// service's windows hold, not with empty budgets.
    pub fn count_earlier(&self, spent: &[(Option<Endpoint>, Vec<Instant>)]) {
        let mut state = self.lock();
        let scope = state.scope;
        let now = self.nanos(Instant::now());
        for (index, ledger) in state.ledgers.iter_mut().enumerate() {
            let mine = |endpoint: &Option<Endpoint>| match (scope, endpoint) {
                (QuotaScope::App, _) | (QuotaScope::Api, None) => true,
                (QuotaScope::Api, Some(endpoint)) => endpoint.index() == index,
            };
            let answered: Vec<Instant> =
                spent.iter().filter(|(endpoint, _)| mine(endpoint)).flat_map(|(_, at)| at.iter().copied()).collect();
            if answered.is_empty() {
                continue;
            }
            for quota in &mut ledger.quotas {
                let period = Duration::from_nanos(quota.period);
                let mut releases: Vec<u64> = quota.releases.iter().filter(|&release| release > now).collect();
                releases.extend(answered.iter().map(|&at| self.nanos(at + period)).filter(|&release| release > now));
                quota.releases = Releases::of(releases);
            }
        }
        drop(state);
        self.finished.notify_waiters();
    }

    fn finish(&self, endpoint: Endpoint, probe: bool) {
        {
            let mut state = self.lock();
            let now = self.nanos(Instant::now());
            state.ledger(endpoint).finish(now);
            if probe {
                state.throttle.probe_out = false;
            }
        }
        self.finished.notify_waiters();
    }

    /// A call taken in `round` was answered 429: see [`Permit::throttled`].
    fn throttled(&self, round: u64, endpoint: Endpoint, retry_after: Option<Duration>, delay: Duration) -> Duration {
        let (pause, verdict) = {
            let mut state = self.lock();
            let mut verdict = None;
            if round == state.throttle.round {
                // A 429 to a call the ledger sent with room in every window, at the start of a spell: the
                // ledgers cannot explain it.
                if state.throttle.in_a_row == 0 {
                    let now = Instant::now();
                    verdict = state.unexplained_429(now, self.nanos(now));
                }
                state.throttle.in_a_row = state.throttle.in_a_row.saturating_add(1);
                state.throttle.round += 1;
            }
            let pause = throttle_pause(state.throttle.in_a_row.max(1), retry_after, delay);
            state.pause_until(Instant::now() + pause);
            (pause, verdict)
        };
        match verdict {
            Some(Verdict::Switched) => tracing::warn!(
                api = endpoint.as_str(),
                "the service answered 429 although this API's own budget had room in every window: it counts the \
                 quotas per app, or other calls spend them (another client, or a run of the same app stopped \
                 shortly before, whose calls the service still counts); every call now counts against one budget (quota \
                 scope app) for the rest of the run"
            ),
            Some(Verdict::Lowered(share)) => tracing::warn!(
                share_percent = share,
                "429s keep coming with the app's budget kept: another client spends the same quota; this run now \
                 allows itself {share}% of every quota"
            ),
            _ => {}
        }
        pause
    }

    /// A call taken in `round` was answered with anything but 429: see [`Permit::answered`].
    fn answered(&self, round: u64) {
        let mut state = self.lock();
        if round != state.throttle.round {
            return;
        }
        let raised = state.raise_share(Instant::now());
        if state.throttle.in_a_row > 0 {
            state.throttle.in_a_row = 0;
            drop(state);
            // Waiters held back for the probe may all go now.
            self.finished.notify_waiters();
        } else {
            drop(state);
        }
        if let Some(Verdict::Raised(share)) = raised {
            tracing::info!(
                share_percent = share,
                "no 429 for a full period: this run now allows itself {share}% of every quota"
            );
            self.finished.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the ledger half-updated (every update is one short block), so a
        // poisoned lock is still good to use.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        to_nanos(at.saturating_duration_since(self.origin))
    }
}

impl State {
    fn pause_until(&mut self, until: Instant) {
        if self.pause.is_none_or(|current| until > current) {
            self.pause = Some(until);
            self.pauses += 1;
        }
    }

    /// The ledger `endpoint`'s calls pass now.
    fn ledger(&mut self, endpoint: Endpoint) -> &mut Gates {
        let index = match self.scope {
            QuotaScope::Api => endpoint.index(),
            QuotaScope::App => 0,
        };
        &mut self.ledgers[index]
    }

    /// A 429 starts a spell though the call's ledger had room: switch to one budget (`Api`), or give up a
    /// step of every quota (`App`: another client spends it). `at` is `now` in the ledgers' nanoseconds.
    fn unexplained_429(&mut self, now: Instant, at: u64) -> Option<Verdict> {
        match self.scope {
            QuotaScope::Api => {
                let merged = Gates::merge(&self.rates, self.share, std::mem::take(&mut self.ledgers), at);
                self.ledgers = vec![merged];
                self.scope = QuotaScope::App;
                self.switched = true;
                self.share_changed = now;
                Some(Verdict::Switched)
            }
            QuotaScope::App if self.share > SHARE_MIN => {
                self.set_share(self.share.saturating_sub(SHARE_STEP).max(SHARE_MIN), now);
                self.lowest_share = self.lowest_share.min(self.share);
                Some(Verdict::Lowered(self.share))
            }
            QuotaScope::App => None,
        }
    }

    /// After a quiet spell as long as the longest period, one step of the quotas back.
    fn raise_share(&mut self, now: Instant) -> Option<Verdict> {
        let quiet = self.rates.iter().map(|r| r.period).max().unwrap_or_default();
        if self.share >= 100 || now.saturating_duration_since(self.share_changed) < quiet {
            return None;
        }
        self.set_share((self.share + SHARE_STEP).min(100), now);
        Some(Verdict::Raised(self.share))
    }

    fn set_share(&mut self, share: u32, now: Instant) {
        self.share = share;
        self.share_changed = now;
        for ledger in &mut self.ledgers {
            ledger.set_share(&self.rates, share);
        }
    }
}

/// The pause after the `n`th 429 in a row across the pool: `delay * 2^(n-1)`, at most [`THROTTLE_PAUSE_MAX`],
/// and at least what `Retry-After` asked for.
pub fn throttle_pause(n: u32, retry_after: Option<Duration>, delay: Duration) -> Duration {
    let backoff = delay.saturating_mul(1 << n.saturating_sub(1).min(30)).min(THROTTLE_PAUSE_MAX);
    retry_after.unwrap_or_default().max(backoff)
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Limiter")
            .field("rates", &state.rates)
            .field("scope", &state.scope)
            .field("share", &state.share)
            .field("pause", &state.pause)
            .field("in_flight", &state.ledgers.iter().map(|l| l.in_flight).sum::<u64>())
            .finish()
    }
}

impl Permit {
    /// The answer came back now: the slot stays held for one period from now, then frees.
    pub fn finish(self) {
        // The work is done by Drop, so a permit lost on an error path frees its slot the same way.
    }

    /// The call was answered 429: pauses the pool (longer with each 429 in a row across the pool, from
    /// `delay`, and at least `retry_after`) and returns the pause. Call it before [`Permit::finish`]. The
    /// first 429 of a spell is one the ledgers could not explain: under [`QuotaScope::Api`] it switches the
    /// limiter to `App`, under `App` it lowers the run's share of the quotas.
    pub fn throttled(&self, retry_after: Option<Duration>, delay: Duration) -> Duration {
        self.limiter.throttled(self.round, self.endpoint, retry_after, delay)
    }

    /// The call was answered with anything but 429: the pool is no longer throttled (unless the call was
    /// sent before the latest 429 counted).
    pub fn answered(&self) {
        self.limiter.answered(self.round);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.finish(self.endpoint, self.probe);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// How `scope` counts the quotas, in a few words for a plan or a summary.
pub fn describe_scope(scope: QuotaScope) -> &'static str {
    match scope {
        QuotaScope::Api => "counted per API",
        QuotaScope::App => "counted per app",
    }
}

/// How the quotas were counted over a run, on one line: the scope, the switch, the share given up.
pub fn describe_quotas(stats: &LimiterStats) -> String {
    let mut line = describe_scope(stats.scope).to_string();
    if stats.switched {
        line.push_str(" (switched from per API after a 429 the per-API budget could not explain)");
    }
    if stats.lowest_share < 100 {
        line.push_str(&format!(
            "; another client spent up to {}% of them: this run lowered its rate to {}% at the least, {}% at the end",
            100 - stats.lowest_share,
            stats.lowest_share,
            stats.share
        ));
    }
    line
}

/// The earliest time `calls` calls can all have completed when each takes `latency`, at most `concurrency`
/// run at once, under `rates` with the hold rule of [`Limiter`]: each call starts at the first instant a
/// worker is free and every quota has room.
///
/// It runs the limiter's own gates over simulated time, so it is what the limiter does with that many
/// workers calling `acquire`, waiting `latency` and finishing. O(calls × quotas).
pub fn earliest_schedule(rates: &[Rate], calls: u64, concurrency: usize, latency: Duration) -> Duration {
    simulate(Gates::new(rates, 100), 0, 0, calls, concurrency, latency)
}

/// When calls made from now on can all be done, by the limiter's own schedule (see [`Limiter::schedule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// From now until the last call's answer, at best.
    pub done: Duration,
    /// The quota with the longest period, when the calls already made and these together are more than it
    /// allows in one period from now: the calls that must wait for its next window.
    pub spilled: Option<(Rate, u64)>,
}

impl Limiter {
    /// When `calls` more calls to `endpoint`, each taking `latency`, at most `concurrency` at once, can all be
    /// done from now: the gates of the ledger they pass run over simulated time from their state now, the
    /// calls already in its windows (under [`QuotaScope::App`], the pre-flight's reads, say) and any pause
    /// included. So a plan shows the schedule the run will follow, and says when the longest quota pushes
    /// the last calls into its next window.
    pub fn schedule(&self, endpoint: Endpoint, calls: u64, concurrency: usize, latency: Duration) -> Schedule {
        let (gates, now, paused, in_flight) = {
            let mut state = self.lock();
            let now = Instant::now();
            // Nothing starts before a pause in force ends.
            let start = state.pause.filter(|until| *until > now).unwrap_or(now);
            let (rates, share) = (state.rates.clone(), state.share);
            let ledger = state.ledger(endpoint);
            let mut gates = Gates::new(&rates, share);
            for (copy, quota) in gates.quotas.iter_mut().zip(&ledger.quotas) {
                copy.releases = quota.releases.clone();
            }
            let in_flight = ledger.in_flight;
            (gates, self.nanos(start), start - now, in_flight)
        };
        // The longest quota's room now: the calls past it wait for releases of the calls in its window.
        let spilled = gates.quotas.iter().max_by_key(|q| q.period).and_then(|q| {
            let unexpired = q.releases.iter().filter(|&release| release > now).count() as u64;
            let room = q.limit.saturating_sub(unexpired + in_flight);
            (calls > room).then(|| (q.rate, calls - room))
        });
        let done = paused + simulate(gates, now, in_flight, calls, concurrency, latency);
        Schedule { done, spilled }
    }
}

/// Runs `calls` calls through `gates` from the instant `start`, `in_flight` calls already out (answered
/// `latency` from the start), at most `concurrency` at once, each answered `latency` after it starts: how
/// long from the start until the last answer.
fn simulate(
    mut gates: Gates,
    start: u64,
    in_flight: u64,
    calls: u64,
    concurrency: usize,
    latency: Duration,
) -> Duration {
    let workers = concurrency.max(1);
    let latency = to_nanos(latency);
    // Answer instants of the calls in flight; with one latency they come back in the order they started.
    let mut running: VecDeque<u64> = VecDeque::with_capacity(workers);
    for _ in 0..in_flight {
        running.push_back(start + latency);
    }
    gates.in_flight = in_flight;
    let (mut started, mut now, mut last_answer) = (0u64, start, start);
    while started < calls {
        let mut wake = None;
        loop {
            while running.front().is_some_and(|&answer| answer <= now) {
                let answer = running.pop_front().unwrap_or(now);
                gates.finish(answer);
            }
            if started == calls || running.len() == workers {
                break;
            }
            match gates.try_start(now) {
                Ok(()) => {
                    started += 1;
                    last_answer = now + latency;
                    running.push_back(last_answer);
                }
                Err(at) => {
                    wake = at;
                    break;
                }
            }
        }
        if started == calls {
            break;
        }
        // Nothing can change before the next answer or the instant a full quota gains room.
        now = match (running.front().copied(), wake) {
            (Some(answer), Some(at)) => answer.min(at),
            (Some(answer), None) => answer,
            (None, Some(at)) => at,
            (None, None) => {
                unreachable!("a full quota always has a call in flight or a release pending")
            }
        };
    }
    Duration::from_nanos(last_answer - start)
}

/// Bounds on the call latency assumed when estimating how long a run takes (the sign-in's round trip,
/// measured, within these).
pub const ESTIMATE_LATENCY: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(2));

/// How long `rates` and `concurrency` make `calls` offboard calls take, at best, when a call takes `latency`
/// (clamped to [`ESTIMATE_LATENCY`]), after `reads` calls of other APIs made at the start (a run's
/// pre-flight): under [`QuotaScope::App`] they are in the offboards' windows, under `Api` they are not.
pub fn estimate(
    rates: &[Rate],
    scope: QuotaScope,
    reads: u64,
    calls: u64,
    concurrency: usize,
    latency: Duration,
) -> Duration {
    let latency = to_nanos(latency.clamp(ESTIMATE_LATENCY.0, ESTIMATE_LATENCY.1));
    let mut gates = Gates::new(rates, 100);
    if scope == QuotaScope::App {
        for quota in &mut gates.quotas {
            for _ in 0..reads {
                quota.releases.push(latency + quota.period, quota.limit as usize);
            }
        }
    }
    simulate(gates, 0, 0, calls, concurrency, Duration::from_nanos(latency))
}

/// The instant every GCRA judges: the one the limiter read for the decision at hand.
///
/// governor reads its clock inside `check`; handing it the instant the ledger was judged at (rather than
/// reading the clock again) keeps both gates on the same instant, and lets [`earliest_schedule`] drive
/// them with simulated time.
#[derive(Clone, Debug, Default)]
struct DecisionClock(Arc<AtomicU64>);

impl Clock for DecisionClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(self.0.load(Ordering::Relaxed))
    }
}

type Gcra = RateLimiter<NotKeyed, InMemoryState, DecisionClock, NoOpMiddleware<Nanos>>;

/// Every quota's ledger and GCRA. Instants are nanoseconds since the limiter's origin.
struct Gates {
    clock: Arc<AtomicU64>,
    quotas: Vec<QuotaGate>,
    in_flight: u64,
    /// Calls the ledger admitted and a GCRA refused: zero unless the ledger is wrong (see the module doc).
    gcra_refusals: u64,
}

struct QuotaGate {
    rate: Rate,
    limit: u64,
    period: u64,
    /// When the calls answered lately stop counting (answer + period), oldest first. With `in_flight` it
    /// never holds more than `limit` entries once expired ones are dropped.
    releases: Releases,
    gcra: Gcra,
}

/// A quota's release instants (nanoseconds since the limiter's origin), oldest first, kept compactly: whole
/// milliseconds after `base` in a `u32` each (49 days, far more than the longest period), an instant between
/// two milliseconds rounded *up*. So a call holds its slot at most a millisecond past its period, never less
/// (the safe side), and instants on whole milliseconds from the origin, which tokio's timer keeps to, are
/// exact. A tenant of a run of many keeps 1,500 of them for the hour's quota of each API it calls.
///
/// Invariants: the offsets never decrease; `base` is the oldest instant pushed since the queue was last
/// empty, or a later one it was moved up to (by whole milliseconds, so every instant stays what it was).
/// Grown as the calls come, and only up to the quota's limit (not to the next power of two past it): of a
/// ledger per API, most see a few reads or none.
#[derive(Clone, Debug, Default)]
struct Releases {
    base: u64,
    offsets: VecDeque<u32>,
}

/// The unit of [`Releases`]' offsets: a millisecond.
const TICK: u64 = 1_000_000;

impl Releases {
    /// The releases of `instants`, in any order.
    fn of(mut instants: Vec<u64>) -> Releases {
        instants.sort_unstable();
        let mut releases = Releases::default();
        releases.offsets.reserve_exact(instants.len());
        for instant in instants {
            releases.push(instant, usize::MAX);
        }
        releases
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn instant(&self, offset: u32) -> u64 {
        self.base + u64::from(offset) * TICK
    }

    fn front(&self) -> Option<u64> {
        self.offsets.front().map(|&o| self.instant(o))
    }

    fn get(&self, index: usize) -> Option<u64> {
        self.offsets.get(index).map(|&o| self.instant(o))
    }

    fn back(&self) -> Option<u64> {
        self.offsets.back().map(|&o| self.instant(o))
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.offsets.iter().map(|&o| self.instant(o))
    }

    /// Drops the releases at or before `now`: those calls no longer count.
    fn expire(&mut self, now: u64) {
        while self.front().is_some_and(|release| release <= now) {
            self.offsets.pop_front();
        }
    }

    /// Adds `release`, held no shorter than asked: rounded up to the next millisecond after `base`, and no
    /// earlier than the latest release (the queue stays in order). The queue grows to at most `limit` entries
    /// of room while it holds fewer.
    ///
    /// An entry more than the offsets' range (49 days) older than `release` is dropped to make room: it has
    /// expired by the time `release` is pushed, since a release is at most one period (a day at most) after
    /// the instant it is pushed at.
    fn push(&mut self, release: u64, limit: usize) {
        let Some(back) = self.back() else {
            self.base = release;
            self.offsets.push_back(0);
            return;
        };
        let release = release.max(back);
        let ticks = |base: u64| (release - base).div_ceil(TICK);
        if ticks(self.base) > u64::from(u32::MAX) {
            // Move the base up to the oldest release still in range (whole milliseconds: nothing moves).
            while self.offsets.len() > 1 && self.front().is_some_and(|front| ticks(front) > u64::from(u32::MAX)) {
                self.offsets.pop_front();
            }
            let first = self.offsets.front().copied().unwrap_or(0);
            self.base = self.instant(first);
            for offset in &mut self.offsets {
                *offset -= first;
            }
            if ticks(self.base) > u64::from(u32::MAX) {
                // Only the last release was left, and it too is out of range: long expired.
                self.offsets.clear();
                self.base = release;
                self.offsets.push_back(0);
                return;
            }
        }
        let (len, capacity) = (self.offsets.len(), self.offsets.capacity());
        if len == capacity {
            let grown =
                if len < limit { capacity.saturating_mul(2).max(4).min(limit) } else { capacity.saturating_mul(2) };
            self.offsets.reserve_exact(grown.max(len + 1) - len);
        }
        self.offsets.push_back(ticks(self.base) as u32);
    }
}

impl Gates {
    /// `share` percent of every quota in `rates` (at least one call each).
    fn new(rates: &[Rate], share: u32) -> Gates {
        let clock = Arc::new(AtomicU64::new(0));
        let quotas = rates
            .iter()
            .map(|rate| {
                let kept = shared(rate, share);
                QuotaGate {
                    rate: *rate,
                    limit: u64::from(kept.limit),
                    period: to_nanos(rate.period.min(crate::settings::RATE_PERIOD_MAX)),
                    releases: Releases::default(),
                    gcra: RateLimiter::direct_with_clock(gcra_quota(&kept), DecisionClock(Arc::clone(&clock))),
                }
            })
            .collect();
        Gates { clock, quotas, in_flight: 0, gcra_refusals: 0 }
    }

    /// One ledger holding every call of `ledgers`: their calls in flight and their releases, quota by quota.
    /// Its GCRAs start afresh: counting only the calls from now on, they are looser than the ledger, which
    /// counts them all, so they still never refuse what it admits.
    /// Releases at or before `now` have expired and are left out.
    fn merge(rates: &[Rate], share: u32, ledgers: Vec<Gates>, now: u64) -> Gates {
        let mut merged = Gates::new(rates, share);
        let mut releases: Vec<Vec<u64>> = vec![Vec::new(); merged.quotas.len()];
        for ledger in ledgers {
            merged.in_flight += ledger.in_flight;
            merged.gcra_refusals += ledger.gcra_refusals;
            for (into, from) in releases.iter_mut().zip(ledger.quotas) {
                into.extend(from.releases.iter().filter(|&release| release > now));
            }
        }
        for (quota, releases) in merged.quotas.iter_mut().zip(releases) {
            quota.releases = Releases::of(releases);
        }
        merged
    }

    /// Keeps `share` percent of every quota from now on: the ledger's limits, and fresh GCRAs at them (see
    /// [`Gates::merge`] for why a fresh GCRA is safe).
    fn set_share(&mut self, rates: &[Rate], share: u32) {
        for (quota, rate) in self.quotas.iter_mut().zip(rates) {
            let kept = shared(rate, share);
            quota.limit = u64::from(kept.limit);
            quota.gcra = RateLimiter::direct_with_clock(gcra_quota(&kept), DecisionClock(Arc::clone(&self.clock)));
        }
    }

    /// Starts a call at `now` if every quota has room, taking a slot in each. Otherwise returns the instant
    /// before which nothing but a finishing call can make room (None: only a finish can).
    fn try_start(&mut self, now: u64) -> Result<(), Option<u64>> {
        let mut full = false;
        let mut wake: Option<u64> = None;
        for quota in &mut self.quotas {
            quota.releases.expire(now);
            let held = self.in_flight + quota.releases.len() as u64;
            if held >= quota.limit {
                full = true;
                // Every full quota must gain room, and each does so no earlier than the release that brings
                // it under its limit (its oldest, unless a merge or a lowered share left it over-full).
                let first = (held - quota.limit) as usize;
                if let Some(release) = quota.releases.get(first).or(quota.releases.back()) {
                    wake = Some(wake.map_or(release, |w| w.max(release)));
                }
            }
        }
        if full {
            return Err(wake);
        }
        self.clock.store(now, Ordering::Relaxed);
        for quota in &self.quotas {
            if let Err(not_until) = quota.gcra.check() {
                // Unreachable if the ledger is right. GCRAs checked before this one have counted the call:
                // that only makes them stricter.
                self.gcra_refusals += 1;
                let at = not_until.earliest_possible().as_u64().max(now + 1);
                tracing::warn!(rate = %quota.rate, "rate limiter: the GCRA refused a call the ledger admitted; waiting for it");
                return Err(Some(at));
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// A call's answer came back at `now`: it holds its slot for one more period.
    fn finish(&mut self, now: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        for quota in &mut self.quotas {
            // The expired ones first: what is left lies within one period of the new release.
            quota.releases.expire(now);
            quota.releases.push(now + quota.period, quota.limit as usize);
        }
    }
}

/// `share` percent of `rate`'s limit (rounded down, at least one call) over the same period.
fn shared(rate: &Rate, share: u32) -> Rate {
    let limit = (u64::from(rate.limit.max(1)) * u64::from(share.min(100)) / 100).max(1);
    Rate { limit: limit as u32, period: rate.period }
}

/// rate `limit / period` with burst `limit` (governor rounds `period / limit` down to whole nanoseconds).
fn gcra_quota(rate: &Rate) -> Quota {
    let burst = std::num::NonZeroU32::new(rate.limit.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    // Settings refuse longer periods; governor panics on periods past 584 years.
    let per_call = (rate.period.min(crate::settings::RATE_PERIOD_MAX) / burst.get()).max(Duration::from_nanos(1));
    Quota::with_period(per_call).unwrap_or_else(|| Quota::per_second(burst)).allow_burst(burst)
}

fn to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFBOARD: Endpoint = Endpoint::Offboard;

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn rate(limit: u32, period: Duration) -> Rate {
        Rate { limit, period }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One call as the test saw it: when it got its permit and when its answer came back.
    #[derive(Clone, Copy, Debug)]
    struct Call {
        sent: Instant,
        answered: Instant,
    }

    /// The independent checker. Whatever instant in `[sent, answered]` the service counts a call at, a
    /// window of `period` ending at `e` may hold call j iff `sent_j < e <= answered_j + period`. The most
    /// calls any window can hold is the most such spans covering one point, and that maximum is reached
    /// just after some call's send: so count, for every call i, the calls j with
    /// `sent_j <= sent_i < answered_j + period`.
    fn most_in_any_window(calls: &[Call], period: Duration) -> usize {
        calls
            .iter()
            .map(|i| calls.iter().filter(|j| j.sent <= i.sent && i.sent < j.answered + period).count())
            .max()
            .unwrap_or(0)
    }

    fn assert_within(calls: &[Call], rates: &[Rate]) {
        for r in rates {
            let most = most_in_any_window(calls, r.period);
            assert!(most <= r.limit as usize, "{most} calls in one window of {r}");
        }
    }

    /// `workers` tasks share `calls` calls; each takes a permit, waits `latency(call)`, then finishes.
    async fn run(
        limiter: &Arc<Limiter>,
        calls: usize,
        workers: usize,
        latency: impl Fn(usize) -> Duration,
    ) -> Vec<Call> {
        let next = Arc::new(AtomicU64::new(0));
        let latencies: Arc<Vec<Duration>> = Arc::new((0..calls).map(latency).collect());
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (limiter, next, latencies) = (Arc::clone(limiter), Arc::clone(&next), Arc::clone(&latencies));
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= latencies.len() {
                        return done;
                    }
                    let permit = limiter.acquire(OFFBOARD).await;
                    let sent = Instant::now();
                    if !latencies[n].is_zero() {
                        tokio::time::sleep(latencies[n]).await;
                    }
                    done.push(Call { sent, answered: Instant::now() });
                    permit.finish();
                }
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|c| c.sent);
        all
    }

    fn gcra_refusals(limiter: &Limiter) -> u64 {
        limiter.lock().ledgers.iter().map(|l| l.gcra_refusals).sum()
    }

    #[test]
    fn checker_catches_a_send_time_log() {
        // A sliding-window log on send times: 100 sent at 0 answered at 1s, 100 more sent at 60s. The
        // service may count the first batch at 1s and the second at 60s: 200 in one minute.
        let t0 = Instant::now();
        let mut calls: Vec<Call> = (0..100).map(|_| Call { sent: t0, answered: t0 + ms(1000) }).collect();
        calls.extend((0..100).map(|_| Call { sent: t0 + MINUTE, answered: t0 + MINUTE }));
        assert_eq!(most_in_any_window(&calls, MINUTE), 200);
        // One period after the answers, they no longer count.
        for c in &mut calls[100..] {
            c.sent = t0 + MINUTE + ms(1000);
        }
        assert_eq!(most_in_any_window(&calls, MINUTE), 100);
    }

    /// Before: the plan's estimate ignored the calls already in the windows (the pre-flight's reads), so
    /// 1,500 machines after 3 reads showed about 14 minutes where the run took an hour.
    #[tokio::test(start_paused = true)]
    async fn the_schedule_counts_the_calls_already_in_the_windows() {
        let rates = [rate(100, MINUTE), rate(1500, HOUR)];
        let limiter = Limiter::new(&rates, QuotaScope::App);
        let fresh = limiter.schedule(OFFBOARD, 1500, 4, ms(100));
        assert_eq!(fresh.spilled, None);
        assert!(fresh.done < Duration::from_secs(15 * 60), "{fresh:?}");
        assert_eq!(fresh.done, earliest_schedule(&rates, 1500, 4, ms(100)));
        // Three reads, as the pre-flight makes.
        run(&limiter, 3, 1, |_| ms(100)).await;
        let after_reads = limiter.schedule(OFFBOARD, 1500, 4, ms(100));
        assert_eq!(after_reads.spilled, Some((rates[1], 3)), "{after_reads:?}");
        assert!(after_reads.done > Duration::from_secs(59 * 60), "{after_reads:?}");
        // A pause in force delays the whole schedule.
        let paused = Limiter::new(&rates, QuotaScope::App);
        paused.pause_until(Instant::now() + Duration::from_secs(30));
        assert_eq!(paused.schedule(OFFBOARD, 10, 10, ms(100)).done, Duration::from_secs(30) + ms(100));
    }

    /// Per API, the pre-flight's reads are in their own ledgers: a list of exactly the hourly quota still
    /// goes at the minute quota's pace, and nothing spills into the next hour.
    #[tokio::test(start_paused = true)]
    async fn per_api_ledgers_keep_the_reads_out_of_the_offboards_windows() {
        let rates = [rate(100, MINUTE), rate(1500, HOUR)];
        let limiter = Limiter::new(&rates, QuotaScope::Api);
        for endpoint in [Endpoint::ListMachines, Endpoint::ListMachines, Endpoint::ListActions] {
            limiter.acquire(endpoint).await.finish();
        }
        let schedule = limiter.schedule(OFFBOARD, 1500, 4, ms(100));
        assert_eq!(schedule.spilled, None);
        assert_eq!(schedule.done, earliest_schedule(&rates, 1500, 4, ms(100)));
        assert!(schedule.done < 16 * MINUTE, "{schedule:?}");
        // The estimate says the same, and under one budget for the app says the reads push three machines
        // into the next hour.
        assert_eq!(estimate(&rates, QuotaScope::Api, 3, 1500, 4, ms(100)), schedule.done);
        assert!(estimate(&rates, QuotaScope::App, 3, 1500, 4, ms(100)) > 59 * MINUTE);
        // A full window of one API holds back only that API.
        let limiter = Limiter::new(&[rate(5, ms(1000))], QuotaScope::Api);
        let t0 = Instant::now();
        let held: Vec<Permit> = acquire_many(&limiter, 5).await;
        for endpoint in Endpoint::ALL.into_iter().filter(|e| *e != OFFBOARD) {
            limiter.acquire(endpoint).await.finish();
        }
        assert_eq!(Instant::now(), t0);
        assert_eq!(limiter.stats().in_flight, 5);
        drop(held);
    }

    /// What one session's ledgers spent is counted by the next's before its first call, each call until one
    /// period after its answer, in its own API's budget (or every budget, from one of the app); a call in
    /// flight as answered when its timeout ends.
    #[tokio::test(start_paused = true)]
    async fn the_calls_an_earlier_session_spent_hold_the_next_ones_windows() {
        let rates = [rate(3, ms(1000))];
        let earlier = Limiter::new(&rates, QuotaScope::Api);
        earlier.acquire(OFFBOARD).await.finish();
        tokio::time::advance(ms(400)).await;
        earlier.acquire(OFFBOARD).await.finish();
        let in_flight = earlier.acquire(OFFBOARD).await;
        earlier.acquire(Endpoint::ListMachines).await.finish();
        let spent = earlier.spent(Instant::now() + ms(300));
        drop(in_flight);
        assert_eq!(spent.len(), 2, "{spent:?}");
        assert_eq!(spent[0].0, Some(OFFBOARD));
        assert_eq!(spent[0].1.len(), 3);

        // The offboards' window is full until 1 s after the first answer (t0): 600 ms from now.
        let t0 = Instant::now();
        let next = Limiter::new(&rates, QuotaScope::Api);
        next.count_earlier(&spent);
        next.acquire(OFFBOARD).await.finish();
        assert_eq!(Instant::now() - t0, ms(600));
        // Then 1 s after the second answer, and the third (in flight, answered by the end of its timeout).
        next.acquire(OFFBOARD).await.finish();
        assert_eq!(Instant::now() - t0, ms(1000));
        next.acquire(OFFBOARD).await.finish();
        assert_eq!(Instant::now() - t0, ms(1300));
        // The list's budget held one of three: two more go at once.
        let t1 = Instant::now();
        next.acquire(Endpoint::ListMachines).await.finish();
        next.acquire(Endpoint::ListMachines).await.finish();
        assert_eq!(Instant::now(), t1);

        // Under one budget for the app, every API's calls count in it.
        let app = Limiter::new(&rates, QuotaScope::App);
        let t2 = Instant::now();
        let fresh = Limiter::new(&rates, QuotaScope::Api);
        fresh.acquire(OFFBOARD).await.finish();
        fresh.acquire(Endpoint::ListMachines).await.finish();
        fresh.acquire(Endpoint::Tags).await.finish();
        app.count_earlier(&fresh.spent(Instant::now()));
        app.acquire(Endpoint::GetMachine).await.finish();
        assert_eq!(Instant::now() - t2, ms(1000));
    }

    /// The first 429 of a spell under `Api` switches to one ledger holding every call already made: the
    /// next call waits until the app's window has room, counting the calls of every API.
    #[tokio::test(start_paused = true)]
    async fn an_unexplained_429_switches_to_one_budget_that_counts_every_call_made() {
        let limiter = Limiter::new(&[rate(10, ms(1000))], QuotaScope::Api);
        let t0 = Instant::now();
        for endpoint in [OFFBOARD, Endpoint::ListMachines] {
            for _ in 0..6 {
                limiter.acquire(endpoint).await.finish();
            }
        }
        let probe = limiter.acquire(Endpoint::GetMachine).await;
        let in_flight = limiter.acquire(OFFBOARD).await;
        assert_eq!(probe.throttled(None, ms(1)), ms(1));
        let stats = limiter.stats();
        assert_eq!((stats.scope, stats.switched, stats.share, stats.in_flight), (QuotaScope::App, true, 100, 2));
        // A second 429 of the same moment neither switches again nor lowers the share.
        assert_eq!(in_flight.throttled(None, ms(1)), ms(1));
        assert_eq!(limiter.stats().share, 100);
        drop((probe, in_flight));
        // 14 calls answered at t0 in one window of 10: nothing starts before they leave it.
        let permit = limiter.acquire(Endpoint::ListActions).await;
        assert_eq!(Instant::now(), t0 + ms(1000));
        permit.answered();
        drop(permit);
        assert_eq!(limiter.stats().throttled_in_a_row, 0);
        assert_eq!(gcra_refusals(&limiter), 0);
    }

    /// Under `App`, each throttling spell gives up a step of every quota, down to the floor; a quiet spell as
    /// long as the longest period gives one back.
    #[tokio::test(start_paused = true)]
    async fn spells_of_429s_under_one_budget_lower_the_share_and_quiet_raises_it() {
        let limiter = Limiter::new(&[rate(10, ms(1000)), rate(20, ms(4000))], QuotaScope::App);
        for spell in 1..=3u32 {
            let permit = limiter.acquire(OFFBOARD).await;
            permit.throttled(None, ms(1));
            drop(permit);
            // A 429 later in the same spell: the spell already counted.
            let permit = limiter.acquire(OFFBOARD).await;
            permit.throttled(None, ms(1));
            drop(permit);
            let permit = limiter.acquire(OFFBOARD).await;
            permit.answered();
            drop(permit);
            assert_eq!(limiter.stats().share, 100 - spell * SHARE_STEP);
        }
        let stats = limiter.stats();
        assert_eq!((stats.scope, stats.switched, stats.share, stats.lowest_share), (QuotaScope::App, false, 70, 70));
        // 70% of 10 a second (and of 20 in 4 s): 7 calls in a window, once the nine above have left.
        tokio::time::sleep(ms(4000)).await;
        let t0 = Instant::now();
        let calls = run(&limiter, 14, 14, |_| ms(10)).await;
        assert!(calls[..7].iter().all(|c| c.sent == t0));
        assert!(calls[7].sent >= t0 + ms(1010), "{:?}", calls[7].sent - t0);
        assert_within(&calls, &[rate(7, ms(1000)), rate(14, ms(4000))]);
        // Quiet for the longest period: one step back.
        tokio::time::sleep(ms(4000)).await;
        let permit = limiter.acquire(OFFBOARD).await;
        permit.answered();
        drop(permit);
        assert_eq!((limiter.stats().share, limiter.stats().lowest_share), (80, 70));
        assert_eq!(gcra_refusals(&limiter), 0);
        // Never below the floor.
        let floor = Limiter::new(&[rate(1000, HOUR)], QuotaScope::App);
        for _ in 0..20 {
            let permit = floor.acquire(OFFBOARD).await;
            permit.throttled(None, ms(1));
            drop(permit);
            let permit = floor.acquire(OFFBOARD).await;
            permit.answered();
            drop(permit);
        }
        assert_eq!(floor.stats().share, SHARE_MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_calls_start_at_once() {
        let rates = [rate(100, MINUTE), rate(1500, HOUR)];
        let limiter = Limiter::new(&rates, QuotaScope::App);
        let t0 = Instant::now();
        let calls = run(&limiter, 100, 100, |_| ms(300)).await;
        assert!(calls.iter().all(|c| c.sent == t0));
        assert_eq!(limiter.stats().waited, Duration::ZERO);
        assert_eq!(limiter.stats().acquired, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_101st_waits_one_period_after_the_first_answer() {
        let rates = [rate(100, MINUTE), rate(1500, HOUR)];
        for latency in [Duration::ZERO, ms(250)] {
            let limiter = Limiter::new(&rates, QuotaScope::App);
            let t0 = Instant::now();
            let calls = run(&limiter, 150, 150, |_| latency).await;
            assert!(calls[..100].iter().all(|c| c.sent == t0));
            let first_answer = calls.iter().map(|c| c.answered).min().unwrap();
            assert!(calls[100..].iter().all(|c| c.sent == first_answer + MINUTE), "latency {latency:?}");
            assert_within(&calls, &rates);
            assert_eq!(gcra_refusals(&limiter), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_hourly_quota_binds_long_runs() {
        // Defaults scaled by 1/100: 100/600ms and 1500/36s.
        let rates = [rate(100, ms(600)), rate(1500, ms(36_000))];
        let limiter = Limiter::new(&rates, QuotaScope::App);
        let t0 = Instant::now();
        let calls = run(&limiter, 3000, 8, |n| ms(5 + (n as u64 * 7) % 20)).await;
        assert_within(&calls, &rates);
        assert_eq!(gcra_refusals(&limiter), 0);
        // The first 1,500 go at the minute quota's pace (about 9s); then the hour's ledger holds the rest
        // until the first answers are an hour old.
        assert!(calls[1499].sent - t0 < ms(9_500), "{:?}", calls[1499].sent - t0);
        let first_answer = calls.iter().map(|c| c.answered).min().unwrap();
        assert!(calls[1500].sent >= first_answer + ms(36_000));
        assert!(calls[1500].sent < first_answer + ms(36_700));
    }

    #[tokio::test(start_paused = true)]
    async fn several_quotas_hold_together_under_random_latency() {
        let rates = [rate(10, ms(100)), rate(25, ms(1000)), rate(40, ms(3000))];
        let limiter = Limiter::new(&rates, QuotaScope::App);
        let mut rng = fastrand::Rng::with_seed(7);
        let latencies: Vec<Duration> = (0..300).map(|_| ms(rng.u64(0..400))).collect();
        let calls = run(&limiter, 300, 12, |n| latencies[n]).await;
        assert_within(&calls, &rates);
        assert_eq!(gcra_refusals(&limiter), 0);
        // Each quota bound at some point: exactly full windows were reached.
        for r in &rates {
            assert_eq!(most_in_any_window(&calls, r.period), r.limit as usize, "{r} never filled");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn earliest_schedule_is_what_the_limiter_does() {
        let cases: &[(&[Rate], usize, usize, u64)] = &[
            (&[rate(100, ms(600)), rate(1500, ms(36_000))], 3000, 8, 10),
            (&[rate(100, ms(600)), rate(1500, ms(36_000))], 150, 150, 0),
            (&[rate(10, ms(100)), rate(25, ms(1000))], 200, 3, 7),
            (&[rate(10, ms(100)), rate(25, ms(1000))], 200, 40, 0),
            (&[rate(5, ms(50))], 101, 1, 30),
            (&[], 50, 4, 25),
        ];
        for &(rates, calls, workers, latency) in cases {
            let limiter = Limiter::new(rates, QuotaScope::App);
            let t0 = Instant::now();
            let done = run(&limiter, calls, workers, |_| ms(latency)).await;
            let end = done.iter().map(|c| c.answered).max().unwrap() - t0;
            let predicted = earliest_schedule(rates, calls as u64, workers, ms(latency));
            assert_eq!(end, predicted, "{rates:?} calls {calls} workers {workers} latency {latency}ms");
            assert_within(&done, rates);
        }
    }

    #[test]
    fn earliest_schedule_matches_the_budget_arithmetic() {
        let defaults = [rate(100, MINUTE), rate(1500, HOUR)];
        // 100 calls: not held back at all.
        assert_eq!(earliest_schedule(&defaults, 100, 100, ms(200)), ms(200));
        // 1,500 calls: about 15 minutes, not an hour.
        let t = earliest_schedule(&defaults, 1500, 4, ms(200));
        assert!(t > 14 * MINUTE && t < 16 * MINUTE, "{t:?}");
        // 10,000 calls: the hourly quota binds, about 6.7 hours at best.
        let started = std::time::Instant::now();
        let t = earliest_schedule(&defaults, 10_000, 4, ms(200));
        assert!(t > 6 * HOUR && t < 7 * HOUR, "{t:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn earliest_schedule_respects_concurrency() {
        assert_eq!(earliest_schedule(&[], 10, 3, ms(100)), ms(400));
        assert_eq!(earliest_schedule(&[], 0, 3, ms(100)), Duration::ZERO);
        assert_eq!(earliest_schedule(&[rate(1000, MINUTE)], 10, 1, ms(100)), ms(1000));
        // Concurrency 0 is taken as 1 rather than never finishing.
        assert_eq!(earliest_schedule(&[], 2, 0, ms(100)), ms(200));
        // The quota binds before the workers do: 2 per 100ms, each call 10ms, the third answered 10ms
        // after the first's release.
        assert_eq!(earliest_schedule(&[rate(2, ms(100))], 3, 8, ms(10)), ms(120));
    }

    #[tokio::test(start_paused = true)]
    async fn workers_bound_concurrency() {
        let limiter = Limiter::new(&[], QuotaScope::App);
        let calls = run(&limiter, 12, 3, |_| ms(100)).await;
        for c in &calls {
            let overlapping = calls.iter().filter(|o| o.sent <= c.sent && c.sent < o.answered).count();
            assert!(overlapping <= 3);
        }
        assert_eq!(limiter.stats().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_rates_means_no_limit() {
        let limiter = Limiter::new(&[], QuotaScope::App);
        let t0 = Instant::now();
        let permits: Vec<Permit> = acquire_many(&limiter, 1000).await;
        assert_eq!(Instant::now(), t0);
        assert_eq!(limiter.stats().in_flight, 1000);
        drop(permits);
        assert_eq!(limiter.stats().in_flight, 0);
    }

    async fn acquire_many(limiter: &Arc<Limiter>, n: usize) -> Vec<Permit> {
        let mut permits = Vec::with_capacity(n);
        for _ in 0..n {
            permits.push(limiter.acquire(OFFBOARD).await);
        }
        permits
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_everyone_and_is_never_shortened() {
        let limiter = Limiter::new(&[rate(100, MINUTE)], QuotaScope::App);
        let t0 = Instant::now();
        limiter.pause_until(t0 + ms(5000));
        limiter.pause_until(t0 + ms(2000));
        assert_eq!(limiter.paused_until(), Some(t0 + ms(5000)));
        assert_eq!(limiter.stats().pauses, 1);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    let permit = limiter.acquire(OFFBOARD).await;
                    let at = Instant::now();
                    permit.finish();
                    at
                })
            })
            .collect();
        tokio::time::sleep(ms(3000)).await;
        // A later pause while they wait lengthens it for all of them.
        limiter.pause_until(t0 + ms(8000));
        for w in waiters {
            assert_eq!(w.await.unwrap(), t0 + ms(8000));
        }
        assert_eq!(limiter.paused_until(), None);
        assert_eq!(limiter.stats().pauses, 2);
        assert_eq!(limiter.stats().waited, ms(3 * 8000));
        // A pause in the past does nothing.
        limiter.pause_until(t0);
        let before = Instant::now();
        limiter.acquire(OFFBOARD).await.finish();
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_and_a_full_window_combine() {
        let limiter = Limiter::new(&[rate(2, ms(1000))], QuotaScope::App);
        let t0 = Instant::now();
        limiter.acquire(OFFBOARD).await.finish();
        limiter.acquire(OFFBOARD).await.finish();
        // The window frees at 1000ms; a pause to 400ms ends first, so the window decides.
        limiter.pause_until(t0 + ms(400));
        limiter.acquire(OFFBOARD).await.finish();
        assert_eq!(Instant::now(), t0 + ms(1000));
        // Now a pause beyond the window's next release decides.
        limiter.pause_until(t0 + ms(2500));
        limiter.acquire(OFFBOARD).await.finish();
        assert_eq!(Instant::now(), t0 + ms(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_permit_holds_its_slot_from_the_drop() {
        let limiter = Limiter::new(&[rate(1, ms(1000))], QuotaScope::App);
        let t0 = Instant::now();
        let permit = limiter.acquire(OFFBOARD).await;
        let limiter2 = Arc::clone(&limiter);
        let waiter = tokio::spawn(async move {
            limiter2.acquire(OFFBOARD).await.finish();
            Instant::now()
        });
        tokio::time::sleep(ms(300)).await;
        drop(permit);
        // The waiter had no release to sleep towards: the drop wakes it and it waits one period more.
        assert_eq!(waiter.await.unwrap(), t0 + ms(1300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_acquire_holds_nothing() {
        let limiter = Limiter::new(&[rate(1, ms(1000))], QuotaScope::App);
        let t0 = Instant::now();
        limiter.acquire(OFFBOARD).await.finish();
        assert!(tokio::time::timeout(ms(500), limiter.acquire(OFFBOARD)).await.is_err());
        assert_eq!(limiter.stats().in_flight, 0);
        limiter.acquire(OFFBOARD).await.finish();
        assert_eq!(Instant::now(), t0 + ms(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_pool_sends_one_probe_at_a_time_and_pauses_longer_each_time() {
        // A service that answers 429 with `Retry-After: 0` (taken as 1s) to every call sent in its first 100s;
        // 4 workers, calls of 100ms, 40 calls to make in all.
        let limiter = Limiter::new(&[rate(100, MINUTE)], QuotaScope::App);
        let t0 = Instant::now();
        let recovers = t0 + Duration::from_secs(100);
        let log = Arc::new(Mutex::new(Vec::<(Duration, bool)>::new()));
        let done = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (limiter, log, done) = (Arc::clone(&limiter), Arc::clone(&log), Arc::clone(&done));
                tokio::spawn(async move {
                    while done.load(Ordering::SeqCst) < 40 {
                        let permit = limiter.acquire(OFFBOARD).await;
                        let sent = Instant::now();
                        tokio::time::sleep(ms(100)).await;
                        let throttled = sent < recovers;
                        if throttled {
                            permit.throttled(Some(Duration::from_secs(1)), Duration::from_secs(1));
                        } else {
                            permit.answered();
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        log.lock().unwrap().push((sent - t0, throttled));
                        permit.finish();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        let throttled: Vec<Duration> = log.iter().filter(|(_, t)| *t).map(|(at, _)| *at).collect();
        // All four at once; then one probe at a time, each pause twice the one before (the three other 429s
        // of the first round answered a moment already judged and did not lengthen it).
        let probes: Vec<Duration> = [0, 0, 0, 0, 1100, 3200, 7300, 15_400, 31_500, 63_600].map(ms).to_vec();
        assert_eq!(throttled, probes);
        // The first probe after the service recovered (at 127.7s) lets every worker go the moment it is answered.
        let served: Vec<Duration> = log.iter().filter(|(_, t)| !*t).map(|(at, _)| *at).collect();
        assert_eq!(served[0], ms(127_700));
        assert!(served[1..4].iter().all(|at| *at == ms(127_800)), "{served:?}");
        // Workers check the count before they call: up to three calls past the 40th.
        assert!((40..44).contains(&served.len()), "{served:?}");
        assert_eq!(limiter.stats().throttled_in_a_row, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn only_an_answer_to_a_call_sent_after_the_last_429_ends_the_throttling() {
        let limiter = Limiter::new(&[], QuotaScope::App);
        let early = limiter.acquire(OFFBOARD).await;
        let first = limiter.acquire(OFFBOARD).await;
        assert_eq!(first.throttled(None, ms(10)), ms(10));
        // Sent before that 429: a 200 does not end the throttling, and a 429 does not lengthen it.
        early.answered();
        assert_eq!(limiter.stats().throttled_in_a_row, 1);
        drop((early, first));
        let probe = limiter.acquire(OFFBOARD).await;
        // While the probe is out, nobody else gets a permit.
        assert!(tokio::time::timeout(ms(1000), limiter.acquire(OFFBOARD)).await.is_err());
        assert_eq!(probe.throttled(None, ms(10)), ms(20));
        drop(probe);
        let probe = limiter.acquire(OFFBOARD).await;
        probe.answered();
        assert_eq!(limiter.stats().throttled_in_a_row, 0);
        // Not throttled any more: everyone goes, the probe still out.
        let others = acquire_many(&limiter, 5).await;
        drop((probe, others));
    }

    #[test]
    fn the_throttle_pause_doubles_up_to_its_cap_unless_retry_after_asks_for_more() {
        assert_eq!(throttle_pause(1, None, ms(10)), ms(10));
        assert_eq!(throttle_pause(4, None, ms(10)), ms(80));
        assert_eq!(throttle_pause(4, Some(Duration::from_secs(1)), ms(10)), Duration::from_secs(1));
        assert_eq!(throttle_pause(20, Some(Duration::from_secs(1)), Duration::from_secs(1)), THROTTLE_PAUSE_MAX);
        assert_eq!(throttle_pause(u32::MAX, None, Duration::MAX), THROTTLE_PAUSE_MAX);
        assert_eq!(throttle_pause(30, Some(HOUR), Duration::from_secs(1)), HOUR);
    }

    const DAY_NANOS: u64 = 86_400 * 1_000_000_000;

    #[test]
    fn releases_are_kept_to_the_millisecond_rounded_up() {
        let mut releases = Releases::default();
        releases.push(5 * TICK + 300, 10);
        releases.push(7 * TICK + 300, 10);
        releases.push(9 * TICK + 301, 10);
        releases.push(9 * TICK + 302, 10);
        // Whole milliseconds after the first: exact; between two: the next one; never earlier than asked.
        assert_eq!(
            releases.iter().collect::<Vec<_>>(),
            [5 * TICK + 300, 7 * TICK + 300, 10 * TICK + 300, 10 * TICK + 300]
        );
        // An instant earlier than the last goes in as the last: the queue stays in order, the slot held longer.
        releases.push(6 * TICK, 10);
        assert_eq!(releases.back(), Some(10 * TICK + 300));
        releases.expire(7 * TICK + 300);
        assert_eq!(releases.iter().collect::<Vec<_>>(), [10 * TICK + 300; 3]);
        assert_eq!(Releases::of(vec![3 * TICK, TICK, 2 * TICK]).iter().collect::<Vec<_>>(), [TICK, 2 * TICK, 3 * TICK]);
    }

    #[test]
    fn releases_past_the_offsets_range_move_the_base_and_drop_only_expired_ones() {
        let mut releases = Releases::default();
        releases.push(0, 10);
        releases.push(40 * DAY_NANOS, 10);
        // 60 days after the first: past the u32 milliseconds of the offsets (49.7 days). The first release
        // has expired (a release is at most a day after the instant it is pushed at); the second stays.
        releases.push(60 * DAY_NANOS, 10);
        assert_eq!(releases.iter().collect::<Vec<_>>(), [40 * DAY_NANOS, 60 * DAY_NANOS]);
        assert_eq!(releases.base, 40 * DAY_NANOS);
        // Both out of range: only the new one is left.
        releases.push(200 * DAY_NANOS + 1, 10);
        assert_eq!(releases.iter().collect::<Vec<_>>(), [200 * DAY_NANOS + 1]);
    }

    #[test]
    fn releases_grow_to_the_quota_s_limit_not_past_it() {
        let mut gates = Gates::new(&[rate(100, MINUTE), rate(1500, HOUR)], 100);
        for n in 0..1500 {
            let at = n * to_nanos(ms(610));
            gates.try_start(at).expect("room");
            gates.finish(at + 1);
        }
        assert_eq!(gates.quotas[1].releases.len(), 1500);
        assert_eq!(gates.quotas[1].releases.offsets.capacity(), 1500);
        assert!(gates.quotas[0].releases.offsets.capacity() <= 100);
    }

    #[test]
    fn the_compact_ledger_refuses_the_call_that_would_exceed_a_window_across_the_moves_of_its_base() {
        // Two calls a day for 120 days, each answered 7.3 ms after it starts (releases between milliseconds).
        // The day's quota always has a release pending, so the offsets pass their range (49.7 days) and the
        // base moves, twice.
        let day = Duration::from_secs(86_400);
        let latency = 7_300_000;
        let mut gates = Gates::new(&[rate(2, day)], 100);
        let (mut now, mut calls): (u64, Vec<(u64, u64)>) = (0, Vec::new());
        while now < 120 * DAY_NANOS {
            match gates.try_start(now) {
                Ok(()) => {
                    calls.push((now, now + latency));
                    now += latency;
                    gates.finish(now);
                }
                Err(wake) => {
                    // Held until the answer of the call two back is a day old, to within a millisecond, and
                    // refused a nanosecond before.
                    let wake = wake.expect("a full quota has a release pending");
                    let due = calls[calls.len() - 2].1 + DAY_NANOS;
                    assert!(wake >= due && wake < due + TICK, "wake {wake}, due {due}");
                    assert!(gates.try_start(wake - 1).is_err());
                    now = wake;
                }
            }
        }
        assert!(gates.quotas[0].releases.base > 50 * DAY_NANOS, "the base never moved");
        assert!(calls.len() >= 238, "{} calls", calls.len());
        let t0 = Instant::now();
        let at = |nanos: u64| t0 + Duration::from_nanos(nanos);
        let calls: Vec<Call> =
            calls.iter().map(|&(sent, answered)| Call { sent: at(sent), answered: at(answered) }).collect();
        assert_within(&calls, &[rate(2, day)]);
        assert_eq!(gates.gcra_refusals, 0);
    }

    #[test]
    fn the_gcra_alone_refuses_a_burst_beyond_the_limit() {
        // Proves the steady-rate gate is wired with the right quota: burst = limit, then limit/period.
        let gates = Gates::new(&[rate(3, ms(300))], 100);
        gates.clock.store(0, Ordering::Relaxed);
        let gcra = &gates.quotas[0].gcra;
        assert!((0..3).all(|_| gcra.check().is_ok()));
        let refused = gcra.check().unwrap_err();
        assert_eq!(refused.earliest_possible(), Nanos::new(to_nanos(ms(100))));
        // With the ledger in front, the same burst is refused by the ledger, never the GCRA.
        let mut gates = Gates::new(&[rate(3, ms(300))], 100);
        assert!((0..3).all(|_| gates.try_start(0).is_ok()));
        assert_eq!(gates.try_start(0), Err(None));
        gates.finish(to_nanos(ms(10)));
        assert_eq!(gates.try_start(to_nanos(ms(20))), Err(Some(to_nanos(ms(310)))));
        assert_eq!(gates.gcra_refusals, 0);
    }
}
