//! Lazy start at scale (release build): a gateway declaring 2,000 lazy
//! graphs (`server.default_start: lazy`). Reports the gateway's RSS with
//! no worker running, the cold start of a lazy graph as its first client
//! sees it (one key lookup: start the worker, create the graph from its
//! schema, answer) and again once its worker was stopped as idle (start the
//! worker on existing data, answer), each p50 and p99; the RSS of an idle
//! worker; and the gateway's and all workers' RSS after touching 10 graphs.
//!
//! `LAZY_GRAPHS` (default 2000) and `LAZY_SAMPLES` (default 40) resize it.

use std::time::{Duration, Instant};

use omnigraph_e2e::soak::rss_kib;
use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn lookup(gw: &Gateway, graph: &str) -> Duration {
    let t = Instant::now();
    let r = post_with(&gw.url(&format!("/graphs/{graph}/read")), &json!({"match": {"type": "Person", "key": "x"}}), &[ROOT]);
    assert_eq!(r.status, 200, "{graph}: {:?}", r.body);
    t.elapsed()
}

fn status_of(gw: &Gateway, graph: &str) -> String {
    let r = call("GET", &gw.url(&format!("/graphs/{graph}")), None, &[ROOT]);
    r.body["status"].as_str().unwrap_or("").to_string()
}

fn workers(gw: &Gateway) -> Vec<i32> {
    children_of(gw.proc.pid()).into_iter().filter(|(_, c)| c.contains("omnigraph-worker")).map(|(p, _)| p).collect()
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

fn main() {
    let n = env_usize("LAZY_GRAPHS", 2000);
    let samples = env_usize("LAZY_SAMPLES", 40).min(n);
    let ids: Vec<String> = (0..n).map(|i| format!("g{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let env = ConfigDir::with("  default_start: lazy\n  idle_stop_s: 2\n", &format!("limits:\n  max_graphs: {}\n", n + 10), &[ROOT_TOKEN], &graphs_yaml(&refs));
    let t = Instant::now();
    let gw = Gateway::start_in("release", &env.cfg, &[]);
    let boot = t.elapsed();
    let gw_idle = rss_kib(gw.proc.pid());
    let list: Value = call("GET", &gw.url("/graphs"), None, &[ROOT]).body;
    assert_eq!(list["graphs"].as_array().map(Vec::len), Some(n));

    // Cold start of a new graph: worker start + graph created from its schema.
    let sampled: Vec<&String> = ids.iter().step_by(n / samples).take(samples).collect();
    let mut first: Vec<Duration> = sampled.iter().map(|g| lookup(&gw, g)).collect();
    // The RSS of a started worker that serves nothing: what an idle stop returns.
    let idle_worker: Vec<u64> = workers(&gw).iter().map(|p| rss_kib(*p)).collect();
    // Wait for every sampled worker to be stopped as idle, then start each again.
    assert!(eventually(Duration::from_secs(120), || workers(&gw).is_empty()), "idle workers were not stopped");
    assert!(sampled.iter().all(|g| status_of(&gw, g) == "idle"));
    let mut again: Vec<Duration> = sampled.iter().map(|g| lookup(&gw, g)).collect();
    assert!(eventually(Duration::from_secs(120), || workers(&gw).is_empty()));

    // Ten graphs in use at once.
    let ten: Vec<&String> = ids.iter().step_by(n / 10).take(10).collect();
    for g in &ten {
        lookup(&gw, g);
    }
    let running = workers(&gw);
    let total: u64 = rss_kib(gw.proc.pid()) + running.iter().map(|p| rss_kib(*p)).sum::<u64>();

    let p = |v: &mut Vec<Duration>, q: f64| ms(percentile(v, q));
    let mut sorted_idle = idle_worker.clone();
    sorted_idle.sort_unstable();
    println!("## lazy graphs: {n} declared, release build\n");
    println!("| measurement | value |\n|---|---|");
    println!("| gateway ready (all {n} idle) | {:.2} s |", boot.as_secs_f64());
    println!("| gateway RSS, no worker running | {:.1} MiB |", gw_idle as f64 / 1024.0);
    println!("| cold start, new graph (created from its schema), {} graphs | p50 {} ms, p99 {} ms |", first.len(), p(&mut first, 50.0), p(&mut first, 99.0));
    println!("| cold start after an idle stop (existing data), {} graphs | p50 {} ms, p99 {} ms |", again.len(), p(&mut again, 50.0), p(&mut again, 99.0));
    println!("| RSS of a started worker serving nothing (median of {}) | {:.1} MiB |", sorted_idle.len(), sorted_idle.get(sorted_idle.len() / 2).copied().unwrap_or(0) as f64 / 1024.0);
    println!("| workers running after touching 10 graphs | {} |", running.len());
    println!("| gateway + all workers RSS after touching 10 graphs | {:.1} MiB |", total as f64 / 1024.0);
}
