//! The gateway stays responsive while heavy work runs (issue 7): `/healthz`
//! answers within 100 ms while a 1 MB policy is parsed in a `POST /graphs`
//! and while a read runs into the visit limit. These tests sit in a binary
//! of their own so that no other test competes with them for the 2 cores.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("authorization", "Bearer tok-admin");

/// A config folder with one admin token, `rest` appended to the YAML.
fn admin_config(rest: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d: &Path = dir.path();
    write_file(d, "s.pg", SOCIAL_SCHEMA);
    write_file(d, "policies/server.cedar", "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n");
    write_file(d, "tokens.yaml", &format!("tokens:\n  - actor_id: admin\n    sha256: {}\n    groups: [admins]\n", sha256_hex("tok-admin")));
    let cfg = write_file(
        d,
        "omnigraph.yaml",
        &format!("server:\n  bind: 127.0.0.1:{}\n  runtime_dir: run\n  policy: {{ file: policies/server.cedar }}\nauth:\n  static_tokens: {{ file: tokens.yaml }}\n{rest}", free_port()),
    );
    (dir, cfg)
}

/// The tests here measure latency, so they take turns rather than load the
/// machine for each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn text(r: &Resp) -> String {
    r.body.to_string()
}

/// Polls `/healthz` while `work` runs on another thread; returns the slowest
/// answer and how many answers came in while the work was running.
fn healthz_while(gw: &Gateway, work: impl FnOnce() + Send + 'static) -> (Duration, usize) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let t = std::thread::spawn(move || {
        work();
        d2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let (mut worst, mut n) = (Duration::ZERO, 0);
    // Let the work start; probe at least once.
    std::thread::sleep(Duration::from_millis(30));
    loop {
        let s = Instant::now();
        assert_eq!(get(&gw.url("/healthz")).status, 200);
        worst = worst.max(s.elapsed());
        n += 1;
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    t.join().unwrap();
    (worst, n)
}

#[test]
fn healthz_answers_while_a_large_policy_is_parsed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_d, cfg) = admin_config("graphs: {}\n");
    let gw = Gateway::start(&cfg);
    let mut src = String::new();
    let mut i = 0;
    while src.len() < 900 * 1000 {
        src.push_str(&format!("@id(\"p{i}\") permit (principal in Omnigraph::Group::\"g{i}\", action == Omnigraph::Action::\"read\", resource) when {{ context has branch && context.branch == \"b{i}\" }};\n"));
        i += 1;
    }
    let body = json!({"graph_id": "big", "uri": "data/big", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"source": src}});
    let url = gw.url("/graphs");
    let status = std::sync::Arc::new(std::sync::Mutex::new(0u16));
    let s2 = status.clone();
    let (worst, n) = healthz_while(&gw, move || {
        *s2.lock().unwrap() = post_with(&url, &body, &[ADMIN]).status;
    });
    assert_eq!(*status.lock().unwrap(), 201);
    assert!(n >= 3, "the create was too quick to measure anything ({n} probes)");
    assert!(worst < Duration::from_millis(100), "/healthz took {worst:?} while a 1 MB policy was parsed");
}

#[test]
fn healthz_answers_while_a_read_hits_the_visit_limit() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_d, cfg) = admin_config("limits:\n  max_visited: 5000\ngraphs:\n  big:\n    uri: data/big\n    schema: { file: s.pg }\n");
    let gw = Gateway::start(&cfg);
    // A dense graph: 3,000 people, 30,000 edges.
    let n = 3000;
    let mut rng = Lcg(7);
    let mut ops: Vec<Value> = (0..n).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {}}})).collect();
    for _ in 0..(10 * n) {
        ops.push(json!({"link": {"edge": "Knows", "from": format!("p{}", rng.below(n)), "to": format!("p{}", rng.below(n))}}));
    }
    let r = post_with(&gw.url("/graphs/big/change"), &json!({ "ops": ops }), &[ADMIN]);
    assert_eq!(r.status, 200, "{}", text(&r));
    let url = gw.url("/graphs/big/read");
    let result = std::sync::Arc::new(std::sync::Mutex::new(None));
    let r2 = result.clone();
    let (worst, probes) = healthz_while(&gw, move || {
        let q = json!({"match": {"type": "Person"}, "traverse": [{"edge": "Knows", "direction": "both", "min_hops": 1, "max_hops": 8}, {"edge": "Knows", "direction": "both", "min_hops": 1, "max_hops": 8}]});
        *r2.lock().unwrap() = Some(post_with(&url, &q, &[ADMIN]));
    });
    let r = result.lock().unwrap().take().unwrap();
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("max_visited"), "{}", text(&r));
    assert!(probes >= 1);
    assert!(worst < Duration::from_millis(100), "/healthz took {worst:?} during the read");
}

