//! When maintenance runs by itself: a background task that starts a run
//! (`Store::maintain`, `store/maintenance.rs`) every
//! `limits.maintenance_interval_s` seconds and after every
//! `limits.maintenance_after_commits` commits, whichever comes first; 0
//! turns either trigger off, and both at 0 turn the task off. `POST
//! /maintenance` runs one at once, whatever the schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::Limits;
use crate::store::{Author, Store};

/// The actor background runs record their compaction commits as.
pub const MAINTENANCE_ACTOR: &str = "maintenance";

/// How often the task looks at the commit count: the "after N commits"
/// trigger fires at most this late.
const POLL: Duration = Duration::from_secs(1);

/// When a background run is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Time between runs; `None`: no timer.
    pub every: Option<Duration>,
    /// Commits between runs; `None`: not by count.
    pub after_commits: Option<u64>,
}

impl Schedule {
    pub fn from_limits(l: &Limits) -> Schedule {
        Schedule {
            every: (l.maintenance_interval_s > 0).then(|| Duration::from_secs(l.maintenance_interval_s)),
            after_commits: (l.maintenance_after_commits > 0).then_some(l.maintenance_after_commits),
        }
    }

    pub fn is_off(&self) -> bool {
        self.every.is_none() && self.after_commits.is_none()
    }

    /// True when a run is due `since_run` after the last one, with
    /// `commits` made since.
    pub fn due(&self, since_run: Duration, commits: u64) -> bool {
        self.every.is_some_and(|e| since_run >= e) || self.after_commits.is_some_and(|n| commits >= n)
    }
}

/// Starts the background task for `store`, unless the schedule is off. The
/// task lives as long as the runtime; a run it has started holds the writer
/// lock until it ends, and a run cut short by the process exiting is
/// repaired like any unfinished change on the next open.
pub fn spawn(store: Arc<Store>, limits: Limits) -> Option<tokio::task::JoinHandle<()>> {
    let schedule = Schedule::from_limits(&limits);
    if schedule.is_off() {
        tracing::info!("background maintenance is off (limits.maintenance_interval_s and limits.maintenance_after_commits are 0)");
        return None;
    }
    tracing::info!(?schedule, retention = ?limits.retention(), "background maintenance");
    Some(tokio::spawn(run(store, schedule, limits)))
}

async fn run(store: Arc<Store>, schedule: Schedule, limits: Limits) {
    let author = Author::new(MAINTENANCE_ACTOR);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Commits made before this start count: a worker restarted more often
    // than every `after_commits` commits would otherwise never maintain its
    // graph, and every start would open more versions and fragments (the
    // soak, docs/reliability.md). The newest maintenance commit marks the
    // last run; a run that compacted nothing left none, which costs one
    // early run after a start.
    let mut last_count = store.commit_count().saturating_sub(store.commits_since(MAINTENANCE_ACTOR));
    let mut last_run = Instant::now();
    loop {
        tick.tick().await;
        let commits = store.commit_count().saturating_sub(last_count) as u64;
        if !schedule.due(last_run.elapsed(), commits) {
            continue;
        }
        if let Err(e) = store.maintain(limits.retention(), &author).await {
            tracing::error!(error = %e, "background maintenance failed; it is tried again at the next trigger");
        }
        crate::memory::return_free_heap();
        // Its own compaction commits do not count towards the next run.
        (last_run, last_count) = (Instant::now(), store.commit_count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_trigger_starts_a_run_and_zero_turns_it_off() {
        let l = Limits { maintenance_interval_s: 60, maintenance_after_commits: 10, ..Limits::default() };
        let s = Schedule::from_limits(&l);
        assert!(!s.due(Duration::from_secs(59), 9));
        assert!(s.due(Duration::from_secs(60), 0), "the timer");
        assert!(s.due(Duration::ZERO, 10), "the count");
        let s = Schedule::from_limits(&Limits { maintenance_interval_s: 0, ..l });
        assert!(!s.due(Duration::from_secs(1 << 40), 9) && s.due(Duration::ZERO, 10));
        let s = Schedule::from_limits(&Limits { maintenance_after_commits: 0, ..l });
        assert!(!s.due(Duration::ZERO, u64::MAX) && s.due(Duration::from_secs(60), 0));
        assert!(Schedule::from_limits(&Limits { maintenance_interval_s: 0, maintenance_after_commits: 0, ..l }).is_off());
        assert!(!Schedule::from_limits(&Limits::default()).is_off(), "on by default");
    }
}
