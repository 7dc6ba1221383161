//! Fuzz target: `omnigraph.yaml` parsing (`config::parse`), the gateway's
//! rewrite of it (`ConfigStore::rewrite`), and the static token file.
//!
//! Short form: `cargo test -p omnigraph-gateway --test fuzz_config`. Long
//! form: `cargo bolero test -p omnigraph-gateway --test fuzz_config <target> --profile dev -T 60s`.
//!
//! Properties:
//! - `config::parse` never panics: a config, or `ConfigError::Parse` naming the file;
//! - an accepted config serialised as the gateway serialises it (the full
//!   rewrite of `POST /graphs`) parses back to the same config;
//! - `ConfigStore::rewrite` adding one graph to, or removing one from, an
//!   accepted file leaves a file that parses to exactly the modified config
//!   (whether the edit was made in place or by a full rewrite);
//! - the static token file loads or fails with a typed error, never panics.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bolero::check;
use omnigraph_gateway::authn::StaticTokens;
use omnigraph_gateway::config::{self, Config, ConfigError, GraphSection};
use omnigraph_gateway::config_store::ConfigStore;

const SHORT: Duration = Duration::from_millis(2500);

fn check_parse(bytes: &[u8]) -> Option<Config> {
    match config::parse(Path::new("fz.yaml"), bytes) {
        Ok(c) => {
            let text = serde_yaml_ng::to_string(&c).unwrap_or_else(|e| panic!("an accepted config does not serialise: {e}"));
            let again = config::parse(Path::new("fz.yaml"), text.as_bytes()).unwrap_or_else(|e| panic!("the serialised config does not parse: {e}\n{text}"));
            assert_eq!(again, c, "the serialised config parses to another config:\n{text}");
            Some(c)
        }
        Err(ConfigError::Parse { path, message }) => {
            assert_eq!(path, "fz.yaml");
            assert!(!message.is_empty());
            None
        }
        Err(other) => panic!("parse answered a non-parse error: {other}"),
    }
}

/// A scratch folder on tmpfs when there is one: the rewrite fsyncs.
fn scratch() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().expect("tempdir")),
        false => tempfile::tempdir().expect("tempdir"),
    }
}

/// Adds graph `fz` or removes the first graph through the real rewrite, and
/// reads the file back.
fn check_rewrite(dir: &Path, bytes: &[u8], before: &Config, add: bool) {
    let p = dir.join("omnigraph.yaml");
    std::fs::write(&p, bytes).expect("write");
    let store = ConfigStore::new(&p, bytes);
    let mut expected = before.clone();
    let removed = if add { None } else { before.graphs.keys().next().cloned() };
    let r = store.rewrite(|c| {
        match &removed {
            Some(id) => {
                c.graphs.remove(id);
            }
            None => {
                c.graphs.insert("fz".into(), GraphSection { uri: "data/fz".into(), tenant: Some("t: x".into()), protected_branches: vec!["main".into()], policy: None, schema: None, start: Some(omnigraph_gateway::config::StartMode::Lazy) });
            }
        }
        expected = c.clone();
        Ok::<_, ()>(())
    });
    if let Err(e) = r {
        panic!("rewrite failed: {e:?}");
    }
    let text = std::fs::read(&p).expect("read back");
    let got = config::parse(&p, &text).unwrap_or_else(|e| panic!("the rewritten file does not parse: {e}\n{}", String::from_utf8_lossy(&text)));
    assert_eq!(got, expected, "the rewritten file is not the modified config:\n--- before\n{}\n--- after\n{}", String::from_utf8_lossy(bytes), String::from_utf8_lossy(&text));
}

fn report(name: &str, n: &AtomicU64, t: Instant) {
    eprintln!("fuzz {name}: {} executions in {:.1} s", n.load(Ordering::Relaxed), t.elapsed().as_secs_f64());
}

#[test]
fn yaml_bytes() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        check_parse(bytes);
    });
    report("yaml_bytes", &n, t);
}

/// Lines of real configs plus YAML's sharper corners (anchors, tags, flow
/// maps, odd scalars), picked and indented by the fuzzer.
const LINES: &[&str] = &[
    "server:", "bind: 127.0.0.1:8080", "policy: { file: policies/server.cedar }", "policy:", "file: p.cedar", "runtime_dir: .omnigraph/run",
    "data_root: data", "limits:", "max_graphs: 3", "worker_memory_bytes: 1000", "worker_memory_bytes: 67108864", "worker_nofile: 3",
    "max_body_bytes: -1", "max_change_ops: 1e3", "read_timeout_ms: 18446744073709551616", "auth:", "static_tokens: { file: t.yaml }", "jwt:",
    "- issuer: https://idp.example.com", "audiences: [omnigraph]", "algorithms: [RS256, ES256]", "jwks: { file: jwks.json }", "leeway_s: 30",
    "claims: { actor: sub }", "graphs:", "graphs: {}", "alpha:", "beta:", "uri: data/alpha", "uri: s3://b/a", "tenant: acme", "tenant: ~",
    "tenant: 'no'", "tenant: yes", "tenant: \"\\u0000\"", "protected_branches: [main]", "protected_branches:", "- main", "schema: { file: s.pg }",
    "<<: *a", "&a", "*a", "x: &a 1", "y: *a", "!!binary aGVsbG8=", "? complex", ": key", "#", "# comment", "", "'a': b", "\"bind\": x", "- ",
    "{", "}", "[", "]", "bnid: 3", "server: {bind: a, policy: {file: p}}", "---", "...", "%YAML 1.2", "\t", "é: ü",
];

#[test]
fn yaml_structured() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_type::<Vec<(u8, u8)>>().with_test_time(SHORT).for_each(|picks: &Vec<(u8, u8)>| {
        n.fetch_add(1, Ordering::Relaxed);
        let text: String = picks.iter().map(|(l, i)| format!("{}{}\n", " ".repeat((*i as usize % 4) * 2), LINES[*l as usize % LINES.len()])).collect();
        check_parse(text.as_bytes());
    });
    report("yaml_structured", &n, t);
}

/// A config in the layouts operators write: the graphs block in block or
/// flow style, indented by 2 or 4, keys quoted or not, comments and blank
/// lines between graphs, before and after the block, and other sections
/// after it; so that `ConfigStore::rewrite` meets the text its in-place
/// editor has to handle.
fn layout(c: &[u8]) -> String {
    let mut it = c.iter().copied().chain(std::iter::repeat(0));
    let mut next = || it.next().unwrap_or(0);
    let mut t = String::new();
    if next() % 2 == 0 {
        t += "# omnigraph.yaml\n\n";
    }
    t += "server:\n  bind: 127.0.0.1:8080   # port\n  policy: { file: policies/server.cedar }\n";
    if next() % 3 == 0 {
        t += "limits: { max_graphs: 10 }\n";
    }
    let ind = if next() % 4 == 0 { "    " } else { "  " };
    let ids = ["alpha", "beta", "g-1", "0", "fz", "graphs", "alpha2"];
    let n = next() % 4;
    match next() % 5 {
        0 => {
            let body: Vec<String> = (0..n).map(|i| format!("{}: {{uri: data/{i}}}", ids[(next() % 7) as usize])).collect();
            t += &format!("graphs: {{{}}}\n", body.join(", "));
        }
        1 if n == 0 => t += "graphs:\n",
        _ => {
            t += match next() % 3 {
                0 => "graphs:   # the graphs\n",
                1 => "graphs:\n\n",
                _ => "graphs:\n",
            };
            for i in 0..n {
                let id = ids[(next() % 7) as usize];
                let key = match next() % 4 {
                    0 => format!("\"{id}\""),
                    1 => format!("'{id}'"),
                    _ => id.to_string(),
                };
                if next() % 3 == 0 {
                    t += &format!("{ind}# graph {i}\n");
                }
                match next() % 3 {
                    0 => t += &format!("{ind}{key}: {{ uri: data/{i}, tenant: acme }}\n"),
                    _ => {
                        t += &format!("{ind}{key}:\n{ind}{ind}uri: data/{i}\n");
                        if next() % 2 == 0 {
                            t += &format!("{ind}{ind}protected_branches:\n{ind}{ind}  - main\n");
                        }
                        if next() % 3 == 0 {
                            t += &format!("{ind}{ind}tenant: |\n{ind}{ind}  multi\n{ind}{ind}  line\n");
                        }
                    }
                }
                if next() % 4 == 0 {
                    t += "\n";
                }
            }
        }
    }
    match next() % 4 {
        0 => t += "# trailing note\n",
        1 => t += "auth:\n  static_tokens: { file: tokens.yaml }\n",
        2 => t += "\n# a section follows\nlimits: { max_body_bytes: 1024 }\n",
        _ => {}
    }
    t
}

/// The rewrite of accepted configs, each with one graph added or removed.
#[test]
fn yaml_rewrite() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    let dir = scratch();
    check!().with_type::<(Vec<u8>, bool)>().with_test_time(SHORT).for_each(|(c, add): &(Vec<u8>, bool)| {
        let text = layout(c);
        let Some(before) = check_parse(text.as_bytes()) else { return };
        n.fetch_add(1, Ordering::Relaxed);
        check_rewrite(dir.path(), text.as_bytes(), &before, *add || before.graphs.is_empty());
    });
    report("yaml_rewrite (accepted configs)", &n, t);
}

/// The static token file (`auth.static_tokens`): arbitrary bytes load or fail typed.
#[test]
fn token_file_bytes() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    let dir = scratch();
    let p = dir.path().join("tokens.yaml");
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        std::fs::write(&p, bytes).expect("write");
        if let Ok(t) = StaticTokens::load(&p) {
            let _ = t.lookup(&[0; 32]);
        }
    });
    report("token_file_bytes", &n, t);
}

/// Configs at the edges, pinned by name (each also rewritten both ways).
#[test]
fn regression_config_edges() {
    let dir = scratch();
    for text in [
        "server: {bind: a, policy: {file: p}}\n",
        "server: {bind: a, policy: {file: p}}\ngraphs: {}\n",
        "server: {bind: a, policy: {file: p}}\ngraphs:\n  alpha: {uri: data/alpha}\n",
        "server: {bind: a, policy: {file: p}}\ngraphs: {alpha: {uri: data/alpha}}\n",
        "server: {bind: a, policy: {file: p}}\ngraphs:   # the graphs\n  alpha:\n    uri: data/alpha\n# end\n",
        "server: {bind: a, policy: {file: p}}\ngraphs:\n  alpha:\n    uri: data/alpha\n  alpha2:\n    uri: data/alpha2\n",
        "server: {bind: a, policy: {file: p}}\ngraphs:\n  \"alpha\":\n    uri: data/alpha\n",
        "server: {bind: a, policy: {file: p}}\ngraphs:\n    alpha:\n        uri: data/alpha\n",
        "server: {bind: a, policy: {file: p}}\ngraphs:\n  alpha:\n    uri: data/alpha\nlimits: {max_graphs: 2}\n",
        "server: {bind: a, policy: {file: p}}\ngraphs:\n  alpha:\n    uri: data/alpha\n    tenant: |\n      multi\n      line\n",
    ] {
        let c = check_parse(text.as_bytes()).unwrap_or_else(|| panic!("{text}"));
        check_rewrite(dir.path(), text.as_bytes(), &c, true);
        if !c.graphs.is_empty() {
            check_rewrite(dir.path(), text.as_bytes(), &c, false);
        }
    }
}
