//! Every commit records the `x-request-id` of the request that wrote it
//! (`/change`, `/ingest`, a merge commit), shown by `/commits` and
//! `/commits/{id}` as `request_id` (`null` without one); and a graph whose
//! logs were written before the column (and the schema columns) existed
//! opens, reads its old commits with `request_id: null`, and takes new
//! commits and a new schema.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema};
use common::{call, call_with, upsert_body};
use lance::dataset::Dataset;
use omnigraph_worker::store::{Author, Store};
use serde_json::{json, Value};

const SCHEMA: &str = "node Person { name: String @key age: I64? }\n";

/// commit id → request id, from `/commits?branch=`.
async fn request_ids(addr: std::net::SocketAddr, branch: &str) -> BTreeMap<String, Value> {
    let (status, body) = call(addr, "GET", &format!("/commits?branch={branch}"), "").await;
    assert_eq!(status, 200, "{body}");
    body["commits"]
        .as_array()
        .expect("commits")
        .iter()
        .map(|c| {
            assert!(c.as_object().is_some_and(|o| o.contains_key("request_id")), "every commit shows request_id: {c}");
            (c["commit_id"].as_str().expect("id").to_string(), c["request_id"].clone())
        })
        .collect()
}

fn id_of(body: &Value) -> String {
    body["commit_id"].as_str().unwrap_or_else(|| panic!("no commit_id in {body}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_records_the_request_id_it_was_written_by() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g").to_str().unwrap().to_string();
    let store = Arc::new(Store::init("g", &uri, SCHEMA, "test").await.unwrap());
    let first = store.head("main").unwrap().commit.commit_id.to_string();
    let addr = common::serve(store.clone()).await;
    let rid = |v: &'static str| [("x-request-id", v)];

    let (s, with_id) = call_with(addr, "POST", "/change", &upsert_body("a", json!({})), &rid("my-req-1")).await;
    assert_eq!(s, 200, "{with_id}");
    let (s, without) = call(addr, "POST", "/change", &upsert_body("b", json!({}))).await;
    assert_eq!(s, 200, "{without}");
    // A malformed id is not refused and not recorded.
    let (s, malformed) = call_with(addr, "POST", "/change", &upsert_body("c", json!({})), &rid("a/b")).await;
    assert_eq!(s, 200, "{malformed}");
    let (s, ingested) = call_with(addr, "POST", "/ingest", "{\"type\": \"Person\", \"key\": \"d\"}\n", &rid("req:ingest.1")).await;
    assert_eq!(s, 200, "{ingested}");

    // A three-way merge commit records the merge request's id.
    let (s, _) = call_with(addr, "POST", "/branches?branch=dev", "", &rid("req-branch")).await;
    assert_eq!(s, 201);
    let (s, on_dev) = call_with(addr, "POST", "/change?branch=dev", &upsert_body("e", json!({})), &rid("req-dev")).await;
    assert_eq!(s, 200, "{on_dev}");
    let (s, on_main) = call(addr, "POST", "/change", &upsert_body("f", json!({}))).await;
    assert_eq!(s, 200, "{on_main}");
    let (s, merged) = call_with(addr, "POST", "/branches/merge?branch=dev&target=main", "", &rid("req-merge")).await;
    assert_eq!((s, merged["result"].as_str()), (200, Some("merged")), "{merged}");

    let expect = BTreeMap::from([
        (first.clone(), Value::Null),
        (id_of(&with_id), json!("my-req-1")),
        (id_of(&without), Value::Null),
        (id_of(&malformed), Value::Null),
        (id_of(&ingested), json!("req:ingest.1")),
        (id_of(&on_dev), json!("req-dev")),
        (id_of(&on_main), Value::Null),
        (id_of(&merged), json!("req-merge")),
    ]);
    assert_eq!(request_ids(addr, "main").await, expect);
    let (s, one) = call(addr, "GET", &format!("/commits/{}", id_of(&with_id)), "").await;
    assert_eq!((s, &one["request_id"], &one["actor_id"]), (200, &json!("my-req-1"), &json!("local")), "{one}");

    // The ids are stored, not held in memory: a reopened graph shows the same.
    drop(store);
    let reopened = Arc::new(Store::open("g", &uri).await.unwrap());
    let addr = common::serve(reopened).await;
    assert_eq!(request_ids(addr, "main").await, expect);
}

/// `_commits` as workers before the request id wrote it: seven columns.
fn old_commits_schema() -> Arc<Schema> {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        s("commit_id"),
        s("parents"),
        s("branch"),
        s("actor_id"),
        s("created_at"),
        s("tables"),
    ]))
}

/// `_branches` as workers before the request id wrote it.
fn old_refs_schema() -> Arc<Schema> {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![Field::new("seq", DataType::Int64, false), s("branch"), s("op"), s("head"), s("from"), s("actor_id"), s("created_at")]))
}

fn strings(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_written_before_request_ids_opens_reads_and_takes_new_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("g");
    let uri = dir.to_str().unwrap().to_string();
    let store = Store::init("g", &uri, SCHEMA, "old").await.unwrap();
    common::apply(&store, "main", json!([{"upsert": {"type": "Person", "key": "a", "props": {"age": 1}}}])).await;
    let mut old = store.commits("main").unwrap();
    old.reverse();
    drop(store);

    // Rewrite both logs exactly as an older worker left them: the same rows,
    // seven columns each, and a branch `dev` created at the last commit.
    for table in ["_commits", "_branches"] {
        std::fs::remove_dir_all(dir.join(format!("{table}.lance"))).unwrap();
    }
    let n = old.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
        strings(old.iter().map(|c| c.commit_id.to_string()).collect()),
        strings(old.iter().map(|c| serde_json::to_string(&c.parents).unwrap()).collect()),
        strings(old.iter().map(|c| c.branch.to_string()).collect()),
        strings(old.iter().map(|c| c.actor_id.to_string()).collect()),
        strings(old.iter().map(|c| c.created_at.clone()).collect()),
        strings(
            old.iter()
                .map(|c| {
                    assert!(c.tables.values().all(|p| p.lineage.is_none()), "main's tables are on Lance's main");
                    serde_json::to_string(&c.tables.iter().map(|(k, p)| (k, p.version)).collect::<BTreeMap<_, _>>()).unwrap()
                })
                .collect(),
        ),
    ];
    let batch = RecordBatch::try_new(old_commits_schema(), cols).unwrap();
    Dataset::write(RecordBatchIterator::new(vec![Ok(batch)], old_commits_schema()), &format!("{uri}/_commits.lance"), None).await.unwrap();
    let head = old[n - 1].commit_id.clone();
    let s = |v: &str| strings(vec![v.to_string()]);
    let refs = RecordBatch::try_new(
        old_refs_schema(),
        vec![Arc::new(Int64Array::from(vec![n as i64])), s("dev"), s("create"), s(&head), s("main"), s("old"), s("2024-01-01T00:00:00.000000Z")],
    )
    .unwrap();
    Dataset::write(RecordBatchIterator::new(vec![Ok(refs)], old_refs_schema()), &format!("{uri}/_branches.lance"), None).await.unwrap();
    let before = Dataset::open(&format!("{uri}/_commits.lance")).await.unwrap();
    assert!(before.schema().field("request_id").is_none(), "the log starts without the column");

    // It opens, and its commits read with no request id.
    let store = Store::open("g", &uri).await.unwrap();
    let history = store.commits("main").unwrap();
    assert_eq!(history.len(), n);
    assert!(history.iter().all(|c| c.request_id.is_none()));
    assert_eq!(store.head("dev").unwrap().commit.commit_id, head, "the old ref log still replays");
    assert_eq!(common::people(&store, "main")["a"], json!({"name": "a", "age": 1}));

    // It takes new commits and branch events, with their request ids.
    let author = Author::new("new").with_request_id(Some("r-1".into()));
    let ops = omnigraph_worker::change::parse_body(&json!({"ops": [{"upsert": {"type": "Person", "key": "b", "props": {}}}]})).unwrap();
    let newest = match store.apply(omnigraph_worker::store::WriteTo::main(), &author, |base| omnigraph_worker::change::plan(&base.schema.graph, base, ops)).await {
        Ok((snap, _)) => snap.commit.commit_id.to_string(),
        Err(_) => panic!("the change failed"),
    };
    store.create_branch("later", "main", &author).await.unwrap();
    let v2 = format!("{SCHEMA}node Tag {{ name: String @key }}\n");
    let parsed = omnigraph_worker::contract::GraphSchema::parse(&v2).unwrap();
    let applied = match store.apply_schema(omnigraph_worker::store::WriteTo::main(), &author, &v2, parsed, Default::default()).await {
        Ok(a) => a.commit_id.expect("a commit"),
        Err(_) => panic!("the schema apply failed"),
    };
    drop(store);
    for (table, column) in [("_commits", "request_id"), ("_commits", "schema_id"), ("_commits", "schema"), ("_branches", "request_id")] {
        let ds = Dataset::open(&format!("{uri}/{table}.lance")).await.unwrap();
        let f = ds.schema().field(column).unwrap_or_else(|| panic!("{table} got {column}"));
        assert!(f.nullable, "{table}.{column} is nullable");
    }

    // Reopened, the old rows are still null and the new one has its id.
    let store = Arc::new(Store::open("g", &uri).await.unwrap());
    assert_eq!(*store.head("later").unwrap().commit.commit_id.to_string(), *newest);
    assert_eq!(&*store.head("main").unwrap().schema.source, v2.as_str());
    assert_eq!(&*store.schema_at("main", &old[0].commit_id).unwrap().source, SCHEMA, "old commits read _schema.pg");
    let addr = common::serve(store).await;
    let ids = request_ids(addr, "main").await;
    assert_eq!(ids.len(), n + 2);
    assert_eq!((&ids[&newest], &ids[&applied]), (&json!("r-1"), &json!("r-1")));
    assert!(old.iter().all(|c| ids[&*c.commit_id] == Value::Null), "{ids:?}");
    let (s, one) = call(addr, "GET", &format!("/commits/{}", old[0].commit_id), "").await;
    assert_eq!((s, &one["request_id"]), (200, &Value::Null), "{one}");
}
