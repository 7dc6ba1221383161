//! `/ingest` and `/export` through the real router: one commit per ingest,
//! on its branch only, conditional on `?if_commit=`, all or nothing (checked
//! after a restart too, so against what Lance holds), and an export that
//! re-ingests into an empty graph byte for byte.

mod common;

use std::fmt::Write;
use std::sync::Arc;

use common::*;
use omnigraph_worker::limits::Limits;
use omnigraph_worker::store::Store;
use serde_json::{json, Value};

async fn fresh_with(schema: &str) -> (tempfile::TempDir, String, Arc<Store>) {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g").to_str().unwrap().to_string();
    let store = Arc::new(Store::init("g", &uri, schema, "test").await.unwrap());
    (tmp, uri, store)
}

async fn fresh() -> (tempfile::TempDir, String, Arc<Store>) {
    fresh_with(SCHEMA).await
}

async fn ingest(addr: std::net::SocketAddr, query: &str, body: &str) -> (u16, Value) {
    let (status, bytes) = call_raw(addr, "POST", &format!("/ingest{query}"), body.as_bytes()).await;
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())))
}

async fn export(addr: std::net::SocketAddr, query: &str) -> String {
    let (status, bytes) = call_raw(addr, "POST", &format!("/export{query}"), b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    String::from_utf8(bytes).unwrap()
}

fn person(key: &str, props: Value) -> String {
    format!("{}\n", json!({"type": "Person", "key": key, "props": props}))
}

fn knows_line(from: &str, to: &str) -> String {
    format!("{}\n", json!({"edge": "Knows", "from": from, "to": to}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_is_one_commit_on_its_branch_only() {
    let (_tmp, _uri, store) = fresh().await;
    let base = apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "old", "props": {"age": 1}}}])).await;
    let addr = serve(store.clone()).await;
    assert_eq!(call(addr, "POST", "/branches?branch=dev", "").await.0, 201);

    // An edge may join a node of the base and one from earlier in the ingest;
    // blank lines are skipped; a node given twice is one node.
    let body = format!("{}\n{}{}{}\r\n{}", person("a", json!({"age": 30})), person("b", json!({})), knows_line("a", "old"), knows_line("a", "b"), person("a", json!({"city": "x"})));
    let (status, body) = ingest(addr, "?branch=dev", &body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["lines"].as_u64(), body["nodes"].as_u64(), body["edges"].as_u64()), (Some(5), Some(2), Some(2)), "{body}");
    let commit = body["commit_id"].as_str().unwrap().to_string();
    assert_eq!(store.head("dev").unwrap().commit.commit_id.to_string(), commit);
    assert_eq!(store.head("dev").unwrap().commit.parents.iter().map(|p| p.to_string()).collect::<Vec<_>>(), vec![base.clone()], "one commit on the branch head");
    assert_eq!(people(&store, "dev")["a"], json!({"name": "a", "age": 30, "city": "x"}), "upserts merge like /change");
    assert_eq!(knows(&store, "dev"), ["a->b", "a->old"]);

    assert_eq!(store.head("main").unwrap().commit.commit_id.to_string(), base, "main did not move");
    assert_eq!(people(&store, "main").keys().collect::<Vec<_>>(), ["old"]);
    assert!(knows(&store, "main").is_empty());

    // An empty ingest writes nothing and answers the head.
    let (status, body) = ingest(addr, "?branch=dev", "\n\n").await;
    assert_eq!((status, body), (200, json!({"commit_id": commit, "lines": 0, "nodes": 0, "edges": 0})));
    let (status, body) = ingest(addr, "?branch=ghost", &person("z", json!({}))).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = ingest(addr, "?brnach=dev", &person("z", json!({}))).await;
    assert_eq!(status, 400, "{body}");
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_commit_must_name_the_head() {
    let (_tmp, _uri, store) = fresh().await;
    let head = apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "a", "props": {}}}])).await;
    let addr = serve(store.clone()).await;
    let (status, body) = ingest(addr, "?if_commit=01AAAAAAAAAAAAAAAAAAAAAAAA", &person("b", json!({}))).await;
    assert_eq!((status, body["code"].as_str()), (412, Some("precondition_failed")), "{body}");
    assert_eq!(store.head("main").unwrap().commit.commit_id.to_string(), head);
    let (status, body) = ingest(addr, &format!("?if_commit={head}"), &person("b", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = ingest(addr, &format!("?if_commit={head}"), &person("c", json!({}))).await;
    assert_eq!(status, 412, "the head moved");
    assert_eq!(people(&store, "main").keys().collect::<Vec<_>>(), ["a", "b"]);
}

/// `n` people p0..p{n-1}, each knowing the one before.
fn chain(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let _ = writeln!(s, "{{\"type\":\"Person\",\"key\":\"p{i}\",\"props\":{{\"age\":{}}}}}", i % 90);
        if i > 0 {
            let _ = writeln!(s, "{{\"edge\":\"Knows\",\"from\":\"p{i}\",\"to\":\"p{}\"}}", i - 1);
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_rejects_the_whole_ingest_even_after_batches_were_written() {
    let (_tmp, uri, store) = fresh().await;
    let head = apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "keep", "props": {"age": 5}}}])).await;
    let addr = serve(store.clone()).await;
    let before = export(addr, "").await;
    let versions = |s: &Store| s.head("main").unwrap().datasets.iter().map(|(k, d)| (k.clone(), d.version().version)).collect::<Vec<_>>();
    let pinned = versions(&store);

    // 60,000 lines: one batch of 50,000 reaches Lance before line 59,999 fails.
    let mut body = chain(30_000);
    let mut lines: Vec<&str> = body.lines().collect();
    lines[59_998] = r#"{"edge":"Knows","from":"p1","to":"nobody"}"#;
    body = lines.join("\n");
    let (status, resp) = ingest(addr, "", &body).await;
    assert_eq!((status, resp["code"].as_str()), (400, Some("bad_request")), "{resp}");
    assert_eq!(resp["details"], json!({"line": 59_999}), "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("to: Person \"nobody\" does not exist"), "{resp}");

    assert_eq!(store.head("main").unwrap().commit.commit_id.to_string(), head, "no commit");
    assert_eq!(export(addr, "").await, before, "nothing visible");
    assert_eq!(people(&store, "main").len(), 1);
    assert!(versions(&store).iter().zip(&pinned).all(|((_, now), (_, was))| now >= was));

    // The next ingest builds on the restored tables, and a restart reads
    // from Lance exactly what the head shows: the failed batch is gone.
    let (status, resp) = ingest(addr, "", &person("next", json!({}))).await;
    assert_eq!(status, 200, "{resp}");
    drop(store);
    let reopened = Arc::new(Store::open("g", &uri).await.unwrap());
    assert_eq!(people(&reopened, "main").keys().collect::<Vec<_>>(), ["keep", "next"]);
    assert!(knows(&reopened, "main").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_limit_is_413_and_writes_nothing() {
    let (_tmp, _uri, store) = fresh().await;
    let limits = Limits { max_ingest_bytes: 1000, max_body_bytes: 100, ..Limits::default() };
    let addr = serve_with(store.clone(), limits).await;
    let head = store.head("main").unwrap().commit.commit_id.to_string();
    // Under max_ingest_bytes but over max_body_bytes: accepted.
    let small: String = ["a", "b", "c"].iter().map(|k| person(k, json!({"age": 1}))).collect();
    assert!(small.len() > 100 && small.len() < 1000);
    assert_eq!(ingest(addr, "", &small).await.0, 200);
    let head2 = store.head("main").unwrap().commit.commit_id.to_string();
    assert_ne!(head, head2);
    let big: String = (0..40).map(|i| person(&format!("n{i}"), json!({}))).collect();
    let (status, body) = ingest(addr, "", &big).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")), "{body}");
    assert_eq!(body["details"], json!({"limit": "max_ingest_bytes", "value": 1000}), "{body}");
    // Chunked, with no length declared: counted as it streams in.
    let (status, text) = chunked_ingest(addr, &big).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("limits.max_ingest_bytes"), "{text}");
    assert_eq!(store.head("main").unwrap().commit.commit_id.to_string(), head2);
    assert_eq!(people(&store, "main").len(), 3);
}

/// `/ingest` with a chunked body (no Content-Length), in 100-byte chunks.
async fn chunked_ingest(addr: std::net::SocketAddr, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = b"POST /ingest HTTP/1.1\r\nhost: w\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for c in body.as_bytes().chunks(100) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The worker may answer and close before it has read everything.
    let _ = s.write_all(&req).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    (text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

const ALL_TYPES: &str = "node Person { name: String @key age: I32? score: F32? ratio: F64? ok: Bool? born: Date? seen: DateTime? pic: Blob? tags: [String]? big: I64? }\nnode City { name: String @key country: String }\nedge Knows: Person -> Person { since: Date? w: F64? }\nedge LivesIn: Person -> City\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_sorted_and_round_trips_byte_for_byte() {
    let (_tmp, uri, store) = fresh_with(ALL_TYPES).await;
    let addr = serve(store.clone()).await;
    // Unsorted, props in any order, values in non-canonical spellings.
    let body = [
        r#"{"type":"Person","key":"zoë","props":{"tags":["b","a"],"age":7,"score":0.1,"seen":"2024-01-01T02:00:00+02:00"}}"#,
        r#"{"type":"City","key":"paris","props":{"country":"FR"}}"#,
        r#"{"type":"Person","key":"al\"ice","props":{"ratio":2,"ok":false,"born":"1999-12-31","pic":"AAEC","big":9007199254740993,"age":null}}"#,
        r#"{"type":"Person","key":"Bob","props":{}}"#,
        r#"{"edge":"LivesIn","from":"zoë","to":"paris"}"#,
        r#"{"edge":"Knows","from":"zoë","to":"Bob","props":{"w":0.5}}"#,
        r#"{"edge":"Knows","from":"Bob","to":"zoë","props":{"since":"2020-02-02","w":null}}"#,
        r#"{"edge":"Knows","from":"Bob","to":"al\"ice"}"#,
    ]
    .join("\n");
    let (status, resp) = ingest(addr, "", &body).await;
    assert_eq!(status, 200, "{resp}");
    let first = export(addr, "").await;
    let expected = [
        r#"{"type":"City","key":"paris","props":{"country":"FR"}}"#,
        r#"{"type":"Person","key":"Bob","props":{}}"#,
        r#"{"type":"Person","key":"al\"ice","props":{"big":9007199254740993,"born":"1999-12-31","ok":false,"pic":"AAEC","ratio":2.0}}"#,
        r#"{"type":"Person","key":"zoë","props":{"age":7,"score":0.10000000149011612,"seen":"2024-01-01T00:00:00.000000Z","tags":["b","a"]}}"#,
        r#"{"edge":"Knows","from":"Bob","to":"al\"ice","props":{}}"#,
        r#"{"edge":"Knows","from":"Bob","to":"zoë","props":{"since":"2020-02-02"}}"#,
        r#"{"edge":"Knows","from":"zoë","to":"Bob","props":{"w":0.5}}"#,
        r#"{"edge":"LivesIn","from":"zoë","to":"paris","props":{}}"#,
    ];
    assert_eq!(first.lines().collect::<Vec<_>>(), expected);
    assert!(first.ends_with('\n'));

    // Into an empty graph with the same schema: the same bytes, before and
    // after a restart (so also from what Lance stores).
    let (_tmp2, uri2, copy) = fresh_with(ALL_TYPES).await;
    let addr2 = serve(copy.clone()).await;
    let (status, resp) = ingest(addr2, "", &first).await;
    assert_eq!((status, resp["lines"].as_u64()), (200, Some(8)), "{resp}");
    assert_eq!(export(addr2, "").await, first);
    drop(copy);
    let reopened = Arc::new(Store::open("g", &uri2).await.unwrap());
    assert_eq!(export(serve(reopened).await, "").await, first);
    drop(store);
    let reopened = Arc::new(Store::open("g", &uri).await.unwrap());
    assert_eq!(export(serve(reopened).await, "").await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_reads_a_commit_of_the_branch_and_nothing_else() {
    let (_tmp, _uri, store) = fresh().await;
    let addr = serve(store.clone()).await;
    let (_, r) = ingest(addr, "", &person("a", json!({}))).await;
    let first = r["commit_id"].as_str().unwrap().to_string();
    let (_, r) = ingest(addr, "", &person("b", json!({}))).await;
    assert_eq!(r["lines"], 1);
    assert_eq!(call(addr, "POST", "/branches?branch=dev", "").await.0, 201);
    let (_, r) = ingest(addr, "?branch=dev", &person("c", json!({}))).await;
    let on_dev = r["commit_id"].as_str().unwrap().to_string();

    let keys = |s: &str| s.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["key"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&export(addr, "").await), ["a", "b"]);
    assert_eq!(keys(&export(addr, &format!("?commit={first}")).await), ["a"]);
    assert_eq!(keys(&export(addr, "?branch=dev").await), ["a", "b", "c"]);
    for q in [format!("?commit={on_dev}"), "?commit=nope".to_string(), "?branch=ghost".to_string()] {
        let (status, _) = call_raw(addr, "POST", &format!("/export{q}"), b"").await;
        assert_eq!(status, 404, "{q}");
    }
}

/// Every edge table's adjacency, both ways, as sorted lists.
fn adjacency(s: &omnigraph_worker::store::Snapshot) -> Vec<(String, bool, String, Vec<String>)> {
    let mut out = Vec::new();
    for (ty, t) in &s.data.edges {
        for (outgoing, map) in [(true, &t.out), (false, &t.inc)] {
            for (k, set) in map.iter() {
                out.push((ty.clone(), outgoing, k.to_string(), set.iter().map(|v| v.to_string()).collect()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_written_in_two_batches_is_one_row() {
    let (_tmp, uri, store) = fresh().await;
    apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "p5", "props": {"city": "old"}}}])).await;
    let addr = serve(store.clone()).await;
    // p5 exists before; p7 and its edge are written in the first batch of
    // 50,000 lines and again, changed, after it.
    let mut body = chain(26_000);
    body.push_str(&person("p7", json!({"city": "late"})));
    body.push_str(&person("p5", json!({"city": "new"})));
    body.push_str("{\"edge\":\"Knows\",\"from\":\"p7\",\"to\":\"p6\",\"props\":{\"since\":3}}\n");
    let (status, resp) = ingest(addr, "", &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((resp["nodes"].as_u64(), resp["edges"].as_u64()), (Some(26_000), Some(25_999)), "{resp}");
    let exported = export(addr, "").await;
    let built = adjacency(&store.head("main").unwrap());
    drop(store);
    let reopened = Arc::new(Store::open("g", &uri).await.unwrap());
    assert_eq!(adjacency(&reopened.head("main").unwrap()), built, "the adjacency the ingest built (in bulk, beside its parser) is the one a start loads");
    let p = people(&reopened, "main");
    assert_eq!(p.len(), 26_000);
    assert_eq!(p["p7"], json!({"name": "p7", "age": 7, "city": "late"}));
    assert_eq!(p["p5"], json!({"name": "p5", "age": 5, "city": "new"}));
    let snap = reopened.head("main").unwrap();
    for (table, rows) in [("Person", 26_000usize), ("Knows", 25_999)] {
        assert_eq!(snap.datasets[table].count_rows(None).await.unwrap(), rows, "{table}: one row per key in Lance");
    }
    assert_eq!(export(serve(reopened).await, "").await, exported);
}
