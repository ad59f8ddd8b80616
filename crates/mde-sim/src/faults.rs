//! Seeded fault decisions.
//!
//! A call's fault depends on the seed, its method and request target (path and query), and how many calls
//! with that method and target came before it; so the same calls get the same faults whatever order
//! concurrent clients send them in, and a retry of a call draws anew.

use std::collections::HashMap;
use std::time::Duration;

use super::clock::{mix, unit};
use super::config::Faults;

/// What a call gets instead of (or besides) its normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Error500,
    Error503,
    /// Close the connection without answering; `after_apply` means an offboard is applied first.
    Drop {
        after_apply: bool,
    },
    Spurious429(Duration),
    /// 404 `ResourceNotFound` for a machine that exists (only on routes about one machine).
    NotFound,
    /// A status from `Faults::script`.
    Scripted(u16),
}

#[derive(Debug, Default)]
pub(crate) struct FaultState {
    faults: Faults,
    /// Calls so far per `METHOD target`.
    calls: HashMap<String, u64>,
    /// Answers so far, for drawing slow ones.
    answers: u64,
}

impl FaultState {
    pub(crate) fn new(faults: Faults) -> FaultState {
        FaultState { faults, calls: HashMap::new(), answers: 0 }
    }

    pub(crate) fn set(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// The faults in force.
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The delay of the next answer, and whether it is a slow one (`Faults::slow_share`, drawn from the seed
    /// and the count of answers so far).
    /// With `actions_only`, the answers of reads (`acting` false) are never slow.
    pub(crate) fn next_latency(&mut self, acting: bool) -> (Duration, bool) {
        if self.faults.slow_share > 0.0 && (acting || !self.faults.actions_only) {
            let n = self.answers;
            self.answers += 1;
            if unit(mix(self.faults.seed, &[b"slow", &n.to_le_bytes()])) < self.faults.slow_share {
                return (self.faults.slow_latency, true);
            }
        }
        (self.faults.latency, false)
    }

    /// Draws the fault of this call, if any (with `actions_only`, of a POST only).
    pub(crate) fn draw(&mut self, method: &str, target: &str) -> Option<Fault> {
        let shares = self.faults.shares();
        if (shares.iter().all(|&s| s == 0.0) && self.faults.script.is_empty())
            || (self.faults.actions_only && method != "POST")
        {
            return None;
        }
        let key_len = method.len() + 1 + target.len();
        let mut key = String::with_capacity(key_len);
        key.push_str(method);
        key.push(' ');
        key.push_str(target);
        let count = self.calls.entry(key).or_default();
        let n = *count;
        *count += 1;
        if let Some(&status) = self.faults.script.get(n as usize) {
            return (status != 0).then_some(Fault::Scripted(status));
        }
        let h = mix(self.faults.seed, &[method.as_bytes(), target.as_bytes(), &n.to_le_bytes()]);
        let mut r = unit(h);
        for (i, share) in shares.into_iter().enumerate() {
            if r < share {
                return Some(match i {
                    0 => Fault::Error500,
                    1 => Fault::Error503,
                    2 => Fault::Drop { after_apply: h & 1 == 1 },
                    3 => Fault::Spurious429(self.faults.spurious_429_retry_after),
                    _ => Fault::NotFound,
                });
            }
            r -= share;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(seed: u64) -> Faults {
        Faults {
            seed,
            error_500: 0.2,
            error_503: 0.1,
            drop_connection: 0.1,
            spurious_429: 0.1,
            transient_404: 0.1,
            ..Faults::default()
        }
    }

    #[test]
    fn same_seed_same_faults_whatever_the_interleaving() {
        let paths: Vec<String> = (0..50).map(|i| format!("/api/machines/{i}")).collect();
        let mut a = FaultState::new(faults(3));
        let mut b = FaultState::new(faults(3));
        let forward: Vec<Vec<_>> = paths.iter().map(|p| (0..4).map(|_| a.draw("GET", p)).collect()).collect();
        // b sees the same calls, interleaved differently: round by round, paths backwards.
        let mut backward = vec![Vec::new(); paths.len()];
        for _ in 0..4 {
            for (i, p) in paths.iter().enumerate().rev() {
                backward[i].push(b.draw("GET", p));
            }
        }
        assert_eq!(forward, backward);
        let all: Vec<_> = forward.iter().flatten().collect();
        let share = |f: &dyn Fn(&Option<Fault>) -> bool| all.iter().filter(|x| f(x)).count() as f64 / all.len() as f64;
        assert!((0.1..0.3).contains(&share(&|f| *f == Some(Fault::Error500))));
        assert!((0.3..0.55).contains(&share(&|f| f.is_none())));
        let mut slow = FaultState::new(Faults {
            slow_share: 0.25,
            slow_latency: Duration::from_secs(9),
            latency: Duration::from_millis(1),
            ..Faults::default()
        });
        let drawn: Vec<_> = (0..400).map(|_| slow.next_latency(false)).collect();
        let slow_ones = drawn.iter().filter(|(d, s)| *s && *d == Duration::from_secs(9)).count();
        assert!((60..140).contains(&slow_ones), "{slow_ones}");
        assert!(drawn.iter().all(|(d, s)| *s || *d == Duration::from_millis(1)));
        let mut c = FaultState::new(faults(4));
        let other: Vec<Vec<_>> = paths.iter().map(|p| (0..4).map(|_| c.draw("GET", p)).collect()).collect();
        assert_ne!(forward, other);
    }

    #[test]
    fn faults_of_actions_only_leave_every_read_alone() {
        let mut state = FaultState::new(Faults {
            drop_connection: 1.0,
            slow_share: 1.0,
            slow_latency: Duration::from_secs(9),
            actions_only: true,
            ..Faults::default()
        });
        for n in 0..20 {
            let path = format!("/api/machines/{n}/offboard");
            assert!(matches!(state.draw("POST", &path), Some(Fault::Drop { .. })));
            assert_eq!(state.next_latency(true), (Duration::from_secs(9), true));
            assert_eq!(state.draw("GET", "/api/machineactions?$top=100"), None);
            assert_eq!(state.next_latency(false), (Duration::ZERO, false));
        }
    }
}
