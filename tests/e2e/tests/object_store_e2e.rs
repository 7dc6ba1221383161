//! Graphs on S3-compatible object storage (issue 12), end to end: a real S3
//! server on loopback (`moto_server`), the real gateway and workers. A graph
//! on `s3://` keeps every acknowledged write across a worker kill and a
//! gateway restart; `POST /graphs` creates graphs only under
//! `server.object_store.roots`, and a purge deletes exactly the graph's
//! prefix, nothing beside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use omnigraph_e2e::s3::S3Server;
use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
const BUCKET: &str = "og-graphs";

/// An S3 server on loopback with the tests' bucket.
fn s3_with_bucket() -> S3Server {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    s3
}

/// The sample graph's `.pg` schema file.
fn social_schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/social.pg")
}

fn start(env: &ConfigDir, s3: &S3Server) -> Gateway {
    let vars = s3.env();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.start_env(&pairs)
}

fn upsert(gw: &Gateway, graph: &str, key: &str, age: i64) -> Resp {
    post_with(&gw.url(&format!("/graphs/{graph}/change")), &json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {"age": age}}}]}), &[ROOT])
}

fn ages(gw: &Gateway, graph: &str) -> Vec<(String, i64)> {
    let r = post_with(&gw.url(&format!("/graphs/{graph}/read")), &json!({"match": {"type": "Person"}, "limit": 10000}), &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut out: Vec<(String, i64)> =
        r.body["rows"].as_array().expect("rows").iter().map(|row| (row["key"].as_str().unwrap_or("").to_string(), row["props"]["age"].as_i64().unwrap_or(-1))).collect();
    out.sort();
    out
}

/// Waits until `graph` answers reads through `gw` again.
fn wait_serving(gw: &Gateway, graph: &str) {
    let ok = eventually(Duration::from_secs(120), || {
        post_with(&gw.url(&format!("/graphs/{graph}/read")), &json!({"match": {"type": "Person", "key": "nobody"}}), &[ROOT]).status == 200
    });
    assert!(ok, "{graph} did not serve again");
}

#[test]
fn a_graph_on_s3_keeps_every_acknowledged_write_across_a_worker_kill_and_a_gateway_restart() {
    let s3 = s3_with_bucket();
    let graphs = format!("  alpha:\n    uri: s3://{BUCKET}/graphs/alpha\n    schema: {{ file: s.pg }}\n");
    let env = ConfigDir::with(&s3.server_yaml(&[&format!("s3://{BUCKET}/graphs")]), "", &[ROOT_TOKEN], &graphs);
    let mut gw = start(&env, &s3);

    let mut acked: Vec<(String, i64)> = Vec::new();
    for i in 0..10 {
        let key = format!("p{i:02}");
        let r = upsert(&gw, "alpha", &key, i);
        assert_eq!(r.status, 200, "{:?}", r.body);
        acked.push((key, i));
    }
    assert_eq!(ages(&gw, "alpha"), acked);
    // The data is on the object store, and nowhere under the config folder.
    let keys = s3.keys(BUCKET, "graphs/alpha/");
    assert!(keys.iter().any(|k| k.starts_with("graphs/alpha/_commits.lance/")), "{keys:?}");
    assert!(keys.iter().any(|k| k == "graphs/alpha/_schema.pg"), "{keys:?}");
    assert!(!env.path().join("data").exists(), "nothing may be written locally for an s3:// graph");

    // kill -9 the worker: the supervisor restarts it, and it reopens the graph from S3.
    let pid = gw.worker_pid("alpha").expect("alpha's worker");
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    assert!(eventually(Duration::from_secs(60), || gw.worker_pid("alpha").is_some_and(|p| p != pid)), "the worker was not restarted");
    wait_serving(&gw, "alpha");
    assert_eq!(ages(&gw, "alpha"), acked, "a write acknowledged before the kill is missing");
    for i in 10..15 {
        let key = format!("p{i:02}");
        assert_eq!(upsert(&gw, "alpha", &key, i).status, 200);
        acked.push((key, i));
    }

    // A gateway restart reopens the graph from the config and the object store.
    assert!(gw.proc.terminate(Duration::from_secs(30)).is_some(), "the gateway did not stop");
    gw = start(&env, &s3);
    wait_serving(&gw, "alpha");
    assert_eq!(ages(&gw, "alpha"), acked, "a write acknowledged before the restart is missing");
    // An overwrite after the restart lands on top of the reopened history.
    assert_eq!(upsert(&gw, "alpha", "p00", 99).status, 200);
    acked[0].1 = 99;
    assert_eq!(ages(&gw, "alpha"), acked);
}

fn create(gw: &Gateway, id: &str, uri: &str) -> Resp {
    let schema = std::fs::read_to_string(social_schema()).expect("schema");
    post_with(&gw.url("/graphs"), &json!({"graph_id": id, "uri": uri, "schema": {"source": schema}}), &[ROOT])
}


fn code(r: &Resp) -> &str {
    r.body["error"]["code"].as_str().or_else(|| r.body["code"].as_str()).unwrap_or("")
}

#[test]
fn post_graphs_creates_on_s3_only_under_the_roots_and_a_purge_deletes_exactly_the_prefix() {
    let s3 = s3_with_bucket();
    s3.create_bucket("elsewhere");
    let root = format!("s3://{BUCKET}/tenants");
    let env = ConfigDir::with(&s3.server_yaml(&[&root]), "", &[ROOT_TOKEN], "");
    let gw = start(&env, &s3);

    // Objects beside the graph's prefix that a purge must never touch.
    s3.put(BUCKET, "tenants/alpha-keep/x", b"keep");
    s3.put(BUCKET, "tenants/alphax", b"keep");
    s3.put(BUCKET, "tenants/full/x", b"someone's data");

    let r = create(&gw, "alpha", &format!("{root}/alpha"));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["uri"], json!(format!("{root}/alpha")));
    assert!(env.yaml().contains(&format!("uri: {root}/alpha")), "{}", env.yaml());
    assert_eq!(upsert(&gw, "alpha", "ann", 40).status, 200);
    assert_eq!(ages(&gw, "alpha"), vec![("ann".to_string(), 40)]);

    // Refused, each with a stable code, and nothing written for any of them.
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("outside the roots", "s3://elsewhere/g".into(), 400, "bad_request"),
        ("the root itself", root.clone(), 400, "bad_request"),
        ("a whole bucket", format!("s3://{BUCKET}"), 400, "bad_request"),
        ("a dot-dot escape", format!("{root}/../other"), 400, "bad_request"),
        ("a doubled slash", format!("{root}//x"), 400, "bad_request"),
        ("a trailing slash", format!("{root}/y/"), 400, "bad_request"),
        ("percent escapes", format!("{root}/a%2Fb"), 400, "bad_request"),
        ("another scheme", "gs://b/a".into(), 400, "bad_request"),
        ("a prefix with data", format!("{root}/full"), 409, "conflict"),
        ("inside another graph", format!("{root}/alpha/inner"), 409, "conflict"),
    ];
    for (i, (what, uri, status, want)) in cases.iter().enumerate() {
        let r = create(&gw, &format!("bad{i}"), uri);
        assert_eq!((r.status, code(&r)), (*status, *want), "{what}: {:?}", r.body);
    }
    assert!(s3.keys("elsewhere", "").is_empty(), "a refused create wrote objects");
    assert_eq!(s3.keys(BUCKET, "tenants/full/"), vec!["tenants/full/x".to_string()]);
    assert!(!env.yaml().contains("bad"), "a refused create reached the config: {}", env.yaml());

    // DELETE ?purge=true: the graph's objects are gone, its neighbours stay.
    assert!(!s3.keys(BUCKET, "tenants/alpha/").is_empty());
    let r = call("DELETE", &gw.url("/graphs/alpha?purge=true"), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["purged"], json!(true));
    assert!(s3.keys(BUCKET, "tenants/alpha/").is_empty(), "{:?}", s3.keys(BUCKET, "tenants/alpha/"));
    let mut left = s3.keys(BUCKET, "tenants/");
    left.sort();
    assert_eq!(left, vec!["tenants/alpha-keep/x", "tenants/alphax", "tenants/full/x"]);

    // The same id and prefix can be created again, empty.
    let r = create(&gw, "alpha", &format!("{root}/alpha"));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(ages(&gw, "alpha"), Vec::<(String, i64)>::new());
    let _: Value = r.body;
}

#[test]
fn a_failed_create_on_s3_leaves_the_prefix_empty() {
    let s3 = s3_with_bucket();
    let root = format!("s3://{BUCKET}/t");
    let env = ConfigDir::with(&s3.server_yaml(&[&root]), "", &[ROOT_TOKEN], "");
    let gw = start(&env, &s3);
    // The config file is edited by hand behind the gateway's back: the create
    // gets as far as a running worker that initialised the graph on S3, then
    // its config rewrite sees the drift and fails. Everything it wrote goes.
    let yaml = env.yaml();
    std::fs::write(&env.cfg, format!("{yaml}# edited by hand\n")).expect("edit config");
    let r = create(&gw, "beta", &format!("{root}/beta"));
    assert_eq!((r.status, code(&r)), (503, "config_drift"), "{:?}", r.body);
    assert!(s3.keys(BUCKET, "t/").is_empty(), "left behind: {:?}", s3.keys(BUCKET, "t/"));
    assert!(!env.yaml().contains("beta"));
    assert_eq!(call("GET", &gw.url("/graphs/beta"), None, &[ROOT]).status, 404);
}

#[test]
fn without_credentials_a_create_on_s3_fails_cleanly() {
    let s3 = s3_with_bucket();
    let root = format!("s3://{BUCKET}/t");
    let env = ConfigDir::with(&s3.server_yaml(&[&root]), "", &[ROOT_TOKEN], "");
    let gw = env.start();
    let r = create(&gw, "beta", &format!("{root}/beta"));
    assert_eq!((r.status, code(&r)), (500, "internal"), "{:?}", r.body);
    // The client learns nothing of the credential chain; the log has it.
    assert!(!r.body.to_string().contains("IMDS"), "{:?}", r.body);
    assert!(s3.keys(BUCKET, "t/").is_empty());
    assert!(!env.yaml().contains("beta"));
}

#[test]
fn a_gateway_refuses_a_bad_object_store_config_at_start() {
    for (what, server, graphs) in [
        ("plain http without allow_http", "  object_store:\n    endpoint: http://127.0.0.1:9\n", ""),
        ("a root that names a bucket", "  object_store:\n    roots: [s3://bkt]\n", ""),
        ("an unknown key", "  object_store:\n    secret_key: x\n", ""),
        ("credentials in the endpoint", "  object_store:\n    endpoint: https://AKIA:hunter2@s3.example.com\n", ""),
        ("a graph URI with a dot-dot", "", "  a:\n    uri: s3://bkt/x/../y\n"),
    ] {
        let env = ConfigDir::with(server, "", &[ROOT_TOKEN], graphs);
        let out = std::process::Command::new(bin("omnigraph-gateway")).args(["serve", "--config"]).arg(&env.cfg).args(["--bind", "127.0.0.1:0"]).output().expect("run gateway");
        assert!(!out.status.success(), "{what}: the gateway started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("object_store") || err.contains("s3://"), "{what}: {err}");
        assert!(!err.contains("hunter2"), "{what}: a secret was echoed: {err}");
    }
}

fn s3_worker(s3: &S3Server, uri: &str, init: Option<&Path>) -> Worker {
    s3.worker("debug", "solo", uri, init)
}

fn worker_upsert(w: &Worker, key: &str) -> Resp {
    post(&w.url("/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {"age": 1}}}]}))
}

fn worker_keys(w: &Worker) -> Vec<String> {
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person"}, "limit": 10000}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut keys: Vec<String> = r.body["rows"].as_array().expect("rows").iter().map(|row| row["key"].as_str().unwrap_or("").to_string()).collect();
    keys.sort();
    keys
}

#[test]
fn a_second_worker_on_the_same_s3_graph_takes_it_over_and_the_first_stops_writing() {
    let s3 = s3_with_bucket();
    let uri = format!("s3://{BUCKET}/solo");
    let schema = social_schema();
    let mut first = s3_worker(&s3, &uri, Some(&schema));
    for k in ["a", "b", "c"] {
        assert_eq!(worker_upsert(&first, k).status, 200);
    }
    // A second worker on the same graph (another host, a developer's shell):
    // it claims the next writer epoch with a create-if-absent PUT.
    let before = s3.keys(BUCKET, "solo/_writers/");
    assert_eq!(before.len(), 1, "{before:?}");
    let second = s3_worker(&s3, &uri, None);
    // The second claim is newer, and the first one is gone with it.
    let claims = s3.keys(BUCKET, "solo/_writers/");
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert!(claims[0] > before[0], "{claims:?} after {before:?}");
    // The first worker refuses its next write, writes nothing, and shuts down.
    let r = worker_upsert(&first, "lost");
    assert_eq!((r.status, code(&r)), (503, "worker_unavailable"), "{:?}", r.body);
    assert!(first.proc.wait_for(Duration::from_secs(30)).is_some(), "the replaced worker kept running");
    // The second has every write the first acknowledged, and writes on.
    assert_eq!(worker_keys(&second), vec!["a", "b", "c"]);
    assert_eq!(worker_upsert(&second, "d").status, 200);
    assert_eq!(worker_keys(&second), vec!["a", "b", "c", "d"]);
}

#[test]
fn workers_racing_to_open_one_s3_graph_get_distinct_epochs() {
    let s3 = s3_with_bucket();
    let uri = format!("s3://{BUCKET}/race");
    let schema = social_schema();
    drop(s3_worker(&s3, &uri, Some(&schema)));
    let (s3r, u) = (&s3, uri.as_str());
    let workers: Vec<Worker> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(move || s3_worker(s3r, u, None))).collect();
        hs.into_iter().map(|h| h.join().expect("worker")).collect()
    });
    // Exactly one of the four may write: the newest claim.
    let ok: Vec<u16> = workers.iter().enumerate().map(|(i, w)| worker_upsert(w, &format!("k{i}")).status).collect();
    assert_eq!(ok.iter().filter(|s| **s == 200).count(), 1, "{ok:?}");
    assert_eq!(ok.iter().filter(|s| **s == 503).count(), 3, "{ok:?}");
}

#[test]
fn a_worker_left_running_on_a_purged_and_recreated_s3_graph_is_still_fenced() {
    let s3 = s3_with_bucket();
    let uri = format!("s3://{BUCKET}/again");
    let schema = social_schema();
    let mut stale = s3_worker(&s3, &uri, Some(&schema));
    assert_eq!(worker_upsert(&stale, "old").status, 200);
    // The prefix is purged (its writer claims with it) and a new graph made there.
    let out = std::process::Command::new(bin("omnigraph-worker"))
        .args(["storage", "purge", "--uri", &uri])
        .envs(s3.worker_env())
        .output()
        .expect("purge");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = s3_worker(&s3, &uri, Some(&schema));
    // Epochs keep rising across the purge: the stale worker writes nothing into the new graph.
    let r = worker_upsert(&stale, "ghost");
    assert_eq!((r.status, code(&r)), (503, "worker_unavailable"), "{:?}", r.body);
    assert!(stale.proc.wait_for(Duration::from_secs(30)).is_some());
    assert_eq!(worker_keys(&fresh), Vec::<String>::new());
}

#[test]
fn a_create_whose_worker_fails_before_it_is_ready_leaves_the_prefix_empty() {
    let s3 = s3_with_bucket();
    let root = format!("s3://{BUCKET}/slow");
    let env = ConfigDir::with(&s3.server_yaml(&[&root]), "", &[ROOT_TOKEN], "");
    // Workers must be ready within 300 ms: a new graph's worker has written
    // part of the graph to S3 by then, and is stopped.
    let mut vars: Vec<(&str, String)> = s3.env();
    vars.push(("OMNIGRAPH_WORKER_READY_TIMEOUT_MS", "300".into()));
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = env.start_env(&pairs);
    let r = create(&gw, "gamma", &format!("{root}/gamma"));
    assert_eq!((r.status, code(&r)), (500, "internal"), "{:?}", r.body);
    assert!(s3.keys(BUCKET, "slow/").is_empty(), "left behind: {:?}", s3.keys(BUCKET, "slow/"));
    assert!(!env.yaml().contains("gamma"));
}

#[test]
fn init_on_a_prefix_that_is_not_empty_exits_with_the_not_empty_code_and_writes_nothing() {
    let s3 = s3_with_bucket();
    s3.put(BUCKET, "taken/someone.txt", b"x");
    let schema = social_schema();
    let out = std::process::Command::new(bin("omnigraph-worker"))
        .args(["serve", "--graph-id", "t", "--uri", &format!("s3://{BUCKET}/taken"), "--listen", "127.0.0.1:0", "--init", "--schema"])
        .arg(&schema)
        .envs(s3.worker_env())
        .output()
        .expect("run worker");
    assert_eq!(out.status.code(), Some(omnigraph_contract::headers::EXIT_NOT_EMPTY), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s3.keys(BUCKET, "taken/"), vec!["taken/someone.txt"]);
}
