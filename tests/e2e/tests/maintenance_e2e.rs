//! `POST /graphs/{id}/maintenance` through the gateway (issue 8, DESIGN.md
//! section 5): an admin gets 200 with the three counters; a token whose
//! policies do not permit `maintain` gets 403 naming it, and no token 401;
//! the gateway hands `limits.retain_commits`/`retain_days` to the worker, so
//! a commit past them answers 404 `expired` afterwards while the head and
//! the retained commits export as before.

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ROOT: (&str, &str) = ("authorization", "Bearer tok-root");
const TEAM: (&str, &str) = ("authorization", "Bearer tok-team");

fn change(gw: &Gateway, key: &str, age: i64) -> String {
    let body = json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {"age": age}}}]}).to_string();
    let r = call("POST", &gw.url("/graphs/alpha/change"), Some(body.as_bytes()), &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["commit_id"].as_str().expect("commit_id").to_string()
}

fn export(gw: &Gateway, query: &str) -> Resp {
    call("POST", &gw.url(&format!("/graphs/alpha/export{query}")), None, &[ROOT])
}

#[test]
fn maintenance_through_the_gateway() {
    let team = TestToken { token: "tok-team", actor: "tm", groups: &["team"], tenant: None };
    let graphs = "  alpha:\n    uri: data/alpha\n    schema: { file: s.pg }\n    policy: { file: policies/alpha.cedar }\n";
    // Background runs off, so only the requests below change anything.
    let limits = "limits:\n  retain_commits: 3\n  retain_days: 0\n  maintenance_interval_s: 0\n  maintenance_after_commits: 0\n";
    let env = ConfigDir::with("", limits, &[ROOT_TOKEN, team], graphs);
    write_file(env.path(), "policies/alpha.cedar", TEAM_POLICY);
    let gw = env.start();

    let commits: Vec<String> = (0..12).map(|i| change(&gw, &format!("p{}", i % 4), i)).collect();
    let head = export(&gw, "");
    let recent = export(&gw, &format!("?commit={}", commits[10]));
    assert_eq!((head.status, recent.status), (200, 200));

    // Not permitted `maintain`: 403 naming the action; no token: 401. Nothing ran.
    let denied = call("POST", &gw.url("/graphs/alpha/maintenance"), None, &[TEAM]);
    assert_eq!((denied.status, denied.body["code"].as_str()), (403, Some("forbidden")), "{:?}", denied.body);
    assert_eq!(denied.body["details"]["action"], "maintain", "{:?}", denied.body);
    assert_eq!(call("POST", &gw.url("/graphs/alpha/maintenance"), None, &[]).status, 401);
    assert_eq!(export(&gw, &format!("?commit={}", commits[0])).status, 200, "a denied run removed nothing");

    // The route takes no query keys and only POST.
    let r = call("POST", &gw.url("/graphs/alpha/maintenance?branch=main"), None, &[ROOT]);
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("bad_request")), "{:?}", r.body);
    assert_eq!(call("GET", &gw.url("/graphs/alpha/maintenance"), None, &[ROOT]).status, 405);

    let r = call("POST", &gw.url("/graphs/alpha/maintenance"), None, &[ROOT]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut keys: Vec<&String> = r.body.as_object().expect("an object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["bytes_freed", "compacted_fragments", "removed_versions"], "{:?}", r.body);
    for k in keys {
        assert!(r.body[k].as_u64().is_some_and(|n| n > 0), "{k}: {:?}", r.body);
    }

    // The compaction is a commit by the caller on top of the old head, with the same content.
    let log = call("GET", &gw.url("/graphs/alpha/commits"), None, &[ROOT]);
    let newest: &Value = &log.body["commits"][0];
    assert_eq!((&newest["actor_id"], &newest["parents"]), (&json!("root"), &json!([commits[11]])), "{newest}");
    assert_eq!(export(&gw, "").body, head.body, "the head reads as before");
    assert_eq!(export(&gw, &format!("?commit={}", commits[10])).body, recent.body, "a retained commit reads as before");

    // Past limits.retain_commits: 404 with the reason; its record stays.
    let gone = export(&gw, &format!("?commit={}", commits[0]));
    assert_eq!((gone.status, gone.body["code"].as_str()), (404, Some("not_found")), "{:?}", gone.body);
    assert_eq!(gone.body["details"], json!({"reason": "expired", "commit_id": commits[0]}));
    assert!(gone.body["error"].as_str().unwrap().contains("limits.retain_commits"), "{:?}", gone.body);
    let record = call("GET", &gw.url(&format!("/graphs/alpha/commits/{}", commits[0])), None, &[ROOT]);
    assert_eq!(record.status, 200, "{:?}", record.body);
}
