//! The limits every worker enforces, their defaults (DESIGN.md section 2,
//! `limits:`) and the `omnigraph-worker serve` flags that carry them: the
//! gateway writes the flags from its `limits:` block, the worker reads them,
//! and both take their defaults from here.

/// One worker's limits, as handed from the gateway to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Bytes in one request body (413 past it); not `/ingest`'s.
    pub max_body_bytes: u64,
    /// Bytes in one `/ingest` body, which is streamed, not held (413 past it).
    pub max_ingest_bytes: u64,
    /// Ops in one `/change` batch.
    pub max_change_ops: u64,
    /// `traverse` steps in one read.
    pub max_traverse_steps: u64,
    /// Values in one `where` `in` list.
    pub max_in_list: u64,
    /// Nodes one read may visit, the start set included.
    pub max_visited: u64,
    /// Milliseconds one read may run.
    pub read_timeout_ms: u64,
    /// Maintenance keeps the table versions of at least this many of each
    /// branch's newest commits (its head included), so `?commit=` reads them.
    pub retain_commits: u64,
    /// ... and of every commit made in the last this many days (0: none by age).
    pub retain_days: u64,
    /// Seconds between background maintenance runs (0: no timer).
    pub maintenance_interval_s: u64,
    /// A background maintenance run after this many commits (0: never by count).
    pub maintenance_after_commits: u64,
}

impl WorkerLimits {
    pub const DEFAULT: WorkerLimits = WorkerLimits {
        max_body_bytes: 16 * 1024 * 1024,
        max_ingest_bytes: 10 * 1024 * 1024 * 1024,
        max_change_ops: 100_000,
        max_traverse_steps: 8,
        max_in_list: 10_000,
        max_visited: 1_000_000,
        read_timeout_ms: 10_000,
        retain_commits: 100,
        retain_days: 7,
        maintenance_interval_s: 3600,
        maintenance_after_commits: 1000,
    };

    /// The `omnigraph-worker serve` flags that set these limits. A request
    /// limit is at least 1 (a worker refuses 0); the retention and
    /// maintenance settings take 0 (none, off).
    pub fn to_args(&self) -> Vec<String> {
        let limits = [
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-ingest-bytes", self.max_ingest_bytes),
            ("--max-change-ops", self.max_change_ops),
            ("--max-traverse-steps", self.max_traverse_steps),
            ("--max-in-list", self.max_in_list),
            ("--max-visited", self.max_visited),
            ("--read-timeout-ms", self.read_timeout_ms),
        ]
        .map(|(flag, v)| (flag, v.max(1)));
        let maintenance = [
            ("--retain-commits", self.retain_commits),
            ("--retain-days", self.retain_days),
            ("--maintenance-interval-s", self.maintenance_interval_s),
            ("--maintenance-after-commits", self.maintenance_after_commits),
        ];
        limits.into_iter().chain(maintenance).flat_map(|(flag, v)| [flag.to_string(), v.to_string()]).collect()
    }
}

impl Default for WorkerLimits {
    fn default() -> WorkerLimits {
        WorkerLimits::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_carry_every_limit_and_never_zero() {
        let args = WorkerLimits { max_visited: 0, retain_days: 0, maintenance_interval_s: 0, ..WorkerLimits::DEFAULT }.to_args();
        assert_eq!(args.len(), 22);
        assert_eq!(args[2..4], ["--max-ingest-bytes".to_string(), "10737418240".to_string()]);
        assert_eq!(args[0..2], ["--max-body-bytes".to_string(), "16777216".to_string()]);
        let visited = args.iter().position(|a| a == "--max-visited").unwrap();
        assert_eq!(args[visited + 1], "1", "a worker refuses 0, so the gateway never sends it");
        let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
        assert_eq!(value("--retain-days"), Some("0"), "0 keeps nothing by age");
        assert_eq!(value("--maintenance-interval-s"), Some("0"), "0 turns the timer off");
        assert_eq!((value("--retain-commits"), value("--maintenance-after-commits")), (Some("100"), Some("1000")));
    }
}
