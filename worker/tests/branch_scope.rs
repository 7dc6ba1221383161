//! A commit id never reads across branches: a commit made on `dev` is not
//! found on `main` (and a later `main` commit not on `dev`), through the
//! store and through the real router over TCP.

mod common;

use std::sync::Arc;

use omnigraph_worker::change;
use omnigraph_worker::http::{router, AppState};
use omnigraph_worker::limits::Limits;
use omnigraph_worker::store::{ApplyError, Author, Store, StoreError, WriteTo};
use common::call as get;
use serde_json::json;

const SCHEMA: &str = "node Person { name: String @key age: I64? }\n";

async fn upsert(store: &Store, branch: &str, key: &str) -> String {
    let ops = change::parse_body(&json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {}}}]})).unwrap();
    match store.apply(WriteTo::branch(branch), &Author::new("test"), |base| change::plan(&base.schema.graph, base, ops)).await {
        Ok((snap, _)) => snap.commit.commit_id.to_string(),
        Err(ApplyError::Plan(e)) => panic!("plan: {e}"),
        Err(ApplyError::Store(e)) => panic!("store: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_from_another_branch_is_not_found_on_main() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g");
    let uri = uri.to_str().unwrap();
    let store = Store::init("g", uri, SCHEMA, "test").await.unwrap();
    let first = upsert(&store, "main", "a").await;

    // dev forks from main's first change and commits on its own.
    store.create_branch("dev", "main", &Author::new("test")).await.unwrap();
    let dev = upsert(&store, "dev", "d").await;
    drop(store);

    let store = Store::open("g", uri).await.unwrap();
    assert_eq!(*store.head("main").unwrap().commit.commit_id.to_string(), *first, "main's head is unchanged");
    assert!(store.commit_on("main", &first).is_ok());
    assert!(matches!(store.commit_on("main", &dev), Err(StoreError::NotOnBranch { .. })));
    assert!(store.commit_on("dev", &dev).is_ok());
    assert!(store.commit_on("dev", &first).is_ok(), "dev's history includes the commit it forked from");
    assert!(matches!(store.snapshot_at("main", &dev).await, Err(StoreError::NotOnBranch { .. })));
    assert!(store.commits("main").unwrap().iter().all(|c| *c.commit_id != *dev));
    assert_eq!(store.commits("dev").unwrap().len(), 3, "dev, main's first change, init");
    assert!(matches!(store.commit_on("ghost", &first), Err(StoreError::NoBranch(_))));

    // A later main commit is still not on dev's history.
    let later = upsert(&store, "main", "b").await;
    assert!(store.commit_on("dev", &later).is_err());

    let app = router(AppState { store: Arc::new(store), worker_key: None, limits: Limits::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (status, body) = get(addr, "GET", &format!("/commits/{dev}"), "").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, _) = get(addr, "GET", &format!("/commits/{dev}?branch=dev"), "").await;
    assert_eq!(status, 200);
    let (status, _) = get(addr, "GET", &format!("/commits/{first}?branch=main"), "").await;
    assert_eq!(status, 200);
    let (status, body) = get(addr, "GET", &format!("/commits/{later}?branch=dev"), "").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "a main commit after the fork is not on dev");
    let q = r#"{"match": {"type": "Person"}}"#;
    let (status, body) = get(addr, "POST", &format!("/read?commit={dev}"), q).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = get(addr, "POST", &format!("/read?commit={dev}&branch=dev"), q).await;
    assert_eq!((status, body["row_count"].as_u64()), (200, Some(2)), "{body}");
    let cursor = format!(r#"{{"match": {{"type": "Person"}}, "cursor": "c1.{dev}.0"}}"#);
    let (status, body) = get(addr, "POST", "/read", &cursor).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = get(addr, "POST", &format!("/read?commit={first}"), q).await;
    assert_eq!((status, body["row_count"].as_u64()), (200, Some(1)), "{body}");
    let (_, body) = get(addr, "GET", "/commits", "").await;
    let ids: Vec<&str> = body["commits"].as_array().unwrap().iter().map(|c| c["commit_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[0], later);
    assert!(!ids.contains(&dev.as_str()));
    for path in ["/commits?branch=ghost", "/snapshot?branch=ghost"] {
        let (status, body) = get(addr, "GET", path, "").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{path}: {body}");
    }
}
