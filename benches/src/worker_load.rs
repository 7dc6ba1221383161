//! Load harness for `omnigraph-worker` (release build), run by `make bench`.
//!
//! Builds a graph of 100,000 Person nodes and 500,000 Knows edges through
//! `/change`, then measures over HTTP on loopback, as a client sees it:
//! - a key lookup read (`match` by key),
//! - a 2-hop traversal from one node,
//! - a 1,000-op change (250 updates, 250 new nodes, 500 new edges).
//!
//! Sizes can be scaled down with `OMNIGRAPH_BENCH_NODES` for a quick look.

use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let nodes: u64 = std::env::var("OMNIGRAPH_BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let edges = nodes * 5;
    let tmp = tempfile::tempdir().expect("tempdir");
    let schema = write_file(tmp.path(), "s.pg", "node Person { name: String @key age: I64? city: String? }\nedge Knows: Person -> Person { weight: F64? }\n");
    let uri = tmp.path().join("graph");
    let w = Worker::start(WorkerOpts { profile: "release", graph_id: "bench", uri: &uri, init_schema: Some(&schema), key: None });
    let mut rng = Lcg(42);

    let load_start = Instant::now();
    let batch = 20_000u64;
    let mut i = 0;
    while i < nodes {
        let ops: Vec<Value> = (i..(i + batch).min(nodes))
            .map(|k| json!({"upsert": {"type": "Person", "key": format!("p{k}"), "props": {"age": k % 90, "city": format!("c{}", k % 100)}}}))
            .collect();
        let r = post(&w.url("/change"), &json!({ "ops": ops }));
        assert_eq!(r.status, 200, "{:?}", r.body);
        i += batch;
    }
    let mut seen = std::collections::HashSet::new();
    let mut made = 0;
    while made < edges {
        let mut ops = Vec::with_capacity(batch as usize);
        while (ops.len() as u64) < batch && made < edges {
            let (a, b) = (rng.below(nodes), rng.below(nodes));
            if a != b && seen.insert((a, b)) {
                ops.push(json!({"link": {"edge": "Knows", "from": format!("p{a}"), "to": format!("p{b}"), "props": {}}}));
                made += 1;
            }
        }
        let r = post(&w.url("/change"), &json!({ "ops": ops }));
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let load = load_start.elapsed();

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
    let mut changes = Vec::new();
    let mut next_new = nodes;
    for _ in 0..20 {
        let mut ops = Vec::with_capacity(1000);
        for _ in 0..250 {
            ops.push(json!({"upsert": {"type": "Person", "key": format!("p{}", rng.below(nodes)), "props": {"age": rng.below(90)}}}));
        }
        for _ in 0..250 {
            ops.push(json!({"upsert": {"type": "Person", "key": format!("p{next_new}"), "props": {"age": 1}}}));
            next_new += 1;
        }
        for _ in 0..500 {
            let (a, b) = (rng.below(nodes), rng.below(nodes));
            ops.push(json!({"link": {"edge": "Knows", "from": format!("p{a}"), "to": format!("p{b}"), "props": {"weight": 0.5}}}));
        }
        let body = json!({ "ops": ops });
        let t = Instant::now();
        let r = post(&w.url("/change"), &body);
        changes.push(t.elapsed());
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let where_q = json!({"match": {"type": "Person", "where": [{"prop": "city", "op": "=", "value": "c7"}, {"prop": "age", "op": ">=", "value": 80}]}, "limit": 10000});
    let mut scans = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        post(&w.url("/read"), &where_q);
        scans.push(t.elapsed());
    }

    println!("## omnigraph-worker load harness ({nodes} nodes, {edges} edges, release build)\n");
    println!("bulk load through /change in 20k-op batches: {:.1} s\n", load.as_secs_f64());
    println!("| measurement | samples | p50 ms | p99 ms | target |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, s: &mut Vec<Duration>, target: &str| {
        let (p50, p99) = (percentile(s, 50.0), percentile(s, 99.0));
        println!("| {name} | {} | {:.3} | {:.3} | {target} |", s.len(), ms(p50), ms(p99));
    };
    row("key lookup read", &mut lookups, "p50 <= 2 ms");
    row(&format!("2-hop traversal (avg {} rows)", reached / 500), &mut hops2, "p50 <= 20 ms");
    row("1,000-op change", &mut changes, "<= 150 ms");
    row("where scan (Lance filter, 2 predicates)", &mut scans, "-");
}
