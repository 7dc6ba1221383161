//! Load harness for `omnigraph-worker` (release build), run by `make bench`.
//!
//! For each graph size, builds a graph of N Person nodes and 5N Knows edges
//! (streamed through `/ingest`), runs maintenance once (the compacted state
//! a maintained graph is in; `OMNIGRAPH_BENCH_MAINTAIN=0` skips it), then
//! measures over HTTP on loopback, as a client sees it:
//! - a key lookup read (`match` by key),
//! - a 2-hop traversal from one node,
//! - a 1,000-op change (250 updates, 250 new nodes, 500 new edges),
//! - a two-predicate `where` (a Lance scan).
//!
//! Several sizes run side by side, each on its own worker, and the last
//! table compares them: issue 8 asks that a change on 1,000,000 nodes cost at
//! most twice one on 10,000.
//!
//! ```sh
//! cargo bench -p omnigraph-benches --bench worker_load                                  # 100,000 nodes
//! OMNIGRAPH_BENCH_SIZES=10000,1000000 cargo bench -p omnigraph-benches --bench worker_load
//! OMNIGRAPH_BENCH_SIZES=2000,20000 OMNIGRAPH_BENCH_PROFILE=debug \
//!     cargo test -p omnigraph-benches --bench worker_load                               # a quick look, no release build
//! ```
//!
//! `OMNIGRAPH_BENCH_NODES=N` is `OMNIGRAPH_BENCH_SIZES=N`. The worker comes
//! from `target/<OMNIGRAPH_BENCH_PROFILE>` (default `release`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const CHUNK: usize = 256 * 1024;
const EDGES_PER_NODE: u64 = 5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The node counts to measure: `OMNIGRAPH_BENCH_SIZES` (comma-separated),
/// else `OMNIGRAPH_BENCH_NODES`, else 100,000.
fn sizes() -> Vec<u64> {
    let var = std::env::var("OMNIGRAPH_BENCH_SIZES").or_else(|_| std::env::var("OMNIGRAPH_BENCH_NODES")).unwrap_or_else(|_| "100000".into());
    let sizes: Vec<u64> = var.split(',').filter_map(|s| s.trim().replace('_', "").parse().ok()).filter(|n| *n >= 1000).collect();
    assert!(!sizes.is_empty(), "OMNIGRAPH_BENCH_SIZES={var:?}: give node counts of at least 1000, comma-separated");
    sizes
}

/// Streams `nodes` people, then `EDGES_PER_NODE` times as many random
/// edges, into the worker at `addr` as one chunked `/ingest`.
fn ingest(addr: &str, nodes: u64, rng: &mut Lcg) -> Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"POST /ingest HTTP/1.1\r\nhost: bench\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").expect("send");
    let (total, mut next) = (nodes * (1 + EDGES_PER_NODE), 0u64);
    let mut buf = Vec::with_capacity(CHUNK + 1024);
    while next < total {
        buf.clear();
        while buf.len() < CHUNK && next < total {
            if next < nodes {
                let _ = writeln!(buf, "{{\"type\":\"Person\",\"key\":\"p{next}\",\"props\":{{\"age\":{},\"city\":\"c{}\"}}}}", next % 90, next % 100);
            } else {
                let (a, b) = (rng.below(nodes), rng.below(nodes));
                let _ = writeln!(buf, "{{\"edge\":\"Knows\",\"from\":\"p{a}\",\"to\":\"p{b}\"}}");
            }
            next += 1;
        }
        s.write_all(format!("{:x}\r\n", buf.len()).as_bytes()).expect("send");
        s.write_all(&buf).expect("send");
        s.write_all(b"\r\n").expect("send");
    }
    s.write_all(b"0\r\n\r\n").expect("send");
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    assert!(status.contains(" 200 "), "{status}{rest}");
    serde_json::from_str(rest.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap_or(Value::Null)
}

/// A 1,000-op change: 250 updates of random nodes, 250 new nodes, 500 new edges.
fn change_body(rng: &mut Lcg, nodes: u64, next_new: &mut u64) -> Value {
    let mut ops = Vec::with_capacity(1000);
    for _ in 0..250 {
        ops.push(json!({"upsert": {"type": "Person", "key": format!("p{}", rng.below(nodes)), "props": {"age": rng.below(90)}}}));
    }
    for _ in 0..250 {
        ops.push(json!({"upsert": {"type": "Person", "key": format!("p{next_new}"), "props": {"age": 1}}}));
        *next_new += 1;
    }
    for _ in 0..500 {
        let (a, b) = (rng.below(nodes), rng.below(nodes));
        ops.push(json!({"link": {"edge": "Knows", "from": format!("p{a}"), "to": format!("p{b}"), "props": {"weight": 0.5}}}));
    }
    json!({ "ops": ops })
}

/// What one graph size measured.
struct Run {
    nodes: u64,
    load: Duration,
    /// The maintenance run after the load, when there was one.
    maintain: Option<Duration>,
    lookups: Vec<Duration>,
    hops2: Vec<Duration>,
    reached: u64,
    first_change: Duration,
    changes: Vec<Duration>,
    scans: Vec<Duration>,
}

fn measure(profile: &str, nodes: u64) -> Run {
    let tmp = tempfile::tempdir().expect("tempdir");
    let schema = write_file(tmp.path(), "s.pg", "node Person { name: String @key age: I64? city: String? }\nedge Knows: Person -> Person { weight: F64? }\n");
    let w = Worker::start(WorkerOpts { profile, graph_id: "bench", uri: &tmp.path().join("graph"), init_schema: Some(&schema), key: None });
    let mut rng = Lcg(42);

    let t = Instant::now();
    let addr = w.base.trim_start_matches("http://").to_string();
    let loaded = ingest(&addr, nodes, &mut rng);
    let load = t.elapsed();
    eprintln!("{nodes} nodes: loaded in {:.1} s: {loaded}", load.as_secs_f64());
    // A bulk load leaves one small fragment per 50,000-line batch in each
    // table, and a change's delete costs one deletion file per fragment it
    // touches; a maintained graph is compacted. Measure that steady state:
    // one maintenance run after the load, at every size
    // (OMNIGRAPH_BENCH_MAINTAIN=0 measures the freshly loaded graph).
    let maintain = (std::env::var("OMNIGRAPH_BENCH_MAINTAIN").as_deref() != Ok("0")).then(|| {
        let t = Instant::now();
        let (status, answer) = raw_request_within(&addr, &format!("POST /maintenance HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"), Duration::from_secs(3600));
        assert_eq!(status, 200, "{answer}");
        t.elapsed()
    });

    let mut lookups = Vec::new();
    for _ in 0..2000 {
        let q = json!({"match": {"type": "Person", "key": format!("p{}", rng.below(nodes))}});
        let t = Instant::now();
        let r = post(&w.url("/read"), &q);
        lookups.push(t.elapsed());
        assert_eq!(r.body["row_count"], 1);
    }
    let mut hops2 = Vec::new();
    let mut reached = 0u64;
    for _ in 0..500 {
        let q = json!({"match": {"type": "Person", "key": format!("p{}", rng.below(nodes))}, "traverse": [{"edge": "Knows", "min_hops": 1, "max_hops": 2}], "limit": 1000});
        let t = Instant::now();
        let r = post(&w.url("/read"), &q);
        hops2.push(t.elapsed());
        reached += r.body["row_count"].as_u64().unwrap_or(0);
    }
    // The first change after a start learns the row addresses of the tables
    // it deletes from (one scan each); it is reported apart.
    let mut next_new = nodes;
    let mut timed_change = |rng: &mut Lcg| {
        let body = change_body(rng, nodes, &mut next_new);
        let t = Instant::now();
        let r = post(&w.url("/change"), &body);
        assert_eq!(r.status, 200, "{:?}", r.body);
        t.elapsed()
    };
    let first_change = timed_change(&mut rng);
    let changes: Vec<Duration> = (0..20).map(|_| timed_change(&mut rng)).collect();
    let where_q = json!({"match": {"type": "Person", "where": [{"prop": "city", "op": "=", "value": "c7"}, {"prop": "age", "op": ">=", "value": 80}]}, "limit": 10000});
    let mut scans = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        post(&w.url("/read"), &where_q);
        scans.push(t.elapsed());
    }
    Run { nodes, load, maintain, lookups, hops2, reached, first_change, changes, scans }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let profile = std::env::var("OMNIGRAPH_BENCH_PROFILE").unwrap_or_else(|_| "release".into());
    let mut runs: Vec<Run> = sizes().into_iter().map(|n| measure(&profile, n)).collect();

    for r in &mut runs {
        println!("## omnigraph-worker load harness ({} nodes, {} edges, {profile} build)\n", r.nodes, r.nodes * EDGES_PER_NODE);
        println!("bulk load through one /ingest: {:.1} s", r.load.as_secs_f64());
        match r.maintain {
            Some(m) => println!("then one maintenance run (compaction), as a maintained graph would have had: {:.1} s\n", m.as_secs_f64()),
            None => println!("no maintenance run after the load (OMNIGRAPH_BENCH_MAINTAIN=0)\n"),
        }
        println!("| measurement | samples | p50 ms | p99 ms | target |");
        println!("|---|---|---|---|---|");
        let row = |name: &str, s: &mut Vec<Duration>, target: &str| {
            let (p50, p99) = (percentile(s, 50.0), percentile(s, 99.0));
            println!("| {name} | {} | {:.3} | {:.3} | {target} |", s.len(), ms(p50), ms(p99));
        };
        row("key lookup read", &mut r.lookups, "p50 <= 2 ms");
        row(&format!("2-hop traversal (avg {} rows)", r.reached / 500), &mut r.hops2, "p50 <= 20 ms");
        row("1,000-op change", &mut r.changes, "<= 150 ms");
        row("first 1,000-op change after start (learns row addresses)", &mut vec![r.first_change], "-");
        row("where scan (Lance filter, 2 predicates)", &mut r.scans, "-");
        println!();
    }
    if runs.len() > 1 {
        let first = &runs[0].nodes;
        println!("## side by side (p50 ms; ratio to {first} nodes)\n");
        let head: Vec<String> = runs.iter().map(|r| format!("{} nodes", r.nodes)).collect();
        println!("| measurement | {} |", head.join(" | "));
        println!("|---|{}", "---|".repeat(runs.len()));
        let line = |name: &str, f: &dyn Fn(&mut Run) -> Duration, runs: &mut Vec<Run>| {
            let base = f(&mut runs[0]);
            let cells: Vec<String> = runs.iter_mut().map(|r| {
                let v = f(r);
                format!("{:.3} ({:.2}x)", ms(v), v.as_secs_f64() / base.as_secs_f64())
            }).collect();
            println!("| {name} | {} |", cells.join(" | "));
        };
        line("key lookup read", &|r| percentile(&mut r.lookups, 50.0), &mut runs);
        line("2-hop traversal", &|r| percentile(&mut r.hops2, 50.0), &mut runs);
        line("1,000-op change (target: 1M <= 2x 10k)", &|r| percentile(&mut r.changes, 50.0), &mut runs);
        line("where scan", &|r| percentile(&mut r.scans, 50.0), &mut runs);
    }
}
