//! Fairness between actors: how many requests one actor may have in flight
//! (`limits.per_actor_inflight`) and start per second
//! (`limits.per_actor_rps`), so one noisy client cannot take the proxy
//! thread and the workers from everyone else. Past either limit the answer
//! is 429 `too_many_requests` with `Retry-After`.
//!
//! The counts are pingora-limits' count-min sketches, kept without locks:
//! an estimate can only be too high, and only when two actors' ids collide
//! in all four hashes of 8,192 (in flight) or 1,024 (rate) slots.

use std::time::Duration;

use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;

/// Which limit a request ran into, and its configured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    InFlight(usize),
    Rate(u64),
}

impl Throttled {
    /// The config key, as named in the answer and the metric.
    pub fn limit(&self) -> &'static str {
        match self {
            Throttled::InFlight(_) => "per_actor_inflight",
            Throttled::Rate(_) => "per_actor_rps",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Throttled::InFlight(n) => format!("this actor already has {n} requests in flight (limits.per_actor_inflight); retry when one finishes"),
            Throttled::Rate(n) => format!("this actor sent more than {n} requests in the last second (limits.per_actor_rps)"),
        }
    }
}

/// A request's place in its actor's in-flight count; released when dropped.
pub struct Admitted {
    _inflight: Option<Guard>,
}

pub struct Fairness {
    inflight: Inflight,
    rate: Rate,
    /// 0: no limit.
    max_inflight: usize,
    /// 0: no limit.
    max_rps: u64,
}

impl Fairness {
    pub fn new(max_inflight: usize, max_rps: u64) -> Fairness {
        Fairness { inflight: Inflight::new(), rate: Rate::new(Duration::from_secs(1)), max_inflight, max_rps }
    }

    /// Counts a request of `actor`, or says which limit it is over. A
    /// refused request does not stay in the in-flight count, but it does
    /// count against the rate, so a client that keeps hammering stays refused.
    pub fn admit(&self, actor: &str) -> Result<Admitted, Throttled> {
        if self.max_rps > 0 && self.rate.observe(&actor, 1) > self.max_rps as isize {
            return Err(Throttled::Rate(self.max_rps));
        }
        if self.max_inflight == 0 {
            return Ok(Admitted { _inflight: None });
        }
        let (guard, now) = self.inflight.incr(actor, 1);
        if now > self.max_inflight as isize {
            return Err(Throttled::InFlight(self.max_inflight));
        }
        Ok(Admitted { _inflight: Some(guard) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_counted_per_actor_and_released_on_drop() {
        let f = Fairness::new(2, 0);
        let a1 = f.admit("alice").unwrap();
        let _a2 = f.admit("alice").unwrap();
        assert_eq!(f.admit("alice").err(), Some(Throttled::InFlight(2)));
        let _b = f.admit("bob").expect("bob is not alice");
        drop(a1);
        assert!(f.admit("alice").is_ok(), "a finished request frees its place");
    }

    #[test]
    fn the_rate_is_per_actor_per_second() {
        let f = Fairness::new(0, 3);
        for _ in 0..3 {
            f.admit("alice").unwrap();
        }
        assert_eq!(f.admit("alice").err(), Some(Throttled::Rate(3)));
        assert!(f.admit("bob").is_ok());
    }

    #[test]
    fn zero_means_no_limit() {
        let f = Fairness::new(0, 0);
        let held: Vec<_> = (0..10_000).map(|_| f.admit("alice").unwrap()).collect();
        assert_eq!(held.len(), 10_000);
    }
}
