//! End-to-end tests of the worker's own defences, against the real
//! `target/debug/omnigraph-worker`: the worker key and the actor header, the
//! per-request limits (`serve` flags), reads that stay off the runtime's
//! threads, branch-scoped commits and branch-name aliases.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const KEY: &str = "k-0123456789abcdef";

/// `omnigraph-worker serve` with `extra` flags and, optionally, a key in the
/// environment (never argv). The support helper takes no extra flags.
fn start(uri: &Path, schema: Option<&Path>, key: Option<&str>, extra: &[&str]) -> Worker {
    let mut cmd = Command::new(bin("omnigraph-worker"));
    cmd.args(["serve", "--graph-id", "sec", "--uri"]).arg(uri).args(["--listen", "127.0.0.1:0"]);
    if let Some(s) = schema {
        cmd.arg("--init").arg("--schema").arg(s);
    }
    cmd.args(extra);
    cmd.env_remove("OMNIGRAPH_WORKER_KEY");
    if let Some(k) = key {
        cmd.env("OMNIGRAPH_WORKER_KEY", k);
    }
    let (proc, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(120));
    let base = line.rsplit(' ').next().expect("address").trim().to_string();
    Worker { proc, base }
}

fn new_graph(tmp: &Path, key: Option<&str>, extra: &[&str]) -> Worker {
    let schema = write_file(tmp, "s.pg", SOCIAL_SCHEMA);
    start(&tmp.join("g"), Some(&schema), key, extra)
}

fn addr(w: &Worker) -> String {
    w.base.trim_start_matches("http://").to_string()
}

/// One HTTP/1.1 request whose header values are raw bytes (an HTTP client
/// library refuses non-ASCII); returns (status, JSON body).
fn raw(w: &Worker, method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: w\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len()).into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    let mut s = std::net::TcpStream::connect(addr(w)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s.write_all(&req).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn upsert(key: &str) -> Value {
    json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {}}}]})
}

fn code(r: &Resp) -> (u16, Option<&str>) {
    (r.status, r.body["code"].as_str())
}

fn actors(w: &Worker, headers: &[(&str, &str)]) -> Vec<String> {
    let r = call("GET", &w.url("/commits"), None, headers);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["commits"].as_array().unwrap().iter().map(|c| c["actor_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_keyed_worker_answers_401_without_its_key_except_healthz() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_graph(tmp.path(), Some(KEY), &[]);
    let good: [(&str, &str); 2] = [("x-omnigraph-worker-key", KEY), ("x-omnigraph-actor", "alice")];

    // /healthz is open, with or without a key.
    let r = get(&w.url("/healthz"));
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ok")));
    assert_eq!(call("GET", &w.url("/healthz"), None, &[("x-omnigraph-worker-key", "wrong")]).status, 200);

    // Everything else needs the key: missing, wrong, a prefix, or only an actor.
    for headers in [
        vec![],
        vec![("x-omnigraph-worker-key", "wrong"), ("x-omnigraph-actor", "mallory")],
        vec![("x-omnigraph-worker-key", &KEY[..KEY.len() - 1]), ("x-omnigraph-actor", "mallory")],
        vec![("x-omnigraph-worker-key", "")],
        vec![("x-omnigraph-actor", "mallory"), ("x-actor-id", "mallory")],
    ] {
        let r = call("POST", &w.url("/change"), Some(upsert("m").to_string().as_bytes()), &headers);
        assert_eq!(code(&r), (401, Some("unauthorized")), "{headers:?}: {:?}", r.body);
        for (method, path) in [("GET", "/snapshot"), ("GET", "/schema"), ("GET", "/commits"), ("POST", "/read"), ("GET", "/nowhere"), ("POST", "/healthz")] {
            let r = call(method, &w.url(path), (method == "POST").then_some(&b"{}"[..]), &headers);
            assert_eq!(code(&r), (401, Some("unauthorized")), "{method} {path} {headers:?}");
        }
    }

    // With the key, the actor is recorded.
    let r = post_with(&w.url("/change"), &upsert("a"), &good);
    assert_eq!((r.status, r.body["actor_id"].as_str()), (200, Some("alice")), "{:?}", r.body);
    assert_eq!(actors(&w, &good), vec!["alice", "local"], "the rejected requests wrote nothing (init is local)");
}

#[test]
fn a_keyed_request_needs_a_well_formed_actor() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_graph(tmp.path(), Some(KEY), &[]);
    let body = upsert("x").to_string();
    let with_actor = |actor: &[u8]| raw(&w, "POST", "/change", &[("x-omnigraph-worker-key", KEY.as_bytes()), ("x-omnigraph-actor", actor)], body.as_bytes());

    let long = vec![b'a'; 257];
    for (bad, why) in [
        (&b"\xff\xfe\xfd"[..], "invalid UTF-8"),
        (&long[..], "257 bytes"),
        (&b"a\tb"[..], "a control character"),
        ("a\u{85}b".as_bytes(), "a C1 control character"),
    ] {
        let (status, body) = with_actor(bad);
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{why}: {body}");
    }
    let (status, body) = raw(&w, "POST", "/change", &[("x-omnigraph-worker-key", KEY.as_bytes())], upsert("y").to_string().as_bytes());
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "a missing actor is never recorded as local: {body}");

    // The edges of the valid range, and any UTF-8.
    let (status, body) = with_actor(&[b'a'; 256]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = with_actor("zoë 🦀".as_bytes());
    assert_eq!((status, body["actor_id"].as_str()), (200, Some("zoë 🦀")), "{body}");

    let good = [("x-omnigraph-worker-key", KEY), ("x-omnigraph-actor", "ops")];
    assert_eq!(actors(&w, &good), vec!["zoë 🦀".to_string(), "a".repeat(256), "local".into()]);
}

#[test]
fn a_keyless_worker_records_local_and_ignores_identity_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_graph(tmp.path(), None, &[]);
    let r = post_with(&w.url("/change"), &upsert("a"), &[("x-omnigraph-worker-key", "guess"), ("x-omnigraph-actor", "alice")]);
    assert_eq!((r.status, r.body["actor_id"].as_str()), (200, Some("local")), "{:?}", r.body);
    let (status, body) = raw(&w, "POST", "/change", &[("x-omnigraph-actor", &b"\xff"[..])], upsert("b").to_string().as_bytes());
    assert_eq!((status, body["actor_id"].as_str()), (200, Some("local")), "a keyless worker does not even look at the header: {body}");
    let r = post(&w.url("/change"), &upsert("c"));
    assert_eq!(r.body["actor_id"], "local");
    assert_eq!(actors(&w, &[]), vec!["local"; 4]);
}

#[test]
fn an_empty_key_or_a_zero_limit_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let run = |key: Option<&str>, extra: &[&str]| {
        let mut cmd = Command::new(bin("omnigraph-worker"));
        cmd.args(["serve", "--graph-id", "x", "--uri"]).arg(tmp.path().join("g")).args(["--listen", "127.0.0.1:0", "--init", "--schema"]).arg(&schema);
        cmd.args(extra).env_remove("OMNIGRAPH_WORKER_KEY");
        if let Some(k) = key {
            cmd.env("OMNIGRAPH_WORKER_KEY", k);
        }
        cmd.output().unwrap()
    };
    let out = run(Some(""), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"), "{}", String::from_utf8_lossy(&out.stderr));
    for flag in ["--max-body-bytes", "--max-change-ops", "--max-traverse-steps", "--max-in-list", "--max-visited", "--read-timeout-ms"] {
        let out = run(None, &[flag, "0"]);
        assert!(!out.status.success(), "{flag} 0 must be refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag), "{flag}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(!tmp.path().join("g").exists(), "nothing was created");
}

fn limit(r: &Resp) -> (u16, Option<&str>, Option<&str>, Option<u64>) {
    (r.status, r.body["code"].as_str(), r.body["details"]["limit"].as_str(), r.body["details"]["value"].as_u64())
}

#[test]
fn every_limit_flag_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_graph(
        tmp.path(),
        None,
        &["--max-body-bytes", "1200", "--max-change-ops", "5", "--max-traverse-steps", "2", "--max-in-list", "3", "--max-visited", "20"],
    );
    // A chain p0 -> p1 -> ... -> p29, five ops a batch.
    for chunk in (0..30).collect::<Vec<_>>().chunks(5) {
        let ops: Vec<Value> = chunk.iter().map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i}}})).collect();
        let r = post(&w.url("/change"), &json!({"ops": ops}));
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for chunk in (0..29).collect::<Vec<_>>().chunks(5) {
        let ops: Vec<Value> = chunk.iter().map(|i| json!({"link": {"edge": "Knows", "from": format!("p{i}"), "to": format!("p{}", i + 1)}})).collect();
        assert_eq!(post(&w.url("/change"), &json!({"ops": ops})).status, 200);
    }
    let before = get(&w.url("/snapshot")).body;

    // Body: 413 naming the limit, at 1201 bytes; 1200 is fine (and then a bad op).
    let pad = |n: usize| {
        let base = json!({"ops": [{"upsert": {"type": "Person", "key": "big", "props": {}}}], "pad": ""}).to_string();
        json!({"ops": [{"upsert": {"type": "Person", "key": "big", "props": {}}}], "pad": "x".repeat(n - base.len())}).to_string()
    };
    let r = call("POST", &w.url("/change"), Some(pad(1201).as_bytes()), &[]);
    assert_eq!(limit(&r), (413, Some("payload_too_large"), Some("max_body_bytes"), Some(1200)), "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("limits.max_body_bytes"), "{:?}", r.body);
    let r = call("POST", &w.url("/change"), Some(pad(1200).as_bytes()), &[]);
    assert_eq!(r.status, 400, "within the body limit, refused only for its unknown field: {:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("unknown field"));

    // Ops: 6 > 5, nothing written.
    let six: Vec<Value> = (0..6).map(|i| json!({"upsert": {"type": "Person", "key": format!("n{i}"), "props": {}}})).collect();
    let r = post(&w.url("/change"), &json!({"ops": six}));
    assert_eq!(limit(&r), (400, Some("bad_request"), Some("max_change_ops"), Some(5)), "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("limits.max_change_ops"));
    assert_eq!(get(&w.url("/snapshot")).body, before, "a refused batch writes nothing");

    // Traverse steps: 2 is fine, 3 is not.
    let steps = |n: usize| json!({"match": {"type": "Person", "key": "p0"}, "traverse": vec![json!({"edge": "Knows"}); n]});
    let r = post(&w.url("/read"), &steps(2));
    assert_eq!((r.status, r.body["rows"][0]["key"].as_str()), (200, Some("p2")), "{:?}", r.body);
    let r = post(&w.url("/read"), &steps(3));
    assert_eq!(limit(&r), (400, Some("bad_request"), Some("max_traverse_steps"), Some(2)), "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("limits.max_traverse_steps"));

    // In-lists: 3 values are fine, 4 are not.
    let in_list = |n: i64| json!({"match": {"type": "Person", "where": [{"prop": "age", "op": "in", "value": (0..n).collect::<Vec<_>>()}]}});
    let r = post(&w.url("/read"), &in_list(3));
    assert_eq!((r.status, r.body["row_count"].as_u64()), (200, Some(3)), "{:?}", r.body);
    let r = post(&w.url("/read"), &in_list(4));
    assert_eq!(limit(&r), (400, Some("bad_request"), Some("max_in_list"), Some(3)), "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("limits.max_in_list"));

    // Visited: 1 start + 16 hops = 17 <= 20; a second step from those 16 goes past it.
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person", "key": "p0"}, "traverse": [{"edge": "Knows", "max_hops": 16}]}));
    assert_eq!((r.status, r.body["row_count"].as_u64()), (200, Some(16)), "{:?}", r.body);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person", "key": "p0"}, "traverse": [{"edge": "Knows", "max_hops": 16}, {"edge": "Knows"}]}));
    assert_eq!(limit(&r), (400, Some("bad_request"), Some("max_visited"), Some(20)), "{:?}", r.body);
    assert_eq!(r.body["error"], "the read visited more than 20 nodes (limits.max_visited)");
    // The start set counts too: 30 people > 20, by key scan or by a Lance scan.
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person"}}));
    assert_eq!(limit(&r).2, Some("max_visited"), "{:?}", r.body);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person", "where": [{"prop": "age", "op": ">=", "value": 0}]}}));
    assert_eq!(limit(&r).2, Some("max_visited"), "{:?}", r.body);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person", "where": [{"prop": "age", "op": ">=", "value": 10}]}}));
    assert_eq!(r.status, 200, "20 matches are within the limit: {:?}", r.body);
    assert_eq!(get(&w.url("/healthz")).status, 200);
}

#[test]
fn the_default_body_limit_is_16_mib() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_graph(tmp.path(), None, &[]);
    let r = call("POST", &w.url("/change"), Some(&vec![b' '; 16 * 1024 * 1024 + 1]), &[]);
    assert_eq!(limit(&r), (413, Some("payload_too_large"), Some("max_body_bytes"), Some(16_777_216)), "{:?}", r.body);
}

/// 20,000 people and 100,000 Knows edges, written through `/change`.
fn build_big_graph(w: &Worker) {
    const NODES: u64 = 20_000;
    const EDGES: usize = 100_000;
    let people: Vec<Value> = (0..NODES).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i % 90}}})).collect();
    let r = post(&w.url("/change"), &json!({"ops": people}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut rng = Lcg(42);
    let mut seen = std::collections::HashSet::new();
    let mut links = Vec::with_capacity(EDGES);
    while links.len() < EDGES {
        let (a, b) = (rng.below(NODES), rng.below(NODES));
        if a != b && seen.insert((a, b)) {
            links.push(json!({"link": {"edge": "Knows", "from": format!("p{a}"), "to": format!("p{b}")}}));
        }
    }
    for chunk in links.chunks(EDGES / 2) {
        let r = post(&w.url("/change"), &json!({"ops": chunk}));
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

/// Three `both` steps of up to 16 hops over the whole graph: seconds of CPU in a debug build.
fn heavy_read() -> Value {
    json!({"match": {"type": "Person", "key": "p0"}, "traverse": vec![json!({"edge": "Knows", "direction": "both", "min_hops": 1, "max_hops": 16}); 3], "limit": 10})
}

/// The worker's CPU time so far (user + system), from /proc.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // After the ")": state is field 0, utime field 11, stime field 12 (clock ticks).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz.max(1))
}

/// Heavy reads run on blocking threads, so `/healthz` keeps answering; a
/// read past `--read-timeout-ms` answers 400 and its work stops.
#[test]
fn heavy_reads_do_not_starve_healthz_and_time_out_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let big = ["--max-visited", "100000000", "--read-timeout-ms", "600000"];
    let mut w = new_graph(tmp.path(), None, &big);
    build_big_graph(&w);

    // How long one heavy read takes alone.
    let t = Instant::now();
    let r = post(&w.url("/read"), &heavy_read());
    assert_eq!(r.status, 200, "{:?}", r.body);
    let alone = t.elapsed();
    eprintln!("one heavy read alone: {alone:?}");
    assert!(alone > Duration::from_millis(300), "the read must be heavy for this test to mean anything ({alone:?})");

    // Three at once: more than the runtime's worker threads (one per core).
    let url = w.url("/read");
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = post(&url, &heavy_read());
                (r.status, Instant::now())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut probes = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = get(&w.url("/healthz"));
        probes.push(t.elapsed());
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    let probes_done = Instant::now();
    let finished: Vec<(u16, Instant)> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("healthz during heavy reads: {probes:?}");
    assert!(finished.iter().all(|(s, _)| *s == 200));
    assert!(finished.iter().any(|(_, t)| *t > probes_done), "a heavy read was still running while /healthz was probed");
    let p50 = percentile(&mut probes, 50.0);
    assert!(p50 <= Duration::from_millis(100), "healthz p50 {p50:?} while heavy reads run");
    assert!(probes.iter().all(|d| *d < Duration::from_secs(1)), "{probes:?}");

    // The same graph with a 1 ms read budget: 400 naming the limit, promptly.
    w.proc.terminate(Duration::from_secs(20)).expect("stops");
    let w = start(&tmp.path().join("g"), None, None, &["--max-visited", "100000000", "--read-timeout-ms", "1"]);
    let t = Instant::now();
    let r = post(&w.url("/read"), &heavy_read());
    let took = t.elapsed();
    assert_eq!(limit(&r), (400, Some("bad_request"), Some("read_timeout_ms"), Some(1)), "{:?}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("limits.read_timeout_ms"));
    assert!(took < alone / 2, "the timeout answered in {took:?}; the read alone takes {alone:?}");
    // And the work stopped: the worker is not still burning CPU on it.
    std::thread::sleep(Duration::from_millis(100));
    let c0 = cpu_time(w.proc.pid());
    std::thread::sleep(Duration::from_millis(500));
    let burnt = cpu_time(w.proc.pid()) - c0;
    assert!(burnt < Duration::from_millis(200), "the worker used {burnt:?} of CPU in 500 ms after the timeout");
    assert_eq!(get(&w.url("/healthz")).status, 200);
}

#[test]
fn commits_and_cursors_are_scoped_to_the_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_graph(tmp.path(), None, &[]);
    let ops: Vec<Value> = (0..5).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i}}})).collect();
    let c1 = post(&w.url("/change"), &json!({"ops": ops})).body["commit_id"].as_str().unwrap().to_string();
    let c2 = post(&w.url("/change"), &upsert("p9")).body["commit_id"].as_str().unwrap().to_string();

    // /commits/{id}?branch=, default main.
    for path in [format!("/commits/{c1}"), format!("/commits/{c1}?branch=main"), format!("/commits/{c2}")] {
        let r = get(&w.url(&path));
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }
    assert_eq!(get(&w.url(&format!("/commits/{c2}"))).body["parents"][0], c1.as_str());
    for path in [format!("/commits/{c1}?branch=dev"), "/commits/01UNKNOWN".to_string(), "/commits/01UNKNOWN?branch=main".into()] {
        assert_eq!(code(&get(&w.url(&path))), (404, Some("not_found")), "{path}");
    }
    assert_eq!(code(&get(&w.url(&format!("/commits/{c1}?brnach=main")))), (400, Some("bad_request")), "unknown keys stay 400");

    // ?commit= on /read: an ancestor on main reads; an unknown id is 404.
    let q = json!({"match": {"type": "Person"}, "limit": 2});
    let r = post(&w.url(&format!("/read?commit={c1}")), &q);
    assert_eq!((r.status, r.body["commit_id"].as_str()), (200, Some(c1.as_str())), "{:?}", r.body);
    let r = post(&w.url("/read?commit=01UNKNOWN"), &q);
    assert_eq!(code(&r), (404, Some("not_found")));
    let r = post(&w.url(&format!("/read?commit={c1}&branch=dev")), &q);
    assert_eq!(code(&r), (404, Some("not_found")));

    // A cursor: one issued at c1 pages on; a forged one for an unknown commit is 404.
    let page1 = post(&w.url(&format!("/read?commit={c1}")), &q);
    let next = page1.body["next_cursor"].as_str().expect("a next page").to_string();
    let mut q2 = q.clone();
    q2["cursor"] = json!(next);
    let r = post(&w.url("/read"), &q2);
    assert_eq!((r.status, r.body["commit_id"].as_str()), (200, Some(c1.as_str())), "{:?}", r.body);
    q2["cursor"] = json!("c1.01UNKNOWN.2");
    assert_eq!(code(&post(&w.url("/read"), &q2)), (404, Some("not_found")));
}

#[test]
fn branch_name_aliases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let w = new_graph(tmp.path(), None, &[]);
    let q = json!({"match": {"type": "Person"}});
    for alias in ["main/", "main//", "a//b", "a/./b", "a/.", "a/.hidden"] {
        let enc = alias.replace('/', "%2F");
        for (method, path) in [("GET", format!("/snapshot?branch={alias}")), ("GET", format!("/commits?branch={enc}")), ("POST", format!("/read?branch={alias}")), ("POST", format!("/change?branch={alias}"))] {
            let body = if path.starts_with("/change") { upsert("z") } else { q.clone() };
            let r = call(method, &w.url(&path), (method == "POST").then(|| body.to_string().into_bytes()).as_deref(), &[]);
            assert_eq!(code(&r), (400, Some("bad_request")), "{method} {path}: {:?}", r.body);
            assert!(r.body["error"].as_str().unwrap().contains("invalid branch name"), "{:?}", r.body);
        }
    }
    assert_eq!(get(&w.url("/snapshot?branch=main")).status, 200);
    assert_eq!(get(&w.url("/snapshot")).body["tables"][0]["rows"], 0, "no aliased change was written");
}
