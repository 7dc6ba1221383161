//! `POST /schema/apply` through the real router (DESIGN.md section 5):
//! additive changes apply as one commit and old rows read a new property as
//! null; drops need `allow_data_loss`; what cannot be applied, a dry run, a
//! bad `.pg` and a stale `if_commit` write nothing; every commit keeps the
//! schema it was written under (`GET /schema?commit=`, reads and exports at
//! old commits); a branch's new type stays on the branch until merged; and
//! all of it survives a restart.

mod common;

use std::sync::Arc;

use common::{call, call_raw, call_with, upsert_body};
use omnigraph_worker::store::Store;
use serde_json::{json, Value};

const V1: &str = "node Person { name: String @key age: I64? }\nnode City { name: String @key }\nedge Knows: Person -> Person { since: I64? }\nedge LivesIn: Person -> City\n";
/// V1 and an optional `email`.
const V2: &str = "# with email\nnode Person { name: String @key age: I64? email: String? }\nnode City { name: String @key }\nedge Knows: Person -> Person { since: I64? }\nedge LivesIn: Person -> City\n";

struct Graph {
    _tmp: tempfile::TempDir,
    uri: String,
    store: Arc<Store>,
    addr: std::net::SocketAddr,
}

impl Graph {
    async fn new(schema: &str) -> Graph {
        let tmp = tempfile::tempdir().unwrap();
        let uri = tmp.path().join("g").to_str().unwrap().to_string();
        let store = Arc::new(Store::init("g", &uri, schema, "test").await.unwrap());
        let addr = common::serve(store.clone()).await;
        Graph { _tmp: tmp, uri, store, addr }
    }

    /// The worker restarted: the store dropped and opened again, served anew.
    async fn restart(self) -> Graph {
        let Graph { _tmp, uri, store, .. } = self;
        drop(store);
        let store = Arc::new(Store::open("g", &uri).await.unwrap());
        let addr = common::serve(store.clone()).await;
        Graph { _tmp, uri, store, addr }
    }

    async fn apply(&self, query: &str, pg: &str) -> (u16, Value) {
        call(self.addr, "POST", &format!("/schema/apply{query}"), pg).await
    }

    async fn schema(&self, query: &str) -> String {
        let (status, body) = call_raw(self.addr, "GET", &format!("/schema{query}"), b"").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap()
    }

    async fn change(&self, branch: &str, ops: Value) -> String {
        let (status, body) = call(self.addr, "POST", &format!("/change?branch={branch}"), &json!({ "ops": ops }).to_string()).await;
        assert_eq!(status, 200, "{body}");
        body["commit_id"].as_str().unwrap().to_string()
    }

    async fn read(&self, query: &str, q: Value) -> (u16, Value) {
        call(self.addr, "POST", &format!("/read{query}"), &q.to_string()).await
    }

    async fn export(&self, query: &str) -> String {
        let (status, bytes) = call_raw(self.addr, "POST", &format!("/export{query}"), b"").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        String::from_utf8(bytes).unwrap()
    }

    async fn head(&self, branch: &str) -> String {
        let (status, body) = call(self.addr, "GET", &format!("/snapshot?branch={branch}"), "").await;
        assert_eq!(status, 200, "{body}");
        body["commit_id"].as_str().unwrap().to_string()
    }

    async fn commits(&self, branch: &str) -> usize {
        let (_, body) = call(self.addr, "GET", &format!("/commits?branch={branch}"), "").await;
        body["commits"].as_array().unwrap().len()
    }

    /// Everything a failed apply must leave as it was.
    async fn state(&self, branch: &str) -> (String, String, String, usize) {
        let q = format!("?branch={branch}");
        (self.head(branch).await, self.schema(&q).await, self.export(&q).await, self.commits(branch).await)
    }
}

fn seed() -> Value {
    json!([
        {"upsert": {"type": "Person", "key": "alice", "props": {"age": 34}}},
        {"upsert": {"type": "Person", "key": "bob", "props": {}}},
        {"upsert": {"type": "City", "key": "oslo", "props": {}}},
        {"link": {"edge": "Knows", "from": "alice", "to": "bob", "props": {"since": 2019}}},
        {"link": {"edge": "LivesIn", "from": "alice", "to": "oslo"}}
    ])
}

fn steps(body: &Value) -> Vec<(String, String, Option<String>)> {
    body["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {body}"))
        .iter()
        .map(|s| (s["kind"].as_str().unwrap().to_string(), s["type"].as_str().unwrap().to_string(), s["property"].as_str().map(str::to_string)))
        .collect()
}

fn step(kind: &str, ty: &str, property: Option<&str>) -> (String, String, Option<String>) {
    (kind.to_string(), ty.to_string(), property.map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_property_is_added_old_rows_read_null_and_new_rows_set_it() {
    let g = Graph::new(V1).await;
    let before = g.change("main", seed()).await;
    let old_export = g.export("").await;

    let (status, body) = call_with(g.addr, "POST", "/schema/apply", V2, &[("x-request-id", "schema-1")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(steps(&body), vec![step("add_property", "Person", Some("email"))]);
    let applied = body["commit_id"].as_str().expect("a commit").to_string();
    assert_eq!(body["steps"][0], json!({"kind": "add_property", "type": "Person", "property": "email"}));
    assert_eq!(g.head("main").await, applied);
    assert_eq!(g.schema("").await, V2, "the text as sent, comments and all");
    assert_eq!(g.schema(&format!("?commit={before}")).await, V1, "an old commit keeps its schema");
    let (_, c) = call(g.addr, "GET", &format!("/commits/{applied}"), "").await;
    assert_eq!((&c["parents"], &c["request_id"], &c["actor_id"]), (&json!([before]), &json!("schema-1"), &json!("local")), "{c}");

    // Old rows read the new property as null, by key and by a Lance scan.
    let (s, r) = g.read("", json!({"match": {"type": "Person", "key": "alice"}})).await;
    assert_eq!((s, &r["rows"][0]["props"]), (200, &json!({"name": "alice", "age": 34, "email": null})), "{r}");
    let (s, r) = g.read("", json!({"match": {"type": "Person", "where": [{"prop": "email", "op": "is_null"}]}, "return": ["email"]})).await;
    assert_eq!((s, r["row_count"].as_u64()), (200, Some(2)), "{r}");
    // A new row, and an old one, can set it.
    g.change("main", json!([{"upsert": {"type": "Person", "key": "carol", "props": {"email": "c@x"}}}, {"upsert": {"type": "Person", "key": "bob", "props": {"email": "b@x"}}}])).await;
    let (s, r) = g.read("", json!({"match": {"type": "Person", "where": [{"prop": "email", "op": "prefix", "value": "b@"}]}})).await;
    assert_eq!((s, &r["rows"][0]["key"], &r["rows"][0]["props"]["email"]), (200, &json!("bob"), &json!("b@x")), "{r}");
    // The old commit is still read with the old schema: no email there.
    let (s, r) = g.read(&format!("?commit={before}"), json!({"match": {"type": "Person", "key": "alice"}})).await;
    assert_eq!((s, &r["rows"][0]["props"]), (200, &json!({"name": "alice", "age": 34})), "{r}");
    assert_eq!(g.export(&format!("?commit={before}")).await, old_export);
    let (s, r) = g.read(&format!("?commit={before}"), json!({"match": {"type": "Person", "where": [{"prop": "email", "op": "is_null"}]}})).await;
    assert_eq!(s, 400, "email is unknown at the old commit: {r}");

    // The same schema again changes nothing and writes nothing.
    let head = g.head("main").await;
    let (status, body) = g.apply("", V2).await;
    assert_eq!((status, &body), (200, &json!({"commit_id": null, "steps": []})));
    assert_eq!(g.head("main").await, head);

    // A restart keeps the schema, and the data under it.
    let export = g.export("").await;
    let g = g.restart().await;
    assert_eq!(g.schema("").await, V2);
    assert_eq!(g.schema(&format!("?commit={before}")).await, V1);
    assert_eq!(g.export("").await, export);
    let (s, r) = g.read("", json!({"match": {"type": "Person", "key": "carol"}})).await;
    assert_eq!((s, &r["rows"][0]["props"]["email"]), (200, &json!("c@x")), "{r}");
    g.change("main", json!([{"upsert": {"type": "Person", "key": "dave", "props": {"email": "d@x"}}}])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_needs_allow_data_loss_and_without_it_changes_nothing() {
    let g = Graph::new(V1).await;
    let before = g.change("main", seed()).await;
    let no_age = V1.replace(" age: I64?", "");
    let state = g.state("main").await;

    let (status, body) = g.apply("", &no_age).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("allow_data_loss=true"), "{body}");
    assert_eq!(steps(&body["details"]), vec![step("drop_property", "Person", Some("age"))]);
    assert_eq!(g.state("main").await, state, "schema, data and history unchanged");
    let (status, body) = g.apply("?allow_data_loss=false", &no_age).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(g.state("main").await, state);

    let (status, body) = g.apply("?allow_data_loss=true", &no_age).await;
    assert_eq!(status, 200, "{body}");
    let (_, r) = g.read("", json!({"match": {"type": "Person", "key": "alice"}})).await;
    assert_eq!(r["rows"][0]["props"], json!({"name": "alice"}), "{r}");
    let (s, r) = g.read("", json!({"match": {"type": "Person", "where": [{"prop": "age", "op": ">", "value": 1}]}})).await;
    assert_eq!(s, 400, "age is gone: {r}");
    // Writing the dropped property is refused; the rest still writes.
    let (s, r) = call(g.addr, "POST", "/change", &upsert_body("erin", json!({"age": 3}))).await;
    assert_eq!(s, 400, "{r}");
    g.change("main", json!([{"upsert": {"type": "Person", "key": "erin", "props": {}}}])).await;

    // Dropping a type: the others and their edges are untouched; old commits still read it.
    let no_knows = no_age.replace("edge Knows: Person -> Person { since: I64? }\n", "");
    let (status, body) = g.apply("?allow_data_loss=true", &no_knows).await;
    assert_eq!((status, steps(&body)), (200, vec![step("drop_type", "Knows", None)]), "{body}");
    let (s, r) = g.read("", json!({"match": {"type": "Person", "key": "alice"}, "traverse": [{"edge": "LivesIn"}]})).await;
    assert_eq!((s, &r["rows"][0]["key"]), (200, &json!("oslo")), "{r}");
    let (s, r) = g.read("", json!({"match": {"type": "Person", "key": "alice"}, "traverse": [{"edge": "Knows"}]})).await;
    assert_eq!(s, 400, "Knows is gone: {r}");
    let (_, snap) = call(g.addr, "GET", "/snapshot", "").await;
    let names: Vec<&str> = snap["tables"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Person", "City", "LivesIn"]);
    let old = g.export(&format!("?commit={before}")).await;
    assert!(old.contains("\"edge\":\"Knows\"") && old.contains("\"age\":34"), "{old}");

    // Added back with other properties, the type starts empty; old commits keep their edges.
    let knows_again = format!("{no_knows}edge Knows: Person -> Person {{ weight: F64? }}\n");
    let (status, body) = g.apply("", &knows_again).await;
    assert_eq!((status, steps(&body)), (200, vec![step("add_type", "Knows", None)]), "{body}");
    let (_, r) = g.read("", json!({"match": {"type": "Person", "key": "alice"}, "traverse": [{"edge": "Knows"}]})).await;
    assert_eq!(r["row_count"], json!(0), "{r}");
    g.change("main", json!([{"link": {"edge": "Knows", "from": "bob", "to": "alice", "props": {"weight": 0.5}}}])).await;
    let g = g.restart().await;
    let (_, r) = g.read("", json!({"match": {"type": "Person", "key": "bob"}, "traverse": [{"edge": "Knows"}]})).await;
    assert_eq!(r["rows"][0]["key"], json!("alice"), "{r}");
    assert_eq!(g.export(&format!("?commit={before}")).await, old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_refusals_bad_text_and_stale_heads_write_nothing() {
    let g = Graph::new(V1).await;
    g.change("main", seed()).await;
    let state = g.state("main").await;

    let (status, body) = g.apply("?dry_run=true", V2).await;
    assert_eq!((status, &body["commit_id"], &body["dry_run"]), (200, &Value::Null, &json!(true)), "{body}");
    assert_eq!(steps(&body), vec![step("add_property", "Person", Some("email"))]);
    let (status, body) = g.apply("?dry_run=true", &V1.replace("node City { name: String @key }\n", "").replace("edge LivesIn: Person -> City\n", "")).await;
    assert_eq!(status, 400, "a dry run of a drop without allow_data_loss says so: {body}");
    assert_eq!(g.state("main").await, state);

    // Changes no flag makes applicable, each with its reason in details.refused.
    for (pg, kind, target) in [
        (V1.replace("age: I64?", "age: I64? email: String"), "add_required_property", "email"),
        (V1.replace("age: I64?", "age: String?"), "change_property", "age"),
        (V1.replace("age: I64?", "age: I64"), "change_property", "age"),
        (V1.replace("name: String @key age", "id: String @key name: String? age"), "change_key", "name"),
        (V1.replace("edge LivesIn: Person -> City", "edge LivesIn: City -> Person"), "change_endpoints", "LivesIn"),
    ] {
        let (status, body) = g.apply("?allow_data_loss=true", &pg).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{pg}: {body}");
        let refused = body["details"]["refused"].as_array().unwrap_or_else(|| panic!("{body}"));
        assert!(
            refused.iter().any(|r| r["kind"] == kind && (r["property"] == target || r["type"] == target)),
            "{pg}: {body}"
        );
        assert!(body["details"]["steps"].is_array(), "{body}");
    }
    assert_eq!(g.state("main").await, state);

    // A bad .pg: 400 with the line and column.
    let (status, body) = g.apply("", "node Person {\n  name: Strin @key\n}\n").await;
    assert_eq!((status, &body["details"]), (400, &json!({"line": 2, "column": 9})), "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.starts_with("invalid schema: schema:2:9: unknown type \"Strin\"") && msg.contains('^'), "{msg}");
    let (status, body) = g.apply("", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = call_raw(g.addr, "POST", "/schema/apply", b"node \xff").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // ?if_commit= must name the head, dry or not; unknown parameters and branches are refused.
    let (status, body) = g.apply("?if_commit=01NOTTHEHEAD", V2).await;
    assert_eq!((status, body["code"].as_str()), (412, Some("precondition_failed")), "{body}");
    let (status, _) = g.apply("?if_commit=01NOTTHEHEAD&dry_run=true", V2).await;
    assert_eq!(status, 412);
    let (status, _) = g.apply("?dry_run=yes", V2).await;
    assert_eq!(status, 400);
    let (status, _) = g.apply("?force=true", V2).await;
    assert_eq!(status, 400);
    let (status, body) = g.apply("?branch=nope", V2).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    assert_eq!(g.state("main").await, state);
    let head = g.head("main").await;
    let (status, body) = g.apply(&format!("?if_commit={head}"), V2).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_type_on_a_branch_stays_there_until_merged() {
    let g = Graph::new(V1).await;
    g.change("main", seed()).await;
    let tag = "node Tag { name: String @key color: String? }\nedge Tagged: Person -> Tag\n";
    let with_tag = format!("{V1}{tag}");
    let (s, _) = call(g.addr, "POST", "/branches?branch=dev", "").await;
    assert_eq!(s, 201);
    let (status, body) = g.apply("?branch=dev", &with_tag).await;
    assert_eq!((status, steps(&body)), (200, vec![step("add_type", "Tag", None), step("add_type", "Tagged", None)]), "{body}");
    g.change("dev", json!([{"upsert": {"type": "Tag", "key": "red", "props": {"color": "#f00"}}}, {"link": {"edge": "Tagged", "from": "alice", "to": "red"}}])).await;

    // main has neither the type nor its rows.
    assert_eq!(g.schema("").await, V1);
    assert_eq!(g.schema("?branch=dev").await, with_tag);
    let (s, r) = g.read("", json!({"match": {"type": "Tag"}})).await;
    assert_eq!(s, 400, "{r}");
    let (s, r) = call(g.addr, "POST", "/change", &json!({"ops": [{"upsert": {"type": "Tag", "key": "x"}}]}).to_string()).await;
    assert_eq!(s, 400, "{r}");
    assert!(!g.export("").await.contains("Tag"));

    // A three-way merge needs the target to have the source's schema first.
    let other = g.change("main", json!([{"upsert": {"type": "Person", "key": "zed", "props": {}}}])).await;
    let (s, r) = call(g.addr, "POST", "/branches/merge?branch=dev&target=main", "").await;
    assert_eq!((s, r["code"].as_str()), (409, Some("conflict")), "{r}");
    assert_eq!(r["conflicts"], json!([{"table": "_schema", "key": "", "kind": "divergent_update"}]));
    assert_eq!(steps(&r["details"]), vec![step("add_type", "Tag", None), step("add_type", "Tagged", None)]);
    assert_eq!(g.head("main").await, other, "nothing was written");
    let (status, body) = g.apply("", &with_tag).await;
    assert_eq!(status, 200, "{body}");
    let (s, r) = call(g.addr, "POST", "/branches/merge?branch=dev&target=main", "").await;
    assert_eq!((s, r["result"].as_str()), (200, Some("merged")), "{r}");
    let (s, r) = g.read("", json!({"match": {"type": "Person", "key": "alice"}, "traverse": [{"edge": "Tagged"}]})).await;
    assert_eq!((s, &r["rows"][0]["props"]), (200, &json!({"name": "red", "color": "#f00"})), "{r}");
    let (s, r) = g.read("", json!({"match": {"type": "Person", "key": "zed"}})).await;
    assert_eq!((s, r["row_count"].as_u64()), (200, Some(1)), "{r}");

    // A branch made before a schema change on main merges without one, and
    // a fast-forward brings the source's schema with it.
    let (s, _) = call(g.addr, "POST", "/branches?branch=old", "").await;
    assert_eq!(s, 201);
    let (status, _) = g.apply("", &with_tag.replace("color: String?", "color: String? size: I64?")).await;
    assert_eq!(status, 200);
    g.change("old", json!([{"upsert": {"type": "Tag", "key": "blue", "props": {}}}])).await;
    g.change("main", json!([{"upsert": {"type": "Tag", "key": "red", "props": {"size": 3}}}])).await;
    let (s, r) = call(g.addr, "POST", "/branches/merge?branch=old&target=main", "").await;
    assert_eq!((s, r["result"].as_str()), (200, Some("merged")), "{r}");
    let (_, r) = g.read("", json!({"match": {"type": "Tag"}, "order_by": [{"prop": "name"}]})).await;
    assert_eq!(r["rows"], json!([
        {"type": "Tag", "key": "blue", "hops": 0, "props": {"name": "blue", "color": null, "size": null}},
        {"type": "Tag", "key": "red", "hops": 0, "props": {"name": "red", "color": "#f00", "size": 3}}
    ]));
    let (s, _) = call(g.addr, "POST", "/branches?branch=ff", "").await;
    assert_eq!(s, 201);
    let (status, _) = g.apply("?branch=ff", &format!("{with_tag}node Note {{ id: String @key }}\n").replace("color: String?", "color: String? size: I64?")).await;
    assert_eq!(status, 200);
    let (s, r) = call(g.addr, "POST", "/branches/merge?branch=ff&target=main", "").await;
    assert_eq!((s, r["result"].as_str()), (200, Some("fast_forward")), "{r}");
    assert!(g.schema("").await.contains("node Note"));

    // All of it after a restart.
    let export = g.export("").await;
    let g = g.restart().await;
    assert_eq!(g.export("").await, export);
    assert!(g.schema("").await.contains("node Note"));
    assert_eq!(g.schema("?branch=dev").await, with_tag);
    g.change("main", json!([{"upsert": {"type": "Note", "key": "n1"}}])).await;
}

/// A crash after a schema apply changed a table and before its commit row:
/// the change is invisible, the next open puts the table back, and applying
/// the schema again works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_that_crashed_before_its_commit_is_undone_on_open() {
    use lance::dataset::NewColumnTransform;
    use omnigraph_worker::store::location::Location;

    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("g").to_str().unwrap().to_string();
    let store = Store::init("g", &uri, V1, "test").await.unwrap();
    common::apply(&store, "main", seed()).await;
    drop(store);

    // The "crash": Person got its column, the commit row never landed.
    let loc = Location::parse(&uri).unwrap();
    let mut ds = loc.open("Person", None).await.unwrap();
    let email = arrow_schema::Schema::new(vec![arrow_schema::Field::new("email", arrow_schema::DataType::Utf8, true)]);
    ds.add_columns(NewColumnTransform::AllNulls(Arc::new(email)), None, None).await.unwrap();

    let store = Arc::new(Store::open("g", &uri).await.unwrap());
    assert!(loc.open("Person", None).await.unwrap().schema().field("email").is_none(), "the table was put back");
    let addr = common::serve(store).await;
    let (status, body) = call(addr, "GET", "/schema", "").await;
    assert_eq!((status, body), (200, Value::String(V1.into())));
    let (status, body) = call(addr, "POST", "/schema/apply", V2).await;
    assert_eq!(status, 200, "{body}");
    let (_, r) = call(addr, "POST", "/read", &json!({"match": {"type": "Person", "key": "alice"}}).to_string()).await;
    assert_eq!(r["rows"][0]["props"], json!({"name": "alice", "age": 34, "email": null}), "{r}");
}

/// New properties of every kind of type take values on old and new rows,
/// on a branch's own lineage, and read back the same after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_properties_of_every_type_take_values_on_old_and_new_rows() {
    let g = Graph::new(V1).await;
    g.change("main", seed()).await;
    let (s, _) = call(g.addr, "POST", "/branches?branch=dev", "").await;
    assert_eq!(s, 201);
    let props = "tags: [String]? born: Date? seen: DateTime? score: F32? ok: Bool? n: I32? blob: Blob? ws: [I64]?";
    let v2 = V1.replace("age: I64? }", &format!("age: I64? {props} }}")).replace("{ since: I64? }", "{ since: I64? weight: F64? }");
    let (status, body) = g.apply("?branch=dev", &v2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(steps(&body).len(), 9, "{body}");
    let values = json!({"tags": ["a", "b"], "born": "1990-02-03", "seen": "2024-01-01T00:00:00.000000Z", "score": 1.5, "ok": true, "n": 7, "blob": "AAE=", "ws": [1, 2]});
    g.change("dev", json!([
        {"upsert": {"type": "Person", "key": "alice", "props": values.clone()}},
        {"upsert": {"type": "Person", "key": "new", "props": values.clone()}},
        {"link": {"edge": "Knows", "from": "alice", "to": "bob", "props": {"weight": 0.25}}}
    ]))
    .await;
    let check = |r: &Value, key: &str| {
        let row = r["rows"].as_array().unwrap().iter().find(|x| x["key"] == key).unwrap_or_else(|| panic!("{key} in {r}")).clone();
        for (k, v) in values.as_object().unwrap() {
            assert_eq!(&row["props"][k], v, "{key}.{k}: {row}");
        }
    };
    let (_, r) = g.read("?branch=dev", json!({"match": {"type": "Person"}})).await;
    check(&r, "alice");
    check(&r, "new");
    let (_, r) = g.read("?branch=dev", json!({"match": {"type": "Person", "where": [{"prop": "born", "op": "<", "value": "2000-01-01"}]}})).await;
    assert_eq!(r["row_count"], json!(2), "{r}");
    let (_, main_people) = g.read("", json!({"match": {"type": "Person", "key": "alice"}})).await;
    assert_eq!(main_people["rows"][0]["props"], json!({"name": "alice", "age": 34}), "main is untouched");
    let export = g.export("?branch=dev").await;
    let g = g.restart().await;
    assert_eq!(g.export("?branch=dev").await, export);
    let (_, r) = g.read("?branch=dev", json!({"match": {"type": "Person", "key": "alice"}, "traverse": [{"edge": "Knows"}]})).await;
    assert_eq!(r["rows"][0]["key"], json!("bob"), "{r}");
}
