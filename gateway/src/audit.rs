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

/// Lines waiting for the writer. Past this many the writer is stuck (a full
/// disk, a blocked pipe) and further lines are counted as dropped, never
/// allowed to stall the proxy.
const QUEUE: usize = 65_536;

enum Msg {
    Line(Vec<u8>),
    Flush(std::sync::mpsc::SyncSender<()>),
}

static SINK: OnceLock<Mutex<Option<std::fs::File>>> = OnceLock::new();
static WRITER: OnceLock<std::sync::mpsc::SyncSender<Msg>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Records one decision. The line is built here and written by a writer
/// thread, in batches, so the proxy thread never waits on the disk.
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
    let Ok(mut bytes) = serde_json::to_vec(&line) else { return };
    bytes.push(b'\n');
    if writer().try_send(Msg::Line(bytes)).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decision lines the writer could not take (its queue was full).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits until every line logged so far is written (tests, shutdown).
pub fn flush() {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if writer().send(Msg::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
    }
}

fn writer() -> &'static std::sync::mpsc::SyncSender<Msg> {
    WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUE);
        let spawned = std::thread::Builder::new().name("decision-log".into()).spawn(move || write_loop(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the decision-log writer; decisions will be counted as dropped");
        }
        tx
    })
}

/// Writes whatever is queued, then flushes once: one write for a burst.
fn write_loop(rx: std::sync::mpsc::Receiver<Msg>) {
    let file = SINK.get().and_then(|m| m.lock().ok().and_then(|mut f| f.take()));
    let mut out: Box<dyn Write> = match file {
        Some(f) => Box::new(std::io::BufWriter::with_capacity(64 * 1024, f)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    while let Ok(first) = rx.recv() {
        let mut waiting = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(b) => {
                    if out.write_all(&b).is_err() {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Msg::Flush(done) => waiting.push(done),
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            tracing::warn!("the decision log could not be written");
        }
        for w in waiting {
            let _ = w.send(());
        }
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
