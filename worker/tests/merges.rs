//! `POST /branches/merge` through the real router: fast-forward, a
//! three-way merge with two parents, conflicts that change nothing, merges
//! at property grain, and dry runs that write nothing.

mod common;

use std::sync::Arc;

use common::*;
use omnigraph_worker::store::{Author, Store};
use serde_json::{json, Value};

async fn fresh() -> (tempfile::TempDir, String, Arc<Store>, std::net::SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g").to_str().unwrap().to_string();
    let store = Arc::new(Store::init("g", &uri, SCHEMA, "test").await.unwrap());
    let addr = serve(store.clone()).await;
    (tmp, uri, store, addr)
}

fn head(store: &Store, branch: &str) -> String {
    store.head(branch).unwrap().commit.commit_id.to_string()
}

async fn merge(addr: std::net::SocketAddr, query: &str) -> (u16, Value) {
    call(addr, "POST", &format!("/branches/merge?{query}"), "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_forward_then_already_up_to_date() {
    let (_tmp, _uri, store, addr) = fresh().await;
    apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "a", "props": {}}}])).await;
    store.create_branch("dev", "main", &Author::new("t")).await.unwrap();
    let d = apply(&store, "dev", json!([{"upsert": {"type": "Person", "key": "b", "props": {}}}])).await;
    let before = head(&store, "main");

    let (status, body) = merge(addr, "branch=dev&target=main&dry_run=true").await;
    assert_eq!((status, &body["result"], body["commit_id"].as_str()), (200, &json!("fast_forward"), Some(before.as_str())), "{body}");
    assert_eq!(head(&store, "main"), before, "a dry run moves nothing");

    let (status, body) = merge(addr, "branch=dev&target=main").await;
    assert_eq!((status, body.clone()), (200, json!({"result": "fast_forward", "commit_id": d})));
    assert_eq!(head(&store, "main"), d);
    assert_eq!(people(&store, "main").keys().collect::<Vec<_>>(), ["a", "b"]);
    let (_, body) = call(addr, "GET", "/commits", "").await;
    assert_eq!(body["commits"][0]["commit_id"], json!(d), "main's history now holds dev's commit");

    for q in ["branch=dev&target=main", "branch=main&target=dev", "branch=dev&target=dev"] {
        let (status, body) = merge(addr, q).await;
        assert_eq!((status, &body["result"]), (200, &json!("already_up_to_date")), "{q}: {body}");
    }
    let (status, body) = merge(addr, "branch=dev").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "?target= is required");
    let (status, body) = merge(addr, "branch=ghost&target=main").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, _) = merge(addr, "branch=dev&target=main&dry_run=maybe").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_branches_merge_with_two_parents() {
    let (_tmp, uri, store, addr) = fresh().await;
    apply(&store, "main", json!([
        {"upsert": {"type": "Person", "key": "a", "props": {"age": 1, "city": "x"}}},
        {"upsert": {"type": "Person", "key": "gone", "props": {}}},
        {"link": {"edge": "Knows", "from": "a", "to": "gone", "props": {}}},
    ]))
    .await;
    store.create_branch("dev", "main", &Author::new("t")).await.unwrap();
    // Both sides change a, in different properties; each adds its own rows.
    let m = apply(&store, "main", json!([
        {"upsert": {"type": "Person", "key": "a", "props": {"age": 2}}},
        {"upsert": {"type": "Person", "key": "m", "props": {}}},
    ]))
    .await;
    let d = apply(&store, "dev", json!([
        {"upsert": {"type": "Person", "key": "a", "props": {"city": "y"}}},
        {"upsert": {"type": "Person", "key": "d", "props": {"age": 9}}},
        {"link": {"edge": "Knows", "from": "d", "to": "a", "props": {"since": 2020}}},
        {"delete": {"type": "Person", "key": "gone"}},
    ]))
    .await;

    let (status, body) = merge(addr, "branch=dev&target=main&dry_run=true").await;
    assert_eq!((status, &body["result"], body["commit_id"].as_str()), (200, &json!("merged"), Some(m.as_str())), "{body}");
    assert_eq!(head(&store, "main"), m, "a dry run commits nothing");
    assert_eq!(store.commits("main").unwrap().len(), 3);

    let (status, body) = merge(addr, "branch=dev&target=main").await;
    assert_eq!((status, &body["result"]), (200, &json!("merged")), "{body}");
    let merged = body["commit_id"].as_str().unwrap().to_string();
    assert_eq!(head(&store, "main"), merged);
    assert_eq!(head(&store, "dev"), d, "the source does not move");
    let (_, c) = call(addr, "GET", &format!("/commits/{merged}"), "").await;
    assert_eq!(c["parents"], json!([m, d]), "target's head first");
    assert_eq!(c["branch"], "main");

    let check = |store: &Store| {
        let p = people(store, "main");
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a", "d", "m"]);
        assert_eq!(p["a"], json!({"name": "a", "age": 2, "city": "y"}), "each side's property");
        assert_eq!(p["d"]["age"], 9);
        assert_eq!(knows(store, "main"), ["d->a"], "dev's edge in, the deleted node's edge out");
        assert_eq!(people(store, "dev").keys().collect::<Vec<_>>(), ["a", "d"], "dev is unchanged");
    };
    check(&store);
    let (_, body) = call(addr, "POST", "/read", r#"{"match": {"type": "Person", "key": "d"}, "traverse": [{"edge": "Knows"}]}"#).await;
    assert_eq!(body["rows"][0]["key"], "a", "{body}");

    // Merging again is a no-op; main's later commits stay off dev.
    let (_, body) = merge(addr, "branch=dev&target=main").await;
    assert_eq!(body["result"], "already_up_to_date");
    drop(store);
    let store = Store::open("g", &uri).await.unwrap();
    check(&store);
    assert!(store.commit_on("main", &d).is_ok(), "dev's commits are in main's history");
    assert!(store.commit_on("dev", &m).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_listed_and_change_nothing() {
    let (_tmp, _uri, store, addr) = fresh().await;
    apply(&store, "main", json!([
        {"upsert": {"type": "Person", "key": "a", "props": {"age": 1}}},
        {"upsert": {"type": "Person", "key": "b", "props": {"age": 1}}},
        {"upsert": {"type": "Person", "key": "c", "props": {}}},
    ]))
    .await;
    store.create_branch("dev", "main", &Author::new("t")).await.unwrap();
    let m = apply(&store, "main", json!([
        {"upsert": {"type": "Person", "key": "a", "props": {"age": 2}}},
        {"delete": {"type": "Person", "key": "b"}},
        {"upsert": {"type": "Person", "key": "n", "props": {"age": 1}}},
        {"delete": {"type": "Person", "key": "c"}},
    ]))
    .await;
    apply(&store, "dev", json!([
        {"upsert": {"type": "Person", "key": "a", "props": {"age": 3}}},
        {"upsert": {"type": "Person", "key": "b", "props": {"age": 5}}},
        {"upsert": {"type": "Person", "key": "n", "props": {"age": 2}}},
        {"link": {"edge": "Knows", "from": "a", "to": "c", "props": {}}},
    ]))
    .await;
    let before = people(&store, "main");
    let expect = json!([
        {"table": "Knows", "key": "[\"a\",\"c\"]", "kind": "orphan_edge"},
        {"table": "Person", "key": "a", "kind": "divergent_update"},
        {"table": "Person", "key": "b", "kind": "delete_vs_update"},
        {"table": "Person", "key": "n", "kind": "divergent_insert"},
    ]);
    for q in ["branch=dev&target=main&dry_run=true", "branch=dev&target=main"] {
        let (status, body) = merge(addr, q).await;
        assert_eq!((status, body["code"].as_str()), (409, Some("conflict")), "{q}: {body}");
        assert_eq!(body["conflicts"], expect, "{q}");
        assert!(body["error"].is_string());
    }
    assert_eq!(head(&store, "main"), m, "the target did not move");
    assert_eq!(people(&store, "main"), before);
    assert_eq!(store.commits("main").unwrap().len(), 3);
}
