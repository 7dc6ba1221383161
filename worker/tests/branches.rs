//! Branches through the real router: create, list, delete, writes that stay
//! on their branch (checked after a restart, so against what Lance holds and
//! not only the in-memory state), and `?if_commit=` under a race.

mod common;

use std::sync::Arc;

use common::*;
use omnigraph_worker::store::{Author, Store};
use serde_json::json;

async fn fresh() -> (tempfile::TempDir, String, Arc<Store>) {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g").to_str().unwrap().to_string();
    let store = Arc::new(Store::init("g", &uri, SCHEMA, "test").await.unwrap());
    (tmp, uri, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_are_created_listed_isolated_and_survive_a_restart() {
    let (_tmp, uri, store) = fresh().await;
    let base = apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "a", "props": {"age": 1}}}])).await;
    let addr = serve(store.clone()).await;

    let (status, body) = call(addr, "POST", "/branches?branch=dev", "").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, json!({"name": "dev", "head": base, "from": "main"}));
    let (status, body) = call(addr, "POST", "/branches?branch=dev", "").await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")), "{body}");
    let (status, body) = call(addr, "POST", "/branches?branch=x&from=ghost", "").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    for bad in ["/branches", "/branches?branch=a..b", "/branches?branch=main", "/branches?branch=b&from=a..b"] {
        let (status, body) = call(addr, "POST", bad, "").await;
        assert!(status == 400 || (bad.ends_with("=main") && status == 409), "{bad}: {status} {body}");
    }
    let (status, body) = call(addr, "POST", "/branches?branch=feature/x.1&from=dev", "").await;
    assert_eq!(status, 201, "{body}");

    // A change on dev stays on dev.
    let (status, body) = call(addr, "POST", "/change?branch=dev", &upsert_body("b", json!({"age": 2}))).await;
    assert_eq!(status, 200, "{body}");
    let dev_head = body["commit_id"].as_str().unwrap().to_string();
    let (status, body) = call(addr, "POST", "/change?branch=main", &upsert_body("m", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let main_head = body["commit_id"].as_str().unwrap().to_string();
    assert_eq!(people(&store, "main").keys().collect::<Vec<_>>(), ["a", "m"]);
    assert_eq!(people(&store, "dev").keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(people(&store, "feature/x.1").keys().collect::<Vec<_>>(), ["a"]);

    let (_, body) = call(addr, "GET", "/branches", "").await;
    let expect = json!({"branches": [
        {"name": "dev", "head": dev_head},
        {"name": "feature/x.1", "head": base},
        {"name": "main", "head": main_head},
    ]});
    assert_eq!(body, expect, "sorted by name");
    let (status, body) = call(addr, "GET", "/snapshot?branch=dev", "").await;
    assert_eq!((status, body["commit_id"].as_str(), body["branch"].as_str()), (200, Some(dev_head.as_str()), Some("dev")));
    let (_, body) = call(addr, "POST", "/read?branch=dev", r#"{"match": {"type": "Person", "key": "b"}}"#).await;
    assert_eq!(body["row_count"], 1, "{body}");
    let (_, body) = call(addr, "POST", "/read", r#"{"match": {"type": "Person", "key": "b"}}"#).await;
    assert_eq!(body["row_count"], 0, "{body}");
    let (status, _) = call(addr, "GET", &format!("/commits/{dev_head}?branch=dev"), "").await;
    assert_eq!(status, 200);
    let (status, _) = call(addr, "GET", &format!("/commits/{dev_head}?branch=main"), "").await;
    assert_eq!(status, 404, "a dev commit is not on main");
    let (status, body) = call(addr, "POST", &format!("/read?branch=main&commit={dev_head}"), r#"{"match": {"type": "Person"}}"#).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    for (method, path) in [("GET", "/snapshot?branch=ghost"), ("GET", "/commits?branch=ghost"), ("POST", "/change?branch=ghost"), ("POST", "/read?branch=ghost")] {
        let body = if method == "POST" && path.starts_with("/change") { upsert_body("z", json!({})) } else { r#"{"match": {"type": "Person"}}"#.to_string() };
        let (status, resp) = call(addr, method, path, &body).await;
        assert_eq!((status, resp["code"].as_str()), (404, Some("not_found")), "{method} {path}");
    }

    // After a restart: the same branches, heads and rows, read back from Lance.
    drop(store);
    let store = Store::open("g", &uri).await.unwrap();
    let names: Vec<(String, String)> = store.branches();
    assert_eq!(names, vec![("dev".into(), dev_head.clone()), ("feature/x.1".into(), base.clone()), ("main".into(), main_head.clone())]);
    assert_eq!(people(&store, "main").keys().collect::<Vec<_>>(), ["a", "m"]);
    assert_eq!(people(&store, "dev").keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(people(&store, "feature/x.1").keys().collect::<Vec<_>>(), ["a"]);
}

/// The Lance hazard (`tests/lance_facts.rs`): two branches writing one table
/// in turns, through a fast-forward that makes them share a lineage. Each
/// must read back exactly its own rows from Lance after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_writes_on_two_branches_never_leak() {
    let (_tmp, uri, store) = fresh().await;
    apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "a", "props": {}}}])).await;
    store.create_branch("dev", "main", &Author::new("t")).await.unwrap();
    apply(&store, "dev", json!([{"upsert": {"type": "Person", "key": "d1", "props": {}}}])).await;
    // main fast-forwards to dev: both now pin dev's lineage of Person.
    store.merge("dev", "main", false, &Author::new("t")).await.unwrap();
    assert_eq!(store.head("main").unwrap().commit.commit_id, store.head("dev").unwrap().commit.commit_id);
    let dev_lineage = store.head("dev").unwrap().commit.tables.get("Person").unwrap().lineage.clone();
    assert!(dev_lineage.is_some(), "dev's first write forked Person");
    for i in 0..3 {
        apply(&store, "main", json!([{"upsert": {"type": "Person", "key": format!("m{i}"), "props": {}}}])).await;
        let mut ops = vec![json!({"upsert": {"type": "Person", "key": format!("d{}", i + 2), "props": {}}})];
        if i == 0 {
            ops.push(json!({"delete": {"type": "Person", "key": "a"}}));
        }
        apply(&store, "dev", json!(ops)).await;
    }
    // main does not own dev's lineage, so its first write after the fast-forward forked its own.
    let main_lineage = store.head("main").unwrap().commit.tables.get("Person").unwrap().lineage.clone();
    assert!(main_lineage.is_some() && main_lineage != dev_lineage, "{main_lineage:?} {dev_lineage:?}");
    assert_eq!(store.head("dev").unwrap().commit.tables.get("Person").unwrap().lineage, dev_lineage, "dev extends its own");
    let expect_main = ["a", "d1", "m0", "m1", "m2"];
    let expect_dev = ["d1", "d2", "d3", "d4"];
    assert_eq!(people(&store, "main").keys().collect::<Vec<_>>(), expect_main);
    assert_eq!(people(&store, "dev").keys().collect::<Vec<_>>(), expect_dev);
    drop(store);
    let store = Store::open("g", &uri).await.unwrap();
    assert_eq!(people(&store, "main").keys().collect::<Vec<_>>(), expect_main, "main, read back from Lance");
    assert_eq!(people(&store, "dev").keys().collect::<Vec<_>>(), expect_dev, "dev, read back from Lance");
    // And the lineages keep extending correctly after the restart.
    apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "m3", "props": {}}}])).await;
    apply(&store, "dev", json!([{"upsert": {"type": "Person", "key": "d5", "props": {}}}])).await;
    drop(store);
    let store = Store::open("g", &uri).await.unwrap();
    assert_eq!(people(&store, "main").len(), 6);
    assert_eq!(people(&store, "dev").len(), 5);
    assert!(!people(&store, "main").contains_key("d5") && !people(&store, "dev").contains_key("m3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_branch_and_making_it_again() {
    let (_tmp, uri, store) = fresh().await;
    let addr = serve(store.clone()).await;
    assert_eq!(call(addr, "POST", "/branches?branch=dev", "").await.0, 201);
    assert_eq!(call(addr, "POST", "/change?branch=dev", &upsert_body("old", json!({}))).await.0, 200);
    let (status, body) = call(addr, "DELETE", "/branches/dev", "").await;
    assert_eq!((status, body), (200, json!({"name": "dev", "deleted": true})));
    let (status, body) = call(addr, "DELETE", "/branches/dev", "").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = call(addr, "DELETE", "/branches/main", "").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, _) = call(addr, "GET", "/snapshot?branch=dev", "").await;
    assert_eq!(status, 404);
    // A new dev starts from main, without the old dev's rows, and writes on its own.
    assert_eq!(call(addr, "POST", "/branches?branch=dev", "").await.0, 201);
    assert_eq!(call(addr, "POST", "/change?branch=dev", &upsert_body("new", json!({}))).await.0, 200);
    assert_eq!(people(&store, "dev").keys().collect::<Vec<_>>(), ["new"]);
    drop(store);
    let store = Store::open("g", &uri).await.unwrap();
    assert_eq!(store.branches().len(), 2);
    assert_eq!(people(&store, "dev").keys().collect::<Vec<_>>(), ["new"]);
    assert!(people(&store, "main").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_commit_lets_exactly_one_of_two_racing_changes_through() {
    let (_tmp, _uri, store) = fresh().await;
    let head = store.head("main").unwrap().commit.commit_id.to_string();
    let addr = serve(store.clone()).await;
    let path = format!("/change?if_commit={head}");
    let (body_a, body_b) = (upsert_body("a", json!({})), upsert_body("b", json!({})));
    let (a, b) = tokio::join!(call(addr, "POST", &path, &body_a), call(addr, "POST", &path, &body_b));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{a:?} {b:?}");
    let failed = if a.0 == 412 { &a.1 } else { &b.1 };
    assert_eq!(failed["code"], "precondition_failed");
    assert_eq!(people(&store, "main").len(), 1, "the refused change wrote nothing");
    assert_eq!(store.commits("main").unwrap().len(), 2);
    // The current head passes; an unknown id or another branch's head does not.
    let now = store.head("main").unwrap().commit.commit_id.to_string();
    assert_eq!(call(addr, "POST", &format!("/change?if_commit={now}"), &upsert_body("c", json!({}))).await.0, 200);
    assert_eq!(call(addr, "POST", "/change?if_commit=01NOPE", &upsert_body("d", json!({}))).await.0, 412);
    store.create_branch("dev", "main", &Author::new("t")).await.unwrap();
    apply(&store, "dev", json!([{"upsert": {"type": "Person", "key": "x", "props": {}}}])).await;
    let dev = store.head("dev").unwrap().commit.commit_id.to_string();
    assert_eq!(call(addr, "POST", &format!("/change?if_commit={dev}"), &upsert_body("e", json!({}))).await.0, 412);
    assert_eq!(call(addr, "POST", &format!("/change?branch=dev&if_commit={dev}"), &upsert_body("e", json!({}))).await.0, 200);
    let (status, _) = call(addr, "POST", "/change?if_commit=", &upsert_body("f", json!({}))).await;
    assert_eq!(status, 400);
}

/// Branch creation on a big graph: one row in `_branches`, whatever the
/// graph's size. Ignored by default (building the graph is slow in a debug
/// build); run with `cargo test -p omnigraph-worker --test branches -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn branch_create_time_on_a_big_graph() {
    let (_tmp, _uri, store) = fresh().await;
    let n = 100_000;
    let ops: Vec<serde_json::Value> = (0..n).map(|i| json!({"upsert": {"type": "Person", "key": format!("p{i}"), "props": {"age": i}}})).collect();
    let edges: Vec<serde_json::Value> = (1..n).map(|i| json!({"link": {"edge": "Knows", "from": format!("p{}", i - 1), "to": format!("p{i}"), "props": {}}})).collect();
    apply(&store, "main", json!(ops)).await;
    apply(&store, "main", json!(edges)).await;
    let mut times = Vec::new();
    for i in 0..5 {
        let t = std::time::Instant::now();
        store.create_branch(&format!("b{i}"), "main", &Author::new("t")).await.unwrap();
        times.push(t.elapsed());
    }
    let t = std::time::Instant::now();
    apply(&store, "b0", json!([{"upsert": {"type": "Person", "key": "p1", "props": {"age": -1}}}])).await;
    let first_write = t.elapsed();
    let t = std::time::Instant::now();
    apply(&store, "b0", json!([{"upsert": {"type": "Person", "key": "p2", "props": {"age": -1}}}])).await;
    let second_write = t.elapsed();
    println!("{n} nodes + {} edges: branch create {times:?}; first write on the branch {first_write:?} (forks Person), second {second_write:?}", n - 1);
    assert_eq!(people(&store, "main")["p1"]["age"], 1);
}
