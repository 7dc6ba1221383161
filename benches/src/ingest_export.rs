//! Load harness for `/ingest` and `/export` (issue 8): streams generated
//! NDJSON lines into a fresh `omnigraph-worker` over loopback, then exports
//! them back, and reports lines/s both ways and the worker's peak RSS
//! (VmHWM from /proc), then creates 20 branches of the loaded graph. Targets
//! (release): ingest ≥ 200,000 lines/s with peak RSS ≤ 512 MiB for
//! 1,000,000 lines; export ≥ 300,000 lines/s; branch creation on the
//! 1,000,000-row graph ≤ 50 ms.
//!
//! ```sh
//! cargo bench -p omnigraph-benches --bench ingest_export         # release worker, 1,000,000 lines
//! OMNIGRAPH_BENCH_LINES=50000 OMNIGRAPH_BENCH_PROFILE=debug \
//!     cargo bench -p omnigraph-benches --bench ingest_export     # a quick look at a debug worker
//! ```
//!
//! The worker comes from `target/<OMNIGRAPH_BENCH_PROFILE>` (default
//! `release`), or from `OMNIGRAPH_BIN_DIR`. Two fifths of the lines are
//! Person nodes with two properties, the rest Knows edges between them with
//! one; the request body is generated as it is sent (chunked), so the
//! client never holds it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use omnigraph_e2e::*;

const CHUNK: usize = 256 * 1024;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// (VmRSS, VmHWM) of `pid`, in MiB.
fn memory(pid: i32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0);
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// The generated body, line by line: `nodes` people, then `edges` edges.
struct Lines {
    nodes: u64,
    edges: u64,
    next: u64,
    rng: Lcg,
}

impl Lines {
    fn fill(&mut self, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        while buf.len() < CHUNK && self.next < self.nodes + self.edges {
            let i = self.next;
            if i < self.nodes {
                let _ = writeln!(buf, "{{\"type\":\"Person\",\"key\":\"p{i}\",\"props\":{{\"age\":{},\"city\":\"c{}\"}}}}", i % 90, i % 100);
            } else {
                let (a, b) = (self.rng.below(self.nodes), self.rng.below(self.nodes));
                let _ = writeln!(buf, "{{\"edge\":\"Knows\",\"from\":\"p{a}\",\"to\":\"p{b}\",\"props\":{{\"weight\":{}}}}}", (i % 8) as f64 / 4.0);
            }
            self.next += 1;
        }
        !buf.is_empty()
    }
}

/// Reads one response head; returns the status and the lower-cased head.
fn read_head(r: &mut impl BufRead) -> (u16, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("response head");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    (head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), head)
}

fn main() {
    let lines: u64 = env_or("OMNIGRAPH_BENCH_LINES", 1_000_000);
    let profile: String = env_or("OMNIGRAPH_BENCH_PROFILE", "release".to_string());
    let nodes = (lines * 2 / 5).max(1);
    let edges = lines - nodes;
    let tmp = tempfile::tempdir().expect("tempdir");
    let schema = write_file(tmp.path(), "s.pg", "node Person { name: String @key age: I64? city: String? }\nedge Knows: Person -> Person { weight: F64? }\n");
    let w = Worker::start(WorkerOpts { profile: &profile, graph_id: "bench", uri: &tmp.path().join("graph"), init_schema: Some(&schema), key: None });
    let pid = w.proc.pid();
    let addr = w.base.trim_start_matches("http://").to_string();
    let (rss_before, _) = memory(pid);

    // Ingest: one chunked request, generated as it is sent.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(b"POST /ingest HTTP/1.1\r\nhost: bench\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").unwrap();
    let mut gen = Lines { nodes, edges, next: 0, rng: Lcg(42) };
    let mut buf = Vec::with_capacity(CHUNK + 1024);
    let mut sent = 0u64;
    let t = Instant::now();
    while gen.fill(&mut buf) {
        sent += buf.len() as u64;
        s.write_all(format!("{:x}\r\n", buf.len()).as_bytes()).unwrap();
        s.write_all(&buf).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let (status, _) = read_head(&mut r);
    let mut answer = String::new();
    let _ = r.read_to_string(&mut answer);
    let ingest = t.elapsed();
    assert_eq!(status, 200, "{answer}");
    let (rss_after, hwm_ingest) = memory(pid);

    // Export: count lines as they stream in, never holding the body.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(b"POST /export HTTP/1.1\r\nhost: bench\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
    let t = Instant::now();
    let mut r = BufReader::with_capacity(CHUNK, s);
    let (status, head) = read_head(&mut r);
    assert_eq!(status, 200);
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let (mut exported, mut bytes) = (0u64, 0u64);
    let mut chunk = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        chunk.resize(n + 2, 0);
        r.read_exact(&mut chunk).unwrap();
        exported += chunk[..n].iter().filter(|b| **b == b'\n').count() as u64;
        bytes += n as u64;
    }
    let export = t.elapsed();
    let (_, hwm_export) = memory(pid);

    // Branch creation on the graph just loaded: a branch copies no data.
    let mut branch_ms: Vec<std::time::Duration> = (0..20)
        .map(|i| {
            let t = Instant::now();
            let r = call("POST", &format!("{}/branches?branch=b{i}&from=main", w.base), None, &[]);
            let took = t.elapsed();
            assert_eq!(r.status, 201, "branch b{i}: {:?}", r.body);
            took
        })
        .collect();
    let (branch_p50, branch_max) = (percentile(&mut branch_ms, 50.0), percentile(&mut branch_ms, 100.0));

    println!("## /ingest and /export ({lines} lines: {nodes} nodes, {edges} edges; {profile} worker)\n");
    println!("ingest answer: {}", answer.trim());
    println!("| measurement | value | target |");
    println!("|---|---|---|");
    println!("| ingest | {:.0} lines/s ({:.1} s, {:.1} MiB sent) | >= 200,000 lines/s (release) |", lines as f64 / ingest.as_secs_f64(), ingest.as_secs_f64(), sent as f64 / 1048576.0);
    println!("| worker RSS before / after ingest | {rss_before:.0} / {rss_after:.0} MiB | - |");
    println!("| worker peak RSS (VmHWM) during ingest | {hwm_ingest:.0} MiB | <= 512 MiB for 1,000,000 lines |");
    println!("| export | {:.0} lines/s ({:.1} s, {exported} lines, {:.1} MiB) | >= 300,000 lines/s (release) |", exported as f64 / export.as_secs_f64(), export.as_secs_f64(), bytes as f64 / 1048576.0);
    println!("| worker peak RSS (VmHWM) after export | {hwm_export:.0} MiB | - |");
    println!(
        "| branch creation on these {lines} rows (20 branches, HTTP round trip) | p50 {:.1} ms, max {:.1} ms | <= 50 ms (release, 1,000,000 rows) |",
        branch_p50.as_secs_f64() * 1e3,
        branch_max.as_secs_f64() * 1e3
    );
}
