//! End-to-end tests of `/ingest` and `/export` through the gateway (issue 8,
//! DESIGN.md section 5): a 100,000-node graph exported, ingested into an
//! empty graph and exported again byte for byte; a bad line deep in a large
//! ingest rejects all of it; an ingest declared past `limits.max_ingest_bytes`
//! is refused with 413.

use std::fmt::Write;
use std::time::Instant;

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");
/// Small enough to test, large enough for the 100,000-line bodies here.
const MAX_INGEST: u64 = 50_000_000;

fn start() -> (ConfigDir, Gateway) {
    let env = ConfigDir::admin("", &format!("limits:\n  max_ingest_bytes: {MAX_INGEST}\n"), &["alpha", "beta"]);
    let gw = env.start();
    (env, gw)
}

fn ingest(gw: &Gateway, graph: &str, query: &str, body: &str) -> Resp {
    call("POST", &gw.url(&format!("/graphs/{graph}/ingest{query}")), Some(body.as_bytes()), &[ROOT, NDJSON])
}

fn export(gw: &Gateway, graph: &str) -> String {
    let r = call("POST", &gw.url(&format!("/graphs/{graph}/export")), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    match r.body {
        Value::String(s) => s,
        Value::Object(_) => format!("{}\n", r.body),
        other => panic!("export: {other:?}"),
    }
}

fn head(gw: &Gateway, graph: &str) -> String {
    let r = call("GET", &gw.url(&format!("/graphs/{graph}/snapshot")), None, &[ROOT]);
    r.body["commit_id"].as_str().unwrap().to_string()
}

/// `nodes` people with an age and (every third) tags, `edges` Knows
/// edges, and a city everybody lives in; in no particular order.
fn graph(nodes: usize, edges: usize) -> String {
    let mut s = String::from("{\"type\":\"City\",\"key\":\"oslo\",\"props\":{\"country\":\"NO\"}}\n");
    let mut rng = Lcg(7);
    for i in (0..nodes).rev() {
        let tags = if i % 3 == 0 { format!(",\"tags\":[\"t{i}\",\"a\"]") } else { String::new() };
        let _ = writeln!(s, "{{\"type\":\"Person\",\"key\":\"p{i}\",\"props\":{{\"age\":{}{tags}}}}}", i % 97);
    }
    for _ in 0..edges {
        let (a, b) = (rng.below(nodes as u64), rng.below(nodes as u64));
        let _ = writeln!(s, "{{\"edge\":\"Knows\",\"from\":\"p{a}\",\"to\":\"p{b}\",\"props\":{{\"since\":\"2020-01-{:02}\"}}}}", 1 + a % 28);
    }
    for i in 0..100 {
        let _ = writeln!(s, "{{\"edge\":\"LivesIn\",\"from\":\"p{i}\",\"to\":\"oslo\"}}");
    }
    s
}

#[test]
fn export_ingest_export_is_identical_on_a_100k_node_graph() {
    let (_env, gw) = start();
    let t = Instant::now();
    let body = graph(100_000, 20_000);
    let r = ingest(&gw, "alpha", "", &body);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["lines"], 120_101);
    assert_eq!(r.body["nodes"], 100_001);
    let first = export(&gw, "alpha");
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len() as u64, 100_001 + r.body["edges"].as_u64().unwrap());
    assert!(lines[0].starts_with("{\"type\":\"City\""), "node types sorted by name");
    assert_eq!(lines[1], "{\"type\":\"Person\",\"key\":\"p0\",\"props\":{\"age\":0,\"tags\":[\"t0\",\"a\"]}}");
    assert_eq!(lines[2], "{\"type\":\"Person\",\"key\":\"p1\",\"props\":{\"age\":1}}", "keys sorted as strings: p1 after p0");

    let r = ingest(&gw, "beta", "", &first);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["lines"].as_u64(), Some(lines.len() as u64));
    let second = export(&gw, "beta");
    assert!(second == first, "export → ingest → export differs");
    eprintln!("round trip of {} lines through the gateway: {:.1} s", lines.len(), t.elapsed().as_secs_f64());
}

#[test]
fn a_bad_line_at_70000_rejects_the_whole_ingest() {
    let (_env, gw) = start();
    let r = ingest(&gw, "alpha", "", "{\"type\":\"Person\",\"key\":\"keep\"}\n");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let before = (head(&gw, "alpha"), export(&gw, "alpha"));

    let mut lines: Vec<String> = (0..100_000).map(|i| format!("{{\"type\":\"Person\",\"key\":\"n{i}\",\"props\":{{\"age\":{}}}}}", i % 50)).collect();
    lines[69_999] = "{\"type\":\"Person\",\"key\":\"bad\",\"props\":{\"age\":\"old\"}}".to_string();
    let t = Instant::now();
    let r = ingest(&gw, "alpha", "", &(lines.join("\n") + "\n"));
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad_request")), "{:?}", r.body);
    assert_eq!(r.body["details"]["line"], 70_000, "{:?}", r.body);
    let msg = r.body["error"].as_str().unwrap();
    assert!(msg.starts_with("line 70000: props.age: expected I64"), "{msg}");
    assert_eq!((head(&gw, "alpha"), export(&gw, "alpha")), before, "nothing is visible");
    let read = post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person", "key": "n1"}}), &[ROOT]);
    assert_eq!(read.body["row_count"], 0);
    eprintln!("rejected at line 70000 in {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn an_ingest_declared_past_max_ingest_bytes_is_413() {
    let (_env, gw) = start();
    let before = head(&gw, "alpha");
    // Declared, not sent: the answer comes before any body byte.
    let raw = format!(
        "POST /graphs/alpha/ingest HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-root\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        MAX_INGEST + 1
    );
    let t = Instant::now();
    let (status, text) = answer_before_body(&gw.addr(), &raw);
    assert_eq!(status, 413, "{text}");
    assert!(t.elapsed().as_secs() < 5, "answered at once");
    assert!(text.contains("payload_too_large") && text.contains("limits.max_ingest_bytes"), "{text}");
    // max_body_bytes (16 MiB) does not bound an ingest: 20 MiB of lines pass.
    let line = "{\"type\":\"Person\",\"key\":\"k\",\"props\":{\"tags\":[\"0123456789012345678901234567890123456789012345678901234567890123456789\"]}}\n";
    let body = line.repeat(20 * 1024 * 1024 / line.len() + 1);
    assert!(body.len() as u64 > 16 * 1024 * 1024 && (body.len() as u64) < MAX_INGEST);
    let r = ingest(&gw, "alpha", "", &body);
    assert_eq!((r.status, r.body["nodes"].as_u64()), (200, Some(1)), "{:?}", r.body);
    assert_ne!(head(&gw, "alpha"), before);
}

/// Sends a request head whose body never follows and reads the one answer
/// (head and Content-Length body), without waiting for the connection to close.
fn answer_before_body(addr: &str, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
    s.write_all(head.as_bytes()).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((h, b)) = text.split_once("\r\n\r\n") {
            let len = h.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
            if len.is_some_and(|n| b.len() >= n) {
                return (h.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), b.to_string());
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}
