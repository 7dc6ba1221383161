//! Helpers shared by the worker's integration tests: a store in a temp dir,
//! changes through the store API, and the real router served over TCP.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use omnigraph_worker::change;
use omnigraph_worker::http::{router, AppState};
use omnigraph_worker::limits::Limits;
use omnigraph_worker::store::{ApplyError, Store, WriteTo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SCHEMA: &str = "node Person { name: String @key age: I64? city: String? }\nedge Knows: Person -> Person { since: I64? }\n";

/// Applies `ops` on `branch` through the store; returns the new commit id.
pub async fn apply(store: &Store, branch: &str, ops: Value) -> String {
    let ops = change::parse_body(&json!({ "ops": ops })).unwrap();
    let schema = store.schema.clone();
    match store.apply(WriteTo::branch(branch), "test", |base| change::plan(&schema, base, ops)).await {
        Ok((snap, _)) => snap.commit.commit_id.clone(),
        Err(ApplyError::Plan(e)) => panic!("plan: {e}"),
        Err(ApplyError::Store(e)) => panic!("store: {e}"),
    }
}

/// Every Person on `branch`'s head: key → props.
pub fn people(store: &Store, branch: &str) -> BTreeMap<String, Value> {
    let head = store.head(branch).unwrap();
    head.data.nodes["Person"].rows.iter().map(|(k, v)| (k.to_string(), Value::Object((**v).clone()))).collect()
}

/// Every Knows edge on `branch`'s head, as "from->to".
pub fn knows(store: &Store, branch: &str) -> Vec<String> {
    let head = store.head(branch).unwrap();
    let mut v: Vec<String> = head.data.edges["Knows"].rows.keys().map(|(f, t)| format!("{f}->{t}")).collect();
    v.sort();
    v
}

/// Serves `store` with the real router on an ephemeral loopback port.
pub async fn serve(store: Arc<Store>) -> std::net::SocketAddr {
    let app = router(AppState { store, worker_key: None, limits: Limits::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One request over a fresh connection; returns (status, JSON body).
pub async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nhost: w\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_string())))
}

/// A `/change` body upserting one Person.
pub fn upsert_body(key: &str, props: Value) -> String {
    json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": props}}]}).to_string()
}
