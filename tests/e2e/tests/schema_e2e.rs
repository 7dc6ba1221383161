//! `POST /schema/apply` through the gateway (issue 8, DESIGN.md section 5):
//! a new optional property is applied as one commit, old rows read it as
//! null and new rows set it; a drop without `allow_data_loss` is 400 and
//! changes nothing (schema, head and export byte for byte); with it, the drop
//! applies and old commits still read what they had; a dry run writes
//! nothing; `GET /schema?commit=OLD` shows the old schema; a bad `.pg` is
//! 400 naming the line and column; a worker that crashes and comes back
//! keeps the new schema.

use std::time::Duration;

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
const PG: (&str, &str) = ("content-type", "text/plain");

fn apply(gw: &Gateway, query: &str, pg: &str) -> Resp {
    call("POST", &gw.url(&format!("/graphs/alpha/schema/apply{query}")), Some(pg.as_bytes()), &[ROOT, PG])
}

fn schema(gw: &Gateway, query: &str) -> String {
    let r = call("GET", &gw.url(&format!("/graphs/alpha/schema{query}")), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body.as_str().expect("the .pg text").to_string()
}

fn export(gw: &Gateway, query: &str) -> String {
    let r = call("POST", &gw.url(&format!("/graphs/alpha/export{query}")), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body.as_str().expect("NDJSON").to_string()
}

fn head(gw: &Gateway) -> String {
    let r = call("GET", &gw.url("/graphs/alpha/snapshot"), None, &[ROOT]);
    r.body["commit_id"].as_str().expect("commit_id").to_string()
}

fn change(gw: &Gateway, ops: Value) -> Resp {
    call("POST", &gw.url("/graphs/alpha/change"), Some(json!({ "ops": ops }).to_string().as_bytes()), &[ROOT])
}

fn read(gw: &Gateway, query: &str, q: Value) -> Resp {
    call("POST", &gw.url(&format!("/graphs/alpha/read{query}")), Some(q.to_string().as_bytes()), &[ROOT])
}

fn steps(v: &Value) -> Vec<Value> {
    v["steps"].as_array().unwrap_or_else(|| panic!("no steps in {v}")).clone()
}

fn worker_pid(gw: &Gateway) -> i32 {
    children_of(gw.proc.pid()).into_iter().find(|(_, cmd)| cmd.contains("--graph-id alpha ")).map(|(p, _)| p).expect("alpha's worker")
}

#[test]
fn schema_apply_through_the_gateway() {
    let env = ConfigDir::admin("", "", &["alpha"]);
    let gw = env.start();
    let seed = change(
        &gw,
        json!([
            {"upsert": {"type": "Person", "key": "alice", "props": {"age": 34}}},
            {"upsert": {"type": "Person", "key": "bob", "props": {}}},
            {"upsert": {"type": "City", "key": "oslo", "props": {"country": "NO"}}},
            {"link": {"edge": "Knows", "from": "alice", "to": "bob", "props": {"since": "2020-01-01"}}},
            {"link": {"edge": "LivesIn", "from": "alice", "to": "oslo"}}
        ]),
    );
    assert_eq!(seed.status, 200, "{:?}", seed.body);
    let before = head(&gw);
    assert_eq!(schema(&gw, ""), SOCIAL_SCHEMA);
    let v2 = SOCIAL_SCHEMA.replace("tags: [String]? }", "tags: [String]?  email: String? }");
    assert_ne!(v2, SOCIAL_SCHEMA);

    // A dry run answers the plan and writes nothing.
    let dry = apply(&gw, "?dry_run=true", &v2);
    assert_eq!((dry.status, &dry.body["commit_id"]), (200, &Value::Null), "{:?}", dry.body);
    assert_eq!(steps(&dry.body), vec![json!({"kind": "add_property", "type": "Person", "property": "email"})]);
    assert_eq!((head(&gw), schema(&gw, "")), (before.clone(), SOCIAL_SCHEMA.to_string()));

    // Applied: one commit, with its request id; old rows read the new property as null.
    let r = call("POST", &gw.url("/graphs/alpha/schema/apply"), Some(v2.as_bytes()), &[ROOT, PG, ("x-request-id", "schema-e2e-1")]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let applied = r.body["commit_id"].as_str().expect("a commit").to_string();
    assert_eq!(steps(&r.body), steps(&dry.body));
    assert_eq!(head(&gw), applied);
    let c = call("GET", &gw.url(&format!("/graphs/alpha/commits/{applied}")), None, &[ROOT]);
    assert_eq!((&c.body["parents"], &c.body["actor_id"], &c.body["request_id"]), (&json!([before]), &json!("root"), &json!("schema-e2e-1")), "{:?}", c.body);
    let alice = read(&gw, "", json!({"match": {"type": "Person", "key": "alice"}, "return": ["age", "email"]}));
    assert_eq!(alice.body["rows"][0]["props"], json!({"age": 34, "email": null}), "{:?}", alice.body);
    assert_eq!(change(&gw, json!([{"upsert": {"type": "Person", "key": "carol", "props": {"email": "carol@example.com"}}}])).status, 200);
    let carol = read(&gw, "", json!({"match": {"type": "Person", "where": [{"prop": "email", "op": "=", "value": "carol@example.com"}]}}));
    assert_eq!((carol.body["row_count"].as_u64(), &carol.body["rows"][0]["key"]), (Some(1), &json!("carol")), "{:?}", carol.body);

    // The old commit still has the old schema.
    assert_eq!(schema(&gw, &format!("?commit={before}")), SOCIAL_SCHEMA);
    assert_eq!(schema(&gw, ""), v2);
    let old = read(&gw, &format!("?commit={before}"), json!({"match": {"type": "Person", "key": "alice"}}));
    assert_eq!(old.body["rows"][0]["props"], json!({"name": "alice", "age": 34, "tags": null}), "{:?}", old.body);

    // A drop without allow_data_loss: 400 with the steps, and nothing changes.
    let v3 = v2.replace("  age: I64?", "").replace("edge Knows: Person -> Person { since: Date? }\n", "");
    let (h, s, e) = (head(&gw), schema(&gw, ""), export(&gw, ""));
    let refused = apply(&gw, "", &v3);
    assert_eq!((refused.status, refused.body["code"].as_str()), (400, Some("bad_request")), "{:?}", refused.body);
    assert!(refused.body["error"].as_str().unwrap().contains("allow_data_loss=true"), "{:?}", refused.body);
    assert_eq!(
        steps(&refused.body["details"]),
        vec![json!({"kind": "drop_property", "type": "Person", "property": "age"}), json!({"kind": "drop_type", "type": "Knows"})]
    );
    assert_eq!((head(&gw), schema(&gw, ""), export(&gw, "")), (h.clone(), s, e.clone()), "schema, head and data unchanged");

    // A stale head is 412, and a bad .pg is 400 naming the spot; neither writes.
    let stale = apply(&gw, &format!("?allow_data_loss=true&if_commit={before}"), &v3);
    assert_eq!((stale.status, stale.body["code"].as_str()), (412, Some("precondition_failed")), "{:?}", stale.body);
    let bad = apply(&gw, "", "node Person {\n  name: Strin @key\n}\n");
    assert_eq!((bad.status, &bad.body["details"]), (400, &json!({"line": 2, "column": 9})), "{:?}", bad.body);
    assert!(bad.body["error"].as_str().unwrap().contains("unknown type \"Strin\""), "{:?}", bad.body);
    assert_eq!(head(&gw), h);

    // With allow_data_loss the drop applies; other types are untouched and old commits still read theirs.
    let dropped = apply(&gw, "?allow_data_loss=true", &v3);
    assert_eq!(dropped.status, 200, "{:?}", dropped.body);
    let alice = read(&gw, "", json!({"match": {"type": "Person", "key": "alice"}, "traverse": [{"edge": "LivesIn"}]}));
    assert_eq!((alice.status, &alice.body["rows"][0]["key"]), (200, &json!("oslo")), "{:?}", alice.body);
    let alice = read(&gw, "", json!({"match": {"type": "Person", "key": "alice"}}));
    assert_eq!(alice.body["rows"][0]["props"], json!({"name": "alice", "tags": null, "email": null}), "{:?}", alice.body);
    assert_eq!(read(&gw, "", json!({"match": {"type": "Person"}, "traverse": [{"edge": "Knows"}]})).status, 400, "Knows is gone");
    assert_eq!(export(&gw, &format!("?commit={h}")), e, "the commit before the drop exports as before");
    let after_drop = export(&gw, "");

    // A worker that crashes comes back with the new schema and its data.
    let pid = worker_pid(&gw);
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let back = eventually(Duration::from_secs(60), || {
        let r = call("GET", &gw.url("/graphs/alpha/schema"), None, &[ROOT]);
        r.status == 200 && worker_pid_changed(&gw, pid)
    });
    assert!(back, "the worker came back");
    assert_eq!(schema(&gw, ""), v3);
    assert_eq!(schema(&gw, &format!("?commit={before}")), SOCIAL_SCHEMA);
    assert_eq!(export(&gw, ""), after_drop);
    assert_eq!(change(&gw, json!([{"upsert": {"type": "Person", "key": "dave", "props": {"email": "d@example.com"}}}])).status, 200);
}

fn worker_pid_changed(gw: &Gateway, old: i32) -> bool {
    children_of(gw.proc.pid()).into_iter().any(|(p, cmd)| p != old && cmd.contains("--graph-id alpha "))
}
