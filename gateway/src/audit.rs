//! The decision log, an audit trail: one JSON line per authorization
//! decision, on stdout or appended to `server.decision_log.file` and
//! rotated by size. Lines are never dropped silently: a failed write is
//! retried, counted, and reported by `/readyz`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use crate::authz::Decision;

/// One audit line, as a security team keeps it.
#[derive(Serialize)]
struct Line<'a> {
    /// RFC 3339, UTC, milliseconds.
    ts: String,
    request_id: &'a str,
    actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    source: &'a str,
    action: &'a str,
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    branch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    decision: &'a str,
    policies: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    errors: &'a [String],
    latency_us: f64,
    route: &'a str,
    /// The shadow set's decision, on lines where it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowLine<'a>>,
}

#[derive(Serialize)]
struct ShadowLine<'a> {
    decision: &'a str,
    policies: &'a [String],
}

/// What one decision is logged with.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub actor: &'a omnigraph_contract::ResolvedActor,
    pub action: &'a str,
    pub resource: &'a str,
    pub branch: Option<&'a str>,
    pub target: Option<&'a str>,
    pub route: &'a str,
    pub decision: &'a Decision,
    pub shadow: Option<&'a Decision>,
}

/// Bytes of lines waiting for the writer. Past this the writer is stuck (a
/// full disk, a blocked pipe) and further lines are counted as dropped,
/// never allowed to stall or grow the proxy.
const MAX_PENDING: usize = 16 * 1024 * 1024;
/// How often the writer wakes to write what has gathered: the proxy thread
/// appends to a buffer and never wakes another thread per request.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

static SINK: OnceLock<Mutex<Option<RotatingFile>>> = OnceLock::new();
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static WRITER: OnceLock<()> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Failed writes of the sink (each retried on the writer's next turn).
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// False from a failed write until a write succeeds again: `/readyz` says
/// 503 meanwhile, and `required: true` refuses requests.
static HEALTHY: AtomicBool = AtomicBool::new(true);
/// Bumped by the writer after each write, so `flush` can wait for one.
static WRITTEN: (Mutex<u64>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

/// When a decision-log file is rotated: past `max_bytes`, the file becomes
/// `FILE.1` (the older ones move up to `FILE.<keep>`, the oldest is removed)
/// and a new `FILE` starts. Rotation happens between whole lines.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: usize,
}

/// The decision-log file, appended to and rotated by size.
struct RotatingFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    rotation: Rotation,
}

impl RotatingFile {
    fn open(path: &Path, rotation: Rotation) -> std::io::Result<RotatingFile> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_path_buf(), file: Some(file), size, rotation })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Appends `batch` (whole lines), rotating first when it would pass `max_bytes`.
    fn write(&mut self, batch: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + batch.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            *self = RotatingFile::open(&self.path, self.rotation)?;
        }
        let Some(f) = self.file.as_mut() else { return Err(std::io::Error::other("decision log not open")) };
        f.write_all(batch)?;
        self.size += batch.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(self.numbered(self.rotation.keep)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..self.rotation.keep).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        *self = RotatingFile::open(&self.path, self.rotation)?;
        Ok(())
    }
}

/// Records one decision: the line is built here and appended to a buffer
/// that a writer thread writes out every [`FLUSH_EVERY`].
pub fn log_decision(e: &Entry<'_>) {
    let issuer = match &e.actor.source {
        omnigraph_contract::AuthSource::Jwt { issuer } => Some(&**issuer),
        omnigraph_contract::AuthSource::Static => None,
    };
    let line = Line {
        ts: rfc3339_now(),
        request_id: e.request_id,
        actor: &e.actor.actor_id,
        issuer,
        tenant: e.actor.tenant_id.as_deref(),
        source: e.actor.source.as_str(),
        action: e.action,
        resource: e.resource,
        branch: e.branch,
        target: e.target,
        decision: if e.decision.allowed { "allow" } else { "deny" },
        policies: &e.decision.policies,
        errors: &e.decision.errors,
        latency_us: e.decision.elapsed.as_secs_f64() * 1e6,
        route: e.route,
        shadow: e.shadow.map(|d| ShadowLine { decision: if d.allowed { "allow" } else { "deny" }, policies: &d.policies }),
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
/// A failed write is counted, marks the log unhealthy and is retried with
/// the next batch behind it, in order; only past [`MAX_PENDING`] are lines
/// dropped (and counted).
fn write_loop() {
    let mut file = SINK.get().and_then(|m| m.lock().ok().and_then(|mut f| f.take()));
    let mut stdout = std::io::stdout();
    let mut batch = Vec::new();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        if let Ok(mut p) = PENDING.lock() {
            batch.append(&mut p);
        }
        if !batch.is_empty() {
            let written = match file.as_mut() {
                Some(f) => f.write(&batch),
                None => stdout.write_all(&batch).and_then(|()| stdout.flush()),
            };
            match written {
                Ok(()) => {
                    batch.clear();
                    HEALTHY.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    FAILURES.fetch_add(1, Ordering::Relaxed);
                    if HEALTHY.swap(false, Ordering::Relaxed) {
                        tracing::error!(error = %e, "the decision log cannot be written; /readyz reports 503 until it can");
                    }
                    if batch.len() > MAX_PENDING {
                        DROPPED.fetch_add(batch.iter().filter(|b| **b == b'\n').count() as u64, Ordering::Relaxed);
                        batch.clear();
                    }
                }
            }
        }
        if let Ok(mut n) = WRITTEN.0.lock() {
            *n += 1;
        }
        WRITTEN.1.notify_all();
    }
}

/// Whether the last write of the decision log succeeded.
pub fn healthy() -> bool {
    HEALTHY.load(Ordering::Relaxed)
}

/// Failed writes of the decision log so far.
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// Sends the decision log to `path` (appended, rotated by `rotation`)
/// instead of stdout. Opened now, so a bad path stops start-up.
pub fn log_to_file(path: &Path, rotation: Rotation) -> std::io::Result<()> {
    let f = RotatingFile::open(path, rotation)?;
    let _ = SINK.set(Mutex::new(Some(f)));
    Ok(())
}

/// Now as RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T03:04:05.678Z`.
fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Days since 1970-01-01 → (year, month, day): Howard Hinnant's
/// `civil_from_days`, exact for the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file sink appends one JSON line per decision, with the fields a
    /// security team reads.
    fn actor(id: &str) -> omnigraph_contract::ResolvedActor {
        omnigraph_contract::ResolvedActor {
            actor_id: id.into(),
            tenant_id: Some("acme".into()),
            groups: Vec::new(),
            scopes: Vec::new(),
            source: omnigraph_contract::AuthSource::Jwt { issuer: "https://idp".into() },
        }
    }

    #[test]
    fn the_file_sink_appends_one_json_line_per_decision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        log_to_file(&path, Rotation { max_bytes: 1 << 30, keep: 2 }).unwrap();
        let d = Decision { allowed: false, policies: vec!["tenant-isolation".into()], errors: Vec::new(), elapsed: std::time::Duration::from_micros(7) };
        let (amy, bob) = (actor("amy"), actor("bob"));
        let entry = |a, action, decision| Entry { request_id: "r1", actor: a, action, resource: "Omnigraph::Graph::\"g\"", branch: Some("dev"), target: None, route: "POST /read", decision, shadow: None };
        log_decision(&entry(&amy, "read", &d));
        let allowed = Decision { allowed: true, policies: vec!["p".into()], ..d.clone() };
        log_decision(&entry(&bob, "change", &allowed));
        flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!((lines[0]["actor"].as_str(), lines[0]["decision"].as_str()), (Some("amy"), Some("deny")));
        assert_eq!(lines[0]["policies"][0], "tenant-isolation");
        assert_eq!((lines[0]["issuer"].as_str(), lines[0]["tenant"].as_str(), lines[0]["source"].as_str()), (Some("https://idp"), Some("acme"), Some("jwt")));
        assert_eq!((lines[0]["request_id"].as_str(), lines[0]["branch"].as_str()), (Some("r1"), Some("dev")));
        assert_eq!(lines[1]["decision"], "allow");
        assert!(lines[0]["latency_us"].as_f64().unwrap() > 0.0);
        let ts = lines[0]["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "RFC 3339: {ts}");
    }

    #[test]
    fn dates_are_exact() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn rotation_keeps_keep_files_of_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut f = RotatingFile::open(&path, Rotation { max_bytes: 100, keep: 2 }).unwrap();
        for i in 0..20 {
            f.write(format!("{{\"line\":{i},\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}\n").as_bytes()).unwrap();
        }
        let names: Vec<String> = {
            let mut v: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(names, ["d.log", "d.log.1", "d.log.2"]);
        let mut all = Vec::new();
        for n in ["d.log.2", "d.log.1", "d.log"] {
            let text = std::fs::read_to_string(dir.path().join(n)).unwrap();
            assert!(text.len() <= 100, "{n} is {} bytes", text.len());
            for l in text.lines() {
                all.push(serde_json::from_str::<serde_json::Value>(l).expect("whole lines only")["line"].as_u64().unwrap());
            }
        }
        assert_eq!(all, (20 - all.len() as u64..20).collect::<Vec<_>>(), "the newest lines, in order, none lost within the kept files");
    }
}
