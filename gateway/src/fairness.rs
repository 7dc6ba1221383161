//! Fairness between actors: how many requests one actor may have in flight
//! (`limits.per_actor_inflight`) and start per second
//! (`limits.per_actor_rps`), so one noisy client cannot take the proxy
//! thread and the workers from everyone else.
//!
//! A request past either limit first *waits*, up to
//! `limits.per_actor_queue_ms`, for its actor's next place or token, and
//! only then gets 429 `too_many_requests` with `Retry-After`. Waiting is the
//! point: a refusal answered at once is answered again and again by a
//! client that does not honour `Retry-After`, and every refusal costs the
//! proxy thread as much as a lookup, so an instant 429 turns a flood into
//! a flood of 429s that every other actor queues behind
//! (docs/benchmarks.md, "Fairness"). A waiting request costs a parked task
//! and nothing else, so a flood is held to its actor's share.
//!
//! The in-flight places are one tokio semaphore per actor that has a request
//! in flight or waiting (removed with its last request), and the rate is
//! governor's GCRA per actor (a burst of `per_actor_rps`, then one request
//! every 1/`per_actor_rps` seconds), whose idle keys are swept regularly.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
            Throttled::InFlight(n) => format!("this actor already has {n} requests in flight (limits.per_actor_inflight), and none finished within limits.per_actor_queue_ms; retry later"),
            Throttled::Rate(n) => format!("this actor is past {n} requests per second (limits.per_actor_rps), and no turn came within limits.per_actor_queue_ms; retry later"),
        }
    }
}

/// The per-actor limits, as configured (0: that limit is off).
#[derive(Debug, Clone, Copy)]
pub struct FairnessLimits {
    pub inflight: usize,
    pub rps: u64,
    /// How long a request past a limit may wait for its turn.
    pub queue: Duration,
}

/// A request's place in its actor's in-flight count; released when dropped.
pub struct Admitted {
    place: Option<(Arc<Places>, Arc<str>, OwnedSemaphorePermit)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((places, actor, permit)) = self.place.take() {
            drop(permit);
            places.forget_idle(&actor);
        }
    }
}

/// One semaphore per actor with a request in flight or waiting.
struct Places {
    max: usize,
    by_actor: DashMap<Arc<str>, Arc<Semaphore>>,
}

impl Places {
    fn semaphore(&self, actor: &Arc<str>) -> Arc<Semaphore> {
        if let Some(s) = self.by_actor.get(actor) {
            return s.clone();
        }
        self.by_actor.entry(actor.clone()).or_insert_with(|| Arc::new(Semaphore::new(self.max))).clone()
    }

    /// Drops the actor's semaphore once nobody holds or waits on it, so the
    /// map holds only actors with work in flight. A holder or waiter clones
    /// the `Arc` under the map's shard lock, which `remove_if` also takes,
    /// so a count of one there means nobody else can be using it.
    fn forget_idle(&self, actor: &Arc<str>) {
        self.by_actor.remove_if(actor, |_, s| Arc::strong_count(s) == 1);
    }
}

pub struct Fairness {
    limits: FairnessLimits,
    places: Option<Arc<Places>>,
    rate: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    /// Admissions since the rate limiter's idle keys were last swept.
    since_sweep: AtomicU64,
}

/// Sweep the rate limiter's idle actors every this many admissions.
const SWEEP_EVERY: u64 = 16_384;

impl Fairness {
    pub fn new(limits: FairnessLimits) -> Fairness {
        let places = (limits.inflight > 0).then(|| Arc::new(Places { max: limits.inflight, by_actor: DashMap::new() }));
        let rate = NonZeroU32::new(u32::try_from(limits.rps).unwrap_or(u32::MAX)).map(|n| RateLimiter::dashmap(Quota::per_second(n)));
        Fairness { limits, places, rate, since_sweep: AtomicU64::new(0) }
    }

    /// Admits a request of `actor`, waiting up to `per_actor_queue_ms` for
    /// its turn, or says which limit it is still over after that. The rate
    /// is taken first, so a request waiting for an in-flight place already
    /// holds its token and a flood cannot start more than its rate.
    pub async fn admit(&self, actor: &Arc<str>) -> Result<Admitted, Throttled> {
        let deadline = Instant::now() + self.limits.queue;
        if let Some(rate) = &self.rate {
            self.sweep(rate);
            let clock = DefaultClock::default();
            while let Err(not_until) = rate.check_key(actor) {
                let wait = not_until.wait_time_from(clock.now());
                if Instant::now() + wait > deadline {
                    return Err(Throttled::Rate(self.limits.rps));
                }
                tokio::time::sleep(wait).await;
            }
        }
        let Some(places) = &self.places else {
            return Ok(Admitted { place: None });
        };
        let sem = places.semaphore(actor);
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) => match tokio::time::timeout_at(deadline, sem.acquire_owned()).await {
                Ok(Ok(p)) => Ok(p),
                // Timed out (or closed, which never happens): not admitted.
                _ => Err(Throttled::InFlight(self.limits.inflight)),
            },
        };
        match permit {
            Ok(p) => Ok(Admitted { place: Some((places.clone(), actor.clone(), p)) }),
            Err(t) => {
                places.forget_idle(actor);
                Err(t)
            }
        }
    }

    fn sweep(&self, rate: &DefaultKeyedRateLimiter<Arc<str>>) {
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            rate.retain_recent();
        }
    }

    /// Actors holding an in-flight place or waiting for one (for tests).
    pub fn actors_in_flight(&self) -> usize {
        self.places.as_ref().map_or(0, |p| p.by_actor.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(inflight: usize, rps: u64, queue_ms: u64) -> Fairness {
        Fairness::new(FairnessLimits { inflight, rps, queue: Duration::from_millis(queue_ms) })
    }

    fn actor(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn in_flight_is_counted_per_actor_and_released_on_drop() {
        let f = limits(2, 0, 0);
        let alice = actor("alice");
        let a1 = f.admit(&alice).await.unwrap();
        let _a2 = f.admit(&alice).await.unwrap();
        assert_eq!(f.admit(&alice).await.err(), Some(Throttled::InFlight(2)));
        let _b = f.admit(&actor("bob")).await.expect("bob is not alice");
        drop(a1);
        assert!(f.admit(&alice).await.is_ok(), "a finished request frees its place");
    }

    #[tokio::test]
    async fn a_request_past_its_in_flight_limit_waits_for_a_place() {
        let f = Arc::new(limits(1, 0, 2_000));
        let alice = actor("alice");
        let first = f.admit(&alice).await.unwrap();
        let (f2, a2) = (f.clone(), alice.clone());
        let second = tokio::spawn(async move { f2.admit(&a2).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second request waits while the first is in flight");
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()), "and is admitted when the first finishes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_bounded_by_the_queue_time() {
        let f = limits(1, 0, 300);
        let alice = actor("alice");
        let _held = f.admit(&alice).await.unwrap();
        let t = Instant::now();
        assert_eq!(f.admit(&alice).await.err(), Some(Throttled::InFlight(1)));
        assert_eq!(t.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test]
    async fn the_rate_is_per_actor_per_second() {
        let f = limits(0, 3, 0);
        let alice = actor("alice");
        for _ in 0..3 {
            f.admit(&alice).await.unwrap();
        }
        assert_eq!(f.admit(&alice).await.err(), Some(Throttled::Rate(3)));
        assert!(f.admit(&actor("bob")).await.is_ok());
    }

    #[tokio::test]
    async fn a_request_past_the_rate_waits_for_its_token() {
        // 10 per second: after the burst, one every 100 ms.
        let f = limits(0, 10, 1_000);
        let alice = actor("alice");
        for _ in 0..10 {
            f.admit(&alice).await.unwrap();
        }
        let t = std::time::Instant::now();
        f.admit(&alice).await.expect("the 11th waits for its token");
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(60) && waited < Duration::from_millis(500), "waited {waited:?}");
    }

    #[tokio::test]
    async fn idle_actors_are_forgotten() {
        let f = limits(4, 0, 0);
        let mut held = Vec::new();
        for i in 0..100 {
            held.push(f.admit(&actor(&format!("a{i}"))).await.unwrap());
        }
        assert_eq!(f.actors_in_flight(), 100);
        drop(held);
        assert_eq!(f.actors_in_flight(), 0, "no semaphore outlives its actor's last request");
        let _one = f.admit(&actor("x")).await.unwrap();
        assert_eq!(f.actors_in_flight(), 1);
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let f = limits(0, 0, 0);
        let alice = actor("alice");
        let mut held = Vec::new();
        for _ in 0..10_000 {
            held.push(f.admit(&alice).await.unwrap());
        }
        assert_eq!(held.len(), 10_000);
    }
}
