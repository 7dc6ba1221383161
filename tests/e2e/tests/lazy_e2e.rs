//! Lazy start and idle stop (issue 12), end to end through the gateway:
//! a `start: lazy` graph has no worker until a request Cedar allows; that
//! request waits for the worker instead of failing; a worker idle for
//! `server.idle_stop_s` is stopped (`GET /graphs` shows `idle`) and the next
//! request starts it again with every acknowledged write; a request in
//! flight is never cut off by an idle stop; and a gateway declaring 2,000
//! lazy graphs runs only the workers of the graphs that were used.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");

fn statuses(gw: &Gateway) -> Value {
    let r = call("GET", &gw.url("/graphs"), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

fn status_of(gw: &Gateway, graph: &str) -> String {
    let list = statuses(gw);
    let g = list["graphs"].as_array().expect("graphs").iter().find(|g| g["graph_id"] == graph).cloned().unwrap_or_default();
    g["status"].as_str().unwrap_or("").to_string()
}

fn read_key(gw: &Gateway, graph: &str, key: &str) -> Resp {
    post_with(&gw.url(&format!("/graphs/{graph}/read")), &json!({"match": {"type": "Person", "key": key}}), &[ROOT])
}

fn metric(gw: &Gateway, name: &str) -> f64 {
    let r = call("GET", &gw.url("/metrics"), None, &[ROOT]);
    r.body.as_str().unwrap_or("").lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

#[test]
fn a_lazy_graph_starts_on_its_first_allowed_request_and_stops_when_idle() {
    let mut tokens = vec![ROOT_TOKEN];
    tokens.push(TestToken { token: "tok-nobody", actor: "nobody", groups: &[], tenant: None });
    let env = ConfigDir::with("  default_start: lazy\n  idle_stop_s: 2\n", "", &tokens, &graphs_yaml(&["alpha", "beta"]));
    let gw = env.start();
    // Ready at once: nothing had to start.
    assert_eq!(get(&gw.url("/readyz")).status, 200);
    assert_eq!((status_of(&gw, "alpha").as_str(), status_of(&gw, "beta").as_str()), ("idle", "idle"));
    assert!(gw.worker_pid("alpha").is_none() && gw.worker_pid("beta").is_none(), "no worker runs before a request");

    // Cedar first: a denied request starts nothing.
    let denied = post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person"}}), &[("authorization", "Bearer tok-nobody")]);
    assert_eq!(denied.status, 403);
    assert_eq!(status_of(&gw, "alpha"), "idle");
    assert!(gw.worker_pid("alpha").is_none());

    // The first allowed request waits for the worker and is answered.
    let t = Instant::now();
    let change = post_with(&gw.url("/graphs/alpha/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": "ann", "props": {"age": 40}}}]}), &[ROOT]);
    assert_eq!(change.status, 200, "{:?}", change.body);
    println!("first request to an idle graph (debug build, graph initialised from its schema): {:?}", t.elapsed());
    assert_eq!(status_of(&gw, "alpha"), "up");
    assert_eq!(status_of(&gw, "beta"), "idle", "only the graph that was asked for starts");
    let first_pid = gw.worker_pid("alpha").expect("alpha's worker runs");

    // Idle for idle_stop_s: the worker is stopped and its process is gone.
    assert!(eventually(Duration::from_secs(30), || status_of(&gw, "alpha") == "idle"), "alpha never went idle");
    assert!(eventually(Duration::from_secs(10), || gw.worker_pid("alpha").is_none()), "the idle worker still runs");
    assert!(!std::path::Path::new(&format!("/proc/{first_pid}")).exists() || processes_matching("--graph-id alpha ").is_empty());
    // Counted once the supervisor has seen the worker exit.
    assert!(eventually(Duration::from_secs(10), || metric(&gw, "omnigraph_worker_idle_stops_total") >= 1.0));
    assert_eq!(metric(&gw, "omnigraph_worker_restarts_total"), 0.0, "an idle stop is not a crash");

    // The next request starts it again, with the acknowledged write.
    let r = read_key(&gw, "alpha", "ann");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0]["props"]["age"], 40, "{:?}", r.body);
    assert!(metric(&gw, "omnigraph_worker_lazy_starts_total") >= 2.0);

    // A gateway restart keeps the graph lazy and its data.
    drop(gw);
    let gw = env.start();
    assert_eq!(status_of(&gw, "alpha"), "idle");
    assert_eq!(read_key(&gw, "alpha", "ann").status, 200);
}

/// Sends an `/ingest` whose chunked body trickles in over `secs` seconds,
/// one line a second, and returns the answer's status.
fn slow_ingest(addr: &str, graph: &str, secs: u64) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let head = format!("POST /graphs/{graph}/ingest HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-root\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).expect("head");
    for i in 0..secs {
        let line = format!("{{\"type\":\"Person\",\"key\":\"slow{i}\",\"props\":{{\"age\":{i}}}}}\n");
        s.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).expect("chunk");
        std::thread::sleep(Duration::from_secs(1));
    }
    s.write_all(b"0\r\n\r\n").expect("end");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") && String::from_utf8_lossy(&out).contains("\"lines\"") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn a_request_in_flight_is_never_cut_off_by_an_idle_stop() {
    let env = ConfigDir::admin("  default_start: lazy\n  idle_stop_s: 1\n", "", &["alpha"]);
    let gw = env.start();
    // The ingest lasts five idle periods; the worker must stay for all of
    // it and after it: not stopped (even gracefully, which would let the
    // ingest finish) and not replaced by a new one.
    let addr = gw.addr();
    let ingest = std::thread::spawn(move || slow_ingest(&addr, "alpha", 5));
    assert!(eventually(Duration::from_secs(30), || gw.worker_pid("alpha").is_some()));
    let pid = gw.worker_pid("alpha");
    assert_eq!(ingest.join().expect("ingest thread"), 200);
    let r = read_key(&gw, "alpha", "slow4");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0]["props"]["age"], 4, "the whole ingest landed: {:?}", r.body);
    assert_eq!(gw.worker_pid("alpha"), pid, "the same worker served the ingest and the read after it");
    assert_eq!(metric(&gw, "omnigraph_worker_idle_stops_total"), 0.0);
    assert_eq!(metric(&gw, "omnigraph_worker_restarts_total"), 0.0);
}

#[test]
fn a_graph_created_at_run_time_follows_the_default_start_and_stops_when_idle() {
    let env = ConfigDir::admin("  default_start: lazy\n  idle_stop_s: 1\n", "", &[]);
    let gw = env.start();
    let body = json!({"graph_id": "fresh", "uri": "data/fresh", "schema": {"source": SOCIAL_SCHEMA}});
    let r = post_with(&gw.url("/graphs"), &body, &[ROOT]);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(status_of(&gw, "fresh"), "up", "a create starts and initialises its worker");
    let w = post_with(&gw.url("/graphs/fresh/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": "bo", "props": {"age": 7}}}]}), &[ROOT]);
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert!(eventually(Duration::from_secs(30), || status_of(&gw, "fresh") == "idle"));
    assert!(eventually(Duration::from_secs(10), || gw.worker_pid("fresh").is_none()));
    let r = read_key(&gw, "fresh", "bo");
    assert_eq!((r.status, &r.body["rows"][0]["props"]["age"]), (200, &json!(7)), "{:?}", r.body);
    // DELETE of an idle graph ends its supervision and leaves no worker.
    assert!(eventually(Duration::from_secs(30), || status_of(&gw, "fresh") == "idle"));
    let d = call("DELETE", &gw.url("/graphs/fresh?purge=true"), None, &[ROOT]);
    assert_eq!(d.status, 200, "{:?}", d.body);
    assert_eq!(read_key(&gw, "fresh", "bo").status, 404);
    assert!(gw.worker_pid("fresh").is_none());
}

#[test]
fn a_purge_during_a_lazy_start_stops_the_starting_worker_first() {
    let env = ConfigDir::admin("  default_start: lazy\n", "", &["purged"]);
    let gw = env.start();
    let folder = env.path().join("data/purged");
    // An allowed request starts the worker (and the graph's creation from its schema)...
    let url = gw.url("/graphs/purged/read");
    let reader = std::thread::spawn(move || post_with(&url, &json!({"match": {"type": "Person"}}), &[ROOT]).status);
    assert!(eventually(Duration::from_secs(30), || status_of(&gw, "purged") == "starting" || gw.worker_pid("purged").is_some()));
    // ... and a purge arrives before it is ready.
    let d = call("DELETE", &gw.url("/graphs/purged?purge=true"), None, &[ROOT]);
    assert_eq!(d.status, 200, "{:?}", d.body);
    assert_eq!(d.body["purged"], true);
    let waited = reader.join().expect("reader");
    assert!(waited == 503 || waited == 404 || waited == 200, "the waiting request got {waited}");
    // Nothing is left running, and nothing writes the folder back.
    assert!(eventually(Duration::from_secs(15), || gw.worker_pid("purged").is_none()), "the starting worker outlived the DELETE");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!folder.exists(), "the purged folder came back: {:?}", std::fs::read_dir(&folder).map(|d| d.count()));
    assert_eq!(get(&gw.url("/healthz")).status, 200);
}

#[test]
fn graphs_with_start_eager_run_at_boot_beside_lazy_ones() {
    let graphs = "  eager:\n    uri: data/eager\n    schema: { file: s.pg }\n    start: eager\n  lazy:\n    uri: data/lazy\n    schema: { file: s.pg }\n";
    let env = ConfigDir::with("  default_start: lazy\n  idle_stop_s: 1\n", "", &[ROOT_TOKEN], graphs);
    let gw = env.start();
    assert_eq!(status_of(&gw, "eager"), "up");
    assert_eq!(status_of(&gw, "lazy"), "idle");
    // idle_stop_s applies to lazy graphs only.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_of(&gw, "eager"), "up");
    assert!(gw.worker_pid("eager").is_some());
    // The config file keeps each graph's own setting.
    assert!(env.yaml().contains("start: eager"));
}

#[test]
fn a_lazy_graph_whose_worker_cannot_start_answers_503_and_is_retried_on_the_next_request() {
    // No schema and an empty URI: the worker cannot start.
    let env = ConfigDir::with("  default_start: lazy\n  start_wait_ms: 5000\n", "", &[ROOT_TOKEN], "  broken:\n    uri: data/broken\n");
    let gw = env.start();
    assert_eq!(status_of(&gw, "broken"), "idle");
    let r = read_key(&gw, "broken", "x");
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["code"], "worker_unavailable");
    assert!(r.header("retry-after").is_some());
    // It goes back to idle (not a restart loop of its own), and the gateway stays healthy.
    assert!(eventually(Duration::from_secs(30), || status_of(&gw, "broken") == "idle"));
    assert_eq!(get(&gw.url("/healthz")).status, 200);
}

#[test]
fn two_thousand_lazy_graphs_run_only_the_workers_that_were_used() {
    const GRAPHS: usize = 2000;
    let ids: Vec<String> = (0..GRAPHS).map(|i| format!("g{i:04}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let env = ConfigDir::with("  default_start: lazy\n", "limits:\n  max_graphs: 2500\n", &[ROOT_TOKEN], &graphs_yaml(&refs));
    let t = Instant::now();
    let gw = env.start();
    println!("gateway with {GRAPHS} lazy graphs ready in {:?}, RSS {} KiB", t.elapsed(), soak_rss(gw.proc.pid()));
    let list = statuses(&gw);
    let listed = list["graphs"].as_array().expect("graphs");
    assert_eq!(listed.len(), GRAPHS);
    assert!(listed.iter().all(|g| g["status"] == "idle"));
    assert!(children_of(gw.proc.pid()).is_empty(), "no worker before a request");

    let mut first = Vec::new();
    for id in ids.iter().step_by(GRAPHS / 10) {
        let t = Instant::now();
        assert_eq!(read_key(&gw, id, "x").status, 200);
        first.push(t.elapsed());
    }
    let workers: Vec<i32> = children_of(gw.proc.pid()).into_iter().filter(|(_, c)| c.contains("omnigraph-worker")).map(|(p, _)| p).collect();
    assert_eq!(workers.len(), 10, "exactly the ten graphs used have a worker");
    let total: u64 = soak_rss(gw.proc.pid()) + workers.iter().map(|p| soak_rss(*p)).sum::<u64>();
    first.sort();
    println!("after touching 10 of {GRAPHS}: gateway + workers RSS {total} KiB; first-request latency min {:?} median {:?} max {:?} (debug build)", first[0], first[5], first[9]);
    assert_eq!(list["graphs"].as_array().map(Vec::len), Some(GRAPHS));
}

fn soak_rss(pid: i32) -> u64 {
    omnigraph_e2e::soak::rss_kib(pid)
}

fn running(gw: &Gateway, graphs: &[&str]) -> Vec<String> {
    graphs.iter().filter(|g| gw.worker_pid(g).is_some()).map(|g| g.to_string()).collect()
}

#[test]
fn max_lazy_workers_stops_the_least_recently_used_worker_to_make_room() {
    // No idle stop at all: only the bound stops workers.
    let env = ConfigDir::admin("  default_start: lazy\n  start_wait_ms: 4000\n", "limits:\n  max_lazy_workers: 2\n", &["g0", "g1", "g2", "g3"]);
    let gw = env.start();
    let all = ["g0", "g1", "g2", "g3"];
    let upsert = |g: &str, key: &str| {
        let r = post_with(&gw.url(&format!("/graphs/{g}/change")), &json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {"age": 1}}}]}), &[ROOT]);
        assert_eq!(r.status, 200, "{g}: {:?}", r.body);
    };
    upsert("g0", "a0");
    upsert("g1", "a1");
    assert_eq!(running(&gw, &all), vec!["g0", "g1"]);
    // g1 was used last: g0 is the one stopped to make room for g2.
    read_key(&gw, "g1", "a1");
    upsert("g2", "a2");
    assert!(eventually(Duration::from_secs(30), || running(&gw, &all) == vec!["g1", "g2"]), "{:?}", running(&gw, &all));
    assert_eq!(status_of(&gw, "g0"), "idle");
    assert_eq!(metric(&gw, "omnigraph_worker_lazy_evictions_total"), 1.0);
    // g0 comes back on its next request with its acknowledged write; g1 makes room.
    let r = read_key(&gw, "g0", "a0");
    assert_eq!((r.status, r.body["row_count"].as_u64()), (200, Some(1)), "{:?}", r.body);
    assert!(eventually(Duration::from_secs(30), || running(&gw, &all) == vec!["g0", "g2"]), "{:?}", running(&gw, &all));
    assert_eq!(metric(&gw, "omnigraph_worker_restarts_total"), 0.0);
}

#[test]
fn max_lazy_workers_never_stops_a_worker_with_a_request_in_flight() {
    let env = ConfigDir::admin("  default_start: lazy\n  start_wait_ms: 1500\n", "limits:\n  max_lazy_workers: 1\n", &["alpha", "beta"]);
    let gw = env.start();
    let addr = gw.addr();
    // alpha is busy for 5 s: beta finds no room, waits start_wait_ms, then 503.
    let ingest = std::thread::spawn(move || slow_ingest(&addr, "alpha", 5));
    assert!(eventually(Duration::from_secs(30), || gw.worker_pid("alpha").is_some()));
    let pid = gw.worker_pid("alpha");
    std::thread::sleep(Duration::from_millis(300));
    let r = read_key(&gw, "beta", "x");
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(ingest.join().expect("ingest thread"), 200, "the ingest in flight was cut off");
    assert_eq!(gw.worker_pid("alpha"), pid);
    // Once alpha is free, beta gets its place (alpha is stopped for it).
    let ok = eventually(Duration::from_secs(30), || read_key(&gw, "beta", "x").status == 200);
    assert!(ok, "beta never got room");
    assert!(eventually(Duration::from_secs(30), || gw.worker_pid("alpha").is_none()));
    let r = read_key(&gw, "alpha", "slow4");
    assert_eq!(r.body["rows"][0]["props"]["age"], 4, "{:?}", r.body);
}
