//! End-to-end tests of the security containment (issue 7, docs/security.md):
//! each attack is sent through the real gateway, and each test fails on a
//! gateway without the rule it pins.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("authorization", "Bearer tok-admin");
/// A value planted in the gateway's environment: it must never come back.
const CANARY: &str = "canary-7d1f0c2e-do-not-leak";

type Env = ConfigDir;

/// Starts the gateway with a canary in its environment.
fn start(e: &Env) -> Gateway {
    start_env(e, &[])
}

fn start_env(e: &Env, env: &[(&str, &str)]) -> Gateway {
    let mut all = vec![("OG_CANARY", CANARY)];
    all.extend_from_slice(env);
    e.start_env(&all)
}

struct Tok<'a> {
    token: &'a str,
    actor: &'a str,
    groups: &'a [&'a str],
    tenant: Option<&'a str>,
}

/// A config folder: `server_policy` in policies/server.cedar, the tokens, and
/// `extra` appended to the YAML (graphs, limits...).
fn env(server_policy: &str, tokens: &[Tok<'_>], server_extra: &str, rest: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "s.pg", SOCIAL_SCHEMA);
    write_file(d, "policies/server.cedar", server_policy);
    std::fs::create_dir_all(d.join("data")).unwrap();
    let mut t = String::from("tokens:\n");
    for k in tokens {
        t.push_str(&format!("  - actor_id: {}\n    sha256: {}\n    groups: [{}]\n", k.actor, sha256_hex(k.token), k.groups.join(", ")));
        if let Some(tn) = k.tenant {
            t.push_str(&format!("    tenant: {tn}\n"));
        }
    }
    write_file(d, "tokens.yaml", &t);
    let cfg = write_file(
        d,
        "omnigraph.yaml",
        &format!(
            "server:\n  bind: 127.0.0.1:{}\n  runtime_dir: run\n  policy: {{ file: policies/server.cedar }}\n  shutdown_grace_s: 5\n{server_extra}auth:\n  static_tokens: {{ file: tokens.yaml }}\n{rest}",
            free_port()
        ),
    );
    Env { dir, cfg }
}

const ADMINS: &str = "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n";

fn admin_env(server_extra: &str, rest: &str) -> Env {
    env(ADMINS, &[Tok { token: "tok-admin", actor: "admin", groups: &["admins"], tenant: None }], server_extra, rest)
}

fn create(gw: &Gateway, body: &Value) -> Resp {
    post_with(&gw.url("/graphs"), body, &[ADMIN])
}

fn graph_body(id: &str, uri: &str) -> Value {
    json!({"graph_id": id, "uri": uri, "schema": {"source": SOCIAL_SCHEMA}})
}

fn text(r: &Resp) -> String {
    r.body.to_string()
}

#[test]
fn a_policy_file_outside_the_policy_folder_is_never_read() {
    let e = admin_env("", "graphs: {}\n");
    // Inside the policy folder, but a link out of it.
    std::os::unix::fs::symlink("/etc/passwd", e.path().join("policies/passwd.cedar")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", e.path().join("policies/env.cedar")).unwrap();
    let gw = start(&e);
    let passwd_first_line = std::fs::read_to_string("/etc/passwd").unwrap().lines().next().unwrap_or("root:x:0:0").to_string();
    for f in ["/proc/self/environ", "/etc/passwd", "../../../../etc/passwd", "policies/../../../../etc/passwd", "policies/passwd.cedar", "policies/env.cedar", "/dev/zero", "/dev/urandom", "policies"] {
        let started = Instant::now();
        let r = create(&gw, &json!({"graph_id": "x", "uri": "data/x", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"file": f}}));
        assert_eq!(r.status, 400, "{f}: {}", text(&r));
        assert_eq!(r.body["code"], "bad_request");
        let t = text(&r);
        for secret in [CANARY, "OG_CANARY", passwd_first_line.as_str(), "root:"] {
            assert!(!t.contains(secret), "{f}: the answer leaks {secret:?}: {t}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{f} held the request for {:?}", started.elapsed());
        assert!(!e.path().join("data/x").exists(), "{f}: a refused create left a folder");
    }
    // A bad policy file inside the folder: file, line and column, never its text.
    write_file(e.path(), "policies/bad.cedar", "permit (principal, action, resource);\npermit (principal, action, resource) when { principal.hunter2_secret == 1 };\n");
    let r = create(&gw, &json!({"graph_id": "x", "uri": "data/x", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"file": "policies/bad.cedar"}}));
    assert_eq!(r.status, 400, "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("bad.cedar:2:"), "names the file and line: {t}");
    assert!(!t.contains("hunter2") && !t.contains("permit (principal"), "never echoes the file: {t}");
    // A file in the folder that is good is taken.
    write_file(e.path(), "policies/good.cedar", "permit (principal, action == Omnigraph::Action::\"read\", resource);\n");
    let r = create(&gw, &json!({"graph_id": "x", "uri": "data/x", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"file": "policies/good.cedar"}}));
    assert_eq!(r.status, 201, "{}", text(&r));
    assert!(get(&gw.url("/healthz")).status == 200, "the gateway is still up");
}

#[test]
fn graphs_never_nest_and_a_purge_removes_only_its_own_folder() {
    let e = admin_env("", "graphs: {}\n");
    let gw = start(&e);
    assert_eq!(create(&gw, &graph_body("outer", "data/tenants")).status, 201);
    for (id, uri) in [
        ("inner", "data/tenants/acme"),
        ("inner", "./data/tenants/acme/"),
        ("inner", "data/tenants/Person.lance/x"),
        ("inner", "data/x/../tenants/acme"),
        ("same", "data/tenants"),
    ] {
        let r = create(&gw, &graph_body(id, uri));
        assert_eq!(r.status, 409, "{uri}: {}", text(&r));
        assert_eq!(r.body["code"], "conflict");
    }
    // Containing another graph is overlapping too.
    assert_eq!(create(&gw, &graph_body("deep", "data/a/b/c")).status, 201);
    let r = create(&gw, &graph_body("wrap", "data/a"));
    assert_eq!(r.status, 409, "{}", text(&r));
    // A link inside the data root that points at another graph's folder.
    std::os::unix::fs::symlink(e.path().join("data/tenants"), e.path().join("data/alias")).unwrap();
    let r = create(&gw, &graph_body("alias", "data/alias/acme"));
    assert_eq!(r.status, 409, "{}", text(&r));
    // A sibling whose name shares a prefix is not nested.
    assert_eq!(create(&gw, &graph_body("sibling", "data/tenants2")).status, 201);
    let sibling_files = std::fs::read_dir(e.path().join("data/tenants2")).unwrap().count();
    assert!(sibling_files > 0);

    let r = call("DELETE", &gw.url("/graphs/outer?purge=true"), None, &[ADMIN]);
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.body["purged"], true);
    assert!(!e.path().join("data/tenants").exists());
    assert_eq!(std::fs::read_dir(e.path().join("data/tenants2")).unwrap().count(), sibling_files, "the sibling is untouched");
    let r = call("POST", &gw.url("/graphs/sibling/read"), Some(br#"{"match":{"type":"Person"}}"#), &[ADMIN]);
    assert_eq!(r.status, 200, "the sibling still serves: {}", text(&r));
}

#[test]
fn absolute_and_escaping_uris_get_400() {
    let e = admin_env("", "graphs: {}\n");
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), e.path().join("data/out")).unwrap();
    let gw = start(&e);
    let target = outside.path().join("g");
    for uri in [
        "/tmp/og-escape",
        target.to_str().unwrap(),
        "../escape",
        "data/../../escape",
        "data/../escape",
        "file:///tmp/og-escape",
        "data/out/g",
        "data",
        "data/",
        "elsewhere/g",
        "",
    ] {
        let r = create(&gw, &graph_body("esc", uri));
        assert_eq!(r.status, 400, "{uri:?}: {}", text(&r));
        assert_eq!(r.body["code"], "bad_request");
    }
    assert!(!Path::new("/tmp/og-escape").exists() && !target.exists() && !e.path().join("../escape").exists());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_data_root_around_everything_still_fences_the_gateways_own_folders() {
    let e = admin_env("  data_root: .\n", "graphs: {}\n");
    let gw = start(&e);
    for uri in ["run/g", "run", "policies/g", ".", ""] {
        let r = create(&gw, &graph_body("g", uri));
        assert!(r.status == 409 || r.status == 400, "{uri:?}: {}", text(&r));
        if uri.starts_with("run") || uri.starts_with("policies") {
            assert_eq!(r.status, 409, "{uri}: {}", text(&r));
        }
    }
    assert_eq!(create(&gw, &graph_body("g", "graphs/g")).status, 201);
}

#[test]
fn an_unauthorized_creator_learns_nothing_from_validation() {
    let e = env(
        ADMINS,
        &[Tok { token: "tok-admin", actor: "admin", groups: &["admins"], tenant: None }, Tok { token: "tok-nobody", actor: "nobody", groups: &[], tenant: None }],
        "",
        "graphs: {}\n",
    );
    let gw = start(&e);
    let nobody = ("authorization", "Bearer tok-nobody");
    for body in [
        json!({"graph_id": "Bad Id", "uri": "/etc", "schema": {"source": "nonsense"}, "policy": {"file": "/etc/passwd"}}),
        json!({"graph_id": "ok", "uri": "data/ok", "schema": {"source": SOCIAL_SCHEMA}, "unknown": 1}),
    ] {
        let r = post_with(&gw.url("/graphs"), &body, &[nobody]);
        assert_eq!(r.status, 403, "{}", text(&r));
        assert_eq!(r.body["details"]["action"], "graph_create");
    }
    // Over 1 MiB: refused before anything is parsed.
    let big = json!({"graph_id": "big", "uri": "data/big", "schema": {"source": " ".repeat(1024 * 1024)}});
    let r = post_with(&gw.url("/graphs"), &big, &[ADMIN]);
    assert_eq!(r.status, 413, "{}", text(&r));
}

#[test]
fn graph_create_sees_the_requested_id_and_tenant() {
    // The docs/policy.md example: team leads create graphs only for their own tenant.
    let server = format!(
        "{ADMINS}{}",
        r#"@id("leads-create-own-tenant")
permit (principal in Omnigraph::Group::"leads", action == Omnigraph::Action::"graph_create", resource)
when { principal has tenant && context has requested_tenant && context.requested_tenant == principal.tenant };
@id("no-sandbox-ids")
forbid (principal, action == Omnigraph::Action::"graph_create", resource)
when { context has requested_graph && context.requested_graph like "prod-*" && !(principal in Omnigraph::Group::"admins") };
"#
    );
    let e = env(
        &server,
        &[
            Tok { token: "tok-admin", actor: "admin", groups: &["admins"], tenant: None },
            Tok { token: "tok-lead", actor: "lee", groups: &["leads"], tenant: Some("acme") },
            Tok { token: "tok-lead2", actor: "lou", groups: &["leads"], tenant: None },
        ],
        "",
        "graphs: {}\n",
    );
    let gw = start(&e);
    let lead = ("authorization", "Bearer tok-lead");
    let with_tenant = |id: &str, t: Option<&str>| {
        let mut b = graph_body(id, &format!("data/{id}"));
        if let Some(t) = t {
            b["tenant"] = json!(t);
        }
        b
    };
    assert_eq!(post_with(&gw.url("/graphs"), &with_tenant("acme-crm", Some("acme")), &[lead]).status, 201);
    let r = post_with(&gw.url("/graphs"), &with_tenant("globex-crm", Some("globex")), &[lead]);
    assert_eq!(r.status, 403, "{}", text(&r));
    assert_eq!(post_with(&gw.url("/graphs"), &with_tenant("untenanted", None), &[lead]).status, 403);
    assert_eq!(post_with(&gw.url("/graphs"), &with_tenant("prod-acme", Some("acme")), &[lead]).status, 403, "requested_graph is seen");
    assert_eq!(post_with(&gw.url("/graphs"), &with_tenant("x", Some("acme")), &[("authorization", "Bearer tok-lead2")]).status, 403);
    assert!(!e.path().join("data/globex-crm").exists());
}

#[test]
fn listings_show_only_what_the_caller_may_read() {
    let e = env(
        &format!("{ADMINS}permit (principal == Omnigraph::Actor::\"rita\", action == Omnigraph::Action::\"graph_list\", resource);\n"),
        &[Tok { token: "tok-admin", actor: "admin", groups: &["admins"], tenant: None }, Tok { token: "tok-rita", actor: "rita", groups: &[], tenant: None }],
        "",
        "graphs:\n  open:\n    uri: data/open\n    schema: { file: s.pg }\n    policy: { file: policies/open.cedar }\n  secret:\n    uri: data/secret\n    schema: { file: s.pg }\n",
    );
    write_file(e.path(), "policies/open.cedar", "permit (principal == Omnigraph::Actor::\"rita\", action == Omnigraph::Action::\"graph_read\", resource);\n");
    let gw = start(&e);
    let r = get(&gw.url("/readyz"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"status": "ready"}), "/readyz names no graph");
    let ids = |tok: &str| -> Vec<String> {
        let r = call("GET", &gw.url("/graphs"), None, &[("authorization", &format!("Bearer {tok}"))]);
        assert_eq!(r.status, 200);
        r.body["graphs"].as_array().unwrap().iter().map(|g| g["graph_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids("tok-rita"), vec!["open"]);
    assert_eq!(ids("tok-admin"), vec!["open", "secret"]);
}

#[test]
fn identity_gaps_are_closed() {
    let e = env(
        // The shipped server policies (fail-closed tenant isolation) plus a reader permit.
        &format!("{}\npermit (principal in Omnigraph::Group::\"readers\", action == Omnigraph::Action::\"read\", resource);\n", std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/server.cedar")).unwrap()),
        &[
            Tok { token: "tok-admin", actor: "admin", groups: &["admins"], tenant: None },
            Tok { token: "tok-acme", actor: "amy", groups: &["readers"], tenant: Some("acme") },
            Tok { token: "tok-none", actor: "nel", groups: &["readers"], tenant: None },
        ],
        "",
        "graphs:\n  acme:\n    uri: data/acme\n    schema: { file: s.pg }\n    tenant: acme\n  open:\n    uri: data/open\n    schema: { file: s.pg }\n",
    );
    let gw = start(&e);
    let read = |tok: &str, g: &str| call("POST", &gw.url(&format!("/graphs/{g}/read")), Some(br#"{"match":{"type":"Person"}}"#), &[("authorization", &format!("Bearer {tok}"))]).status;
    assert_eq!(read("tok-acme", "acme"), 200);
    assert_eq!(read("tok-none", "acme"), 403, "an actor without a tenant never reaches a tenant's graph");
    assert_eq!(read("tok-none", "open"), 200);
    // Two Authorization headers: 401, whichever is valid.
    let raw = format!(
        "POST /graphs/open/read HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-none\r\nAuthorization: Bearer tok-admin\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{{\"match\":{{\"type\":\"Person\"}}}}"
    );
    let (status, body) = raw_request(&gw.addr(), &raw);
    assert_eq!(status, 401, "{body}");
}

#[test]
fn a_jwks_url_must_be_https() {
    let e = admin_env("", "graphs: {}\n");
    let y = std::fs::read_to_string(&e.cfg).unwrap().replace(
        "auth:\n",
        "auth:\n  jwt:\n    - issuer: https://idp.test\n      audiences: [omnigraph]\n      algorithms: [RS256]\n      jwks: { url: \"http://idp.example.com/jwks.json\" }\n",
    );
    std::fs::write(&e.cfg, y).unwrap();
    let out = std::process::Command::new(bin("omnigraph-gateway")).arg("serve").arg("--config").arg(&e.cfg).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be https"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn limits_bound_bodies_and_creates() {
    let e = admin_env("", "limits:\n  max_graphs: 2\n  max_body_bytes: 1000\ngraphs:\n  base:\n    uri: data/base\n    schema: { file: s.pg }\n");
    let gw = start(&e);
    // A body past limits.max_body_bytes: 413 from the gateway (Content-Length)...
    let big = format!("{{\"match\":{{\"type\":\"Person\",\"key\":\"{}\"}}}}", "k".repeat(2000));
    let r = call("POST", &gw.url("/graphs/base/read"), Some(big.as_bytes()), &[ADMIN]);
    assert_eq!(r.status, 413, "{}", text(&r));
    assert_eq!(r.body["code"], "payload_too_large");
    // ... and a small one passes.
    assert_eq!(call("POST", &gw.url("/graphs/base/read"), Some(br#"{"match":{"type":"Person"}}"#), &[ADMIN]).status, 200);
    assert_eq!(create(&gw, &graph_body("two", "data/two")).status, 201);
    let r = create(&gw, &graph_body("three", "data/three"));
    assert_eq!(r.status, 400, "max_graphs: {}", text(&r));
    assert!(text(&r).contains("max_graphs"));
    assert!(!e.path().join("data/three").exists());
}

/// A worker wrapper that waits before it becomes the real worker.
fn slow_worker(dir: &Path, delay_s: &str) -> PathBuf {
    let real = bin("omnigraph-worker");
    let p = dir.join("slow-worker.sh");
    std::fs::write(&p, format!("#!/bin/sh\nsleep {delay_s}\nexec {} \"$@\"\n", real.display())).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_delete_during_a_worker_start_leaves_no_worker_behind() {
    let e = admin_env("", "graphs:\n  slow:\n    uri: data/slow\n    schema: { file: s.pg }\n");
    let wrapper = slow_worker(e.path(), "2");
    let mut cmd = std::process::Command::new(bin("omnigraph-gateway"));
    cmd.arg("serve").arg("--config").arg(&e.cfg).env("OMNIGRAPH_WORKER_BIN", &wrapper);
    let (proc, line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(60));
    let gw = Gateway { proc, base: line.rsplit(' ').next().unwrap().trim().to_string() };
    let marker = e.path().join("data/slow").display().to_string();
    assert!(eventually(Duration::from_secs(5), || !processes_matching(&marker).is_empty()), "the worker is starting");
    let r = call("DELETE", &gw.url("/graphs/slow"), None, &[ADMIN]);
    assert_eq!(r.status, 200, "{}", text(&r));
    // The start finishes after the delete; the worker must then be stopped, not adopted.
    assert!(eventually(Duration::from_secs(15), || processes_matching(&marker).is_empty()), "an orphan worker for a deleted graph still runs");
    // And it stays gone: nothing restarts it.
    assert!(!eventually(Duration::from_secs(2), || !processes_matching(&marker).is_empty()), "a worker came back for a deleted graph");
    assert_eq!(call("GET", &gw.url("/graphs/slow"), None, &[ADMIN]).status, 404);
    assert_eq!(call("POST", &gw.url("/graphs/slow/read"), Some(br#"{"match":{"type":"Person"}}"#), &[ADMIN]).status, 404);
}

#[test]
fn a_worker_that_times_out_while_starting_is_killed_before_a_retry() {
    let e = admin_env("", "graphs:\n  hung:\n    uri: data/hung\n    schema: { file: s.pg }\n");
    let pids = e.path().join("pids");
    let hung = e.path().join("hung-worker.sh");
    std::fs::write(&hung, format!("#!/bin/sh\necho $$ >> {}\nexec sleep 300\n", pids.display())).unwrap();
    std::fs::set_permissions(&hung, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = std::process::Command::new(bin("omnigraph-gateway"));
    cmd.arg("serve").arg("--config").arg(&e.cfg).env("OMNIGRAPH_WORKER_BIN", &hung).env("OMNIGRAPH_WORKER_READY_TIMEOUT_MS", "400");
    let (_proc, _line) = Proc::spawn(cmd, "listening on http://", Duration::from_secs(60));
    assert!(eventually(Duration::from_secs(15), || std::fs::read_to_string(&pids).map(|s| s.lines().count() >= 3).unwrap_or(false)), "the start is retried");
    let started: Vec<i32> = std::fs::read_to_string(&pids).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect();
    let alive = |p: i32| std::fs::read_to_string(format!("/proc/{p}/stat")).map(|s| !s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(true)).unwrap_or(false);
    // Every attempt but the newest is dead: never two workers for one graph.
    let live: Vec<i32> = started.iter().copied().filter(|p| alive(*p)).collect();
    assert!(live.len() <= 1, "timed-out workers still run: {live:?} of {started:?}");
}

#[test]
fn a_policy_reload_during_a_create_applies_to_the_new_graph() {
    let e = env(
        ADMINS,
        &[Tok { token: "tok-admin", actor: "admin", groups: &["admins"], tenant: None }, Tok { token: "tok-rita", actor: "rita", groups: &[], tenant: None }],
        "",
        "graphs: {}\n",
    );
    let wrapper = slow_worker(e.path(), "2");
    let gw = start_env(&e, &[("OMNIGRAPH_WORKER_BIN", wrapper.to_str().unwrap())]);
    let url = gw.url("/graphs");
    let t = std::thread::spawn(move || post_with(&url, &graph_body("fresh", "data/fresh"), &[ADMIN]).status);
    // Reload once the create's worker is starting: the create is past validation then.
    let marker = e.path().join("data/fresh").display().to_string();
    assert!(eventually(Duration::from_secs(10), || !processes_matching(&marker).is_empty()), "the create started its worker");
    write_file(e.path(), "policies/server.cedar", &format!("{ADMINS}permit (principal == Omnigraph::Actor::\"rita\", action == Omnigraph::Action::\"read\", resource);\n"));
    let r = call("POST", &gw.url("/policies/reload"), None, &[ADMIN]);
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(t.join().unwrap(), 201);
    let r = call("POST", &gw.url("/graphs/fresh/read"), Some(br#"{"match":{"type":"Person"}}"#), &[("authorization", "Bearer tok-rita")]);
    assert_eq!(r.status, 200, "the reload applies to the graph created meanwhile: {}", text(&r));
}

#[test]
fn commits_are_read_on_their_branch_only() {
    let e = admin_env("", "graphs:\n  g:\n    uri: data/g\n    schema: { file: s.pg }\n");
    let gw = start(&e);
    let r = post_with(&gw.url("/graphs/g/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": "a", "props": {}}}]}), &[ADMIN]);
    assert_eq!(r.status, 200);
    let c = r.body["commit_id"].as_str().unwrap().to_string();
    assert_eq!(call("GET", &gw.url(&format!("/graphs/g/commits/{c}")), None, &[ADMIN]).status, 200);
    assert_eq!(call("GET", &gw.url(&format!("/graphs/g/commits/{c}?branch=main")), None, &[ADMIN]).status, 200);
    assert_eq!(call("GET", &gw.url("/graphs/g/commits/01NOTACOMMIT"), None, &[ADMIN]).status, 404);
    assert_eq!(call("GET", &gw.url(&format!("/graphs/g/commits/{c}?branch=other")), None, &[ADMIN]).status, 404);
    for alias in ["main/", "a//b", "a/./b"] {
        let r = call("POST", &gw.url(&format!("/graphs/g/read?branch={alias}")), Some(br#"{"match":{"type":"Person"}}"#), &[ADMIN]);
        assert_eq!(r.status, 400, "{alias}: {}", text(&r));
    }
    let r = call("POST", &gw.url("/graphs/g/read?commit=01NOTACOMMIT"), Some(br#"{"match":{"type":"Person"}}"#), &[ADMIN]);
    assert_eq!(r.status, 404, "{}", text(&r));
}

#[test]
fn creates_past_the_queue_get_429() {
    let e = admin_env("", "limits:\n  max_creates_in_flight: 1\n  max_creates_queued: 0\ngraphs: {}\n");
    let wrapper = slow_worker(e.path(), "2");
    let gw = start_env(&e, &[("OMNIGRAPH_WORKER_BIN", wrapper.to_str().unwrap())]);
    let url = gw.url("/graphs");
    let first = std::thread::spawn(move || post_with(&url, &graph_body("one", "data/one"), &[ADMIN]).status);
    // The first create holds the one turn once its (slow) worker is starting.
    let marker = e.path().join("data/one").display().to_string();
    assert!(eventually(Duration::from_secs(10), || !processes_matching(&marker).is_empty()), "the first create started its worker");
    let r = create(&gw, &graph_body("two", "data/two"));
    assert_eq!(r.status, 429, "{}", text(&r));
    assert_eq!(r.body["code"], "too_many_requests");
    assert!(r.header("retry-after").is_some());
    assert!(!e.path().join("data/two").exists());
    assert_eq!(first.join().unwrap(), 201);
    assert_eq!(create(&gw, &graph_body("two", "data/two")).status, 201, "the slot is free again");
}

/// A URI is resolved once, the way the kernel resolves it, and that one
/// folder is what is checked, created, opened by the worker and written to
/// the YAML: `..` after a link, or a `/proc/self/root` prefix, cannot make
/// the check and the use disagree (found by the hostile review).
#[test]
fn the_folder_checked_is_the_folder_used() {
    let e = admin_env("", "graphs: {}\n");
    let data = std::fs::canonicalize(e.path().join("data")).unwrap();
    std::fs::create_dir_all(data.join("a/b/c")).unwrap();
    std::os::unix::fs::symlink(data.join("a/b/c"), data.join("l")).unwrap();
    write_file(&data.join("victim"), "keep.txt", "precious");
    let gw = start(&e);
    // data/l/../../../x is data/x for the kernel, ../x as text.
    let r = create(&gw, &graph_body("dots", "data/l/../../../x"));
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.body["uri"], "data/x", "the YAML and the answer hold the folder that was checked");
    assert!(data.join("x/_commits.lance").exists(), "the worker opened the checked folder");
    assert!(!e.path().join("x").exists() && !e.path().parent().unwrap().join("x").exists());
    // An absolute spelling through /proc/self/root lands in the same rules.
    let via_proc = format!("/proc/self/root{}", data.join("y").display());
    let r = create(&gw, &graph_body("proc", &via_proc));
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.body["uri"], "data/y");
    // A non-empty folder is never taken over (nor emptied by a failed create's undo).
    let r = create(&gw, &graph_body("victim", &format!("/proc/self/root{}", data.join("victim").display())));
    assert_eq!(r.status, 409, "{}", text(&r));
    assert_eq!(std::fs::read_to_string(data.join("victim/keep.txt")).unwrap(), "precious");
    // The YAML spelling resolves the same way on the next start.
    let yaml = std::fs::read_to_string(&e.cfg).unwrap();
    assert!(yaml.contains("uri: data/x") && yaml.contains("uri: data/y") && !yaml.contains("/proc/"), "{yaml}");
    drop(gw);
    let gw = start(&e);
    for g in ["dots", "proc"] {
        let r = call("POST", &gw.url(&format!("/graphs/{g}/read")), Some(br#"{"match":{"type":"Person"}}"#), &[ADMIN]);
        assert_eq!(r.status, 200, "{g} after a restart: {}", text(&r));
    }
}

/// Inputs that once overflowed a stack: a deeply nested policy (the whole
/// gateway), a read with a long `where` (a worker), and a schema with
/// thousands of types (minutes of create). Each is now a clear 400.
#[test]
fn inputs_that_would_exhaust_a_stack_or_a_create_slot_are_400() {
    let e = admin_env("", "graphs:\n  g:\n    uri: data/g\n    schema: { file: s.pg }\n");
    let gw = start(&e);
    let deep = format!("permit (principal, action, resource) when {{ {}true{} }};", "(".repeat(5000), ")".repeat(5000));
    let r = create(&gw, &json!({"graph_id": "deep", "uri": "data/deep", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"source": deep}}));
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("deep.cedar:1:") && text(&r).contains("nest more than"), "{}", text(&r));
    let long = format!("permit (principal, action, resource) when {{ true{} }};", " && true".repeat(20_000));
    let r = create(&gw, &json!({"graph_id": "long", "uri": "data/long", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"source": long}}));
    assert_eq!(r.status, 400, "{}", text(&r));
    let types: String = (0..300).map(|i| format!("node T{i} {{ k: String @key }}\n")).collect();
    let r = create(&gw, &json!({"graph_id": "wide", "uri": "data/wide", "schema": {"source": types}}));
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(!e.path().join("data/wide").exists());
    let wheres: Vec<Value> = (0..120).map(|i| json!({"prop": "age", "op": ">=", "value": i})).collect();
    let r = post_with(&gw.url("/graphs/g/read"), &json!({"match": {"type": "Person", "where": wheres}}), &[ADMIN]);
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("more than 32"), "{}", text(&r));
    // Everything still serves.
    assert_eq!(get(&gw.url("/healthz")).status, 200);
    let r = call("POST", &gw.url("/graphs/g/read"), Some(br#"{"match":{"type":"Person"}}"#), &[ADMIN]);
    assert_eq!(r.status, 200, "the worker is alive: {}", text(&r));
}

/// A creator learns nothing about graphs it may not read: an overlap names
/// no graph, and errors name no resolved host path.
#[test]
fn create_errors_name_no_hidden_graph_and_no_host_path() {
    let e = env(
        &format!("{ADMINS}permit (principal == Omnigraph::Actor::\"cora\", action == Omnigraph::Action::\"graph_create\", resource);\n"),
        &[Tok { token: "tok-admin", actor: "admin", groups: &["admins"], tenant: None }, Tok { token: "tok-cora", actor: "cora", groups: &[], tenant: None }],
        "",
        "graphs:\n  secret-project:\n    uri: data/secret-project\n    schema: { file: s.pg }\n",
    );
    let gw = start(&e);
    let cora = ("authorization", "Bearer tok-cora");
    let r = post_with(&gw.url("/graphs"), &graph_body("mine", "data/secret-project/inner"), &[cora]);
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(!text(&r).contains("secret-project\\\"") && !text(&r).contains("graph \\\"secret"), "names the hidden graph: {}", text(&r));
    let gw_dir = std::fs::canonicalize(e.path()).unwrap().display().to_string();
    for uri in ["/proc/self/fd/1/x", "/proc/1/cwd/x", "/etc/x"] {
        let r = post_with(&gw.url("/graphs"), &graph_body("mine", uri), &[cora]);
        assert_eq!(r.status, 400, "{uri}: {}", text(&r));
        assert!(!text(&r).contains(&gw_dir) && !text(&r).contains("Permission denied") && !text(&r).contains("/tmp/"), "{uri}: {}", text(&r));
    }
}
