//! The decision log: one JSON line per authorization decision, on stdout or
//! appended to `server.decision_log.file`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use crate::authz::Decision;

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    actor: &'a str,
    action: &'a str,
    resource: &'a str,
    decision: &'a str,
    policies: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    errors: &'a [String],
    latency_us: f64,
    route: &'a str,
}

/// Bytes of lines waiting for the writer. Past this the writer is stuck (a
/// full disk, a blocked pipe) and further lines are counted as dropped,
/// never allowed to stall or grow the proxy.
const MAX_PENDING: usize = 16 * 1024 * 1024;
/// How often the writer wakes to write what has gathered: the proxy thread
/// appends to a buffer and never wakes another thread per request.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

static SINK: OnceLock<Mutex<Option<std::fs::File>>> = OnceLock::new();
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static WRITER: OnceLock<()> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Bumped by the writer after each write, so `flush` can wait for one.
static WRITTEN: (Mutex<u64>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

/// Records one decision: the line is built here and appended to a buffer
/// that a writer thread writes out every [`FLUSH_EVERY`].
pub fn log_decision(actor: &str, action: &str, resource: &str, route: &str, d: &Decision) {
    let line = Line {
        ts: chrono_like_now(),
        actor,
        action,
        resource,
        decision: if d.allowed { "allow" } else { "deny" },
        policies: &d.policies,
        errors: &d.errors,
        latency_us: d.elapsed.as_secs_f64() * 1e6,
        route,
    };
    start_writer();
    let Ok(mut pending) = PENDING.lock() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if pending.len() > MAX_PENDING {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if serde_json::to_writer(&mut *pending, &line).is_ok() {
        pending.push(b'\n');
    }
}

/// Decision lines that were not written (the writer fell behind or failed).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits until every line logged so far is written (tests, shutdown).
pub fn flush() {
    if WRITER.get().is_none() {
        return;
    }
    let Ok(mut n) = WRITTEN.0.lock() else { return };
    let target = *n + 2;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while *n < target && std::time::Instant::now() < deadline {
        match WRITTEN.1.wait_timeout(n, FLUSH_EVERY * 5) {
            Ok((g, _)) => n = g,
            Err(_) => return,
        }
    }
}

fn start_writer() {
    WRITER.get_or_init(|| {
        if let Err(e) = std::thread::Builder::new().name("decision-log".into()).spawn(write_loop) {
            tracing::error!(error = %e, "cannot start the decision-log writer; decisions will be counted as dropped");
        }
    });
}

/// Every [`FLUSH_EVERY`], takes what has gathered and writes it in one go.
fn write_loop() {
    let file = SINK.get().and_then(|m| m.lock().ok().and_then(|mut f| f.take()));
    let mut out: Box<dyn Write> = match file {
        Some(f) => Box::new(f),
        None => Box::new(std::io::stdout()),
    };
    let mut batch = Vec::new();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        if let Ok(mut p) = PENDING.lock() {
            std::mem::swap(&mut *p, &mut batch);
        }
        if !batch.is_empty() {
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                let lines = batch.iter().filter(|b| **b == b'\n').count() as u64;
                DROPPED.fetch_add(lines, Ordering::Relaxed);
                tracing::warn!(lines, "the decision log could not be written");
            }
            batch.clear();
        }
        if let Ok(mut n) = WRITTEN.0.lock() {
            *n += 1;
        }
        WRITTEN.1.notify_all();
    }
}

/// Sends the decision log to `path` (appended) instead of stdout. Opened
/// now, so a bad path stops start-up.
pub fn log_to_file(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let _ = SINK.set(Mutex::new(Some(f)));
    Ok(())
}

/// Seconds since the Unix epoch with millisecond precision, as a string
/// (no date crate needed for a log line).
fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file sink appends one JSON line per decision, with the fields a
    /// security team reads.
    #[test]
    fn the_file_sink_appends_one_json_line_per_decision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        log_to_file(&path).unwrap();
        let d = Decision { allowed: false, policies: vec!["tenant-isolation".into()], errors: Vec::new(), elapsed: std::time::Duration::from_micros(7) };
        log_decision("amy", "read", "Omnigraph::Graph::\"g\"", "POST /read", &d);
        log_decision("bob", "change", "Omnigraph::Graph::\"g\"", "POST /change", &Decision { allowed: true, policies: vec!["p".into()], ..d.clone() });
        flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!((lines[0]["actor"].as_str(), lines[0]["decision"].as_str()), (Some("amy"), Some("deny")));
        assert_eq!(lines[0]["policies"][0], "tenant-isolation");
        assert_eq!(lines[1]["decision"], "allow");
        assert!(lines[0]["latency_us"].as_f64().unwrap() > 0.0 && lines[0]["ts"].is_string());
    }
}
