//! Fairness between actors: how many requests one actor may have in flight
//! (`limits.per_actor_inflight`) and start per second
//! (`limits.per_actor_rps`), so one noisy client cannot take the proxy
//! thread and the workers from everyone else.
//!
//! A request past either limit first *waits*, in its actor's queue and up to
//! `limits.per_actor_queue_ms`, for its actor's next place or token, and
//! only then gets 429 `too_many_requests` with `Retry-After`. Waiting is the
//! point: a refusal answered at once is answered again and again by a
//! client that does not honour `Retry-After`, and every refusal costs the
//! proxy thread as much as a lookup, so an instant 429 turns a flood into
//! a flood of 429s that every other actor queues behind
//! (docs/benchmarks.md, "Fairness"). A waiting request is a parked task:
//! it is woken once, when its turn comes or its time is up.
//!
//! Each actor with a request in flight or waiting has one [`Turns`] entry
//! (removed with its last request): a semaphore of in-flight places (tokio's
//! is first come, first served), a first-come, first-served lock that only
//! the head of the rate queue holds while it sleeps until governor's GCRA
//! gives it a token, and the count of waiters. At most
//! `limits.per_actor_queue` requests of one actor wait; more are refused at
//! once, and so is a request whose queue could not reach it in time.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Which limit a request ran into, and its configured value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    InFlight(usize),
    Rate(u64),
    /// Too many of this actor's requests are already waiting.
    Queue(usize),
}

impl Throttled {
    /// The config key, as named in the answer and the metric.
    pub fn limit(&self) -> &'static str {
        match self {
            Throttled::InFlight(_) => "per_actor_inflight",
            Throttled::Rate(_) => "per_actor_rps",
            Throttled::Queue(_) => "per_actor_queue",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Throttled::InFlight(n) => format!("this actor already has {n} requests in flight (limits.per_actor_inflight), and its turn did not come within limits.per_actor_queue_ms; retry later"),
            Throttled::Rate(n) => format!("this actor is past {n} requests per second (limits.per_actor_rps), and its turn did not come within limits.per_actor_queue_ms; retry later"),
            Throttled::Queue(n) => format!("this actor already has {n} requests waiting for a turn (limits.per_actor_queue); retry later"),
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
    /// How many of one actor's requests may wait at once.
    pub max_waiting: usize,
}

/// One actor's queues: its in-flight places, the rate queue's head lock, and
/// how many of its requests wait in each.
struct Turns {
    places: Option<Arc<Semaphore>>,
    rate_head: Mutex<()>,
    waiting_for_token: AtomicUsize,
    waiting_for_place: AtomicUsize,
}

/// The actor entries, one per actor with a request in flight or waiting.
struct Actors {
    by_actor: DashMap<Arc<str>, Arc<Turns>>,
    inflight: usize,
}

impl Actors {
    fn turns(&self, actor: &Arc<str>) -> Arc<Turns> {
        if let Some(t) = self.by_actor.get(actor) {
            return t.clone();
        }
        let inflight = self.inflight;
        let make = || Arc::new(Turns { places: (inflight > 0).then(|| Arc::new(Semaphore::new(inflight))), rate_head: Mutex::new(()), waiting_for_token: AtomicUsize::new(0), waiting_for_place: AtomicUsize::new(0) });
        self.by_actor.entry(actor.clone()).or_insert_with(make).clone()
    }

    /// Drops the actor's entry once nobody holds or waits on it, so the map
    /// holds only actors with work in flight. Every holder clones the `Arc`
    /// under the map's shard lock, which `remove_if` also takes, so a count
    /// of one there means nobody else can be using it.
    fn forget_idle(&self, actor: &Arc<str>) {
        self.by_actor.remove_if(actor, |_, t| Arc::strong_count(t) == 1);
    }
}

/// An actor's entry while a request uses it; forgets an idle entry when
/// dropped, however the request ends (admitted and done, refused, or its
/// task cancelled mid-wait).
struct Hold {
    actors: Arc<Actors>,
    actor: Arc<str>,
    turns: Option<Arc<Turns>>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        drop(self.turns.take());
        self.actors.forget_idle(&self.actor);
    }
}

/// Counts one waiter in one of an actor's queues (and in the gateway's
/// total) while alive.
struct Waiting<'a> {
    queue: &'a AtomicUsize,
    total: &'a AtomicI64,
}

impl<'a> Waiting<'a> {
    /// Joins `queue`, unless `max` already wait in it; returns the waiter
    /// and how many were ahead of it.
    fn enter(queue: &'a AtomicUsize, total: &'a AtomicI64, max: usize) -> Result<(Waiting<'a>, usize), Throttled> {
        let ahead = queue.fetch_add(1, Ordering::AcqRel);
        if ahead >= max {
            queue.fetch_sub(1, Ordering::AcqRel);
            return Err(Throttled::Queue(max));
        }
        total.fetch_add(1, Ordering::Relaxed);
        Ok((Waiting { queue, total }, ahead))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queue.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's place in its actor's in-flight count; released when dropped.
pub struct Admitted {
    // Field order is drop order: the place first, then the entry.
    _place: Option<OwnedSemaphorePermit>,
    _hold: Option<Hold>,
}

pub struct Fairness {
    limits: FairnessLimits,
    actors: Arc<Actors>,
    rate: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    /// Admissions since the rate limiter's idle keys were last swept.
    since_sweep: AtomicU64,
    /// Requests waiting for a turn, all actors (`/metrics`).
    waiting: AtomicI64,
}

/// Sweep the rate limiter's idle actors every this many admissions.
const SWEEP_EVERY: u64 = 16_384;

impl Fairness {
    pub fn new(limits: FairnessLimits) -> Fairness {
        let rate = NonZeroU32::new(u32::try_from(limits.rps).unwrap_or(u32::MAX)).map(|n| RateLimiter::dashmap(Quota::per_second(n)));
        Fairness { limits, actors: Arc::new(Actors { by_actor: DashMap::new(), inflight: limits.inflight }), rate, since_sweep: AtomicU64::new(0), waiting: AtomicI64::new(0) }
    }

    /// Admits a request of `actor`, waiting in its actor's queue up to
    /// `per_actor_queue_ms` for its turn, or says which limit it is still
    /// over. The rate is taken first, so a request waiting for an in-flight
    /// place already holds its token and a flood cannot start more than its
    /// rate.
    pub async fn admit(&self, actor: &Arc<str>) -> Result<Admitted, Throttled> {
        if self.rate.is_none() && self.limits.inflight == 0 {
            return Ok(Admitted { _place: None, _hold: None });
        }
        let deadline = Instant::now() + self.limits.queue;
        let turns = self.actors.turns(actor);
        let hold = Hold { actors: self.actors.clone(), actor: actor.clone(), turns: Some(turns.clone()) };
        if let Some(rate) = &self.rate {
            self.take_token(rate, &turns, actor, deadline).await?;
        }
        let place = match &turns.places {
            None => None,
            Some(places) => Some(match places.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let _waiting = Waiting::enter(&turns.waiting_for_place, &self.waiting, self.limits.max_waiting)?;
                    match tokio::time::timeout_at(deadline, places.clone().acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        // Timed out (or closed, which never happens): not admitted.
                        _ => return Err(Throttled::InFlight(self.limits.inflight)),
                    }
                }
            }),
        };
        drop(turns);
        Ok(Admitted { _place: place, _hold: Some(hold) })
    }

    /// One token of `actor`'s rate. With nobody queued a free token is taken
    /// at once; otherwise the request joins the queue, whose head alone
    /// sleeps until governor says its token is due, so each waiter is woken
    /// once for its turn and never loses it to a later arrival. A request
    /// whose turn could not come before `deadline` (the waiters ahead of it
    /// need more than that at this rate) is refused without waiting.
    async fn take_token(&self, rate: &DefaultKeyedRateLimiter<Arc<str>>, turns: &Turns, actor: &Arc<str>, deadline: Instant) -> Result<(), Throttled> {
        self.sweep(rate);
        let refused = Throttled::Rate(self.limits.rps);
        if turns.waiting_for_token.load(Ordering::Acquire) == 0 && rate.check_key(actor).is_ok() {
            return Ok(());
        }
        let (_waiting, ahead) = Waiting::enter(&turns.waiting_for_token, &self.waiting, self.limits.max_waiting)?;
        // Each waiter ahead, and this one, needs one more interval at most.
        let interval = Duration::from_secs(1) / u32::try_from(self.limits.rps.max(1)).unwrap_or(u32::MAX);
        let turns_needed = u32::try_from(ahead + 1).unwrap_or(u32::MAX);
        if Instant::now() + interval.saturating_mul(turns_needed) > deadline {
            return Err(refused);
        }
        let _head = tokio::time::timeout_at(deadline, turns.rate_head.lock()).await.map_err(|_| refused)?;
        loop {
            let not_until = match rate.check_key(actor) {
                Ok(()) => return Ok(()),
                Err(n) => n,
            };
            let wait = not_until.wait_time_from(rate.clock().now());
            if Instant::now() + wait > deadline {
                return Err(refused);
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn sweep(&self, rate: &DefaultKeyedRateLimiter<Arc<str>>) {
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }

    /// Requests waiting for a turn, all actors.
    pub fn waiting(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Actors holding an in-flight place or waiting for a turn.
    pub fn actors_in_flight(&self) -> usize {
        self.actors.by_actor.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(inflight: usize, rps: u64, queue_ms: u64) -> Fairness {
        Fairness::new(FairnessLimits { inflight, rps, queue: Duration::from_millis(queue_ms), max_waiting: 1024 })
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
        assert_eq!(f.waiting(), 1);
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()), "and is admitted when the first finishes");
        assert_eq!(f.waiting(), 0);
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
    async fn past_the_queue_length_a_request_is_refused_at_once() {
        let f = Arc::new(Fairness::new(FairnessLimits { inflight: 1, rps: 0, queue: Duration::from_secs(5), max_waiting: 2 }));
        let alice = actor("alice");
        let _held = f.admit(&alice).await.unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (f, a) = (f.clone(), alice.clone());
                tokio::spawn(async move { f.admit(&a).await.map(|_| ()) })
            })
            .collect();
        while f.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        let t = std::time::Instant::now();
        assert_eq!(f.admit(&alice).await.err(), Some(Throttled::Queue(2)));
        assert!(t.elapsed() < Duration::from_secs(1), "refused without waiting");
        for w in waiters {
            w.abort();
        }
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
        // At least most of an interval; the upper bound only catches a wait
        // for a whole second's worth of tokens (generous for a loaded machine).
        assert!(waited >= Duration::from_millis(60) && waited < Duration::from_millis(900), "waited {waited:?}");
    }

    #[tokio::test]
    async fn rate_waiters_are_served_in_arrival_order_and_hopeless_ones_refused_at_once() {
        // 10 per second, queue 450 ms: after the burst, four more fit (100,
        // 200, 300, 400 ms); the fifth and later cannot get a turn in time.
        // (Real time: governor keeps its own clock, which tokio cannot pause.)
        let f = Arc::new(limits(0, 10, 450));
        let alice = actor("alice");
        for _ in 0..10 {
            f.admit(&alice).await.unwrap();
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (f, a) = (f.clone(), alice.clone());
            tasks.push(tokio::spawn(async move { (i, f.admit(&a).await.map(|_| start.elapsed()).map_err(|e| (e, start.elapsed()))) }));
            // Let each one join the queue before the next arrives.
            tokio::task::yield_now().await;
        }
        let mut served = Vec::new();
        let mut refused = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (i, Ok(at)) => served.push((i, at)),
                (i, Err(e)) => refused.push((i, e)),
            }
        }
        let order: Vec<usize> = served.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, vec![0, 1, 2, 3], "{served:?}");
        assert!(served.windows(2).all(|w| w[0].1 <= w[1].1), "first come, first served: {served:?}");
        assert_eq!(refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![4, 5]);
        assert!(refused.iter().all(|(_, (e, _))| *e == Throttled::Rate(10)));
        assert!(refused.iter().all(|(_, (_, at))| *at < Duration::from_millis(300)), "refused at once, not at the deadline: {refused:?}");
        // The refused two were refused at once, so the whole run is the four
        // served turns (400 ms); generous for a loaded machine.
        assert!(start.elapsed() < Duration::from_millis(1500), "nobody waited past the queue time and more");
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
        assert_eq!(f.actors_in_flight(), 0, "no entry outlives its actor's last request");
        let _one = f.admit(&actor("x")).await.unwrap();
        assert_eq!(f.actors_in_flight(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_nothing_behind() {
        let f = Arc::new(limits(1, 0, 5_000));
        let alice = actor("alice");
        let held = f.admit(&alice).await.unwrap();
        let (f2, a2) = (f.clone(), alice.clone());
        let waiter = tokio::spawn(async move { f2.admit(&a2).await.map(|_| ()) });
        while f.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(f.waiting(), 0);
        drop(held);
        assert_eq!(f.actors_in_flight(), 0);
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
        assert_eq!(f.actors_in_flight(), 0, "no entry is kept when no limit is set");
    }
}
