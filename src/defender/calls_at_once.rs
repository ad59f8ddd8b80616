//! The bound on calls in flight that the tenants of a run share ([`super::SharedClients`]): it keeps the
//! connections (and their buffers) to what the run needs when the tenants' quota windows open together. Left
//! to its default, it grows while it, rather than the quotas, sets the run's pace: a slow service needs as
//! many calls at once as the quotas' rate times the time an answer takes (100 tenants at 100 calls a minute,
//! answered in a second: some 170).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// How often the run looks at whether calls wait for the bound ([`CallsAtOnce::look`]).
pub const LOOK_EVERY: Duration = Duration::from_millis(250);
/// Looks in a row with calls waiting after which a bound that may grow grows: five seconds of waiting, the
/// run's pace, not the burst of a quota window's start (100 tenants' windows opening together, at 5 ms an
/// answer, wait for 64 calls at once less than a second in each).
pub const LOOKS_TO_GROW: u32 = 20;

/// A bound on calls at once, shared by the sessions of a run.
#[derive(Debug)]
pub struct CallsAtOnce {
    permits: Semaphore,
    /// Calls waiting for a permit now.
    waiting: AtomicUsize,
    growth: Mutex<Growth>,
}

#[derive(Debug)]
struct Growth {
    from: usize,
    bound: usize,
    /// The most it may grow to: the bound itself for a bound that was set.
    ceiling: usize,
    /// Looks in a row that saw calls waiting.
    looks: u32,
}

impl CallsAtOnce {
    /// At most `bound` calls at once; while it holds calls back, it grows up to `ceiling` (no further than
    /// `bound` when `ceiling` is less).
    pub fn new(bound: usize, ceiling: usize) -> Self {
        let bound = bound.max(1);
        CallsAtOnce {
            permits: Semaphore::new(bound),
            waiting: AtomicUsize::new(0),
            growth: Mutex::new(Growth { from: bound, bound, ceiling: ceiling.max(bound), looks: 0 }),
        }
    }

    /// A permit for one call, held until its answer is read.
    pub async fn acquire(&self) -> SemaphorePermit<'_> {
        if let Ok(permit) = self.permits.try_acquire() {
            return permit;
        }
        let _waiting = Waiting::start(&self.waiting);
        self.permits.acquire().await.expect("the semaphore is never closed")
    }

    /// One look, every [`LOOK_EVERY`]: after [`LOOKS_TO_GROW`] looks in a row that saw calls waiting, the
    /// bound doubles, up to its ceiling. The new bound, when it grew.
    pub fn look(&self) -> Option<usize> {
        let mut growth = self.growth.lock().expect("never poisoned");
        if self.waiting.load(Ordering::Relaxed) == 0 {
            growth.looks = 0;
            return None;
        }
        growth.looks += 1;
        if growth.looks < LOOKS_TO_GROW || growth.bound >= growth.ceiling {
            return None;
        }
        growth.looks = 0;
        let next = growth.bound.saturating_mul(2).min(growth.ceiling);
        self.permits.add_permits(next - growth.bound);
        growth.bound = next;
        Some(next)
    }

    /// The bound it started at and the bound now.
    pub fn bounds(&self) -> (usize, usize) {
        let growth = self.growth.lock().expect("never poisoned");
        (growth.from, growth.bound)
    }
}

/// One call waiting for a permit, until dropped (its wait may end in a permit or be given up).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls waiting at every look for five seconds double the bound, up to the ceiling; a look that sees
    /// none waiting starts the count again; a bound whose ceiling is itself never grows.
    #[test]
    fn a_bound_that_holds_calls_back_doubles_up_to_its_ceiling() {
        let calls = CallsAtOnce::new(4, 12);
        let held = hold(&calls, 4);
        assert!(calls.permits.try_acquire().is_err());
        // No call waiting: no count.
        for _ in 0..LOOKS_TO_GROW * 2 {
            assert_eq!(calls.look(), None);
        }
        let waiting = Waiting::start(&calls.waiting);
        for _ in 1..LOOKS_TO_GROW {
            assert_eq!(calls.look(), None);
        }
        // A look with none waiting starts the count again.
        drop(waiting);
        assert_eq!(calls.look(), None);
        let waiting = Waiting::start(&calls.waiting);
        for _ in 1..LOOKS_TO_GROW {
            assert_eq!(calls.look(), None);
        }
        assert_eq!(calls.look(), Some(8));
        assert_eq!(calls.bounds(), (4, 8));
        for _ in 1..LOOKS_TO_GROW {
            assert_eq!(calls.look(), None);
        }
        assert_eq!(calls.look(), Some(12), "up to the ceiling");
        for _ in 0..LOOKS_TO_GROW * 2 {
            assert_eq!(calls.look(), None);
        }
        assert_eq!(calls.bounds(), (4, 12));
        // Eight more permits came with the growth, and no more.
        let more = hold(&calls, 8);
        assert!(calls.permits.try_acquire().is_err());
        drop((held, more, waiting));

        let fixed = CallsAtOnce::new(4, 4);
        let _waiting = Waiting::start(&fixed.waiting);
        for _ in 0..LOOKS_TO_GROW * 3 {
            assert_eq!(fixed.look(), None);
        }
        assert_eq!(fixed.bounds(), (4, 4));
    }

    /// A call waiting for a permit is counted until it has one, and a wait given up is not counted on.
    #[tokio::test]
    async fn a_call_is_counted_waiting_until_it_has_its_permit_or_gives_up() {
        let calls = std::sync::Arc::new(CallsAtOnce::new(1, 1));
        let first = calls.acquire().await;
        let waiter = {
            let calls = calls.clone();
            tokio::spawn(async move {
                let _permit = calls.acquire().await;
            })
        };
        while calls.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        waiter.await.unwrap();
        assert_eq!(calls.waiting.load(Ordering::Relaxed), 0);
        let held = calls.acquire().await;
        let given_up = tokio::time::timeout(Duration::from_millis(10), calls.acquire()).await;
        assert!(given_up.is_err());
        assert_eq!(calls.waiting.load(Ordering::Relaxed), 0);
        drop(held);
    }

    /// `n` of the bound's permits, taken.
    fn hold(calls: &CallsAtOnce, n: usize) -> Vec<SemaphorePermit<'_>> {
        (0..n).map(|_| calls.permits.try_acquire().expect("a free permit")).collect()
    }
}
