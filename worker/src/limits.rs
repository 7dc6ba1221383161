//! Per-request limits (DESIGN.md section 2, `limits:`).
//!
//! The gateway passes its `limits:` block to each worker as `serve` flags, so
//! a request past a limit is refused by the process that would do the work,
//! whether or not a gateway sits in front. Every limit has a default, and a
//! request past one gets 400 or 413 with `details: {"limit", "value"}`, never
//! a hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// The limits one worker enforces. `Default` matches DESIGN.md and the
/// `serve` flags' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request body bytes (413 above it); `/ingest` has its own.
    pub max_body_bytes: usize,
    /// `/ingest` body bytes, counted as they stream in (413 above it).
    pub max_ingest_bytes: u64,
    /// Ops in one `/change` batch.
    pub max_change_ops: usize,
    /// `traverse` steps in one read.
    pub max_traverse_steps: usize,
    /// Values in one `where` `in` list.
    pub max_in_list: usize,
    /// Nodes one read may visit, the start set included.
    pub max_visited: usize,
    /// Wall-clock time one read may take.
    pub read_timeout_ms: u64,
    /// Maintenance keeps each branch's newest this many commits readable.
    pub retain_commits: u64,
    /// ... and every commit younger than this many days (0: none by age).
    pub retain_days: u64,
    /// Seconds between background maintenance runs (0: no timer).
    pub maintenance_interval_s: u64,
    /// A background maintenance run after this many commits (0: never by count).
    pub maintenance_after_commits: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(crate::contract::limits::WorkerLimits::DEFAULT)
    }
}

impl From<crate::contract::limits::WorkerLimits> for Limits {
    /// The contract's limits, as this machine's sizes.
    fn from(w: crate::contract::limits::WorkerLimits) -> Limits {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Limits {
            max_body_bytes: size(w.max_body_bytes),
            max_ingest_bytes: w.max_ingest_bytes,
            max_change_ops: size(w.max_change_ops),
            max_traverse_steps: size(w.max_traverse_steps),
            max_in_list: size(w.max_in_list),
            max_visited: size(w.max_visited),
            read_timeout_ms: w.read_timeout_ms,
            retain_commits: w.retain_commits,
            retain_days: w.retain_days,
            maintenance_interval_s: w.maintenance_interval_s,
            maintenance_after_commits: w.maintenance_after_commits,
        }
    }
}

impl Limits {
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    /// What maintenance keeps readable (`limits.retain_commits`, `limits.retain_days`).
    pub fn retention(&self) -> crate::store::Retention {
        crate::store::Retention { commits: self.retain_commits, days: self.retain_days }
    }

    /// `n` ops in one change batch.
    pub fn check_change_ops(&self, n: usize) -> Result<(), LimitExceeded> {
        if n > self.max_change_ops {
            return Err(LimitExceeded::new(
                "max_change_ops",
                self.max_change_ops as u64,
                format!("the batch has {n} ops, more than {} (limits.max_change_ops)", self.max_change_ops),
            ));
        }
        Ok(())
    }

    /// `n` traverse steps in one read.
    pub fn check_traverse_steps(&self, n: usize) -> Result<(), LimitExceeded> {
        if n > self.max_traverse_steps {
            return Err(LimitExceeded::new(
                "max_traverse_steps",
                self.max_traverse_steps as u64,
                format!("the read has {n} traverse steps, more than {} (limits.max_traverse_steps)", self.max_traverse_steps),
            ));
        }
        Ok(())
    }

    /// An `in` list of `n` values.
    pub fn check_in_list(&self, prop: &str, n: usize) -> Result<(), LimitExceeded> {
        if n > self.max_in_list {
            return Err(LimitExceeded::new(
                "max_in_list",
                self.max_in_list as u64,
                format!("where: the \"in\" list on {prop:?} has {n} values, more than {} (limits.max_in_list)", self.max_in_list),
            ));
        }
        Ok(())
    }

    pub fn body_too_large(&self) -> LimitExceeded {
        LimitExceeded::new(
            "max_body_bytes",
            self.max_body_bytes as u64,
            format!("the request body is larger than {} bytes (limits.max_body_bytes)", self.max_body_bytes),
        )
    }

    pub fn ingest_too_large(&self) -> LimitExceeded {
        LimitExceeded::new(
            "max_ingest_bytes",
            self.max_ingest_bytes,
            format!("the ingest body is larger than {} bytes (limits.max_ingest_bytes); nothing was written", self.max_ingest_bytes),
        )
    }

    pub fn read_timed_out(&self) -> LimitExceeded {
        LimitExceeded::new(
            "read_timeout_ms",
            self.read_timeout_ms,
            format!("the read took longer than {} ms (limits.read_timeout_ms)", self.read_timeout_ms),
        )
    }
}

/// A request went past one limit. `limit` is the key under `limits:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitExceeded {
    pub limit: &'static str,
    pub value: u64,
    pub message: String,
}

impl LimitExceeded {
    pub fn new(limit: &'static str, value: u64, message: String) -> Self {
        LimitExceeded { limit, value, message }
    }

    /// The error body's `details`.
    pub fn details(&self) -> Value {
        json!({"limit": self.limit, "value": self.value})
    }
}

/// Set when a read should stop: its time ran out or its caller went away.
/// Shared between the async handler and the blocking thread doing the work,
/// which polls it; setting it is the only way to stop a running traversal.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cancels on drop, so a read whose handler future is dropped (its client
/// disconnected, or the timeout fired) stops its blocking work too.
pub struct CancelOnDrop(pub Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// How many more nodes a read may visit, and whether it should stop. Threaded
/// through every step of a read, so the limit is on the read's total work.
#[derive(Debug)]
pub struct VisitBudget {
    max: usize,
    used: usize,
    read_timeout_ms: u64,
    cancel: Cancel,
}

impl VisitBudget {
    pub fn new(limits: &Limits, cancel: Cancel) -> Self {
        VisitBudget { max: limits.max_visited, used: 0, read_timeout_ms: limits.read_timeout_ms, cancel }
    }

    /// Counts `n` more visited nodes; fails once the total passes the limit
    /// or the read was cancelled.
    pub fn visit(&mut self, n: usize) -> Result<(), LimitExceeded> {
        self.used = self.used.saturating_add(n);
        if self.used > self.max {
            return Err(LimitExceeded::new(
                "max_visited",
                self.max as u64,
                format!("the read visited more than {} nodes (limits.max_visited)", self.max),
            ));
        }
        self.check()
    }

    /// Fails if the read was cancelled; called in every loop of a traversal.
    pub fn check(&self) -> Result<(), LimitExceeded> {
        if self.cancel.is_cancelled() {
            return Err(LimitExceeded::new(
                "read_timeout_ms",
                self.read_timeout_ms,
                format!("the read took longer than {} ms (limits.read_timeout_ms)", self.read_timeout_ms),
            ));
        }
        Ok(())
    }

    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let l = Limits::default();
        assert_eq!(
            (l.max_body_bytes, l.max_ingest_bytes, l.max_change_ops, l.max_traverse_steps, l.max_in_list, l.max_visited, l.read_timeout_ms),
            (16_777_216, 10_737_418_240, 100_000, 8, 10_000, 1_000_000, 10_000)
        );
        assert_eq!((l.retain_commits, l.retain_days, l.maintenance_interval_s, l.maintenance_after_commits), (100, 7, 3600, 1000));
    }

    #[test]
    fn checks_allow_the_limit_and_refuse_one_more() {
        let l = Limits { max_change_ops: 3, max_traverse_steps: 2, max_in_list: 5, ..Limits::default() };
        assert!(l.check_change_ops(3).is_ok());
        let e = l.check_change_ops(4).unwrap_err();
        assert_eq!(e.details(), json!({"limit": "max_change_ops", "value": 3}));
        assert!(e.to_string().contains("limits.max_change_ops"), "{e}");
        assert!(l.check_traverse_steps(2).is_ok());
        assert_eq!(l.check_traverse_steps(3).unwrap_err().limit, "max_traverse_steps");
        assert!(l.check_in_list("age", 5).is_ok());
        assert!(l.check_in_list("age", 6).unwrap_err().to_string().contains("limits.max_in_list"));
    }

    #[test]
    fn the_budget_counts_across_calls_and_stops_on_cancel() {
        let l = Limits { max_visited: 10, ..Limits::default() };
        let mut b = VisitBudget::new(&l, Cancel::default());
        b.visit(4).unwrap();
        b.visit(6).unwrap();
        let e = b.visit(1).unwrap_err();
        assert_eq!(e.limit, "max_visited");
        assert_eq!(e.to_string(), "the read visited more than 10 nodes (limits.max_visited)");

        let cancel = Cancel::default();
        let b = VisitBudget::new(&l, cancel.clone());
        assert!(b.check().is_ok());
        drop(CancelOnDrop(cancel));
        assert_eq!(b.check().unwrap_err().limit, "read_timeout_ms");
    }
}
