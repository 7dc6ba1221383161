//! End-to-end tests of `omnigraph-gateway` in front of real workers.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
const ISSUER: &str = "https://idp.test";

struct GraphSpec<'a> {
    id: &'a str,
    tenant: Option<&'a str>,
    policy: Option<&'a str>,
}

fn graph(id: &str) -> GraphSpec<'_> {
    GraphSpec { id, tenant: None, policy: None }
}

struct TokenSpec<'a> {
    token: &'a str,
    actor: &'a str,
    groups: &'a [&'a str],
    tenant: Option<&'a str>,
}

fn tok<'a>(token: &'a str, actor: &'a str, groups: &'a [&'a str]) -> TokenSpec<'a> {
    TokenSpec { token, actor, groups, tenant: None }
}

/// Writes a complete gateway config into a temp dir and returns (dir, config path).
fn setup(server_policy: &str, graphs: &[GraphSpec<'_>], tokens: &[TokenSpec<'_>], extra_server: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "s.pg", SOCIAL_SCHEMA);
    write_file(d, "policies/server.cedar", server_policy);
    std::fs::copy(Path::new(FIXTURES).join("jwks.json"), d.join("jwks.json")).unwrap();
    let mut t = String::from("tokens:\n");
    for s in tokens {
        t.push_str(&format!("  - actor_id: {}\n    sha256: {}\n    groups: {:?}\n", s.actor, sha256_hex(s.token), s.groups));
        if let Some(tn) = s.tenant {
            t.push_str(&format!("    tenant: {tn}\n"));
        }
    }
    write_file(d, "tokens.yaml", &t);
    let mut y = format!(
        "server:\n  bind: 127.0.0.1:{}\n  runtime_dir: run\n  policy: {{ file: policies/server.cedar }}\n  shutdown_grace_s: 5\n{extra_server}\
         auth:\n  static_tokens: {{ file: tokens.yaml }}\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [omnigraph]\n      algorithms: [RS256, HS256]\n      jwks: {{ file: jwks.json }}\n      leeway_s: 5\ngraphs:\n",
        free_port()
    );
    for g in graphs {
        y.push_str(&format!("  {}:\n    uri: data/{}\n    schema: {{ file: s.pg }}\n    protected_branches: [main]\n", g.id, g.id));
        if let Some(tn) = g.tenant {
            y.push_str(&format!("    tenant: {tn}\n"));
        }
        if let Some(p) = g.policy {
            write_file(d, &format!("policies/{}.cedar", g.id), p);
            y.push_str(&format!("    policy: {{ file: policies/{}.cedar }}\n", g.id));
        }
    }
    let cfg = write_file(d, "omnigraph.yaml", &y);
    (dir, cfg)
}

fn change_ops(key: &str) -> Value {
    json!({"ops": [{"upsert": {"type": "Person", "key": key, "props": {}}}]})
}

const ADMIN_POLICY: &str = "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n";

#[test]
fn spoofed_identity_headers_never_reach_a_worker() {
    let policy = format!("{ADMIN_POLICY}permit (principal == Omnigraph::Actor::\"alice\", action == Omnigraph::Action::\"change\", resource);\n");
    let (_d, cfg) = setup(&policy, &[graph("alpha")], &[tok("tok-alice", "alice", &[]), tok("tok-bob", "bob", &[]), tok("tok-root", "root", &["admins"])], "");
    let gw = Gateway::start(&cfg);
    let url = gw.url("/graphs/alpha/change");
    // Spoof up: bob claims to be alice.
    for h in ["x-omnigraph-actor", "x-actor-id"] {
        let r = post_with(&url, &change_ops("b1"), &[(h, "alice"), (&bearer("tok-bob").0, &bearer("tok-bob").1)]);
        assert_eq!(r.status, 403, "{h}: {:?}", r.body);
        assert_eq!(r.body["code"], "forbidden");
    }
    // Spoof down: alice claims to be bob, even with a made-up worker key; the commit records alice.
    let r = post_with(
        &url,
        &change_ops("a1"),
        &[("x-omnigraph-actor", "bob"), ("x-actor-id", "bob"), ("x-omnigraph-worker-key", "guess"), (&bearer("tok-alice").0, &bearer("tok-alice").1)],
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["actor_id"], "alice");
    let commits = call("GET", &gw.url("/graphs/alpha/commits"), None, &[(&bearer("tok-root").0, &bearer("tok-root").1)]);
    assert_eq!(commits.body["commits"][0]["actor_id"], "alice");
    assert_eq!(commits.body["commits"].as_array().unwrap().len(), 2, "init and alice's change only");
}

fn jwt(alg: jsonwebtoken::Algorithm, kid: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = Some(kid.into());
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(Path::new(FIXTURES).join("jwt-rsa.pem")).unwrap()).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_secret(&std::fs::read(Path::new(FIXTURES).join("hs-secret.txt")).unwrap()),
    };
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "iss": ISSUER, "aud": "omnigraph", "exp": now() + 600, "iat": now(), "groups": ["admins"]});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}


#[test]
fn every_authentication_failure_is_the_same_401() {
    let (_d, cfg) = setup(ADMIN_POLICY, &[graph("alpha")], &[tok("tok-root", "root", &["admins"])], "");
    let gw = Gateway::start(&cfg);
    let url = gw.url("/graphs");
    let good_rs = jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("jane", json!({})));
    let good_hs = jwt(jsonwebtoken::Algorithm::HS256, "hs-1", &claims("hank", json!({})));
    for t in [&good_rs, &good_hs] {
        let r = call("GET", &url, None, &[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(r.status, 200, "a valid JWT is accepted: {:?}", r.body);
        let r = call("GET", &url, None, &[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(r.status, 200, "and accepted again from the cache");
    }
    let pub_pem = std::fs::read(Path::new(FIXTURES).join("jwt-rsa.pub.pem")).unwrap();
    let confused = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&h, &claims("eve", json!({})), &jsonwebtoken::EncodingKey::from_secret(&pub_pem)).unwrap()
    };
    let none_alg = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims("eve", json!({})).to_string().as_bytes()));
    let mut tampered = good_rs.clone();
    tampered.insert_str(good_rs.find('.').unwrap() + 5, "A");
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("wrong static token", Some("Bearer not-a-token".into())),
        ("basic auth", Some("Basic cm9vdDpwdw==".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("expired", Some(format!("Bearer {}", jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("eve", json!({"exp": now() - 3600})))))),
        ("wrong audience", Some(format!("Bearer {}", jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("eve", json!({"aud": "other"})))))),
        ("wrong issuer", Some(format!("Bearer {}", jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("eve", json!({"iss": "https://evil"})))))),
        ("not yet valid", Some(format!("Bearer {}", jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("eve", json!({"nbf": now() + 3600})))))),
        ("no exp", Some(format!("Bearer {}", jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("eve", json!({"exp": null})))))),
        ("unknown kid", Some(format!("Bearer {}", jwt(jsonwebtoken::Algorithm::RS256, "rsa-9", &claims("eve", json!({})))))),
        ("alg none", Some(format!("Bearer {none_alg}"))),
        ("alg confusion", Some(format!("Bearer {confused}"))),
        ("tampered", Some(format!("Bearer {tampered}"))),
    ];
    let mut messages = std::collections::BTreeSet::new();
    for (what, header) in bad {
        let headers: Vec<(&str, &str)> = header.as_deref().map(|h| vec![("authorization", h)]).unwrap_or_default();
        let r = call("GET", &url, None, &headers);
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert_eq!(r.body["code"], "unauthorized", "{what}");
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{what}: {:?}", r.headers);
        messages.insert(r.body["error"].as_str().unwrap().to_string());
    }
    assert_eq!(messages.len(), 1, "one message whatever failed: {messages:?}");
    // Health is public.
    assert_eq!(get(&gw.url("/healthz")).status, 200);
}

/// Every row of the route → action table, allowed for exactly the actor
/// whose group is permitted that action, and denied (403 naming the action
/// and the resource) for an actor permitted a different action.
#[test]
fn every_route_is_gated_by_its_action() {
    let actions = [
        "graph_list", "graph_create", "policy_reload", "metrics_read", "graph_read", "graph_delete", "read", "export", "change", "schema_apply",
        "branch_create", "branch_delete", "branch_merge",
    ];
    let mut policy = String::from(ADMIN_POLICY);
    for a in actions {
        policy.push_str(&format!("permit (principal in Omnigraph::Group::\"g-{a}\", action == Omnigraph::Action::\"{a}\", resource);\n"));
    }
    let tokens: Vec<(String, String, String)> = actions.iter().map(|a| (format!("tok-{a}"), format!("u-{a}"), format!("g-{a}"))).collect();
    // Copying a branch is reading it (branches_e2e.rs): the copy actions' tokens may also read.
    let groups: Vec<Vec<&str>> = tokens
        .iter()
        .map(|(_, _, g)| if g == "g-branch_create" || g == "g-branch_merge" { vec![g.as_str(), "g-read"] } else { vec![g.as_str()] })
        .collect();
    let mut specs: Vec<TokenSpec<'_>> = tokens.iter().zip(&groups).map(|((t, a, _), g)| tok(t, a, g)).collect();
    specs.push(tok("tok-root", "root", &["admins"]));
    let (_d, cfg) = setup(&policy, &[graph("alpha"), graph("gamma")], &specs, "");
    let gw = Gateway::start(&cfg);
    let root = bearer("tok-root");
    let c = post_with(&gw.url("/graphs/alpha/change"), &change_ops("seed"), &[(root.0, &root.1)]);
    let commit = c.body["commit_id"].as_str().unwrap().to_string();
    let rows: Vec<(&str, String, Option<Value>, &str, u16)> = vec![
        ("GET", "/graphs".into(), None, "graph_list", 200),
        ("GET", "/metrics".into(), None, "metrics_read", 200),
        ("GET", "/graphs/alpha".into(), None, "graph_read", 200),
        ("GET", "/graphs/alpha/healthz".into(), None, "graph_read", 200),
        ("GET", "/graphs/alpha/schema".into(), None, "read", 200),
        ("POST", "/graphs/alpha/schema/apply".into(), Some(json!({})), "schema_apply", 400),
        ("GET", "/graphs/alpha/snapshot".into(), None, "read", 200),
        ("POST", "/graphs/alpha/read".into(), Some(json!({"match": {"type": "Person"}})), "read", 200),
        ("POST", "/graphs/alpha/change".into(), Some(change_ops("x")), "change", 200),
        ("POST", "/graphs/alpha/ingest".into(), Some(json!({})), "change", 400),
        ("POST", "/graphs/alpha/export".into(), Some(json!({})), "export", 200),
        ("GET", "/graphs/alpha/branches".into(), None, "read", 200),
        ("POST", "/graphs/alpha/branches?branch=dev".into(), None, "branch_create", 201),
        ("POST", "/graphs/alpha/branches/merge?branch=dev&target=main".into(), None, "branch_merge", 200),
        ("DELETE", "/graphs/alpha/branches/dev".into(), None, "branch_delete", 200),
        ("GET", "/graphs/alpha/commits".into(), None, "read", 200),
        ("GET", format!("/graphs/alpha/commits/{commit}"), None, "read", 200),
        ("POST", "/policies/reload".into(), None, "policy_reload", 0),
        ("POST", "/graphs".into(), Some(json!({})), "graph_create", 0),
        ("DELETE", "/graphs/gamma".into(), None, "graph_delete", 0),
    ];
    for (method, path, body, action, want) in &rows {
        let body_bytes = body.as_ref().map(|b| b.to_string().into_bytes());
        let allowed = bearer(&format!("tok-{action}"));
        let r = call(method, &gw.url(path), body_bytes.as_deref(), &[(allowed.0, &allowed.1)]);
        if *want == 0 {
            assert!(![401, 403].contains(&r.status), "{method} {path} as {action}: {} {:?}", r.status, r.body);
        } else {
            assert_eq!(r.status, *want, "{method} {path} as {action}: {:?}", r.body);
        }
        let other = if *action == "read" { "change" } else { "read" };
        for denied in [bearer(&format!("tok-{other}")), bearer("tok-graph_list")].iter().filter(|_| *action != "graph_list").chain(std::iter::once(&bearer("tok-export")).filter(|_| *action == "graph_list")) {
            let r = call(method, &gw.url(path), body_bytes.as_deref(), &[(denied.0, &denied.1)]);
            assert_eq!(r.status, 403, "{method} {path} must be denied to {}: {:?}", denied.1, r.body);
            assert_eq!(r.body["code"], "forbidden");
            assert_eq!(r.body["details"]["action"], *action, "{method} {path}");
            let res = r.body["details"]["resource"].as_str().unwrap();
            let msg = r.body["error"].as_str().unwrap();
            assert!(msg.contains(action) && msg.contains(res), "the message names action and resource: {msg}");
            if path.starts_with("/graphs/") {
                assert!(res.contains("Graph") && (res.contains("alpha") || res.contains("gamma")), "{res}");
            } else {
                assert!(res.contains("Server") && res.contains("root"), "{res}");
            }
        }
    }
}

#[test]
fn server_forbid_beats_graph_permit_and_branch_rules_apply() {
    let server = format!(
        "{ADMIN_POLICY}forbid (principal, action, resource is Omnigraph::Graph) when {{ principal has tenant && resource has tenant && principal.tenant != resource.tenant }};\n"
    );
    let graph_policy = "permit (principal, action == Omnigraph::Action::\"read\", resource);\n\
        permit (principal in Omnigraph::Group::\"team\", action == Omnigraph::Action::\"change\", resource) when { context has branch_protected && !context.branch_protected };\n";
    let tokens = [
        TokenSpec { token: "tok-acme", actor: "amy", groups: &["team"], tenant: Some("acme") },
        TokenSpec { token: "tok-globex", actor: "gus", groups: &["team", "admins"], tenant: Some("globex") },
    ];
    let (_d, cfg) = setup(&server, &[GraphSpec { id: "alpha", tenant: Some("acme"), policy: Some(graph_policy) }], &tokens, "");
    let gw = Gateway::start(&cfg);
    let read = json!({"match": {"type": "Person"}});
    let acme = bearer("tok-acme");
    let globex = bearer("tok-globex");
    assert_eq!(post_with(&gw.url("/graphs/alpha/read"), &read, &[(acme.0, &acme.1)]).status, 200);
    let r = post_with(&gw.url("/graphs/alpha/read"), &read, &[(globex.0, &globex.1)]);
    assert_eq!(r.status, 403, "the tenant forbid wins over the graph permit and the admin permit");
    // The team may change unprotected branches only: main is protected.
    let r = post_with(&gw.url("/graphs/alpha/change"), &change_ops("z"), &[(acme.0, &acme.1)]);
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = post_with(&gw.url("/graphs/alpha/change?branch=dev"), &change_ops("z"), &[(acme.0, &acme.1)]);
    assert_eq!((r.status, r.body["code"].as_str()), (404, Some("not_found")), "allowed by Cedar; the worker has no branch dev: {:?}", r.body);
    // An unknown graph answers 404 only to someone allowed to use it.
    let r = post_with(&gw.url("/graphs/nosuch/read"), &read, &[(acme.0, &acme.1)]);
    assert_eq!(r.status, 403);
}

#[test]
fn path_tricks_never_reach_another_graph() {
    let policy = format!("{ADMIN_POLICY}permit (principal == Omnigraph::Actor::\"al\", action, resource == Omnigraph::Graph::\"alpha\");\n");
    let (_d, cfg) = setup(&policy, &[graph("alpha"), graph("beta")], &[tok("tok-al", "al", &[]), tok("tok-root", "root", &["admins"])], "");
    let gw = Gateway::start(&cfg);
    let body = change_ops("intruder").to_string();
    for path in [
        "/graphs/alpha/../beta/change",
        "/graphs/alpha/%2e%2e/beta/change",
        "/graphs/alpha/%2E%2E/beta/change",
        "/graphs/alpha%2Fbeta/change",
        "/graphs/alpha%2fbeta/change",
        "/graphs/alpha%5Cbeta/change",
        "/graphs//beta/change",
        "/graphs/alpha//change",
        "/graphs/nosuch/change",
        "/graphs/BETA/change",
        "/graphs/Alpha/change",
        "/change",
        "/read",
        "/graphs/alpha/change/",
    ] {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-al\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, resp) = raw_request(&gw.addr(), &raw);
        assert!([400, 403, 404].contains(&status), "{path}: {status} {resp}");
    }
    let root = bearer("tok-root");
    let r = post_with(&gw.url("/graphs/beta/read"), &json!({"match": {"type": "Person", "key": "intruder"}}), &[(root.0, &root.1)]);
    assert_eq!(r.body["row_count"], 0, "nothing reached beta");
    let commits = call("GET", &gw.url("/graphs/beta/commits"), None, &[(root.0, &root.1)]);
    assert_eq!(commits.body["commits"].as_array().unwrap().len(), 1);
    // The allowed path still works, so the denials above were about the path.
    let al = bearer("tok-al");
    assert_eq!(post_with(&gw.url("/graphs/alpha/change"), &change_ops("ok"), &[(al.0, &al.1)]).status, 200);
    let (status, _) = raw_request(&gw.addr(), "POST /graphs/alpha/read?branch=main&branch=dev HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-al\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
    assert_eq!(status, 400, "a repeated query key is refused");
}

fn worker_pid(gw: &Gateway, graph: &str) -> i32 {
    gw.worker_pid(graph).unwrap_or_else(|| panic!("no worker for {graph}"))
}

#[test]
fn a_killed_worker_answers_503_then_comes_back() {
    let (_d, cfg) = setup(ADMIN_POLICY, &[graph("alpha"), graph("beta")], &[tok("tok-root", "root", &["admins"])], "");
    let gw = Gateway::start(&cfg);
    let root = bearer("tok-root");
    let read = json!({"match": {"type": "Person"}});
    assert_eq!(post_with(&gw.url("/graphs/alpha/change"), &change_ops("k"), &[(root.0, &root.1)]).status, 200);
    let pid = worker_pid(&gw, "alpha");
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let mut saw_503 = false;
    let back = eventually(Duration::from_secs(60), || {
        let r = post_with(&gw.url("/graphs/alpha/read"), &read, &[(root.0, &root.1)]);
        if r.status == 503 {
            assert_eq!(r.body["code"], "worker_unavailable");
            assert!(r.header("retry-after").is_some());
            saw_503 = true;
        }
        saw_503 && r.status == 200 && r.body["row_count"] == 1
    });
    assert!(saw_503, "requests got 503 while the worker was down");
    assert!(back, "the worker came back without a gateway restart");
    assert_ne!(worker_pid(&gw, "alpha"), pid);
    assert_eq!(post_with(&gw.url("/graphs/beta/read"), &read, &[(root.0, &root.1)]).status, 200, "the other graph never noticed");
    let g = call("GET", &gw.url("/graphs/alpha"), None, &[(root.0, &root.1)]);
    assert_eq!(g.body["restarts"], 1);
    let m = call("GET", &gw.url("/metrics"), None, &[(root.0, &root.1)]);
    let text = m.body.as_str().unwrap();
    assert!(text.contains("omnigraph_worker_restarts_total{graph=\"alpha\"} 1"), "{text}");
    assert!(text.contains("omnigraph_requests_total"));
    assert!(text.contains("omnigraph_decision_seconds"));
}

#[test]
fn workers_die_with_the_gateway() {
    let (d, cfg) = setup(ADMIN_POLICY, &[graph("alpha"), graph("beta")], &[tok("tok-root", "root", &["admins"])], "");
    let needle = d.path().join("run").display().to_string();
    // SIGKILL: no chance to clean up, so PR_SET_PDEATHSIG must do it.
    let mut gw = Gateway::start(&cfg);
    assert_eq!(processes_matching(&needle).len(), 2, "two workers");
    gw.proc.signal(libc::SIGKILL);
    gw.proc.wait_for(Duration::from_secs(10));
    assert!(eventually(Duration::from_secs(10), || processes_matching(&needle).is_empty()), "orphans: {:?}", processes_matching(&needle));
    // SIGTERM: a clean exit that stops the workers too.
    let mut gw = Gateway::start(&cfg);
    assert_eq!(processes_matching(&needle).len(), 2);
    let status = gw.proc.terminate(Duration::from_secs(30)).expect("gateway exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(processes_matching(&needle).is_empty());
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let (_d, cfg) = setup(ADMIN_POLICY, &[graph("alpha")], &[tok("tok-root", "root", &["admins"])], "");
    let mut gw = Gateway::start(&cfg);
    let ops: Vec<Value> = (0..20_000).map(|i| json!({"upsert": {"type": "Person", "key": format!("n{i}"), "props": {"age": i}}})).collect();
    let url = gw.url("/graphs/alpha/change");
    let slow = std::thread::spawn(move || post_with(&url, &json!({ "ops": ops }), &[("authorization", "Bearer tok-root")]));
    // Signal only once the change is in flight: the gauge counts it and this scrape.
    let in_flight = || {
        let m = call("GET", &gw.url("/metrics"), None, &[("authorization", "Bearer tok-root")]);
        m.body.as_str().and_then(|t| t.lines().find_map(|l| l.strip_prefix("omnigraph_requests_in_flight "))).and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(20), || in_flight() >= 2), "the change never showed as in flight");
    gw.proc.signal(libc::SIGTERM);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "the request in flight completed: {:?}", r.body);
    assert_eq!(r.body["affected_nodes"], 20_000);
    let status = gw.proc.wait_for(Duration::from_secs(30)).expect("exits after draining");
    assert!(status.success());
}

#[test]
fn failed_graphs_are_isolated_and_listed() {
    let (d, cfg) = setup(ADMIN_POLICY, &[graph("alpha")], &[tok("tok-root", "root", &["admins"])], "");
    // A second graph whose URI is empty and has no schema cannot start.
    let mut y = std::fs::read_to_string(&cfg).unwrap();
    y.push_str("  broken:\n    uri: data/broken\n");
    std::fs::write(&cfg, y).unwrap();
    let gw = Gateway::start(&cfg);
    let root = bearer("tok-root");
    let list = call("GET", &gw.url("/graphs"), None, &[(root.0, &root.1)]);
    let graphs = list.body["graphs"].as_array().unwrap();
    assert_eq!(graphs.iter().map(|g| g["graph_id"].as_str().unwrap()).collect::<Vec<_>>(), vec!["alpha", "broken"], "sorted");
    assert_eq!(graphs[1]["status"], "failed");
    assert_eq!(graphs[0]["status"], "up");
    let one = call("GET", &gw.url("/graphs/broken"), None, &[(root.0, &root.1)]);
    assert!(one.body["error"].as_str().unwrap().contains("no schema"), "{:?}", one.body);
    let r = post_with(&gw.url("/graphs/broken/read"), &json!({"match": {"type": "Person"}}), &[(root.0, &root.1)]);
    assert_eq!((r.status, r.body["code"].as_str()), (503, Some("worker_unavailable")));
    assert!(r.header("retry-after").is_some());
    assert_eq!(post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person"}}), &[(root.0, &root.1)]).status, 200);
    assert!(!d.path().join("data/broken").exists(), "nothing was created for the broken graph");
}

#[test]
fn startup_refuses_bad_policies_and_missing_auth() {
    let (d, cfg) = setup(ADMIN_POLICY, &[GraphSpec { id: "alpha", tenant: None, policy: Some("permit (principal, action, resource)\nwhen { principal.shoe_size > 3 };\n") }], &[tok("t", "a", &[])], "");
    let out = std::process::Command::new(bin("omnigraph-gateway")).arg("serve").arg("--config").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("alpha.cedar:2:"), "the error names file and line: {err}");
    let out = std::process::Command::new(bin("omnigraph-gateway")).args(["policy", "validate", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("alpha.cedar:2:"));

    let port = free_port();
    write_file(d.path(), "policies/server.cedar", ADMIN_POLICY);
    let noauth = write_file(d.path(), "noauth.yaml", &format!("server:\n  bind: 127.0.0.1:{port}\n  runtime_dir: run2\n  policy: {{ file: policies/server.cedar }}\ngraphs: {{}}\n"));
    let out = std::process::Command::new(bin("omnigraph-gateway")).arg("serve").arg("--config").arg(&noauth).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-auth"));
    let gw = Gateway::start_with(&noauth, &["--insecure-no-auth"]);
    let r = get(&gw.url("/graphs"));
    assert_eq!(r.status, 403, "anonymous is still subject to Cedar: {:?}", r.body);
}

#[test]
fn decisions_are_logged_and_explained() {
    let (_d, cfg) = setup(&format!("@id(\"admins\")\n{ADMIN_POLICY}"), &[graph("alpha")], &[tok("tok-root", "root", &["admins"]), tok("tok-nobody", "nobody", &[])], "");
    let gw = Gateway::start(&cfg);
    let root = bearer("tok-root");
    let nobody = bearer("tok-nobody");
    assert_eq!(call("GET", &gw.url("/graphs/alpha/snapshot"), None, &[(root.0, &root.1)]).status, 200);
    assert_eq!(call("GET", &gw.url("/graphs/alpha/snapshot"), None, &[(nobody.0, &nobody.1)]).status, 403);
    // The reader thread may lag the response by a moment.
    let lines_now = || -> Vec<Value> { gw.proc.stdout.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect() };
    assert!(eventually(Duration::from_secs(10), || lines_now().iter().any(|l| l["actor"] == "nobody")), "the deny was logged");
    let lines = lines_now();
    let allow = lines.iter().find(|l| l["actor"] == "root" && l["action"] == "read").expect("an allow line");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["policies"], json!(["admins"]));
    assert_eq!(allow["resource"], "Omnigraph::Graph::\"alpha\"");
    assert!(allow["latency_us"].as_f64().unwrap() > 0.0);
    let deny = lines.iter().find(|l| l["actor"] == "nobody").expect("a deny line");
    assert_eq!(deny["decision"], "deny");

    let explain = |args: &[&str]| {
        let out = std::process::Command::new(bin("omnigraph-gateway")).args(["policy", "explain", "--config"]).arg(&cfg).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (code, text) = explain(&["--actor", "root", "--action", "change", "--graph", "alpha"]);
    assert_eq!(code, Some(0));
    assert!(text.starts_with("ALLOW") && text.contains("admins"), "{text}");
    let (code, text) = explain(&["--actor", "nobody", "--action", "change", "--graph", "alpha", "--branch", "dev"]);
    assert_eq!(code, Some(3));
    assert!(text.starts_with("DENY") && text.contains("denied by default"), "{text}");

    let out = std::process::Command::new(bin("omnigraph-gateway")).args(["token", "new", "--actor", "zoe"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let token = text.lines().next().unwrap().rsplit(' ').next().unwrap();
    assert!(text.contains(&sha256_hex(token)) && text.contains("actor_id: zoe"), "{text}");
}

#[test]
fn policies_reload_atomically_on_request_and_on_sighup() {
    let (d, cfg) = setup(ADMIN_POLICY, &[GraphSpec { id: "alpha", tenant: None, policy: Some("// nothing for rita yet\n") }], &[tok("tok-root", "root", &["admins"]), tok("tok-rita", "rita", &[])], "");
    let gw = Gateway::start(&cfg);
    let rita = bearer("tok-rita");
    let root = bearer("tok-root");
    let read = |gw: &Gateway| post_with(&gw.url("/graphs/alpha/read"), &json!({"match": {"type": "Person"}}), &[(rita.0, &rita.1)]).status;
    assert_eq!(read(&gw), 403);
    let policy = d.path().join("policies/alpha.cedar");
    std::fs::write(&policy, "@id(\"rita-reads\")\npermit (principal == Omnigraph::Actor::\"rita\", action == Omnigraph::Action::\"read\", resource);\n").unwrap();
    assert_eq!(read(&gw), 403, "nothing changes before a reload");
    let r = call("POST", &gw.url("/policies/reload"), None, &[(root.0, &root.1)]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["graph_policies"]["alpha"], 1);
    assert_eq!(read(&gw), 200);
    // A broken file: 400 with its location, and the old policies stay in force.
    std::fs::write(&policy, "permit (principal, action, resource) when { principal.nope };\n").unwrap();
    let r = call("POST", &gw.url("/policies/reload"), None, &[(root.0, &root.1)]);
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("alpha.cedar:1:"), "{:?}", r.body);
    assert_eq!(read(&gw), 200);
    // Only policy_reload may reload.
    assert_eq!(call("POST", &gw.url("/policies/reload"), None, &[(rita.0, &rita.1)]).status, 403);
    // SIGHUP reloads too.
    std::fs::write(&policy, "// rita lost access\n").unwrap();
    gw.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || read(&gw) == 403), "SIGHUP reloaded the policies");
}

#[test]
fn h2c_and_http1_share_the_port() {
    let (_d, cfg) = setup(ADMIN_POLICY, &[graph("alpha")], &[tok("tok-root", "root", &["admins"])], "");
    let gw = Gateway::start(&cfg);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl").args(["-s", "-i", "--max-time", "20"]).args(args).output().expect("curl is installed by make deps");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let h2 = curl(&["--http2-prior-knowledge", "-H", "authorization: Bearer tok-root", "-X", "POST", "-d", "{\"match\":{\"type\":\"Person\"}}", &gw.url("/graphs/alpha/read")]);
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    assert!(h2.contains("\"row_count\":0"), "{h2}");
    let h2_denied = curl(&["--http2-prior-knowledge", &gw.url("/graphs")]);
    assert!(h2_denied.starts_with("HTTP/2 401"), "{h2_denied}");
    let h1 = curl(&["--http1.1", &gw.url("/healthz")]);
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
}

/// A one-route HTTP server for a JWKS document that the test can swap.
fn serve_jwks(doc: std::sync::Arc<std::sync::Mutex<String>>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = doc.lock().unwrap().clone();
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

#[test]
fn jwks_from_a_url_follows_key_rotation() {
    let full: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURES).join("jwks.json")).unwrap()).unwrap();
    let only_hs = json!({"keys": full["keys"].as_array().unwrap().iter().filter(|k| k["kid"] == "hs-1").cloned().collect::<Vec<_>>()});
    let doc = std::sync::Arc::new(std::sync::Mutex::new(only_hs.to_string()));
    let port = serve_jwks(doc.clone());
    let (_d, cfg) = setup(ADMIN_POLICY, &[], &[tok("tok-root", "root", &["admins"])], "");
    let y = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("jwks: { file: jwks.json }", &format!("jwks: {{ url: \"http://127.0.0.1:{port}/jwks.json\", refresh_s: 1 }}"));
    std::fs::write(&cfg, y).unwrap();
    let gw = Gateway::start(&cfg);
    let rs = format!("Bearer {}", jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("jane", json!({}))));
    let hs = format!("Bearer {}", jwt(jsonwebtoken::Algorithm::HS256, "hs-1", &claims("hank", json!({}))));
    // The URL publishes only an HMAC (oct) key: a shared secret is never taken from the network.
    assert_eq!(call("GET", &gw.url("/graphs"), None, &[("authorization", &hs)]).status, 401, "oct keys are accepted only from a file");
    assert_eq!(call("GET", &gw.url("/graphs"), None, &[("authorization", &rs)]).status, 401, "rsa-1 is not published yet");
    // The IdP rotates in rsa-1; the gateway picks it up on an unknown kid (at most once a second here).
    *doc.lock().unwrap() = full.to_string();
    assert!(eventually(Duration::from_secs(15), || call("GET", &gw.url("/graphs"), None, &[("authorization", &rs)]).status == 200));
    assert_eq!(call("GET", &gw.url("/graphs"), None, &[("authorization", &hs)]).status, 401, "still no oct key from a URL");
}

#[test]
fn two_graphs_may_not_share_a_uri() {
    let (_d, cfg) = setup(ADMIN_POLICY, &[graph("alpha")], &[tok("t", "a", &[])], "");
    let mut y = std::fs::read_to_string(&cfg).unwrap();
    y.push_str("  beta:\n    uri: ./data/x/../alpha/\n");
    std::fs::write(&cfg, y).unwrap();
    let out = std::process::Command::new(bin("omnigraph-gateway")).arg("serve").arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlaps the storage") && err.contains("alpha"), "{err}");
}

/// Cedar sees `principal.issuer` for JWT actors (and none for static ones),
/// so a policy can trust one issuer's groups and not another's. An actor id
/// the gateway cannot vouch for is refused, never recorded as someone else.
#[test]
fn cedar_sees_the_issuer_and_odd_actor_ids_are_refused() {
    let policy = format!(
        "permit (principal in Omnigraph::Group::\"editors\", action == Omnigraph::Action::\"change\", resource) when {{ principal has issuer && principal.issuer == \"{ISSUER}\" }};\n"
    );
    let (_d, cfg) = setup(&policy, &[graph("alpha")], &[TokenSpec { token: "tok-ed", actor: "ed", groups: &["editors"], tenant: None }], "");
    let gw = Gateway::start(&cfg);
    let url = gw.url("/graphs/alpha/change");
    let t = jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("jane", json!({"groups": ["editors"]})));
    let r = post_with(&url, &change_ops("j1"), &[("authorization", &format!("Bearer {t}"))]);
    assert_eq!(r.status, 200, "the issuer's editor may change: {:?}", r.body);
    assert_eq!(r.body["actor_id"], "jane");
    let r = post_with(&url, &change_ops("e1"), &[bearer_pair("tok-ed")]);
    assert_eq!(r.status, 403, "a static editor has no issuer: {:?}", r.body);
    // A non-ASCII id reaches the worker unchanged.
    let t = jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims("josé", json!({"groups": ["editors"]})));
    let r = post_with(&url, &change_ops("j2"), &[("authorization", &format!("Bearer {t}"))]);
    assert_eq!((r.status, r.body["actor_id"].as_str()), (200, Some("josé")), "{:?}", r.body);
    for odd in ["x".repeat(257), "line\nbreak".to_string()] {
        let t = jwt(jsonwebtoken::Algorithm::RS256, "rsa-1", &claims(&odd, json!({"groups": ["editors"]})));
        let r = post_with(&url, &change_ops("o1"), &[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(r.status, 401, "{odd:?}: {:?}", r.body);
        assert!(r.header("www-authenticate").is_some());
    }
}

fn bearer_pair(token: &str) -> (&'static str, &'static str) {
    ("authorization", Box::leak(format!("Bearer {token}").into_boxed_str()))
}

/// `/openapi.json` is generated from the contract's route table and is the
/// committed `docs/openapi.json`, byte for byte.
#[test]
fn openapi_is_the_committed_description_of_the_route_table() {
    let (_d, cfg) = setup(ADMIN_POLICY, &[], &[tok("t", "a", &[])], "");
    let gw = Gateway::start(&cfg);
    let r = get(&gw.url("/openapi.json"));
    assert_eq!(r.status, 200);
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json")).unwrap()).unwrap();
    assert_eq!(r.body, committed);
    for route in omnigraph_contract::routes::WORKER_ROUTES {
        let path = format!("/graphs/{{graph_id}}{}", route.pattern);
        assert!(r.body["paths"][&path][route.method.to_ascii_lowercase()].is_object(), "{path}");
    }
}
