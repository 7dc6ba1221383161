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

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use omnigraph_e2e::raw_client::RawClient;
use serde_json::json;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU time (ns) that the threads of `pid` have run, from the scheduler's
/// own accounting (`/proc/<pid>/task/*/schedstat`), precise where the
/// tick-based `utime` is not.
fn cpu_ns(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// CPU time of a process and its direct children (nginx's worker process,
/// but not the gateway's graph workers, which are counted apart).
fn tree_cpu_ns(pid: i32, with_children: bool) -> u64 {
    let kids = if with_children { children_of(pid).into_iter().map(|(p, _)| cpu_ns(p)).sum() } else { 0 };
    cpu_ns(pid) + kids
}

/// Runs `n` requests on `c`, adding their round trips to `samples` and the
/// CPU that `pid` spent meanwhile to `cpu`.
fn block(c: &mut RawClient, n: usize, samples: &mut Vec<Duration>, pid: i32, with_children: bool, cpu: &mut u64) {
    let before = tree_cpu_ns(pid, with_children);
    for _ in 0..n {
        samples.push(c.once());
    }
    *cpu += tree_cpu_ns(pid, with_children).saturating_sub(before);
}

/// nginx 1.22 (Debian's) in front of the direct worker: `proxy_pass` with an
/// upstream keep-alive pool, one worker process, no access log. The baseline
/// a user would otherwise put in front of a worker.
fn start_nginx(dir: &std::path::Path, port: u16, worker: &str) -> Option<Proc> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists())?;
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off; keepalive_requests 10000000; keepalive_timeout 600s;\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n\
         upstream w {{ server {worker}; keepalive 64; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://w; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
        d = dir.display()
    );
    let path = write_file(dir, "nginx.conf", &conf);
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("-p").arg(dir).arg("-c").arg(&path).arg("-e").arg(dir.join("nginx-error.log"));
    cmd.stdout(std::process::Stdio::piped()).process_group(0);
    let child = cmd.spawn().ok()?;
    let p = Proc { child, stdout: Default::default() };
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(10), || TcpStream::connect(&addr).is_ok()).then_some(p)
}

/// The bare Pingora proxy of `src/bin/bare_pingora.rs` in front of `upstream`
/// (a TCP address or a Unix socket path): what Pingora costs without the
/// gateway's phases.
fn start_bare_pingora(port: u16, upstream: &str) -> Proc {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bare_pingora"));
    cmd.arg(format!("127.0.0.1:{port}")).arg(upstream);
    let (p, _) = Proc::spawn(cmd, "listening on", Duration::from_secs(30));
    let addr = format!("127.0.0.1:{port}");
    assert!(eventually(Duration::from_secs(10), || TcpStream::connect(&addr).is_ok()), "bare_pingora did not listen on {addr}");
    p
}

/// A worker serving `uri` on a Unix socket, as the gateway runs its workers
/// (without the worker key: nothing but the harness reaches the socket).
fn start_uds_worker(dir: &std::path::Path, schema: &std::path::Path) -> (Proc, String) {
    let sock = dir.join("direct-uds.sock").display().to_string();
    let mut cmd = std::process::Command::new(bin_in("release", "omnigraph-worker"));
    cmd.args(["serve", "--graph-id", "uds", "--uri"]).arg(dir.join("uds")).args(["--socket", &sock, "--init", "--schema"]).arg(schema);
    cmd.env_remove("OMNIGRAPH_WORKER_KEY");
    let (p, _) = Proc::spawn(cmd, "listening on", Duration::from_secs(120));
    (p, sock)
}

/// Requests per second over `secs` with `conns` keep-alive connections, one thread each.
fn throughput(addr: &str, path: &str, headers: &str, body: &str, conns: usize, secs: u64) -> f64 {
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, path, headers, body) = (addr.to_string(), path.to_string(), headers.to_string(), body.to_string());
            std::thread::spawn(move || {
                let mut c = RawClient::connect(&addr, &path, &headers, &body);
                let mut n = 0u64;
                while Instant::now() < end {
                    c.once();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().expect("client thread")).sum();
    total as f64 / secs as f64
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let schema = write_file(d, "s.pg", SOCIAL_SCHEMA);
    write_file(d, "server.cedar", "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n");
    write_file(d, "tokens.yaml", &format!("tokens:\n  - actor_id: bench\n    sha256: {}\n    groups: [admins]\n", sha256_hex("bench-token")));
    // `GATEWAY_THREADS` sets `server.threads` (the gateway's default: 1).
    let threads: u32 = std::env::var("GATEWAY_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cfg = write_file(
        d,
        "omnigraph.yaml",
        &format!("server:\n  bind: 127.0.0.1:0\n  threads: {threads}\n  runtime_dir: run\n  policy: {{ file: server.cedar }}\n  decision_log: {{ file: decisions.log }}\nauth:\n  static_tokens: {{ file: tokens.yaml }}\ngraphs:\n  alpha:\n    uri: data/alpha\n    schema: {{ file: s.pg }}\n"),
    );
    let gw = Gateway::start_in("release", &cfg, &[]);
    let direct = Worker::start(WorkerOpts { profile: "release", graph_id: "direct", uri: &d.join("direct"), init_schema: Some(&schema), key: None });
    let direct_addr = direct.base.trim_start_matches("http://").to_string();
    let nginx_port = free_port();
    let nginx = start_nginx(d, nginx_port, &direct_addr);
    let nginx_addr = format!("127.0.0.1:{nginx_port}");
    let (_uds_worker, uds_sock) = start_uds_worker(d, &schema);
    let (bare_tcp_port, bare_uds_port) = (free_port(), free_port());
    let _bare_tcp = start_bare_pingora(bare_tcp_port, &direct_addr);
    let _bare_uds = start_bare_pingora(bare_uds_port, &uds_sock);
    let (bare_tcp_addr, bare_uds_addr) = (format!("127.0.0.1:{bare_tcp_port}"), format!("127.0.0.1:{bare_uds_port}"));
    let auth = [("authorization", "Bearer bench-token")];
    let seed = json!({"ops": (0..100).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i}}})).collect::<Vec<_>>()});
    assert_eq!(post_with(&gw.url("/graphs/alpha/change"), &seed, &auth).status, 200);
    assert_eq!(post(&direct.url("/change"), &seed).status, 200);
    assert_eq!(post(&format!("http://{bare_uds_addr}/change"), &seed).status, 200);
    let body = json!({"match": {"type": "Person", "key": "p42"}}).to_string();
    let gw_headers = "authorization: Bearer bench-token\r\n";
    let mut to_gw = RawClient::connect(&gw.addr(), "/graphs/alpha/read", gw_headers, &body);
    let mut to_direct = RawClient::connect(&direct_addr, "/read", "", &body);
    let mut to_nginx = nginx.as_ref().map(|_| RawClient::connect(&nginx_addr, "/read", "", &body));
    let mut to_bare_tcp = RawClient::connect(&bare_tcp_addr, "/read", "", &body);
    let mut to_bare_uds = RawClient::connect(&bare_uds_addr, "/read", "", &body);
    for _ in 0..1000 {
        to_direct.once();
        to_gw.once();
        to_bare_tcp.once();
        to_bare_uds.once();
        if let Some(n) = to_nginx.as_mut() {
            n.once();
        }
    }
    let (mut direct_s, mut gw_s, mut nginx_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut direct_cpu, mut gw_cpu, mut nginx_cpu) = (0u64, 0u64, 0u64);
    let (mut bare_tcp_s, mut bare_uds_s, mut bare_tcp_cpu, mut bare_uds_cpu) = (Vec::new(), Vec::new(), 0u64, 0u64);
    let nginx_pid = nginx.as_ref().map(|n| n.pid());
    for _ in 0..40 {
        block(&mut to_direct, 250, &mut direct_s, direct.proc.pid(), false, &mut direct_cpu);
        if let (Some(n), Some(pid)) = (to_nginx.as_mut(), nginx_pid) {
            block(n, 250, &mut nginx_s, pid, true, &mut nginx_cpu);
        }
        block(&mut to_gw, 250, &mut gw_s, gw.proc.pid(), false, &mut gw_cpu);
        block(&mut to_bare_tcp, 250, &mut bare_tcp_s, _bare_tcp.pid(), false, &mut bare_tcp_cpu);
        block(&mut to_bare_uds, 250, &mut bare_uds_s, _bare_uds.pid(), false, &mut bare_uds_cpu);
    }
    let per_req = |ns: u64, n: usize| ns as f64 / 1e3 / n.max(1) as f64;
    let (d50, d99) = (percentile(&mut direct_s, 50.0), percentile(&mut direct_s, 99.0));
    let (g50, g99) = (percentile(&mut gw_s, 50.0), percentile(&mut gw_s, 99.0));
    println!("## gateway added latency (release, concurrency 1, keep-alive, POST /read by key)\n");
    println!("| path | samples | p50 µs | p99 µs | added p50 µs |");
    println!("|---|---|---|---|---|");
    println!("| worker directly (TCP) | {} | {:.0} | {:.0} | |", direct_s.len(), us(d50), us(d99));
    let nginx_added = if nginx_s.is_empty() {
        None
    } else {
        let (n50, n99) = (percentile(&mut nginx_s, 50.0), percentile(&mut nginx_s, 99.0));
        println!("| nginx proxy_pass → worker (TCP, upstream keep-alive) | {} | {:.0} | {:.0} | {:.0} |", nginx_s.len(), us(n50), us(n99), us(n50) - us(d50));
        Some(us(n50) - us(d50))
    };
    let (bt50, bt99) = (percentile(&mut bare_tcp_s, 50.0), percentile(&mut bare_tcp_s, 99.0));
    let (bu50, bu99) = (percentile(&mut bare_uds_s, 50.0), percentile(&mut bare_uds_s, 99.0));
    println!("| bare Pingora → worker (TCP, no phases) | {} | {:.0} | {:.0} | {:.0} |", bare_tcp_s.len(), us(bt50), us(bt99), us(bt50) - us(d50));
    println!("| bare Pingora → worker (UDS, no phases) | {} | {:.0} | {:.0} | {:.0} |", bare_uds_s.len(), us(bu50), us(bu99), us(bu50) - us(d50));
    println!("| gateway → worker (TCP + authn + Cedar + UDS) | {} | {:.0} | {:.0} | **{:.0}** |", gw_s.len(), us(g50), us(g99), us(g50) - us(d50));
    let added = us(g50) - us(d50);
    println!("\n(client: raw keep-alive HTTP/1.1, one write per request, TCP_NODELAY; blocks of 250 interleaved)");
    println!("\nCPU per request of the process in front of the client (scheduler accounting, same run):");
    println!("\n| process | CPU µs per request |\n|---|---|");
    println!("| worker, called directly | {:.1} |", per_req(direct_cpu, direct_s.len()));
    if !nginx_s.is_empty() {
        println!("| nginx (master + worker process) | {:.1} |", per_req(nginx_cpu, nginx_s.len()));
    }
    println!("| bare Pingora, TCP upstream | {:.1} |", per_req(bare_tcp_cpu, bare_tcp_s.len()));
    println!("| bare Pingora, UDS upstream | {:.1} |", per_req(bare_uds_cpu, bare_uds_s.len()));
    println!("| gateway (its graph worker not included) | {:.1} |", per_req(gw_cpu, gw_s.len()));
    match nginx_added {
        Some(n) => println!("\ntargets: added p50 <= 50 µs (got {added:.0}); <= 1.5x nginx's added p50 (got {:.2}x)", added / n.max(1.0)),
        None => println!("\n(nginx not installed: `apt-get install nginx-light` for the side-by-side row)"),
    }

    let secs = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let direct_rps = throughput(&direct_addr, "/read", "", &body, 32, secs);
    let nginx_rps = nginx.as_ref().map(|_| throughput(&nginx_addr, "/read", "", &body, 32, secs));
    let bare_rps = throughput(&bare_uds_addr, "/read", "", &body, 32, secs);
    let gw_rps = throughput(&gw.addr(), "/graphs/alpha/read", gw_headers, &body, 32, secs);
    println!("\n## throughput at concurrency 32 ({secs} s each, same run)\n");
    println!("| path | requests/s | ÷ direct |");
    println!("|---|---|---|");
    println!("| worker directly | {direct_rps:.0} | 1.00 |");
    if let Some(n) = nginx_rps {
        println!("| nginx proxy_pass | {n:.0} | {:.2} |", n / direct_rps);
    }
    println!("| bare Pingora (UDS) | {bare_rps:.0} | {:.2} |", bare_rps / direct_rps);
    println!("| gateway | {gw_rps:.0} | **{:.2}** |", gw_rps / direct_rps);
    println!("\ntarget: gateway ÷ direct >= 0.7");
    drop(nginx);
}
