//! What a `/change` costs the worker in memory, measured on the real
//! `omnigraph-worker` binary as the growth of its peak resident set
//! (`VmHWM` in `/proc/<pid>/status`) over one request, each on a fresh worker.
//!
//! Found by the bad-input matrix: the body used to be parsed into a
//! `serde_json::Value` tree (and copied) before the op limit was checked, so
//! a 14.9 MB body of 300,000 deletes reached 898 MB of heap and took about
//! 6 s before its 400, and a valid batch of 100,000 upserts took about
//! 450 MB. Now the limit is enforced while the body is read, and ops are read
//! into typed ops that borrow from the body.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SCHEMA: &str = "node Person { name: String @key  age: I64?  city: String? }\nedge Knows: Person -> Person { since: I64? }\n";
const MIB: u64 = 1024 * 1024;

/// The real worker binary (common::WorkerProcess), warmed up.
struct Worker(common::WorkerProcess);

impl Worker {
    fn start() -> Worker {
        let w = Worker(common::WorkerProcess::start("mem", SCHEMA));
        // Warm up: the first change opens and writes every table once.
        let (status, body) = w.change(&body_of((0..10).map(|i| json!({"upsert": {"type": "Person", "key": format!("w{i}"), "props": {"age": i}}}))));
        assert_eq!(status, 200, "{body}");
        w
    }

    /// `POST /change` with `body`: the status and the JSON answer.
    fn change(&self, body: &[u8]) -> (u16, Value) {
        let (status, answer) = self.0.call("POST", "/change", body, Duration::from_secs(300));
        (status, serde_json::from_slice(&answer).unwrap_or(Value::Null))
    }

    /// (`VmRSS`, `VmHWM`) in bytes.
    fn memory(&self) -> (u64, u64) {
        (status_field(self.0.child.id(), "VmRSS:"), status_field(self.0.child.id(), "VmHWM:"))
    }

    /// One `/change` of `body` on this (fresh) worker: its answer, how long
    /// it took, and how far it raised the worker's peak resident set.
    fn measure(&self, what: &str, body: &[u8]) -> (u16, Value, Duration, u64) {
        let (rss, before) = self.memory();
        // `VmData` (what `limits.worker_memory_bytes` bounds) has no peak of
        // its own: sample it while the request runs, for the record.
        let (pid, done) = (self.0.child.id(), std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let sampler = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    peak = peak.max(status_field(pid, "VmData:"));
                    std::thread::sleep(Duration::from_millis(5));
                }
                peak
            })
        };
        let data_before = status_field(pid, "VmData:");
        let t = Instant::now();
        let (status, answer) = self.change(body);
        let took = t.elapsed();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let data_peak = sampler.join().expect("sampler");
        let (after_rss, after) = self.memory();
        let growth = after.saturating_sub(before);
        eprintln!(
            "{what} ({:.1} MB body): {status} in {:.2} s; peak RSS {} -> {} MiB (+{} MiB), RSS {} -> {} MiB, data {} -> peak {} MiB",
            body.len() as f64 / 1e6,
            took.as_secs_f64(),
            before / MIB,
            after / MIB,
            growth / MIB,
            rss / MIB,
            after_rss / MIB,
            data_before / MIB,
            data_peak / MIB
        );
        (status, answer, took, growth)
    }
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
        * 1024
}

fn body_of(ops: impl Iterator<Item = Value>) -> Vec<u8> {
    json!({ "ops": ops.collect::<Vec<_>>() }).to_string().into_bytes()
}

fn deletes(n: usize) -> Vec<u8> {
    body_of((0..n).map(|i| json!({"delete": {"type": "Person", "key": format!("z{i}")}})))
}

#[test]
fn a_batch_past_the_op_limit_is_refused_while_it_is_read() {
    for (n, max_growth) in [(300_000, 100 * MIB), (100_001, 100 * MIB)] {
        let w = Worker::start();
        let body = deletes(n);
        let (status, answer, took, growth) = w.measure(&format!("{n} deletes"), &body);
        assert_eq!((status, answer["code"].as_str()), (400, Some("bad_request")), "{answer}");
        assert_eq!(answer["details"], json!({"limit": "max_change_ops", "value": 100_000}), "{answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("limits.max_change_ops")), "{answer}");
        assert!(growth < max_growth, "{n} deletes raised the peak resident set by {} MiB (limit {} MiB)", growth / MIB, max_growth / MIB);
        assert!(took < Duration::from_secs(30), "{n} deletes took {took:?} to refuse");
        let (status, _) = w.change(&deletes(1));
        assert_eq!(status, 400, "the worker still answers");
    }
}

#[test]
fn a_batch_of_100000_upserts_costs_its_rows_not_a_tree() {
    let w = Worker::start();
    let body = body_of((0..100_000).map(|i| json!({"upsert": {"type": "Person", "key": format!("h{i}"), "props": {"age": i, "city": format!("c{}", i % 100)}}})));
    let (status, answer, _, growth) = w.measure("100,000 upserts", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["affected_nodes"], 100_000, "{answer}");
    // The body, its ops (about 100 bytes each), the 100,000 new rows of the
    // in-memory state, the Arrow batch and Lance's write buffers.
    assert!(growth < 250 * MIB, "100,000 upserts raised the peak resident set by {} MiB", growth / MIB);
}
