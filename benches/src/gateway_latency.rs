//! Added latency of the gateway: the same key-lookup read sent to a worker
//! directly (TCP loopback) and through the gateway (TCP to Pingora, authn,
//! Cedar, Unix socket to the worker), interleaved in one run at concurrency 1
//! with keep-alive, so both see the same machine noise.
//!
//! The client is a minimal keep-alive HTTP/1.1 client on a raw socket with
//! TCP_NODELAY that sends each request in one write, so the numbers are the
//! servers' and not a client library's (ureq's separate header and body
//! writes cost the Pingora path ~120 µs more than they cost the direct path).
//!
//! Needs release binaries (`make bench` builds them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
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
            "server:\n  bind: 127.0.0.1:{}\n  runtime_dir: run\n  policy: {{ file: server.cedar }}\n  decision_log: {{ file: decisions.log }}\nauth:\n  static_tokens: {{ file: tokens.yaml }}\ngraphs:\n  alpha:\n    uri: data/alpha\n    schema: {{ file: s.pg }}\n",
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
    let mut to_gw = RawClient::connect(&gw.addr(), "/graphs/alpha/read", "authorization: Bearer bench-token\r\n", &body);
    let mut to_direct = RawClient::connect(direct.base.trim_start_matches("http://"), "/read", "", &body);
    for _ in 0..1000 {
        to_direct.once();
        to_gw.once();
    }
    let (mut direct_s, mut gw_s) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        for _ in 0..250 {
            direct_s.push(to_direct.once());
        }
        for _ in 0..250 {
            gw_s.push(to_gw.once());
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
    println!("\n(client: raw keep-alive HTTP/1.1, one write per request, TCP_NODELAY)");
    println!("\ntargets: added p50 <= 150 µs, added p99 <= 1000 µs; ratio of p50s: {:.2}x", g50.as_secs_f64() / d50.as_secs_f64());
}

/// One keep-alive connection sending the same pre-built request again and again.
struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
}

impl RawClient {
    fn connect(addr: &str, path: &str, extra_headers: &str, body: &str) -> RawClient {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        RawClient { reader: BufReader::new(s.try_clone().expect("clone")), writer: s, request }
    }

    /// Sends the request and reads the whole response; returns the round trip.
    fn once(&mut self) -> Duration {
        let t = Instant::now();
        self.writer.write_all(&self.request).expect("write");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("content-length");
            }
        }
        let mut buf = vec![0u8; len];
        self.reader.read_exact(&mut buf).expect("body");
        t.elapsed()
    }
}
