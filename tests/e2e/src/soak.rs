//! The soak harness: many clients hold mixed reads and changes against one
//! graph through the gateway while its worker is SIGKILLed on a clock, and
//! then every acknowledged write is looked for.
//!
//! What it counts, for `docs/reliability.md`:
//! - answers by status; any 5xx other than 503 `worker_unavailable` (the
//!   answer while a worker restarts) is a failure;
//! - connections closed without an answer (a client library would show
//!   these as resets): must be 0;
//! - acknowledged writes lost (a change answered 200 whose rows are not in
//!   the graph afterwards): must be 0;
//! - torn batches: every change is three ops (two nodes and the edge between
//!   them, both nodes carrying the batch's number); whatever its answer was,
//!   afterwards either all three are in the graph or none is, and both nodes
//!   carry the same number;
//! - gaps in the commit log: a commit whose parent is not in the log;
//! - the gateway's and the worker's RSS after a warm-up (a sixth of the run,
//!   at most 30 s) and when the load stops, before the checks below read the
//!   whole graph, and the highest seen in between. With `key_slots` set,
//!   each client overwrites a bounded set of batch ids, so the graph stops
//!   growing once every slot was written and RSS growth means memory that
//!   keeps growing with time (commits, versions, connections), not data.
//!
//! An acknowledged write is "lost" when its batch id afterwards holds a
//! number older than the newest acknowledged one for that id (each id is
//! written by one client, in order), or a number never sent.
//!
//! `tests/e2e/tests/soak_e2e.rs` runs a short version in CI (debug build);
//! `cargo bench --bench soak` runs the 10-minute release version.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::raw_client::{request, RawClient};
use crate::{call, eventually, percentile, post_with, worker_of, Gateway, Lcg};

/// How hard and how long.
#[derive(Debug, Clone)]
pub struct SoakOpts {
    pub concurrency: usize,
    pub duration: Duration,
    /// When the graph's worker is SIGKILLed.
    pub kills: KillPlan,
    /// Share of requests that are changes, in percent; the rest are key lookups.
    pub write_percent: u64,
    /// Batch ids per client: `None` writes a new id every time (the graph
    /// grows all run long); `Some(k)` cycles through k ids per client.
    pub key_slots: Option<u64>,
}

/// When the harness SIGKILLs the graph's worker.
#[derive(Debug, Clone)]
pub enum KillPlan {
    Never,
    /// On a clock, whatever state the worker is in.
    Every(Duration),
    /// `count` times, each a random delay in `min..max` after the previous
    /// worker was replaced by a new one (so every kill hits a serving
    /// worker); the run ends after the last kill or at `duration`.
    Random { count: u32, min: Duration, max: Duration, seed: u64 },
}

/// Everything a run saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub elapsed: Duration,
    pub answered: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// 5xx answers other than 503.
    pub unexpected_5xx: u64,
    /// 4xx answers: none of the harness's requests is wrong.
    pub unexpected_4xx: u64,
    pub dropped: u64,
    /// The first few drops, for the failure message.
    pub drop_samples: Vec<String>,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub kills: u32,
    pub writes_sent: u64,
    pub writes_acked: u64,
    pub writes_lost: u64,
    pub batches_torn: u64,
    pub commits: u64,
    pub commit_gaps: u64,
    /// KiB: (start, end).
    pub gateway_rss: (u64, u64),
    pub worker_rss: (u64, u64),
    /// KiB: the highest RSS sampled between start and end.
    pub gateway_rss_peak: u64,
    pub worker_rss_peak: u64,
    /// Nodes in the graph at the end.
    pub nodes: u64,
    /// Each worker process seen after the warm-up, in order: (pid, seconds
    /// into the run it was first seen, its highest RSS in KiB). A worker
    /// killed every 30 s is a new process each time, so "start" and "end"
    /// above compare two processes of different ages; comparing the peaks
    /// of whole lives compares like with like.
    pub worker_lives: Vec<(i32, u64, u64)>,
    /// The gateway's RSS (KiB) every 30 s after the warm-up: (seconds, KiB).
    pub gateway_rss_series: Vec<(u64, u64)>,
}

impl SoakReport {
    /// The peaks of the first and the last whole worker life (neither the
    /// one alive at the warm-up nor the one alive at the end), when there
    /// were at least two.
    pub fn worker_life_peaks(&self) -> Option<(u64, u64)> {
        let whole = self.worker_lives.get(1..self.worker_lives.len().saturating_sub(1)).unwrap_or(&[]);
        match whole {
            [first, .., last] => Some((first.2, last.2)),
            _ => None,
        }
    }

    /// Whether the run kept every promise listed at the top of this module.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                out.push(what);
            }
        };
        check(self.unexpected_5xx == 0, format!("{} 5xx answers other than 503", self.unexpected_5xx));
        check(self.unexpected_4xx == 0, format!("{} 4xx answers", self.unexpected_4xx));
        check(self.dropped == 0, format!("{} connections closed without an answer, e.g. {:?}", self.dropped, self.drop_samples));
        check(self.writes_lost == 0, format!("{} acknowledged writes lost", self.writes_lost));
        check(self.batches_torn == 0, format!("{} batches partly visible", self.batches_torn));
        check(self.commit_gaps == 0, format!("{} commits whose parent is missing", self.commit_gaps));
        check(self.writes_acked > 0, "no write was acknowledged".to_string());
        out
    }

    /// The report as a markdown table.
    pub fn table(&self) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        let growth = |(a, b): (u64, u64)| if a == 0 { "-".to_string() } else { format!("{:+.0}%", (b as f64 / a as f64 - 1.0) * 100.0) };
        [
            "| measurement | value |".to_string(),
            "|---|---|".to_string(),
            format!("| duration | {:.0} s |", self.elapsed.as_secs_f64()),
            format!("| answers | {} ({:.0}/s) |", self.answered, self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)),
            format!("| by status | {} |", statuses.join(", ")),
            format!("| latency p50 / p99 / p999 ms | {} / {} / {} |", ms(self.p50), ms(self.p99), ms(self.p999)),
            format!("| worker kills | {} |", self.kills),
            format!("| 5xx other than 503 | {} |", self.unexpected_5xx),
            format!("| connections closed without an answer | {} |", self.dropped),
            format!("| writes sent / acknowledged / lost | {} / {} / {} |", self.writes_sent, self.writes_acked, self.writes_lost),
            format!("| batches partly visible | {} |", self.batches_torn),
            format!("| commits / gaps in the commit log | {} / {} |", self.commits, self.commit_gaps),
            format!("| nodes in the graph at the end | {} |", self.nodes),
            format!("| gateway RSS start → end (KiB) | {} → {} ({}); peak {} |", self.gateway_rss.0, self.gateway_rss.1, growth(self.gateway_rss), self.gateway_rss_peak),
            format!("| worker RSS start → end (KiB) | {} → {} ({}); peak {} |", self.worker_rss.0, self.worker_rss.1, growth(self.worker_rss), self.worker_rss_peak),
            match self.worker_life_peaks() {
                Some(p) => format!("| worker peak RSS, first → last whole life (KiB) | {} → {} ({}), {} lives |", p.0, p.1, growth(p), self.worker_lives.len()),
                None => "| worker peak RSS, first → last whole life (KiB) | - (fewer than 4 lives) |".to_string(),
            },
            format!("| worker peak RSS of each life (KiB) | {} |", self.worker_lives.iter().map(|l| l.2.to_string()).collect::<Vec<_>>().join(", ")),
            format!("| gateway RSS every 30 s (s: KiB) | {} |", self.gateway_rss_series.iter().map(|(t, k)| format!("{t}: {k}")).collect::<Vec<_>>().join(", ")),
        ]
        .join("\n")
    }
}

/// What one client thread saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    dropped: u64,
    drop_samples: Vec<String>,
    /// (batch id, its number, whether it was acknowledged), in send order.
    batches: Vec<(String, u64, bool)>,
}

/// Resident set size of `pid`, KiB (0 if it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok())))
        .unwrap_or(0)
}

/// The three ops of batch `id`: two people and the edge between them.
fn batch(id: &str, n: u64) -> String {
    json!({"ops": [
        {"upsert": {"type": "Person", "key": format!("{id}a"), "props": {"age": n as i64}}},
        {"upsert": {"type": "Person", "key": format!("{id}b"), "props": {"age": n as i64}}},
        {"link": {"edge": "Knows", "from": format!("{id}a"), "to": format!("{id}b")}},
    ]})
    .to_string()
}

fn client(addr: String, token: String, graph: String, opts: SoakOpts, seed: u64, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::default();
    let mut rng = Lcg(seed);
    let auth = format!("authorization: Bearer {token}\r\n");
    let read_path = format!("/graphs/{graph}/read");
    let change_path = format!("/graphs/{graph}/change");
    let mut conn: Option<RawClient> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RawClient::open(&addr) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    // The gateway never stops listening; a refused connect is a finding too.
                    t.dropped += 1;
                    if t.drop_samples.len() < 3 {
                        t.drop_samples.push(format!("connect: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        n += 1;
        let write = rng.below(100) < opts.write_percent;
        let id = format!("s{seed}x{}", opts.key_slots.map_or(n, |k| n % k.max(1)));
        let req = if write {
            request("POST", &change_path, &auth, &batch(&id, n))
        } else {
            request("POST", &read_path, &auth, &json!({"match": {"type": "Person", "key": format!("p{}", rng.below(100))}}).to_string())
        };
        let started = Instant::now();
        match c.exchange(&req) {
            Ok(a) => {
                t.latencies.push(started.elapsed());
                *t.statuses.entry(a.status).or_default() += 1;
                if write {
                    t.batches.push((id, n, a.status == 200));
                }
                if a.close {
                    conn = None;
                }
                // A 503 says "retry shortly" (Retry-After: 1); a client that
                // spun on it would only starve the restarting worker of CPU.
                if a.status == 503 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(e) => {
                t.dropped += 1;
                if t.drop_samples.len() < 3 {
                    t.drop_samples.push(format!("{} after {:?}: {e}", if write { "change" } else { "read" }, started.elapsed()));
                }
                if write {
                    t.batches.push((id, n, false));
                }
                conn = None;
            }
        }
    }
    t
}

/// Kills the worker of the gateway `gw_pid` as `plan` says, until `stop`.
fn killer(gw_pid: i32, graph: &str, plan: KillPlan, stop: &AtomicBool, kills: &AtomicU32) {
    let current = || worker_of(gw_pid, graph);
    let kill = |pid: i32| {
        // SAFETY: a signal to the gateway's own child, found just now.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        kills.fetch_add(1, Ordering::Relaxed);
    };
    let nap = || std::thread::sleep(Duration::from_millis(20));
    match plan {
        KillPlan::Never => {}
        KillPlan::Every(every) => {
            let mut next = Instant::now() + every;
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    if let Some(pid) = current() {
                        kill(pid);
                    }
                    next += every;
                }
                nap();
            }
        }
        KillPlan::Random { count, min, max, seed } => {
            let mut rng = Lcg(seed);
            let mut last = None;
            for _ in 0..count {
                // Wait for a worker that is not the one killed last...
                let pid = loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match current() {
                        Some(p) if Some(p) != last => break p,
                        _ => nap(),
                    }
                };
                // ...then give it a random while to take writes.
                let span = max.saturating_sub(min).as_millis().max(1) as u64;
                let at = Instant::now() + min + Duration::from_millis(rng.below(span));
                while Instant::now() < at {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    nap();
                }
                kill(pid);
                last = Some(pid);
            }
        }
    }
}

/// Seeds `graph` with people p0..p99 (the reads' keys), runs the clients
/// and the killer for `opts.duration`, then checks the graph.
pub fn run(gw: &Gateway, token: &str, graph: &str, opts: &SoakOpts) -> SoakReport {
    let auth = [("authorization", format!("Bearer {token}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let seed = json!({"ops": (0..100).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i}}})).collect::<Vec<_>>()});
    assert_eq!(post_with(&gw.url(&format!("/graphs/{graph}/change")), &seed, &auth).status, 200, "seed");
    let mut report = SoakReport::default();

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..opts.concurrency)
        .map(|i| {
            let (addr, token, graph, opts, stop) = (gw.addr(), token.to_string(), graph.to_string(), opts.clone(), stop.clone());
            std::thread::spawn(move || client(addr, token, graph, opts, i as u64 + 1, stop))
        })
        .collect();
    let gw_pid = gw.proc.pid();
    let killer = match opts.kills.clone() {
        KillPlan::Never => None,
        plan => {
            let (stop, kills, graph) = (stop.clone(), kills.clone(), graph.to_string());
            Some(std::thread::spawn(move || killer(gw_pid, &graph, plan, &stop, &kills)))
        }
    };
    // RSS "at the start" is taken once the load has warmed up (connection
    // buffers, allocator pools), so growth means memory that keeps growing.
    let warmup = (opts.duration / 6).min(Duration::from_secs(30));
    let mut last_worker_rss = 0;
    let planned = match opts.kills {
        KillPlan::Random { count, .. } => Some(count),
        _ => None,
    };
    while started.elapsed() < opts.duration && planned.is_none_or(|n| kills.load(Ordering::Relaxed) < n) {
        if started.elapsed() >= warmup {
            let worker = gw.worker_pid(graph);
            let (g, w) = (rss_kib(gw.proc.pid()), worker.map_or(0, rss_kib));
            if report.gateway_rss.0 == 0 || report.worker_rss.0 == 0 {
                (report.gateway_rss.0, report.worker_rss.0) = (g, w);
            }
            report.gateway_rss_peak = report.gateway_rss_peak.max(g);
            report.worker_rss_peak = report.worker_rss_peak.max(w);
            let secs = started.elapsed().as_secs();
            if w > 0 {
                last_worker_rss = w;
            }
            if let Some(pid) = worker.filter(|_| w > 0) {
                match report.worker_lives.last_mut() {
                    Some(life) if life.0 == pid => life.2 = life.2.max(w),
                    _ => report.worker_lives.push((pid, secs, w)),
                }
            }
            if report.gateway_rss_series.last().is_none_or(|(t, _)| secs >= t + 30) {
                report.gateway_rss_series.push((secs, g));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // "End" is when the load stops, before the checks below read the whole graph.
    report.gateway_rss.1 = rss_kib(gw.proc.pid());
    // A worker being restarted right then has no RSS: its last life's last sample stands in.
    report.worker_rss.1 = gw.worker_pid(graph).map_or(0, rss_kib);
    if report.worker_rss.1 == 0 {
        report.worker_rss.1 = last_worker_rss;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(k) = killer {
        k.join().expect("killer thread");
    }
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().expect("client thread")).collect();
    report.elapsed = started.elapsed();
    report.kills = kills.load(Ordering::Relaxed);

    let mut latencies = Vec::new();
    let mut batches = Vec::new();
    for t in tallies {
        latencies.extend(t.latencies);
        for (s, n) in t.statuses {
            *report.statuses.entry(s).or_default() += n;
        }
        report.dropped += t.dropped;
        report.drop_samples.extend(t.drop_samples.into_iter().take(3usize.saturating_sub(report.drop_samples.len())));
        batches.extend(t.batches);
    }
    report.answered = latencies.len() as u64;
    if !latencies.is_empty() {
        report.p50 = percentile(&mut latencies, 50.0);
        report.p99 = percentile(&mut latencies, 99.0);
        report.p999 = percentile(&mut latencies, 99.9);
    }
    report.unexpected_5xx = report.statuses.iter().filter(|(s, _)| **s >= 500 && **s != 503).map(|(_, n)| n).sum();
    report.unexpected_4xx = report.statuses.iter().filter(|(s, _)| (400..500).contains(*s)).map(|(_, n)| n).sum();

    // The graph afterwards, once its worker is back.
    let answers = || call("GET", &gw.url(&format!("/graphs/{graph}/snapshot")), None, &auth).status == 200;
    assert!(eventually(Duration::from_secs(120), answers), "the graph never came back after the soak");
    let export = call("POST", &gw.url(&format!("/graphs/{graph}/export")), None, &auth);
    assert_eq!(export.status, 200, "export after the soak");
    let text = match &export.body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Key → its `age` (the number of the batch that wrote it last).
    let (mut nodes, mut edges): (BTreeMap<String, Option<u64>>, HashSet<(String, String)>) = (BTreeMap::new(), HashSet::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("an export line is JSON");
        if let Some(k) = v["key"].as_str() {
            nodes.insert(k.to_string(), v["props"]["age"].as_u64());
        } else if let (Some(f), Some(t)) = (v["from"].as_str(), v["to"].as_str()) {
            edges.insert((f.to_string(), t.to_string()));
        }
    }
    report.nodes = nodes.len() as u64;
    let verdicts = check_batches(&batches, &nodes, &edges);
    (report.writes_sent, report.writes_acked, report.writes_lost, report.batches_torn) = (verdicts.sent, verdicts.acked, verdicts.lost, verdicts.torn);
    let commits = call("GET", &gw.url(&format!("/graphs/{graph}/commits")), None, &auth);
    let list = commits.body["commits"].as_array().cloned().unwrap_or_default();
    let ids: HashSet<&str> = list.iter().filter_map(|c| c["commit_id"].as_str()).collect();
    report.commits = list.len() as u64;
    report.commit_gaps = list
        .iter()
        .flat_map(|c| c["parents"].as_array().cloned().unwrap_or_default())
        .filter(|p| !p.as_str().is_some_and(|p| ids.contains(p)))
        .count() as u64;
    report
}

/// What the graph says of the batches sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdicts {
    sent: u64,
    acked: u64,
    lost: u64,
    torn: u64,
}

/// Checks every batch id against the exported graph: `nodes` maps a key to
/// its `age`, `edges` holds (from, to). Each id is written by one client in
/// order, so the newest acknowledged number for an id is a floor for what it
/// holds, and whatever it holds must be a number that was sent for it.
fn check_batches(batches: &[(String, u64, bool)], nodes: &BTreeMap<String, Option<u64>>, edges: &HashSet<(String, String)>) -> Verdicts {
    let mut v = Verdicts::default();
    // id → (numbers sent, newest acknowledged, acknowledged writes)
    let mut by_id: BTreeMap<&str, (HashSet<u64>, Option<u64>, u64)> = BTreeMap::new();
    for (id, n, acked) in batches {
        v.sent += 1;
        let e = by_id.entry(id.as_str()).or_default();
        e.0.insert(*n);
        if *acked {
            v.acked += 1;
            e.1 = Some(e.1.map_or(*n, |m| m.max(*n)));
            e.2 += 1;
        }
    }
    for (id, (sent, newest_acked, acked_writes)) in by_id {
        let (a, b) = (format!("{id}a"), format!("{id}b"));
        let (na, nb) = (nodes.get(&a).copied().flatten(), nodes.get(&b).copied().flatten());
        let edge = edges.contains(&(a.clone(), b.clone()));
        let present = [nodes.contains_key(&a), nodes.contains_key(&b), edge];
        // Torn: some of the three but not all, or the two nodes from different batches.
        if (present.iter().any(|x| *x) && !present.iter().all(|x| *x)) || na != nb {
            v.torn += 1;
        }
        if let Some(floor) = newest_acked {
            let holds = na.filter(|n| sent.contains(n));
            if !present.iter().all(|x| *x) || holds.is_none_or(|n| n < floor) {
                v.lost += acked_writes;
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(rows: &[(&str, u64)], links: &[&str]) -> (BTreeMap<String, Option<u64>>, HashSet<(String, String)>) {
        let nodes = rows.iter().map(|(k, n)| (k.to_string(), Some(*n))).collect();
        let edges = links.iter().map(|id| (format!("{id}a"), format!("{id}b"))).collect();
        (nodes, edges)
    }

    #[test]
    fn a_slot_overwritten_by_a_later_ack_is_not_lost() {
        let batches = vec![("x".to_string(), 1, true), ("x".to_string(), 2, true), ("x".to_string(), 3, false)];
        let (nodes, edges) = graph(&[("xa", 2), ("xb", 2)], &["x"]);
        assert_eq!(check_batches(&batches, &nodes, &edges), Verdicts { sent: 3, acked: 2, lost: 0, torn: 0 });
        // The unacknowledged third may have landed too.
        let (nodes, edges) = graph(&[("xa", 3), ("xb", 3)], &["x"]);
        assert_eq!(check_batches(&batches, &nodes, &edges).lost, 0);
    }

    #[test]
    fn an_older_number_than_the_newest_ack_is_a_loss_and_a_mix_is_torn() {
        let batches = vec![("x".to_string(), 1, true), ("x".to_string(), 2, true)];
        let (nodes, edges) = graph(&[("xa", 1), ("xb", 1)], &["x"]);
        assert_eq!(check_batches(&batches, &nodes, &edges), Verdicts { sent: 2, acked: 2, lost: 2, torn: 0 });
        let (nodes, edges) = graph(&[("xa", 2), ("xb", 1)], &["x"]);
        assert_eq!(check_batches(&batches, &nodes, &edges).torn, 1);
        let (nodes, edges) = graph(&[("xa", 2), ("xb", 2)], &[]);
        assert_eq!(check_batches(&batches, &nodes, &edges), Verdicts { sent: 2, acked: 2, lost: 2, torn: 1 });
        let (nodes, edges) = graph(&[("xa", 9), ("xb", 9)], &["x"]);
        assert_eq!(check_batches(&batches, &nodes, &edges).lost, 2, "a number never sent");
    }

    #[test]
    fn unique_ids_need_all_three() {
        let batches = vec![("x".to_string(), 1, true), ("y".to_string(), 2, false)];
        let (nodes, edges) = graph(&[("xa", 1), ("xb", 1)], &["x"]);
        assert_eq!(check_batches(&batches, &nodes, &edges), Verdicts { sent: 2, acked: 1, lost: 0, torn: 0 });
        let (nodes, edges) = graph(&[("xa", 1)], &[]);
        assert_eq!(check_batches(&batches, &nodes, &edges), Verdicts { sent: 2, acked: 1, lost: 1, torn: 1 });
    }
}
