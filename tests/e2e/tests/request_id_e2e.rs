//! The request id reaches the commit log: a change sent through the gateway
//! with `x-request-id: my-req-1` is found in `/commits` with that id, and a
//! change sent without one records the id the gateway made for it (the one
//! its answer carries back). A worker run directly, without the header,
//! records `null`.

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");

fn upsert(key: &str) -> Vec<u8> {
    json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {}}}]}).to_string().into_bytes()
}

/// The commit `id` as `/commits` lists it (and `/commits/{id}` shows it the same).
fn listed(gw: &Gateway, id: &str) -> Value {
    let all = call("GET", &gw.url("/graphs/alpha/commits"), None, &[ROOT]);
    assert_eq!(all.status, 200, "{:?}", all.body);
    let c = all.body["commits"].as_array().expect("commits").iter().find(|c| c["commit_id"] == id).cloned().unwrap_or_else(|| panic!("{id} not in {:?}", all.body));
    let one = call("GET", &gw.url(&format!("/graphs/alpha/commits/{id}")), None, &[ROOT]);
    assert_eq!((one.status, &one.body), (200, &c));
    c
}

#[test]
fn the_gateway_request_id_is_stored_in_the_commit() {
    let env = ConfigDir::admin("", "", &["alpha"]);
    let gw = env.start();

    let given = call("POST", &gw.url("/graphs/alpha/change"), Some(&upsert("a")), &[ROOT, ("x-request-id", "my-req-1")]);
    assert_eq!(given.status, 200, "{:?}", given.body);
    assert_eq!(given.header("x-request-id"), Some("my-req-1"));
    let c = listed(&gw, given.body["commit_id"].as_str().expect("commit_id"));
    assert_eq!((&c["request_id"], &c["actor_id"]), (&json!("my-req-1"), &json!("root")), "{c}");

    let made = call("POST", &gw.url("/graphs/alpha/change"), Some(&upsert("b")), &[ROOT]);
    assert_eq!(made.status, 200, "{:?}", made.body);
    let id = made.header("x-request-id").expect("the gateway answers with the id it made").to_string();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let c = listed(&gw, made.body["commit_id"].as_str().expect("commit_id"));
    assert_eq!(c["request_id"], json!(id), "{c}");

    // A malformed client id is replaced by the gateway, and the replacement is stored.
    let replaced = call("POST", &gw.url("/graphs/alpha/change"), Some(&upsert("c")), &[ROOT, ("x-request-id", "not valid!")]);
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    let id = replaced.header("x-request-id").expect("x-request-id").to_string();
    assert_ne!(id, "not valid!");
    assert_eq!(listed(&gw, replaced.body["commit_id"].as_str().expect("commit_id"))["request_id"], json!(id));
}

#[test]
fn a_direct_call_without_the_header_records_null() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = write_file(tmp.path(), "s.pg", SOCIAL_SCHEMA);
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "r", uri: &tmp.path().join("g"), init_schema: Some(&schema), key: None });
    let r = call("POST", &w.url("/change"), Some(&upsert("a")), &[]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let c = get(&w.url(&format!("/commits/{}", r.body["commit_id"].as_str().expect("commit_id"))));
    assert_eq!((c.status, &c.body["request_id"], &c.body["actor_id"]), (200, &Value::Null, &json!("local")), "{:?}", c.body);
    let with = call("POST", &w.url("/change"), Some(&upsert("b")), &[("x-request-id", "dev-1")]);
    let c = get(&w.url(&format!("/commits/{}", with.body["commit_id"].as_str().expect("commit_id"))));
    assert_eq!(c.body["request_id"], json!("dev-1"));
}
