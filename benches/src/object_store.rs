//! Reads and writes on `s3://` against local disk (release build), side by
//! side in one run: two workers serve the same seeded graph, one on a local
//! folder and one on an S3 server on loopback (`moto_server`, the one the
//! tests use), and the samples alternate between them so machine noise hits
//! both alike. Reports p50/p99 of a key lookup, a filtered scan, a one-row
//! change, and the worker's open (start to ready) on each, with the ratio.
//!
//! moto is a Python server on this 2-core machine: its per-request cost is
//! not AWS's (higher CPU, no network), so read the ratio as "how many object
//! store round trips each operation makes", not as a prediction for AWS.
//! `OBJ_ROWS` (default 2000) and `OBJ_SAMPLES` (default 200) resize it.

use std::path::Path;
use std::time::{Duration, Instant};

use omnigraph_e2e::s3::S3Server;
use omnigraph_e2e::*;
use serde_json::{json, Value};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn timed(w: &Worker, path: &str, body: &Value) -> Duration {
    let t = Instant::now();
    let r = post(&w.url(path), body);
    let d = t.elapsed();
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    d
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

struct Series {
    name: &'static str,
    local: Vec<Duration>,
    s3: Vec<Duration>,
}

fn main() {
    let rows = env_usize("OBJ_ROWS", 2000);
    let samples = env_usize("OBJ_SAMPLES", 200);
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/social.pg");
    let s3 = S3Server::start();
    s3.create_bucket("bench");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_uri = dir.path().join("g");
    let s3_uri = "s3://bench/graphs/g";

    let t = Instant::now();
    let local = Worker::start(WorkerOpts { profile: "release", graph_id: "g", uri: &local_uri, init_schema: Some(&schema), key: None });
    let init_local = t.elapsed();
    let t = Instant::now();
    let remote = s3.worker("release", "g", s3_uri, Some(&schema));
    let init_s3 = t.elapsed();

    // The same data on both, in batches of 500 rows.
    for w in [&local, &remote] {
        for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
            let ops: Vec<Value> = chunk.iter().map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i:06}"), "props": {"age": (i % 90) as i64}}})).collect();
            timed(w, "/change", &json!({"ops": ops}));
        }
    }

    let mut series = [
        Series { name: "key lookup (`match` by key)", local: vec![], s3: vec![] },
        Series { name: "filtered scan (`where age = N`, 100 rows)", local: vec![], s3: vec![] },
        Series { name: "one-row change (commit)", local: vec![], s3: vec![] },
    ];
    let mut rng = Lcg(7);
    for i in 0..samples {
        let key = format!("p{:06}", rng.below(rows as u64));
        let lookup = json!({"match": {"type": "Person", "key": key}});
        let scan = json!({"match": {"type": "Person", "where": [{"prop": "age", "op": "=", "value": (i % 90) as i64}]}, "limit": 100});
        let change = json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {"age": (i % 90) as i64}}}]});
        // Alternate which store goes first, so neither always follows the other.
        let order: [(&Worker, bool); 2] = if i % 2 == 0 { [(&local, true), (&remote, false)] } else { [(&remote, false), (&local, true)] };
        for (w, is_local) in order {
            for (s, (path, body)) in series.iter_mut().zip([("/read", &lookup), ("/read", &scan), ("/change", &change)]) {
                let d = timed(w, path, body);
                if is_local { s.local.push(d) } else { s.s3.push(d) }
            }
        }
    }

    // Reopening: a worker start on the existing graph (what a restart or a lazy start costs).
    drop(local);
    drop(remote);
    let t = Instant::now();
    let local = Worker::start(WorkerOpts { profile: "release", graph_id: "g", uri: &local_uri, init_schema: None, key: None });
    let open_local = t.elapsed();
    let t = Instant::now();
    let remote = s3.worker("release", "g", s3_uri, None);
    let open_s3 = t.elapsed();
    drop((local, remote));

    println!("## object storage: s3:// (moto on loopback) against local disk, release build\n");
    println!("{rows} rows, {samples} samples of each, interleaved.\n");
    println!("| operation | local p50 ms | local p99 ms | s3 p50 ms | s3 p99 ms | s3 / local p50 |\n|---|---|---|---|---|---|");
    for s in &mut series {
        let (l50, l99, r50, r99) = (percentile(&mut s.local, 50.0), percentile(&mut s.local, 99.0), percentile(&mut s.s3, 50.0), percentile(&mut s.s3, 99.0));
        println!("| {} | {} | {} | {} | {} | {:.1}x |", s.name, ms(l50), ms(l99), ms(r50), ms(r99), r50.as_secs_f64() / l50.as_secs_f64());
    }
    println!("| create a graph (`--init`, worker start to ready) | {} | | {} | | {:.1}x |", ms(init_local), ms(init_s3), init_s3.as_secs_f64() / init_local.as_secs_f64());
    println!("| open a graph of {rows} rows and {} commits (start to ready) | {} | | {} | | {:.1}x |", rows.div_ceil(500) + samples + 1, ms(open_local), ms(open_s3), open_s3.as_secs_f64() / open_local.as_secs_f64());
}
