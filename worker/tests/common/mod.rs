//! Helpers shared by the worker's integration tests: a store in a temp dir,
//! changes through the store API, and the real router served over TCP.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use omnigraph_worker::change;
use omnigraph_worker::http::{router, AppState};
use omnigraph_worker::limits::Limits;
use omnigraph_worker::store::{ApplyError, Author, Store, WriteTo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SCHEMA: &str = "node Person { name: String @key age: I64? city: String? }\nedge Knows: Person -> Person { since: I64? }\n";

/// Applies `ops` on `branch` through the store; returns the new commit id.
pub async fn apply(store: &Store, branch: &str, ops: Value) -> String {
    let ops = change::parse_body(&json!({ "ops": ops })).unwrap();
    match store.apply(WriteTo::branch(branch), &Author::new("test"), |base| change::plan(&base.schema.graph, base, ops)).await {
        Ok((snap, _)) => snap.commit.commit_id.to_string(),
        Err(ApplyError::Plan(e)) => panic!("plan: {e}"),
        Err(ApplyError::Store(e)) => panic!("store: {e}"),
    }
}

/// Every Person on `branch`'s head: key → props.
pub fn people(store: &Store, branch: &str) -> BTreeMap<String, Value> {
    let head = store.head(branch).unwrap();
    head.data.nodes["Person"].rows.iter().map(|(k, v)| (k.to_string(), Value::Object(v.to_map()))).collect()
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
    serve_with(store, Limits::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with(store: Arc<Store>, limits: Limits) -> std::net::SocketAddr {
    let app = router(AppState { store, worker_key: None, limits });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One request over a fresh connection; returns (status, JSON body).
pub async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    call_with(addr, method, path, body, &[]).await
}

/// [`call`] with extra request headers.
pub async fn call_with(addr: std::net::SocketAddr, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!("{method} {path} HTTP/1.1\r\nhost: w\r\nconnection: close\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}", body.len());
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

/// One request with a raw body over a fresh connection; returns the status
/// and the body's bytes (a chunked body decoded).
pub async fn call_raw(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nhost: w\r\nconnection: close\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    decode_response(&out)
}

/// The status and body (a chunked body decoded) of one whole HTTP/1.1
/// response read off a `connection: close` socket.
pub fn decode_response(out: &[u8]) -> (u16, Vec<u8>) {
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut rest = &out[split..];
    if !head.contains("transfer-encoding: chunked") {
        return (status, rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).expect("hex").trim(), 16).expect("hex");
        if size == 0 {
            return (status, body);
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 2 + size + 2..];
    }
}

/// The real worker binary serving a fresh graph of `schema` in a temp dir,
/// for tests that need the process itself (its memory, its arguments);
/// killed by its own pid when dropped.
pub struct WorkerProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    pub fn start(graph_id: &str, schema: &str) -> WorkerProcess {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        let schema_path = dir.path().join("s.pg");
        std::fs::write(&schema_path, schema).expect("schema");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_omnigraph-worker"))
            .args(["serve", "--graph-id", graph_id, "--listen", "127.0.0.1:0", "--init", "--schema"])
            .arg(&schema_path)
            .arg("--uri")
            .arg(dir.path().join("g"))
            .env_remove("OMNIGRAPH_WORKER_KEY")
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn omnigraph-worker");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the worker announces its address");
        let addr = line.trim().rsplit("http://").next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no address in {line:?}"));
        // Keep draining stdout so the worker never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        WorkerProcess { child, addr, _dir: dir }
    }

    /// One request on a fresh connection, waiting at most `timeout` for the
    /// answer: the status and the body (chunked decoded).
    pub fn call(&self, method: &str, path: &str, body: &[u8], timeout: std::time::Duration) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(timeout)).ok();
        let head = format!("{method} {path} HTTP/1.1\r\nhost: w\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).expect("send");
        s.write_all(body).expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("receive");
        decode_response(&out)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
