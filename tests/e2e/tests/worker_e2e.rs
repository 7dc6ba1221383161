//! End-to-end tests of `omnigraph-worker` run directly, as a developer would.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use omnigraph_e2e::*;
use serde_json::{json, Value};

/// The reference traversal, written independently of the worker: BFS over
/// `adj` from `start`, reporting nodes first reached at a distance in
/// [min, max]. The start node is not pre-marked, so a cycle can report it.
fn expected_hops(adj: &BTreeMap<String, BTreeSet<String>>, start: &str, min: u32, max: u32) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier = vec![start.to_string()];
    for d in 1..=max {
        let mut next = BTreeSet::new();
        for n in &frontier {
            for m in adj.get(n).into_iter().flatten() {
                if !seen.contains(m) {
                    next.insert(m.clone());
                }
            }
        }
        for m in &next {
            seen.insert(m.clone());
            if d >= min {
                out.insert(m.clone(), d);
            }
        }
        frontier = next.into_iter().collect();
    }
    out
}

fn rows_by_key(r: &Resp) -> BTreeMap<String, u32> {
    r.body["rows"].as_array().expect("rows").iter().map(|row| (row["key"].as_str().unwrap().to_string(), row["hops"].as_u64().unwrap() as u32)).collect()
}

fn snapshot(w: &Worker) -> Value {
    let r = get(&w.url("/snapshot"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

fn table_rows(snap: &Value, name: &str) -> u64 {
    snap["tables"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()["rows"].as_u64().unwrap()
}

#[test]
fn change_read_traverse_restart_and_time_travel() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "social.pg", SOCIAL_SCHEMA);
    let uri = tmp.path().join("graph");
    let mut w = Worker::start(WorkerOpts { profile: "debug", graph_id: "social", uri: &uri, init_schema: Some(&schema), key: None });

    // A 1,000-op change: 200 people and 800 distinct Knows edges.
    let mut rng = Lcg(7);
    let mut ops = Vec::new();
    for i in 0..200 {
        ops.push(json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": 20 + (i % 50)}}}));
    }
    let mut adj: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut n_edges = 0;
    while n_edges < 800 {
        let (a, b) = (format!("p{}", rng.below(200)), format!("p{}", rng.below(200)));
        if adj.entry(a.clone()).or_default().insert(b.clone()) {
            ops.push(json!({"link": {"edge": "Knows", "from": a, "to": b, "props": {}}}));
            n_edges += 1;
        }
    }
    assert_eq!(ops.len(), 1000);
    let r = post(&w.url("/change"), &json!({"ops": ops}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["affected_nodes"], 200);
    assert_eq!(r.body["affected_edges"], 800);
    assert_eq!(r.body["actor_id"], "local");
    let first_commit = r.body["commit_id"].as_str().unwrap().to_string();

    // A 3-hop traversal, against the independent BFS.
    let q = json!({"match": {"type": "Person", "key": "p0"}, "traverse": [{"edge": "Knows", "direction": "out", "min_hops": 1, "max_hops": 3}], "limit": 10000});
    let r = post(&w.url("/read"), &q);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let want = expected_hops(&adj, "p0", 1, 3);
    assert!(want.len() > 10, "the generated graph should fan out");
    assert_eq!(rows_by_key(&r), want);
    assert_eq!(r.body["row_count"].as_u64().unwrap() as usize, want.len());
    assert_eq!(r.body["commit_id"], first_commit.as_str());

    // Two one-hop steps: the second starts from the first's frontier.
    let q2 = json!({"match": {"type": "Person", "key": "p1"}, "traverse": [{"edge": "Knows"}, {"edge": "Knows"}], "limit": 10000});
    let r = post(&w.url("/read"), &q2);
    let mids: BTreeSet<String> = adj.get("p1").cloned().unwrap_or_default();
    let mut want2 = BTreeMap::new();
    for m in &mids {
        for (k, d) in expected_hops(&adj, m, 1, 1) {
            want2.insert(k, d);
        }
    }
    assert_eq!(rows_by_key(&r), want2);

    // Incoming edges: who knows p5.
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person", "key": "p5"}, "traverse": [{"edge": "Knows", "direction": "in"}], "limit": 10000}));
    let want_in: BTreeSet<String> = adj.iter().filter(|(_, v)| v.contains("p5")).map(|(k, _)| k.clone()).collect();
    assert_eq!(rows_by_key(&r).into_keys().collect::<BTreeSet<_>>(), want_in);

    let snap1 = snapshot(&w);
    assert_eq!(table_rows(&snap1, "Person"), 200);
    assert_eq!(table_rows(&snap1, "Knows"), 800);

    // A bad batch writes nothing: the first op is fine, the second is not.
    let r = post(&w.url("/change"), &json!({"ops": [
        {"upsert": {"type": "Person", "key": "new", "props": {}}},
        {"upsert": {"type": "Nope", "key": "x", "props": {}}}]}));
    assert_eq!(r.status, 400);
    assert_eq!(r.body["code"], "bad_request");
    assert!(r.body["error"].as_str().unwrap().contains("ops[1].type"), "{:?}", r.body);
    assert_eq!(snapshot(&w), snap1, "a rejected batch must not change the graph");

    // A second change: update p1, delete p2 (its edges go too).
    let p2_edges = adj.get("p2").map_or(0, |s| s.len()) + adj.iter().filter(|(k, v)| k.as_str() != "p2" && v.contains("p2")).count();
    let r = post(&w.url("/change"), &json!({"ops": [
        {"upsert": {"type": "Person", "key": "p1", "props": {"age": 99}}},
        {"delete": {"type": "Person", "key": "p2"}}]}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["affected_nodes"], 2);
    assert_eq!(r.body["affected_edges"].as_u64().unwrap() as usize, p2_edges);
    let snap2 = snapshot(&w);
    assert_eq!(table_rows(&snap2, "Person"), 199);
    assert_eq!(table_rows(&snap2, "Knows") as usize, 800 - p2_edges);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person", "key": "p1"}}));
    assert_eq!(r.body["rows"][0]["props"]["age"], 99);

    // Time travel: the first commit still has p2 and p1's old age.
    let r = post(&w.url(&format!("/read?commit={first_commit}")), &json!({"match": {"type": "Person", "key": "p1"}}));
    assert_eq!(r.body["rows"][0]["props"]["age"], 21);
    assert_eq!(r.body["commit_id"], first_commit.as_str());
    let r = post(&w.url(&format!("/read?commit={first_commit}")), &json!({"match": {"type": "Person", "key": "p2"}}));
    assert_eq!(r.body["row_count"], 1);
    let r = post(&w.url("/read?commit=01NOPE"), &json!({"match": {"type": "Person"}}));
    assert_eq!((r.status, r.body["code"].as_str()), (404, Some("not_found")));

    // Restart: SIGTERM exits cleanly, and the same data comes back.
    let status = w.proc.terminate(Duration::from_secs(20)).expect("worker exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "social", uri: &uri, init_schema: None, key: None });
    assert_eq!(snapshot(&w), snap2);
    let r = post(&w.url("/read"), &q);
    let mut adj2 = adj.clone();
    adj2.remove("p2");
    for v in adj2.values_mut() {
        v.remove("p2");
    }
    assert_eq!(rows_by_key(&r), expected_hops(&adj2, "p0", 1, 3));
    let commits = get(&w.url("/commits"));
    let list = commits.body["commits"].as_array().unwrap();
    assert_eq!(list.len(), 3, "init, the 1,000-op change, the update");
    assert_eq!(list[1]["commit_id"], first_commit.as_str(), "newest first");
    for c in list {
        for f in ["commit_id", "parents", "branch", "actor_id", "created_at", "tables"] {
            assert!(c.get(f).is_some(), "commit lacks {f}");
        }
    }
    let one = get(&w.url(&format!("/commits/{first_commit}")));
    assert_eq!(one.body["parents"][0], list[2]["commit_id"]);
    let r = post(&w.url(&format!("/read?commit={first_commit}")), &json!({"match": {"type": "Person", "key": "p2"}}));
    assert_eq!(r.body["row_count"], 1, "time travel works after a restart too");
}

#[test]
fn every_invalid_op_is_rejected_with_its_index_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "v", uri: &tmp.path().join("g"), init_schema: Some(&schema), key: None });
    let r = post(&w.url("/change"), &json!({"ops": [
        {"upsert": {"type": "Person", "key": "a", "props": {}}},
        {"upsert": {"type": "City", "key": "Oslo", "props": {"country": "NO"}}}]}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let before = snapshot(&w);
    let cases = [
        (json!({"upsert": {"type": "Robot", "key": "r", "props": {}}}), "ops[0].type"),
        (json!({"upsert": {"type": "Person", "key": "b", "props": {"height": 3}}}), "ops[0].props.height"),
        (json!({"upsert": {"type": "Person", "key": "b", "props": {"age": "old"}}}), "ops[0].props.age"),
        (json!({"upsert": {"type": "Person", "key": "b", "props": {"tags": [1]}}}), "ops[0].props.tags"),
        (json!({"upsert": {"type": "City", "key": "Rome", "props": {}}}), "ops[0].props.country"),
        (json!({"upsert": {"type": "City", "key": "Oslo", "props": {"country": null}}}), "ops[0].props.country"),
        (json!({"upsert": {"type": "Person", "props": {}}}), "ops[0]: not a valid op"),
        (json!({"upsert": {"type": "Person", "key": "", "props": {}}}), "ops[0].key"),
        (json!({"link": {"edge": "Knows", "from": "a", "to": "ghost", "props": {}}}), "ops[0].to"),
        (json!({"link": {"edge": "LivesIn", "from": "a", "to": "a", "props": {}}}), "ops[0].to"),
        (json!({"link": {"edge": "Knows", "from": "a", "to": "a", "props": {"since": "yesterday"}}}), "ops[0].props.since"),
        (json!({"link": {"edge": "Hates", "from": "a", "to": "a"}}), "ops[0].edge"),
        (json!({"unlink": {"edge": "Knows", "from": "a", "to": "a"}}), "does not exist"),
        (json!({"delete": {"type": "Person", "key": "zed"}}), "ops[0].key"),
        (json!({"explode": {}}), "ops[0]: not a valid op"),
    ];
    for (op, needle) in cases {
        let r = post(&w.url("/change"), &json!({"ops": [op]}));
        assert_eq!(r.status, 400, "{op}: {:?}", r.body);
        assert_eq!(r.body["code"], "bad_request");
        let msg = r.body["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{op}: {msg:?} lacks {needle:?}");
    }
    // Body-level mistakes.
    for (body, needle) in [
        (json!({"ops": []}), "empty"),
        (json!({"ops": [], "branch": "dev"}), "query string"),
        (json!([1]), "JSON object"),
        (json!({"opz": []}), "unknown field"),
    ] {
        let r = post(&w.url("/change"), &body);
        assert_eq!(r.status, 400);
        assert!(r.body["error"].as_str().unwrap().contains(needle), "{body}: {:?}", r.body);
    }
    let r = call("POST", &w.url("/change"), Some(b"{not json"), &[]);
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad_request")));
    assert_eq!(snapshot(&w), before, "no rejected batch changed the graph");
}

#[test]
fn queries_filter_order_page_and_resist_injection() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "q", uri: &tmp.path().join("g"), init_schema: Some(&schema), key: None });
    let mut ops: Vec<Value> = (0..30).map(|i| json!({"upsert": {"type": "Person", "key": format!("u{i:02}"), "props": {"age": i, "tags": ["t"]}}})).collect();
    ops.push(json!({"upsert": {"type": "Person", "key": "x' OR 1=1 --", "props": {}}}));
    ops.push(json!({"upsert": {"type": "Person", "key": "50%_off", "props": {"age": 5}}}));
    let r = post(&w.url("/change"), &json!({"ops": ops}));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let keys = |r: &Resp| -> Vec<String> { r.body["rows"].as_array().unwrap().iter().map(|x| x["key"].as_str().unwrap().to_string()).collect() };
    let find = |preds: Value| post(&w.url("/read"), &json!({"match": {"type": "Person", "where": preds}, "limit": 1000}));

    // Injection: the value is a literal, so it matches only itself.
    let r = find(json!([{"prop": "name", "op": "=", "value": "x' OR 1=1 --"}]));
    assert_eq!(keys(&r), vec!["x' OR 1=1 --"]);
    let r = find(json!([{"prop": "name", "op": "=", "value": "nobody' OR '1'='1"}]));
    assert_eq!(r.body["row_count"], 0);
    // LIKE wildcards in a prefix are literal.
    let r = find(json!([{"prop": "name", "op": "prefix", "value": "50%"}]));
    assert_eq!(keys(&r), vec!["50%_off"]);
    let r = find(json!([{"prop": "name", "op": "prefix", "value": "%"}]));
    assert_eq!(r.body["row_count"], 0);
    // Every operator.
    assert_eq!(find(json!([{"prop": "age", "op": ">=", "value": 28}])).body["row_count"], 2);
    assert_eq!(find(json!([{"prop": "age", "op": ">", "value": 28}])).body["row_count"], 1);
    assert_eq!(find(json!([{"prop": "age", "op": "<", "value": 2}])).body["row_count"], 2);
    assert_eq!(find(json!([{"prop": "age", "op": "<=", "value": 2}])).body["row_count"], 3);
    assert_eq!(find(json!([{"prop": "age", "op": "=", "value": 5}])).body["row_count"], 2);
    assert_eq!(find(json!([{"prop": "age", "op": "!=", "value": 5}])).body["row_count"], 29, "!= skips nulls, as SQL does");
    assert_eq!(find(json!([{"prop": "age", "op": "in", "value": [1, 2, 3]}])).body["row_count"], 3);
    assert_eq!(keys(&find(json!([{"prop": "age", "op": "is_null"}]))), vec!["x' OR 1=1 --"]);
    assert_eq!(find(json!([{"prop": "age", "op": "is_null", "value": false}])).body["row_count"], 31);
    assert_eq!(find(json!([{"prop": "age", "op": ">=", "value": 10}, {"prop": "age", "op": "<", "value": 12}])).body["row_count"], 2);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person", "key": "u03", "where": [{"prop": "age", "op": "=", "value": 3}]}}));
    assert_eq!(keys(&r), vec!["u03"]);
    let r = find(json!([{"prop": "age", "op": "~", "value": 1}]));
    assert_eq!(r.status, 400);

    // order_by, return, limit and cursor paging.
    let q = json!({"match": {"type": "Person", "where": [{"prop": "age", "op": ">=", "value": 0}]}, "order_by": [{"prop": "age", "desc": true}], "return": ["age"], "limit": 7});
    let mut seen = Vec::new();
    let mut body = q.clone();
    let r = post(&w.url("/read"), &body);
    assert_eq!(r.body["rows"][0]["props"], json!({"age": 29}));
    // A change between pages does not disturb the pages: the cursor pins the commit.
    post(&w.url("/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": "late", "props": {"age": 100}}}]}));
    let mut r = r;
    loop {
        seen.extend(r.body["rows"].as_array().unwrap().iter().map(|x| x["props"]["age"].as_i64().unwrap()));
        let Some(c) = r.body["next_cursor"].as_str() else { break };
        body["cursor"] = json!(c);
        r = post(&w.url("/read"), &body);
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let mut want: Vec<i64> = (0..30).chain([5]).collect();
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, want);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person"}, "cursor": "garbage"}));
    assert_eq!(r.status, 400);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person"}, "limit": 0}));
    assert_eq!(r.status, 400);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person"}, "return": ["shoe_size"]}));
    assert_eq!(r.status, 400);
    let r = post(&w.url("/read"), &json!({"match": {"type": "Person"}, "traverse": [{"edge": "Knows", "max_hops": 99}]}));
    assert_eq!(r.status, 400);
}

#[test]
fn routes_branches_and_errors_follow_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "r", uri: &tmp.path().join("g"), init_schema: Some(&schema), key: None });
    let h = get(&w.url("/healthz"));
    assert_eq!((h.status, &h.body["status"], &h.body["graph_id"]), (200, &json!("ok"), &json!("r")));
    assert!(h.body["version"].is_string());
    let s = get(&w.url("/schema"));
    assert_eq!(s.body, Value::String(SOCIAL_SCHEMA.to_string()));
    let r = call("POST", &w.url("/schema/apply"), Some(b"{}"), &[]);
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad_request")), "{{}} is not a .pg schema: {:?}", r.body);
    let r = call("POST", &w.url("/ingest"), Some(b"{}"), &[]);
    assert_eq!((r.status, &r.body["details"]), (400, &json!({"line": 1})), "{{}} is neither a node nor an edge: {:?}", r.body);
    let r = call("POST", &w.url("/export"), None, &[]);
    assert_eq!((r.status, r.header("content-type"), &r.body), (200, Some("application/x-ndjson"), &json!("")), "an empty graph exports nothing");
    // The branch routes, in the contract's shapes.
    let main_head = get(&w.url("/snapshot")).body["commit_id"].clone();
    for (method, path, status, body) in [
        ("GET", "/branches", 200, json!({"branches": [{"name": "main", "head": main_head}]})),
        ("POST", "/branches?branch=dev", 201, json!({"name": "dev", "head": main_head, "from": "main"})),
        ("POST", "/branches/merge?branch=dev&target=main", 200, json!({"result": "already_up_to_date", "commit_id": main_head})),
        ("DELETE", "/branches/dev", 200, json!({"name": "dev", "deleted": true})),
    ] {
        let r = call(method, &w.url(path), None, &[]);
        assert_eq!((r.status, &r.body), (status, &body), "{method} {path}");
    }
    for (method, path, status, code) in [
        ("POST", "/branches/merge?branch=a&target=main", 404, "not_found"),
        ("DELETE", "/branches/main", 400, "bad_request"),
        ("POST", "/branches?branch=main", 409, "conflict"),
        ("POST", "/change?if_commit=01NOTTHEHEAD", 412, "precondition_failed"),
    ] {
        let r = call(method, &w.url(path), Some(br#"{"ops": [{"upsert": {"type": "Person", "key": "x", "props": {}}}]}"#), &[]);
        assert_eq!((r.status, r.body["code"].as_str()), (status, Some(code)), "{method} {path}: {:?}", r.body);
    }
    assert_eq!(get(&w.url("/nowhere")).body["code"], "not_found");
    assert_eq!(get(&w.url("/nowhere")).status, 404);
    assert_eq!(get(&w.url("/snapshot?branch=main")).status, 200);
    let r = get(&w.url("/snapshot?branch=dev"));
    assert_eq!((r.status, r.body["code"].as_str()), (404, Some("not_found")));
    let r = get(&w.url("/snapshot?branch=a..b"));
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad_request")));
    let r = get(&w.url("/snapshot?brnach=main"));
    assert_eq!(r.status, 400, "a misspelt parameter is an error, not main");
    let r = get(&w.url("/commits/NOPE"));
    assert_eq!(r.status, 404);
    // Over the body limit: 413 with the JSON body.
    let big = vec![b' '; 16 * 1024 * 1024 + 1];
    let r = call("POST", &w.url("/change"), Some(&big), &[]);
    assert_eq!((r.status, r.body["code"].as_str()), (413, Some("payload_too_large")));
}

#[test]
fn actor_is_trusted_only_with_the_worker_key() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "a", uri: &tmp.path().join("g"), init_schema: Some(&schema), key: Some("k-123") });
    let op = |k: &str| json!({"ops": [{"upsert": {"type": "Person", "key": k, "props": {}}}]});
    let keyed = [("x-omnigraph-worker-key", "k-123"), ("x-omnigraph-actor", "alice")];
    let r = post_with(&w.url("/change"), &op("a"), &keyed);
    assert_eq!(r.body["actor_id"], "alice");
    // A wrong key or no key is refused outright (see worker_security_e2e.rs for the rest).
    let r = post_with(&w.url("/change"), &op("b"), &[("x-omnigraph-worker-key", "k-124"), ("x-omnigraph-actor", "mallory")]);
    assert_eq!((r.status, r.body["code"].as_str()), (401, Some("unauthorized")));
    let r = post_with(&w.url("/change"), &op("c"), &[("x-omnigraph-actor", "mallory"), ("x-actor-id", "mallory")]);
    assert_eq!((r.status, r.body["code"].as_str()), (401, Some("unauthorized")));
    let commits = call("GET", &w.url("/commits"), None, &keyed).body;
    let actors: Vec<&str> = commits["commits"].as_array().unwrap().iter().map(|c| c["actor_id"].as_str().unwrap()).collect();
    assert_eq!(actors, vec!["alice", "local"]);
    drop(w);

    // A worker started without a key trusts no actor header at all.
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "a", uri: &tmp.path().join("g"), init_schema: None, key: None });
    let r = post_with(&w.url("/change"), &op("d"), &[("x-omnigraph-worker-key", ""), ("x-omnigraph-actor", "alice")]);
    assert_eq!(r.body["actor_id"], "local");
}

#[test]
fn init_refuses_non_empty_and_serve_refuses_a_non_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let occupied = tmp.path().join("occupied");
    let precious = write_file(&occupied, "precious.txt", "keep me");
    let run = |args: &[&std::ffi::OsStr]| std::process::Command::new(bin("omnigraph-worker")).args(args).output().unwrap();
    let out = run(&["serve".as_ref(), "--graph-id".as_ref(), "x".as_ref(), "--uri".as_ref(), occupied.as_os_str(), "--listen".as_ref(), "127.0.0.1:0".as_ref(), "--init".as_ref(), "--schema".as_ref(), schema.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1, "nothing was added");

    let empty = tmp.path().join("empty");
    let out = run(&["serve".as_ref(), "--graph-id".as_ref(), "x".as_ref(), "--uri".as_ref(), empty.as_os_str(), "--listen".as_ref(), "127.0.0.1:0".as_ref()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--init"), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = write_file(tmp.path(), "bad.pg", "node Person {\n  name: Strin @key\n}\n");
    let out = run(&["serve".as_ref(), "--graph-id".as_ref(), "x".as_ref(), "--uri".as_ref(), tmp.path().join("new").as_os_str(), "--listen".as_ref(), "127.0.0.1:0".as_ref(), "--init".as_ref(), "--schema".as_ref(), bad.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.pg:2:9: unknown type"), "{err}");
    assert!(!tmp.path().join("new").exists(), "a bad schema creates nothing");

    let out = run(&["serve".as_ref(), "--graph-id".as_ref(), "Bad_Id".as_ref(), "--uri".as_ref(), empty.as_os_str()]);
    assert!(!out.status.success());
}

#[test]
fn serves_on_a_unix_socket_and_refuses_overlong_socket_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let long = tmp.path().join("x".repeat(120)).join("w.sock");
    let out = std::process::Command::new(bin("omnigraph-worker"))
        .args(["serve", "--graph-id", "u", "--uri"])
        .arg(tmp.path().join("g"))
        .arg("--socket")
        .arg(&long)
        .args(["--init", "--schema"])
        .arg(&schema)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 107"), "{}", String::from_utf8_lossy(&out.stderr));

    let sock = tmp.path().join("w.sock");
    let mut cmd = std::process::Command::new(bin("omnigraph-worker"));
    cmd.args(["serve", "--graph-id", "u", "--uri"]).arg(tmp.path().join("g")).arg("--socket").arg(&sock).args(["--init", "--schema"]).arg(&schema);
    let (mut p, line) = Proc::spawn(cmd, "listening on unix:", Duration::from_secs(120));
    assert!(line.ends_with(sock.to_str().unwrap()));
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: w\r\nconnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"graph_id\":\"u\""));
    assert!(p.terminate(Duration::from_secs(20)).unwrap().success());
    assert!(!sock.exists(), "the socket is removed on exit");
}
