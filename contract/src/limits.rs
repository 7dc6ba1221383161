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
    };

    /// The `omnigraph-worker serve` flags that set these limits.
    pub fn to_args(&self) -> Vec<String> {
        [
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-ingest-bytes", self.max_ingest_bytes),
            ("--max-change-ops", self.max_change_ops),
            ("--max-traverse-steps", self.max_traverse_steps),
            ("--max-in-list", self.max_in_list),
            ("--max-visited", self.max_visited),
            ("--read-timeout-ms", self.read_timeout_ms),
        ]
        .into_iter()
        .flat_map(|(flag, v)| [flag.to_string(), v.max(1).to_string()])
        .collect()
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
        let args = WorkerLimits { max_visited: 0, ..WorkerLimits::DEFAULT }.to_args();
        assert_eq!(args.len(), 14);
        assert_eq!(args[2..4], ["--max-ingest-bytes".to_string(), "10737418240".to_string()]);
        assert_eq!(args[0..2], ["--max-body-bytes".to_string(), "16777216".to_string()]);
        let visited = args.iter().position(|a| a == "--max-visited").unwrap();
        assert_eq!(args[visited + 1], "1", "a worker refuses 0, so the gateway never sends it");
    }
}
