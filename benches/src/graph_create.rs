//! POST /graphs → 201 latency on the release build: validate, reserve,
//! initialise the storage with a new worker, rewrite omnigraph.yaml, publish.
//! Sequential creates of distinct graphs against one gateway.

use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::json;

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    write_file(d, "server.cedar", "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n");
    write_file(d, "tokens.yaml", &format!("tokens:\n  - actor_id: bench\n    sha256: {}\n    groups: [admins]\n", sha256_hex("bench-token")));
    let cfg = write_file(
        d,
        "omnigraph.yaml",
        &format!("server:\n  bind: 127.0.0.1:{}\n  runtime_dir: run\n  policy: {{ file: server.cedar }}\nauth:\n  static_tokens: {{ file: tokens.yaml }}\ngraphs: {{}}\n", free_port()),
    );
    let gw = Gateway::start_in("release", &cfg, &[]);
    let auth = [("authorization", "Bearer bench-token")];
    let mut samples: Vec<Duration> = Vec::new();
    for i in 0..30 {
        let body = json!({"graph_id": format!("g{i}"), "uri": format!("data/g{i}"), "schema": {"source": SOCIAL_SCHEMA}});
        let t = Instant::now();
        let r = post_with(&gw.url("/graphs"), &body, &auth);
        samples.push(t.elapsed());
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99) = (percentile(&mut samples, 50.0), percentile(&mut samples, 99.0));
    println!("## POST /graphs → 201 (release, sequential, {} graphs)\n", samples.len());
    println!("| samples | p50 ms | max ms | target |\n|---|---|---|---|\n| {} | {:.1} | {:.1} | p50 <= 1000 ms |", samples.len(), ms(p50), ms(p99));
}
