//! End-to-end tests of the audit trail: `x-request-id` from client to
//! answer to decision log, rotation that loses no line under concurrent
//! load, and a log that cannot be written failing loudly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");

fn start(decision_log: &str) -> (ConfigDir, Gateway) {
    let tokens = [TestToken { tenant: Some("acme"), ..ROOT_TOKEN }, TestToken { token: "tok-eve", actor: "eve", groups: &[], tenant: None }];
    let env = ConfigDir::with(&format!("  decision_log: {decision_log}\n"), "", &tokens, &graphs_yaml(&["alpha"]));
    let gw = env.start();
    (env, gw)
}

/// Every line of `log` and its rotated files, oldest first.
fn audit_lines(dir: &Path, log: &str) -> Vec<Value> {
    let mut files: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = if name == log { Some(0) } else { name.strip_prefix(&format!("{log}.")).and_then(|n| n.parse().ok()) };
            n.map(|n| (n, e.path()))
        })
        .collect();
    files.sort_by(|a, b| b.0.cmp(&a.0));
    files.iter().flat_map(|(_, p)| std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).expect("a whole JSON line")).collect::<Vec<Value>>()).collect()
}

fn wait_for_lines(dir: &Path, log: &str, want: usize) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let lines = audit_lines(dir, log);
        if lines.len() >= want || t.elapsed() > Duration::from_secs(10) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_request_id_goes_from_the_client_to_the_answer_and_the_audit_line() {
    let (env, gw) = start("{ file: audit.log }");
    let read = json!({"match": {"type": "Person"}});
    let mine = post_with(&gw.url("/graphs/alpha/read?branch=main"), &read, &[ROOT, ("x-request-id", "trace-01J9.abc:1")]);
    assert_eq!(mine.status, 200);
    assert_eq!(mine.header("x-request-id"), Some("trace-01J9.abc:1"), "a proxied answer carries the client's id");
    let bad = post_with(&gw.url("/graphs/alpha/read"), &read, &[ROOT, ("x-request-id", "not ok; id")]);
    let generated = bad.header("x-request-id").expect("an id is always returned").to_string();
    assert!(generated.len() == 32 && generated.bytes().all(|b| b.is_ascii_hexdigit()), "a malformed id is replaced: {generated}");
    let denied = post_with(&gw.url("/graphs/alpha/change"), &json!({"ops": []}), &[("authorization", "Bearer tok-eve"), ("x-request-id", "eve-1")]);
    assert_eq!((denied.status, denied.header("x-request-id")), (403, Some("eve-1")), "the gateway's own answers carry it too");
    let unauth = call("GET", &gw.url("/graphs"), None, &[("x-request-id", "anon-1")]);
    assert_eq!((unauth.status, unauth.header("x-request-id")), (401, Some("anon-1")));

    let lines = wait_for_lines(env.path(), "audit.log", 3);
    let by_id: BTreeMap<String, &Value> = lines.iter().map(|l| (l["request_id"].as_str().unwrap().to_string(), l)).collect();
    let l = by_id.get("trace-01J9.abc:1").expect("the client's id is in the audit line");
    assert_eq!((l["actor"].as_str(), l["tenant"].as_str(), l["source"].as_str()), (Some("root"), Some("acme"), Some("static")));
    assert_eq!((l["action"].as_str(), l["branch"].as_str(), l["decision"].as_str()), (Some("read"), Some("main"), Some("allow")));
    assert_eq!(l["policies"], json!(["admins-all"]));
    assert!(l["ts"].as_str().unwrap().ends_with('Z') && l["latency_us"].is_number(), "{l}");
    assert!(by_id.contains_key(&generated));
    assert_eq!(by_id.get("eve-1").map(|l| l["decision"].as_str()), Some(Some("deny")));
}

#[test]
fn rotation_keeps_every_line_under_a_thousand_concurrent_requests() {
    let (env, gw) = start("{ file: audit.log, max_bytes: 40000, keep: 100 }");
    let gw = Arc::new(gw);
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = format!("t{t}-{i}");
                    let r = post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person"}}), &[ROOT, ("x-request-id", &id)]);
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let lines = wait_for_lines(env.path(), "audit.log", 1000);
    let ids: Vec<&str> = lines.iter().map(|l| l["request_id"].as_str().unwrap()).collect();
    let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (1000, 1000), "every decision once, none lost, none split");
    let files = std::fs::read_dir(env.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("audit.log")).count();
    assert!(files > 3, "the log was rotated: {files} files");
    drop(gw);

    // With keep: 2, exactly the newest file and two rotated ones remain.
    let (env, gw) = start("{ file: audit.log, max_bytes: 5000, keep: 2 }");
    for i in 0..200 {
        post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person"}}), &[ROOT, ("x-request-id", &format!("k{i}"))]);
    }
    let t = Instant::now();
    let names = loop {
        let mut names: Vec<String> = std::fs::read_dir(env.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.starts_with("audit.log")).collect();
        names.sort();
        if names.len() == 3 || t.elapsed() > Duration::from_secs(10) {
            break names;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
}

#[test]
fn a_log_that_cannot_be_written_flips_readyz_and_required_refuses_requests() {
    // /dev/full opens, and every write to it fails with ENOSPC.
    let (_env, gw) = start("{ file: /dev/full, required: true }");
    let read = json!({"match": {"type": "Person"}});
    let first = post_with(&gw.url("/graphs/alpha/read"), &read, &[ROOT]);
    assert_eq!(first.status, 200, "nothing has failed yet: {:?}", first.body);
    let t = Instant::now();
    let ready = loop {
        let r = call("GET", &gw.url("/readyz"), None, &[]);
        if r.status == 503 || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    assert_eq!((ready.status, ready.body["status"].as_str()), (503, Some("decision_log_failing")));
    let refused = post_with(&gw.url("/graphs/alpha/read"), &read, &[ROOT]);
    assert_eq!((refused.status, refused.body["code"].as_str()), (500, Some("internal")), "{:?}", refused.body);
    assert!(refused.body["error"].as_str().unwrap().contains("decision log"));
    let m = call("GET", &gw.url("/metrics"), None, &[ROOT]);
    assert_eq!(m.status, 500, "metrics_read is a decision too, and it cannot be logged");
}
