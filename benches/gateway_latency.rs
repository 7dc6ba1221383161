//! Added latency of the gateway: the same key-lookup read sent to a worker
//! directly (TCP loopback) and through the gateway (TCP to Pingora, authn,
//! Cedar, Unix socket to the worker), interleaved in one run at concurrency 1
//! with keep-alive, so both see the same machine noise.
//!
//! Needs release binaries: `cargo build --release --workspace --bins`
//! (`make bench` does it).

use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::json;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let schema = write_file(d, "s.pg", SOCIAL_SCHEMA);
    write_file(d, "server.cedar", "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n");
    write_file(d, "tokens.yaml", &format!("tokens:\n  - actor_id: bench\n    sha256: {}\n    groups: [admins]\n", sha256_hex("bench-token")));
    let cfg = write_file(
        d,
        "omnigraph.yaml",
        &format!(
            "server:\n  bind: 127.0.0.1:{}\n  runtime_dir: run\n  policy: {{ file: server.cedar }}\nauth:\n  static_tokens: {{ file: tokens.yaml }}\ngraphs:\n  alpha:\n    uri: data/alpha\n    schema: {{ file: s.pg }}\n",
            free_port()
        ),
    );
    let gw = Gateway::start_in("release", &cfg, &[]);
    let direct = Worker::start(WorkerOpts { profile: "release", graph_id: "direct", uri: &d.join("direct"), init_schema: Some(&schema), key: None });
    let auth = [("authorization", "Bearer bench-token")];
    let seed = json!({"ops": (0..100).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i}}})).collect::<Vec<_>>()});
    assert_eq!(post_with(&gw.url("/graphs/alpha/change"), &seed, &auth).status, 200);
    assert_eq!(post(&direct.url("/change"), &seed).status, 200);
    let body = json!({"match": {"type": "Person", "key": "p42"}}).to_string();
    let via_gw = gw.url("/graphs/alpha/read");
    let via_direct = direct.url("/read");
    let once = |url: &str, headers: &[(&str, &str)]| {
        let t = Instant::now();
        let r = call("POST", url, Some(body.as_bytes()), headers);
        let e = t.elapsed();
        assert_eq!(r.status, 200, "{:?}", r.body);
        e
    };
    for _ in 0..500 {
        once(&via_direct, &[]);
        once(&via_gw, &auth);
    }
    let (mut direct_s, mut gw_s) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        for _ in 0..250 {
            direct_s.push(once(&via_direct, &[]));
        }
        for _ in 0..250 {
            gw_s.push(once(&via_gw, &auth));
        }
    }
    let (d50, d99) = (percentile(&mut direct_s, 50.0), percentile(&mut direct_s, 99.0));
    let (g50, g99) = (percentile(&mut gw_s, 50.0), percentile(&mut gw_s, 99.0));
    println!("## gateway added latency (release, concurrency 1, keep-alive, POST /read by key)\n");
    println!("| path | samples | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    println!("| worker directly (TCP) | {} | {:.0} | {:.0} |", direct_s.len(), us(d50), us(d99));
    println!("| through the gateway (TCP + authn + Cedar + UDS) | {} | {:.0} | {:.0} |", gw_s.len(), us(g50), us(g99));
    println!("| **added by the gateway** | | **{:.0}** | **{:.0}** |", us(g50) - us(d50), us(g99) - us(d99));
    println!("\ntargets: added p50 <= 150 µs, added p99 <= 1000 µs; ratio of p50s: {:.2}x", g50.as_secs_f64() / d50.as_secs_f64());
}
