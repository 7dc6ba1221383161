//! End-to-end tests of the security team's tools: `policy test` (decided by
//! the same function as live requests), and explained denials.

use std::path::Path;

use omnigraph_e2e::*;
use serde_json::json;

fn policy_test(file: &Path, config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin("omnigraph-gateway")).args(["policy", "test"]).arg(file).arg("--config").arg(config).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn the_shipped_policy_tests_pass() {
    let (code, text) = policy_test(&repo().join("policies/tests.yaml"), &repo().join("config/omnigraph.yaml"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(" 0 failed") && !text.contains("FAIL "), "{text}");
}

/// The team's rules ([`TEAM_POLICY`]) and a forbid that even admins meet.
fn team_policy() -> String {
    format!("{TEAM_POLICY}\n@id(\"no-deletes-on-friday\")\nforbid (principal, action == Omnigraph::Action::\"branch_delete\", resource);\n")
}

fn team_env(extra_server: &str) -> ConfigDir {
    ConfigDir::team(extra_server, &team_policy())
}

#[test]
fn a_failing_case_exits_non_zero_and_is_named() {
    let env = team_env("");
    let cases = write_file(
        env.path(),
        "cases.yaml",
        r#"cases:
  - name: team changes dev
    actor: { id: tm }
    action: change
    graph: alpha
    branch: dev
    expect: allow
    policies: [team-change-unprotected]
  - name: WRONG team changes main
    actor: { id: tm }
    action: change
    graph: alpha
    branch: main
    expect: allow
  - name: WRONG ids for the admin
    actor: { id: root }
    action: read
    graph: alpha
    expect: allow
    policies: [team-read]
  - name: an unknown graph cannot pass
    actor: { id: root }
    action: read
    graph: nope
    expect: allow
"#,
    );
    let (code, text) = policy_test(&cases, &env.cfg);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("PASS    team changes dev"), "{text}");
    assert!(text.contains("WRONG team changes main: expected allow, got deny"), "{text}");
    assert!(text.contains("WRONG ids for the admin: expected determining policies [team-read], got [admins-all]"), "{text}");
    assert!(text.contains("an unknown graph cannot pass: graph \"nope\" is not in the config"), "{text}");
    assert!(text.contains("4 cases: 1 passed, 3 failed"), "{text}");
}

/// Each case is decided as the live gateway decides the same request: the
/// tool and the proxy share one decision function, so they agree, the
/// copy-is-read rule included.
#[test]
fn policy_test_and_the_live_gateway_agree() {
    let env = team_env("");
    let gw = env.start();
    let root = ("authorization", "Bearer tok-root");
    let team = ("authorization", "Bearer tok-team");
    for b in ["dev", "secret"] {
        assert_eq!(call("POST", &gw.url(&format!("/graphs/alpha/branches?branch={b}")), None, &[root]).status, 201);
    }
    let change = json!({"ops": [{"upsert": {"type": "Person", "key": "k", "props": {}}}]});
    let live = [
        ("change main", post_with(&gw.url("/graphs/alpha/change?branch=main"), &change, &[team]).status),
        ("change dev", post_with(&gw.url("/graphs/alpha/change?branch=dev"), &change, &[team]).status),
        ("read secret", post_with(&gw.url("/graphs/alpha/read?branch=secret"), &json!({"match": {"type": "Person"}}), &[team]).status),
        ("branch from dev", call("POST", &gw.url("/graphs/alpha/branches?branch=x&from=dev"), None, &[team]).status),
        ("branch from secret", call("POST", &gw.url("/graphs/alpha/branches?branch=y&from=secret"), None, &[team]).status),
        ("delete dev", call("DELETE", &gw.url("/graphs/alpha/branches/dev"), None, &[root]).status),
    ];
    let cases = write_file(
        env.path(),
        "agree.yaml",
        r#"cases:
  - { name: change main, actor: { id: tm }, action: change, graph: alpha, branch: main, expect: deny }
  - { name: change dev, actor: { id: tm }, action: change, graph: alpha, branch: dev, expect: allow }
  - { name: read secret, actor: { id: tm }, action: read, graph: alpha, branch: secret, expect: deny }
  - { name: branch from dev, actor: { id: tm }, action: branch_create, graph: alpha, branch: x, from: dev, expect: allow }
  - { name: branch from secret, actor: { id: tm }, action: branch_create, graph: alpha, branch: y, from: secret, expect: deny, policies: [] }
  - { name: delete dev, actor: { id: root }, action: branch_delete, graph: alpha, branch: dev, expect: deny, policies: [no-deletes-on-friday] }
"#,
    );
    let (code, text) = policy_test(&cases, &env.cfg);
    assert_eq!(code, Some(0), "{text}");
    for (name, status) in live {
        let row = text.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} missing: {text}"));
        let tool_allows = row.split_whitespace().nth(1 + name.split_whitespace().count() + 1) == Some("allow");
        assert_eq!(tool_allows, status < 400, "{name}: live {status}, tool row {row:?}");
    }
}

#[test]
fn denials_are_explained_only_when_the_operator_asks() {
    let team = ("authorization", "Bearer tok-team");
    let root = ("authorization", "Bearer tok-root");
    // Off (the default): a 403 names the action and the resource, never a policy.
    let env = team_env("");
    let gw = env.start();
    assert_eq!(call("POST", &gw.url("/graphs/alpha/branches?branch=dev"), None, &[root]).status, 201);
    let r = call("DELETE", &gw.url("/graphs/alpha/branches/dev"), None, &[root]);
    assert_eq!(r.status, 403);
    assert!(r.body["details"].get("policies").is_none() && !r.body.to_string().contains("friday"), "{:?}", r.body);
    drop(gw);

    let env = team_env("  explain_denials: true\n");
    let gw = env.start();
    assert_eq!(call("POST", &gw.url("/graphs/alpha/branches?branch=dev"), None, &[root]).status, 201);
    let forbidden = call("DELETE", &gw.url("/graphs/alpha/branches/dev"), None, &[root]);
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.body["details"]["policies"], json!(["no-deletes-on-friday"]), "{:?}", forbidden.body);
    assert_eq!(forbidden.body["details"]["reason"], "forbidden by policy");
    let unmatched = post_with(&gw.url("/graphs/alpha/change?branch=main"), &json!({"ops": []}), &[team]);
    assert_eq!(unmatched.status, 403);
    assert_eq!(unmatched.body["details"]["policies"], json!([]));
    assert_eq!(unmatched.body["details"]["reason"], "no permit applies");
}

/// The shadow workflow end to end: a candidate that denies what the live set
/// allows is logged for exactly those requests and changes no answer; a
/// candidate that does not validate cannot be promoted; promote makes it
/// live for the very next request.
#[test]
fn a_shadow_set_is_compared_on_live_traffic_and_promoted() {
    let env = team_env("  shadow: { dir: shadow }\n  decision_log: { file: audit.log }\n");
    // The candidate: the team may no longer change `dev`-like branches, only `sandbox/*`.
    write_file(
        env.path(),
        "shadow/alpha.cedar",
        &team_policy().replace(
            "when { context has branch_protected && !context.branch_protected };",
            "when { context has branch && context.branch like \"sandbox/*\" };",
        ),
    );
    let gw = env.start();
    let root = ("authorization", "Bearer tok-root");
    let team = ("authorization", "Bearer tok-team");
    for b in ["dev", "sandbox/a"] {
        assert_eq!(call("POST", &gw.url(&format!("/graphs/alpha/branches?branch={b}")), None, &[root]).status, 201);
    }
    let op = json!({"ops": [{"upsert": {"type": "Person", "key": "k", "props": {}}}]});
    let change = |branch: &str, id: &str| post_with(&gw.url(&format!("/graphs/alpha/change?branch={branch}")), &op, &[team, ("x-request-id", id)]).status;
    assert_eq!(change("dev", "live-allows-shadow-denies"), 200, "only the live set decides");
    assert_eq!(change("sandbox/a", "both-allow"), 200);
    assert_eq!(change("main", "both-deny"), 403);

    let m = call("GET", &gw.url("/metrics"), None, &[root]);
    let metrics = m.body.as_str().unwrap().to_string();
    assert!(metrics.contains("omnigraph_shadow_differences_total{action=\"change\",direction=\"allow→deny\"} 1"), "{metrics}");
    let t = std::time::Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(env.path().join("audit.log")).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.iter().any(|l| l["request_id"] == "both-deny") || t.elapsed() > std::time::Duration::from_secs(10) {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let with_shadow: Vec<&str> = lines.iter().filter(|l| l.get("shadow").is_some()).map(|l| l["request_id"].as_str().unwrap()).collect();
    assert_eq!(with_shadow, ["live-allows-shadow-denies"], "exactly the differing request is marked");
    let marked = lines.iter().find(|l| l["request_id"] == "live-allows-shadow-denies").unwrap();
    assert_eq!((marked["decision"].as_str(), marked["shadow"]["decision"].as_str()), (Some("allow"), Some("deny")));

    // A broken candidate is refused and nothing changes.
    write_file(env.path(), "shadow/server.cedar", "permit (principal, action, resource) when { nonsense };\n");
    let bad = call("POST", &gw.url("/policies/promote"), None, &[root]);
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    assert!(bad.body["error"].as_str().unwrap().contains("not promoted"), "{:?}", bad.body);
    assert_eq!(change("dev", "still-live"), 200);
    std::fs::remove_file(env.path().join("shadow/server.cedar")).unwrap();

    let ok = call("POST", &gw.url("/policies/promote"), None, &[root]);
    assert_eq!((ok.status, ok.body["status"].as_str()), (200, Some("promoted")), "{:?}", ok.body);
    assert_eq!(change("dev", "after-promote"), 403, "the candidate decides the very next request");
    assert_eq!(change("sandbox/a", "after-promote-2"), 200);
    let live = std::fs::read_to_string(env.path().join("policies/alpha.cedar")).unwrap();
    assert!(live.contains("sandbox/*"), "the live file now holds the candidate");
    assert_eq!(call("POST", &gw.url("/policies/promote"), None, &[team]).status, 403, "promote is policy_reload");
}
