//! The decision log: one JSON line per authorization decision, on stdout or
//! appended to `server.decision_log.file`.

use std::io::Write;
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
    if let Ok(mut s) = serde_json::to_vec(&line) {
        s.push(b'\n');
        match SINK.get() {
            Some(file) => {
                if let Ok(mut f) = file.lock() {
                    let _ = f.write_all(&s);
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&s);
                let _ = out.flush();
            }
        }
    }
}

static SINK: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Sends the decision log to `path` (appended, one `write` per line) instead of stdout.
pub fn log_to_file(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let _ = SINK.set(Mutex::new(f));
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
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!((lines[0]["actor"].as_str(), lines[0]["decision"].as_str()), (Some("amy"), Some("deny")));
        assert_eq!(lines[0]["policies"][0], "tenant-isolation");
        assert_eq!(lines[1]["decision"], "allow");
        assert!(lines[0]["latency_us"].as_f64().unwrap() > 0.0 && lines[0]["ts"].is_string());
    }
}
