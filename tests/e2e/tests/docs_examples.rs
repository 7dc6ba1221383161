//! The examples in docs/ are run, so the docs cannot drift from the product.

use omnigraph_e2e::*;
use serde_json::Value;

/// The bodies of the fenced blocks in `doc` whose info string is `lang`.
fn blocks(doc: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    // (inside a fence, the body when the fence's language is `lang`)
    let mut fence: Option<Option<String>> = None;
    for line in doc.lines() {
        match (fence.as_mut(), line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => fence = Some((info.trim() == lang).then(String::new)),
            (Some(body), Some(_)) => {
                if let Some(b) = body.take() {
                    out.push(b);
                }
                fence = None;
            }
            (Some(Some(body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_worker_guide_examples_run() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/worker.md")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let schema_src = blocks(&doc, "").into_iter().find(|b| b.contains("node Person {")).expect("the schema example");
    let schema = write_file(tmp.path(), "doc.pg", &schema_src);
    let w = Worker::start(WorkerOpts { profile: "debug", graph_id: "docs", uri: &tmp.path().join("g"), init_schema: Some(&schema), key: None });
    let json_blocks = blocks(&doc, "json");
    assert!(json_blocks.len() >= 2);
    let mut ran = 0;
    for b in json_blocks {
        let v: Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("invalid JSON in docs/worker.md: {e}\n{b}"));
        let path = if v.get("ops").is_some() { "/change" } else if v.get("match").is_some() { "/read" } else { continue };
        let r = post(&w.url(path), &v);
        assert_eq!(r.status, 200, "docs/worker.md example for {path} failed: {:?}\n{b}", r.body);
        ran += 1;
    }
    assert!(ran >= 2);
    run_shell_examples(&doc, &w.url(""));
}

/// Runs every ```bash block of a guide, in order, against the worker at
/// `base` (as `$W`), under `set -euo pipefail`: an example that fails, or
/// whose `curl -f` gets an error status, fails the test. The blocks use
/// curl and jq; without them the examples cannot run here, and this says so.
fn run_shell_examples(doc: &str, base: &str) {
    let have = |tool: &str| std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !(have("curl") && have("jq")) {
        eprintln!("curl or jq is missing: the ```bash examples of docs/worker.md were not run");
        return;
    }
    let scripts = blocks(doc, "bash");
    assert!(scripts.len() >= 3, "found {} bash examples", scripts.len());
    for script in scripts {
        let out = std::process::Command::new("bash")
            .args(["-c", &format!("set -euo pipefail\n{script}")])
            .env("W", base)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "a docs/worker.md example failed ({}):\n{script}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every Cedar example in docs/policy.md validates strictly against the schema.
#[test]
fn the_policy_guide_examples_validate() {
    use omnigraph_gateway::authz::{Engine, BUILTIN_SCHEMA};
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/policy.md")).unwrap();
    let engine = Engine::new("omnigraph.cedarschema", BUILTIN_SCHEMA).unwrap();
    let examples = blocks(&doc, "cedar");
    assert!(examples.len() >= 4, "found {}", examples.len());
    for src in examples {
        engine.parse_file("policy.md", &src).unwrap_or_else(|e| panic!("a docs/policy.md example does not validate:\n{e}"));
    }
}
