//! End-to-end tests of branches, merges and conditional writes through the
//! gateway (issue 8, DESIGN.md section 5): what a client sees, and what
//! Cedar lets each actor do with protected and unreadable branches.

use std::sync::{Arc, Barrier};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
const TEAM: (&str, &str) = ("authorization", "Bearer tok-team");

/// Admins may do anything; the team's rules are [`TEAM_POLICY`].
fn start() -> (ConfigDir, Gateway) {
    let env = ConfigDir::team("", TEAM_POLICY);
    let gw = env.start();
    (env, gw)
}

fn upsert(key: &str, props: Value) -> Value {
    json!({"upsert": {"type": "Person", "key": key, "props": props}})
}

fn change(gw: &Gateway, auth: (&str, &str), query: &str, ops: Vec<Value>) -> Resp {
    post_with(&gw.url(&format!("/graphs/alpha/change?{query}")), &json!({"ops": ops}), &[auth])
}

/// A person's properties on a branch, or None when the node is absent.
fn person(gw: &Gateway, branch: &str, key: &str) -> Option<Value> {
    let r = post_with(&gw.url(&format!("/graphs/alpha/read?branch={branch}")), &json!({"match": {"type": "Person", "key": key}}), &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["rows"].as_array().unwrap().first().map(|row| row["props"].clone())
}

fn head(gw: &Gateway, branch: &str) -> String {
    let r = call("GET", &gw.url("/graphs/alpha/branches"), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = r.body["branches"].as_array().unwrap().iter().find(|b| b["name"] == branch).unwrap_or_else(|| panic!("no branch {branch}: {:?}", r.body));
    b["head"].as_str().unwrap().to_string()
}

fn branch(gw: &Gateway, auth: (&str, &str), name: &str, from: &str) -> Resp {
    call("POST", &gw.url(&format!("/graphs/alpha/branches?branch={name}&from={from}")), None, &[auth])
}

fn merge(gw: &Gateway, src: &str, dst: &str, extra: &str) -> Resp {
    call("POST", &gw.url(&format!("/graphs/alpha/branches/merge?branch={src}&target={dst}{extra}")), None, &[ROOT])
}

#[test]
fn a_branch_is_isolated_until_it_is_merged_as_a_fast_forward() {
    let (_env, gw) = start();
    assert_eq!(change(&gw, ROOT, "", vec![upsert("alice", json!({"age": 30}))]).status, 200);
    let r = branch(&gw, ROOT, "dev", "main");
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!((r.body["name"].as_str(), r.body["from"].as_str()), (Some("dev"), Some("main")));
    assert_eq!(r.body["head"].as_str().unwrap(), head(&gw, "main"), "a new branch starts at its base's head");
    assert_eq!(branch(&gw, ROOT, "dev", "main").status, 409, "a branch that exists");
    assert_eq!(branch(&gw, ROOT, "x", "nope").status, 404, "an unknown base");

    assert_eq!(change(&gw, ROOT, "branch=dev", vec![upsert("bob", json!({"age": 41})), upsert("alice", json!({"age": 31}))]).status, 200);
    assert_eq!(person(&gw, "dev", "bob").unwrap()["age"], 41);
    assert_eq!(person(&gw, "main", "bob"), None, "main does not see the branch's new node");
    assert_eq!(person(&gw, "main", "alice").unwrap()["age"], 30, "nor its update");

    let dry = merge(&gw, "dev", "main", "&dry_run=true");
    assert_eq!((dry.status, dry.body["result"].as_str()), (200, Some("fast_forward")), "{:?}", dry.body);
    assert_eq!(person(&gw, "main", "bob"), None, "a dry run writes nothing");
    let m = merge(&gw, "dev", "main", "");
    assert_eq!((m.status, m.body["result"].as_str()), (200, Some("fast_forward")), "{:?}", m.body);
    assert_eq!(m.body["commit_id"].as_str().unwrap(), head(&gw, "dev"));
    assert_eq!(head(&gw, "main"), head(&gw, "dev"));
    assert_eq!(person(&gw, "main", "bob").unwrap()["age"], 41);
    assert_eq!(merge(&gw, "dev", "main", "").body["result"], "already_up_to_date");

    let del = call("DELETE", &gw.url("/graphs/alpha/branches/dev"), None, &[ROOT]);
    assert_eq!((del.status, del.body["deleted"].as_bool()), (200, Some(true)), "{:?}", del.body);
    assert_eq!(call("DELETE", &gw.url("/graphs/alpha/branches/main"), None, &[ROOT]).status, 400, "main stays");
}

#[test]
fn diverged_branches_merge_three_ways_by_property_or_report_every_conflict() {
    let (_env, gw) = start();
    assert_eq!(change(&gw, ROOT, "", vec![upsert("alice", json!({"age": 30, "tags": ["a"]})), upsert("carol", json!({"age": 50}))]).status, 200);
    assert_eq!(branch(&gw, ROOT, "dev", "main").status, 201);
    // Both sides move on: different nodes, and different properties of one node.
    assert_eq!(change(&gw, ROOT, "", vec![upsert("m1", json!({})), upsert("alice", json!({"age": 31, "tags": ["a"]}))]).status, 200);
    assert_eq!(change(&gw, ROOT, "branch=dev", vec![upsert("d1", json!({})), upsert("alice", json!({"age": 30, "tags": ["a", "b"]}))]).status, 200);
    let (main_before, dev_head) = (head(&gw, "main"), head(&gw, "dev"));

    let m = merge(&gw, "dev", "main", "");
    assert_eq!((m.status, m.body["result"].as_str()), (200, Some("merged")), "{:?}", m.body);
    let commit = m.body["commit_id"].as_str().unwrap().to_string();
    let c = call("GET", &gw.url(&format!("/graphs/alpha/commits/{commit}")), None, &[ROOT]);
    assert_eq!(c.status, 200, "{:?}", c.body);
    assert_eq!(c.body["parents"], json!([main_before, dev_head]), "two parents, the target's head first");
    assert!(person(&gw, "main", "m1").is_some() && person(&gw, "main", "d1").is_some(), "both sides' nodes");
    assert_eq!(person(&gw, "main", "alice").unwrap(), json!({"name": "alice", "age": 31, "tags": ["a", "b"]}), "each side's property");

    // Now a real conflict: the same property to different values, and a delete against an update.
    assert_eq!(branch(&gw, ROOT, "fix", "main").status, 201);
    assert_eq!(change(&gw, ROOT, "", vec![upsert("carol", json!({"age": 51})), json!({"delete": {"type": "Person", "key": "m1"}})]).status, 200);
    assert_eq!(change(&gw, ROOT, "branch=fix", vec![upsert("carol", json!({"age": 52})), upsert("m1", json!({"age": 1}))]).status, 200);
    let main_head = head(&gw, "main");
    for extra in ["&dry_run=true", ""] {
        let r = merge(&gw, "fix", "main", extra);
        assert_eq!((r.status, r.body["code"].as_str()), (409, Some("conflict")), "{extra}: {:?}", r.body);
        let kinds: Vec<(String, String)> = r.body["conflicts"].as_array().unwrap().iter().map(|c| (c["key"].as_str().unwrap().to_string(), c["kind"].as_str().unwrap().to_string())).collect();
        assert!(kinds.contains(&("carol".into(), "divergent_update".into())), "{kinds:?}");
        assert!(kinds.contains(&("m1".into(), "delete_vs_update".into())), "{kinds:?}");
        assert_eq!(head(&gw, "main"), main_head, "a conflicting merge writes nothing");
    }
    assert_eq!(person(&gw, "main", "carol").unwrap()["age"], 51);
}

#[test]
fn two_writers_with_the_same_if_commit_one_wins_one_gets_412() {
    let (_env, gw) = start();
    assert_eq!(change(&gw, ROOT, "", vec![upsert("seed", json!({}))]).status, 200);
    let base = head(&gw, "main");
    let gw = Arc::new(gw);
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = (0..2)
        .map(|i| {
            let (gw, barrier, base) = (gw.clone(), barrier.clone(), base.clone());
            std::thread::spawn(move || {
                barrier.wait();
                change(&gw, ROOT, &format!("if_commit={base}"), vec![upsert(&format!("racer{i}"), json!({}))])
            })
        })
        .collect();
    let mut statuses: Vec<u16> = racers.into_iter().map(|t| t.join().unwrap().status).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 412]);
    let present = (0..2).filter(|i| person(&gw, "main", &format!("racer{i}")).is_some()).count();
    assert_eq!(present, 1, "the loser wrote nothing");
    let stale = change(&gw, ROOT, &format!("if_commit={base}"), vec![upsert("late", json!({}))]);
    assert_eq!((stale.status, stale.body["code"].as_str()), (412, Some("precondition_failed")));
}

#[test]
fn cedar_guards_protected_branches_and_branches_one_may_not_read() {
    let (_env, gw) = start();
    assert_eq!(branch(&gw, ROOT, "dev", "main").status, 201);
    assert_eq!(branch(&gw, ROOT, "secret", "main").status, 201);
    assert_eq!(change(&gw, ROOT, "branch=secret", vec![upsert("hidden", json!({}))]).status, 200);

    let to_main = change(&gw, TEAM, "branch=main", vec![upsert("t1", json!({}))]);
    assert_eq!(to_main.status, 403, "main is protected: {:?}", to_main.body);
    assert_eq!(to_main.body["details"]["action"], "change");
    assert_eq!(change(&gw, TEAM, "branch=dev", vec![upsert("t1", json!({}))]).status, 200, "dev is not");

    let r = branch(&gw, TEAM, "x", "dev");
    assert_eq!(r.status, 201, "a readable base: {:?}", r.body);
    let copy = branch(&gw, TEAM, "y", "secret");
    assert_eq!(copy.status, 403, "copying a branch is reading it: {:?}", copy.body);
    assert_eq!((copy.body["details"]["action"].as_str(), copy.body["details"]["branch"].as_str()), (Some("read"), Some("secret")));
    let listed = call("GET", &gw.url("/graphs/alpha/branches"), None, &[ROOT]);
    assert!(!listed.body["branches"].as_array().unwrap().iter().any(|b| b["name"] == "y"), "nothing was created");
}

/// A branch name may hold '/': it is created, changed and merged through
/// `?branch=`, and deleted through its path segment, where it travels as
/// `%2F` (the gateway allows an encoded '/' in that one segment only).
#[test]
fn a_branch_with_a_slash_in_its_name_is_deleted_through_the_gateway() {
    let (_env, gw) = start();
    assert_eq!(branch(&gw, ROOT, "feature%2Fx", "main").status, 201);
    assert_eq!(change(&gw, ROOT, "branch=feature%2Fx", vec![upsert("fx", json!({"age": 1}))]).status, 200);
    assert!(person(&gw, "feature%2Fx", "fx").is_some());
    let gone = call("DELETE", &gw.url("/graphs/alpha/branches/feature%2Fx"), None, &[ROOT]);
    assert_eq!(gone.status, 200, "{:?}", gone.body);
    assert_eq!(gone.body["name"], "feature/x");
    let list = call("GET", &gw.url("/graphs/alpha/branches"), None, &[ROOT]);
    assert!(!list.body["branches"].as_array().unwrap().iter().any(|b| b["name"] == "feature/x"), "{:?}", list.body);
    // Anywhere else an encoded '/' is still refused.
    assert_eq!(call("GET", &gw.url("/graphs/alpha/commits/a%2Fb"), None, &[ROOT]).status, 400);
}
