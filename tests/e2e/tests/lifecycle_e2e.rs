//! End-to-end tests of POST/DELETE /graphs and the config rewrite.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnigraph_e2e::*;
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("authorization", "Bearer tok-admin");

type Env = ConfigDir;

trait YamlGraphs {
    fn yaml_graphs(&self) -> BTreeSet<String>;
}

impl YamlGraphs for Env {
    fn yaml_graphs(&self) -> BTreeSet<String> {
        serde_yaml_like::parse(&self.yaml()).graphs
    }
}

/// The graph ids listed under `graphs:` (2-space indented keys), read
/// without the gateway's own parser.
mod serde_yaml_like {
    use std::collections::BTreeSet;
    pub struct Doc {
        pub graphs: BTreeSet<String>,
    }
    pub fn parse(text: &str) -> Doc {
        let mut graphs = BTreeSet::new();
        let mut inside = false;
        for line in text.lines() {
            if line.starts_with("graphs:") {
                inside = !line.contains("{}");
                continue;
            }
            if inside {
                if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
                    inside = false;
                } else if line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':') {
                    graphs.insert(line.trim().trim_end_matches(':').to_string());
                }
            }
        }
        Doc { graphs }
    }
}

fn env_with(extra_server: &str, base_graph: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "s.pg", SOCIAL_SCHEMA);
    write_file(d, "policies/server.cedar", "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n");
    write_file(
        d,
        "tokens.yaml",
        &format!(
            "tokens:\n  - actor_id: admin\n    sha256: {}\n    groups: [admins]\n  - actor_id: reader\n    sha256: {}\n",
            sha256_hex("tok-admin"),
            sha256_hex("tok-reader")
        ),
    );
    let graphs = if base_graph { "graphs:\n  base:\n    uri: data/base\n    schema: { file: s.pg }\n".to_string() } else { "graphs: {}\n".to_string() };
    let cfg = write_file(
        d,
        "omnigraph.yaml",
        &format!(
            "server:\n  bind: 127.0.0.1:{}\n  runtime_dir: run\n  policy: {{ file: policies/server.cedar }}\n  shutdown_grace_s: 5\n{extra_server}auth:\n  static_tokens: {{ file: tokens.yaml }}\n{graphs}",
            free_port()
        ),
    );
    Env { dir, cfg }
}

fn create_body(id: &str, uri: &str) -> Value {
    json!({"graph_id": id, "uri": uri, "schema": {"source": SOCIAL_SCHEMA}})
}

fn post_graph(gw: &Gateway, body: &Value) -> Resp {
    post_with(&gw.url("/graphs"), body, &[ADMIN])
}

fn listed(gw: &Gateway) -> Vec<(String, String)> {
    let r = call("GET", &gw.url("/graphs"), None, &[ADMIN]);
    r.body["graphs"].as_array().unwrap().iter().map(|g| (g["graph_id"].as_str().unwrap().to_string(), g["status"].as_str().unwrap().to_string())).collect()
}

/// Every file under `dir` with its bytes, to prove a tree was not touched.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn worker_count(gw: &Gateway) -> usize {
    children_of(gw.proc.pid()).iter().filter(|(_, c)| c.contains("omnigraph-worker")).count()
}

#[test]
fn sixteen_concurrent_creates_all_land_and_survive_a_restart() {
    let env = env_with("", false);
    let mut gw = Gateway::start(&env.cfg);
    let gw_url = Arc::new(gw.url("/graphs"));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let url = gw_url.clone();
            std::thread::spawn(move || post_with(&url, &create_body(&format!("g{i:02}"), &format!("data/g{i:02}")), &[ADMIN]))
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!(r.body["status"], "up");
    }
    let want: BTreeSet<String> = (0..16).map(|i| format!("g{i:02}")).collect();
    assert_eq!(env.yaml_graphs(), want, "the YAML lists all 16:\n{}", env.yaml());
    assert_eq!(listed(&gw).iter().map(|(g, _)| g.clone()).collect::<BTreeSet<_>>(), want);
    assert_eq!(worker_count(&gw), 16);
    // Write through one of them, then restart.
    let r = post_with(&gw.url("/graphs/g07/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": "kept", "props": {}}}]}), &[ADMIN]);
    assert_eq!(r.status, 200);
    assert!(gw.proc.terminate(Duration::from_secs(30)).unwrap().success());
    let gw = Gateway::start(&env.cfg);
    let after = listed(&gw);
    assert_eq!(after.iter().map(|(g, _)| g.clone()).collect::<BTreeSet<_>>(), want);
    assert!(after.iter().all(|(_, s)| s == "up"), "{after:?}");
    let r = post_with(&gw.url("/graphs/g07/read"), &json!({"match": {"type": "Person", "key": "kept"}}), &[ADMIN]);
    assert_eq!(r.body["row_count"], 1, "data written before the restart is read back");
}

fn race(gw: &Gateway, bodies: Vec<Value>) -> Vec<Resp> {
    let url = Arc::new(gw.url("/graphs"));
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let url = url.clone();
            std::thread::spawn(move || post_with(&url, &b, &[ADMIN]))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn duplicates_race_and_exactly_one_wins() {
    let env = env_with("", false);
    let gw = Gateway::start(&env.cfg);
    let same_id: Vec<Value> = (0..8).map(|i| create_body("dup", &format!("data/dup{i}"))).collect();
    let rs = race(&gw, same_id);
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 7, "{statuses:?}");
    assert!(rs.iter().filter(|r| r.status == 409).all(|r| r.body["code"] == "conflict"));
    // Only the winner's folder exists.
    let dirs: Vec<_> = (0..8).filter(|i| env.path().join(format!("data/dup{i}")).exists()).collect();
    assert_eq!(dirs.len(), 1, "losers left no folder: {dirs:?}");

    let abs = env.path().join("data/same").display().to_string();
    let spellings = ["data/same", "./data/same", "data/x/../same", "data/./same", &abs, "data/same/", "data//same", "file://".to_string().leak()];
    let mut bodies: Vec<Value> = spellings.iter().enumerate().map(|(i, u)| create_body(&format!("s{i}"), u)).collect();
    bodies[7] = create_body("s7", &format!("file://{abs}"));
    let rs = race(&gw, bodies);
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?} {:?}", rs.iter().map(|r| &r.body).collect::<Vec<_>>());
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 7, "{statuses:?}");
    assert_eq!(env.yaml_graphs().len(), 2, "dup and one s*: {}", env.yaml());
    assert!(!env.path().join("data/x").exists());
}

#[test]
fn two_gateways_on_one_config_never_lose_a_graph() {
    let env = env_with("", false);
    let a = Gateway::start_with(&env.cfg, &["--bind", &format!("127.0.0.1:{}", free_port()), "--runtime-dir", "run-a"]);
    let b = Gateway::start_with(&env.cfg, &["--bind", &format!("127.0.0.1:{}", free_port()), "--runtime-dir", "run-b"]);
    let mut threads = Vec::new();
    for (gw, prefix) in [(&a, "a"), (&b, "b")] {
        for i in 0..4 {
            let url = gw.url("/graphs");
            let id = format!("{prefix}{i}");
            threads.push(std::thread::spawn(move || (id.clone(), post_with(&url, &create_body(&id, &format!("data/{id}")), &[ADMIN]))));
        }
    }
    let mut created = BTreeSet::new();
    for t in threads {
        let (id, r) = t.join().unwrap();
        match r.status {
            201 => {
                created.insert(id);
            }
            503 => assert_eq!(r.body["code"], "config_drift", "{:?}", r.body),
            other => panic!("{id}: unexpected {other}: {:?}", r.body),
        }
    }
    assert!(!created.is_empty());
    assert_eq!(env.yaml_graphs(), created, "the YAML holds exactly the graphs that got 201:\n{}", env.yaml());
    for id in ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"] {
        assert_eq!(env.path().join("data").join(id).exists(), created.contains(id), "{id}: a refused create leaves no data");
    }
}

#[test]
fn a_hand_edit_is_config_drift_and_is_kept() {
    let env = env_with("", true);
    let gw = Gateway::start(&env.cfg);
    assert_eq!(post_graph(&gw, &create_body("first", "data/first")).status, 201);
    let edited = format!("{}# operator note: hand edit\n", env.yaml());
    std::fs::write(&env.cfg, &edited).unwrap();
    let r = post_graph(&gw, &create_body("second", "data/second"));
    assert_eq!((r.status, r.body["code"].as_str()), (503, Some("config_drift")), "{:?}", r.body);
    assert_eq!(env.yaml(), edited, "the hand edit is still there, untouched");
    assert!(!env.path().join("data/second").exists());
    assert_eq!(worker_count(&gw), 2, "base and first only");
    let r = call("DELETE", &gw.url("/graphs/first"), None, &[ADMIN]);
    assert_eq!((r.status, r.body["code"].as_str()), (503, Some("config_drift")));
    assert_eq!(listed(&gw).len(), 2, "a refused delete keeps the graph serving");
    assert!(eventually(Duration::from_secs(60), || post_with(&gw.url("/graphs/first/read"), &json!({"match": {"type": "Person"}}), &[ADMIN]).status == 200));
    // One supervisor: the task from before the refused delete never starts a
    // second worker beside the new task's (past a few restart backoffs).
    std::thread::sleep(Duration::from_secs(2));
    let firsts = children_of(gw.proc.pid()).into_iter().filter(|(_, c)| c.contains("omnigraph-worker") && c.contains("--graph-id first")).count();
    assert_eq!(firsts, 1, "{:?}", children_of(gw.proc.pid()));
}

#[test]
fn failed_creates_undo_only_what_they_made() {
    let env = env_with("", true);
    let gw = Gateway::start(&env.cfg);
    let base_dir = env.path().join("data/base");
    let base_before = tree(&base_dir);
    let yaml_before = env.yaml();
    std::fs::create_dir_all(env.path().join("data")).unwrap();
    std::fs::write(env.path().join("data/afile"), "not a folder").unwrap();
    let precious = env.path().join("data/occupied");
    write_file(&precious, "keep.txt", "mine");
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"graph_id": "bad1", "uri": "data/bad1", "schema": {"source": "node P {\n  a: Strin @key }"}}), 400, "schema:2:"),
        (json!({"graph_id": "bad2", "uri": "data/bad2", "schema": {"source": SOCIAL_SCHEMA}, "policy": {"source": "permit (principal, action, resource) when { principal.shoe == 1 };"}}), 400, "bad2.cedar:1:"),
        (json!({"graph_id": "Bad3", "uri": "data/bad3", "schema": {"source": SOCIAL_SCHEMA}}), 400, "invalid graph id"),
        (json!({"graph_id": "bad4", "uri": "data/afile/sub", "schema": {"source": SOCIAL_SCHEMA}}), 400, "cannot create"),
        (json!({"graph_id": "bad5", "uri": "./data/base", "schema": {"source": SOCIAL_SCHEMA}}), 409, "URI"),
        (json!({"graph_id": "bad9", "uri": "occupied", "schema": {"source": SOCIAL_SCHEMA}}), 400, "data_root"),
        (json!({"graph_id": "bad6", "uri": "data/occupied", "schema": {"source": SOCIAL_SCHEMA}}), 409, "not empty"),
        (json!({"graph_id": "base", "uri": "data/other", "schema": {"source": SOCIAL_SCHEMA}}), 409, "already exists"),
        (json!({"graph_id": "bad7", "uri": "data/bad7", "schema": {"source": SOCIAL_SCHEMA}, "branch": "x"}), 400, "unknown field"),
        (json!({"graph_id": "bad8", "uri": "data/bad8", "schema": {"source": SOCIAL_SCHEMA}, "protected_branches": ["a..b"]}), 400, "invalid branch name"),
    ];
    for (body, status, needle) in cases {
        let r = post_graph(&gw, &body);
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains(needle), "{body}: {:?} lacks {needle}", r.body);
        assert_eq!(env.yaml(), yaml_before, "{body}: the YAML is unchanged");
        assert_eq!(worker_count(&gw), 1, "{body}: no worker left behind");
        assert_eq!(tree(&base_dir), base_before, "{body}: the existing graph's files are untouched");
    }
    assert_eq!(std::fs::read_to_string(precious.join("keep.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&precious).unwrap().count(), 1);
    for id in ["bad1", "bad2", "bad5", "bad7", "bad8"] {
        assert!(!env.path().join("data").join(id).exists(), "{id}");
    }
    assert!(!env.path().join("policies/bad2.cedar").exists());
    let big = vec![b' '; 1024 * 1024 + 10];
    let r = call("POST", &gw.url("/graphs"), Some(&big), &[ADMIN]);
    assert_eq!((r.status, r.body["code"].as_str()), (413, Some("payload_too_large")));
}

#[test]
fn a_worker_that_fails_to_start_leaves_nothing() {
    // A stand-in worker: for the graph "doomed" it makes a mess in the graph
    // folder and dies; for every other graph it runs the real worker.
    let env = env_with("", true);
    let real = bin("omnigraph-worker");
    let fake = write_file(
        env.path(),
        "fake-worker.sh",
        &format!(
            "#!/bin/sh\ncase \" $* \" in *' --graph-id doomed '*) ;; *) exec '{}' \"$@\" ;; esac\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --uri ] && uri=$2; shift; done\n\
             mkdir -p \"$uri/Person.lance\" && echo junk > \"$uri/_schema.pg\"\necho 'boom: cannot open graph' >&2\nexit 3\n",
            real.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg_text = std::fs::read_to_string(&env.cfg).unwrap().replace("  shutdown_grace_s: 5\n", &format!("  shutdown_grace_s: 5\n  worker_bin: {}\n", fake.display()));
    std::fs::write(&env.cfg, &cfg_text).unwrap();
    let gw = Gateway::start(&env.cfg);
    let base_dir = env.path().join("data/base");
    let base_before = tree(&base_dir);
    assert!(!base_before.is_empty());
    let before = env.yaml();
    let r = post_graph(&gw, &create_body("doomed", "data/nested/doomed"));
    assert_eq!(r.status, 500, "{:?}", r.body);
    let msg = r.body["error"].as_str().unwrap();
    assert!(msg.contains("failed to start") && !msg.contains("boom"), "the failure is reported, the worker's own words (paths, backtraces) only in the log: {:?}", r.body);
    assert_eq!(env.yaml(), before);
    assert!(!env.path().join("data/nested").exists(), "every folder the request made is gone");
    assert_eq!(tree(&base_dir), base_before, "the existing graph's files are untouched");
    assert_eq!(worker_count(&gw), 1, "only the existing graph's worker runs");
    assert_eq!(listed(&gw).len(), 1);
    // The id is free again.
    let r = post_graph(&gw, &create_body("doomed", "data/doomed"));
    assert_eq!(r.status, 500, "still failing, but not 409: {:?}", r.body);
    assert!(!env.path().join("data/doomed").exists());
    assert_eq!(post_with(&gw.url("/graphs/base/read"), &json!({"match": {"type": "Person"}}), &[ADMIN]).status, 200);
}

#[test]
fn a_policy_given_at_create_is_enforced_at_once() {
    let env = env_with("", false);
    let gw = Gateway::start(&env.cfg);
    let mut body = create_body("guarded", "data/guarded");
    body["policy"] = json!({"source": "@id(\"reader-reads\")\npermit (principal == Omnigraph::Actor::\"reader\", action == Omnigraph::Action::\"read\", resource);\n"});
    body["tenant"] = json!("acme");
    body["protected_branches"] = json!(["main"]);
    let r = post_graph(&gw, &body);
    assert_eq!(r.status, 201, "{:?}", r.body);
    let reader = [("authorization", "Bearer tok-reader")];
    assert_eq!(post_with(&gw.url("/graphs/guarded/read"), &json!({"match": {"type": "Person"}}), &reader).status, 200);
    let r = post_with(&gw.url("/graphs/guarded/change"), &json!({"ops": [{"upsert": {"type": "Person", "key": "x", "props": {}}}]}), &reader);
    assert_eq!(r.status, 403);
    assert_eq!(std::fs::read_to_string(env.path().join("policies/guarded.cedar")).unwrap(), body["policy"]["source"].as_str().unwrap());
    let y = env.yaml();
    assert!(y.contains("policies/guarded.cedar") && y.contains("tenant: acme"), "{y}");
    let g = call("GET", &gw.url("/graphs/guarded"), None, &[ADMIN]);
    assert_eq!(g.body["protected_branches"], json!(["main"]));
}

#[test]
fn delete_keeps_data_unless_purged() {
    let env = env_with("", false);
    let gw = Gateway::start(&env.cfg);
    for id in ["keep", "gone"] {
        assert_eq!(post_graph(&gw, &create_body(id, &format!("data/{id}"))).status, 201);
    }
    assert_eq!(worker_count(&gw), 2);
    let r = call("DELETE", &gw.url("/graphs/keep"), None, &[ADMIN]);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["purged"], false);
    assert!(env.path().join("data/keep/_commits.lance").exists(), "data is kept");
    let r = call("DELETE", &gw.url("/graphs/gone?purge=true"), None, &[ADMIN]);
    assert_eq!((r.status, &r.body["purged"]), (200, &json!(true)));
    assert!(!env.path().join("data/gone").exists());
    assert!(env.yaml_graphs().is_empty(), "{}", env.yaml());
    assert_eq!(worker_count(&gw), 0);
    assert_eq!(call("GET", &gw.url("/graphs/keep"), None, &[ADMIN]).status, 404);
    assert_eq!(call("DELETE", &gw.url("/graphs/keep"), None, &[ADMIN]).status, 404);
    // The kept data cannot be re-created over, but can be served again under its old name... via the YAML.
    let r = post_graph(&gw, &create_body("keep2", "data/keep"));
    assert_eq!(r.status, 409, "{:?}", r.body);
}

#[test]
fn orphans_are_listed_and_never_served() {
    let env = env_with("", false);
    // What a crash mid-create leaves: a journal entry and a half-made folder, no YAML entry.
    let orphan = env.path().join("data/half");
    write_file(&orphan, "_schema.pg", SOCIAL_SCHEMA);
    write_file(
        env.path(),
        "run/pending/half.json",
        &json!({"graph_id": "half", "uri": orphan.display().to_string(), "started_at_unix": 1}).to_string(),
    );
    let out = std::process::Command::new(bin("omnigraph-gateway")).args(["graphs", "orphans", "--config"]).arg(&env.cfg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("half") && text.contains("data present"), "{text}");
    let gw = Gateway::start(&env.cfg);
    assert!(listed(&gw).is_empty(), "an orphan is never served");
    assert_eq!(call("GET", &gw.url("/graphs/half"), None, &[ADMIN]).status, 404);
}

#[test]
fn the_graphs_cli_mirrors_the_http_surface() {
    let env = env_with("", false);
    let gw = Gateway::start(&env.cfg);
    let schema = env.path().join("s.pg");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin("omnigraph-gateway")).arg("graphs").args(args).env("OG_TOKEN", "tok-admin").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, out, err) = cli(&["create", "--url", &gw.base, "--token-env", "OG_TOKEN", "--id", "cli", "--uri", "data/cli", "--schema", schema.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("created cli"), "{out}");
    let (ok, out, _) = cli(&["list", "--url", &gw.base, "--token-env", "OG_TOKEN"]);
    assert!(ok && out.contains("cli") && out.contains("up"), "{out}");
    let (ok, out, _) = cli(&["list", "--url", &gw.base, "--token-env", "OG_TOKEN", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["graphs"][0]["graph_id"], "cli");
    let (ok, _, err) = cli(&["create", "--url", &gw.base, "--token-env", "OG_TOKEN", "--id", "cli", "--uri", "data/cli2", "--schema", schema.to_str().unwrap()]);
    assert!(!ok && err.contains("409") && err.contains("conflict"), "{err}");
    let (ok, out, _) = cli(&["delete", "--url", &gw.base, "--token-env", "OG_TOKEN", "--id", "cli", "--purge"]);
    assert!(ok && out.contains("deleted cli"), "{out}");
    let (ok, _, err) = cli(&["list", "--url", &gw.base, "--token-env", "NOPE_UNSET"]);
    assert!(!ok && err.contains("NOPE_UNSET"), "{err}");
}
