//! Model-based and agreement property tests against the real worker binary
//! (`omnigraph-worker serve --init`, on loopback, in a temp dir).
//!
//! 1. `change_batches_match_a_model`: random batches of upserts, deletes,
//!    links and unlinks go to `POST /change`, and the same batches to a
//!    model of the graph kept in a `BTreeMap`. After every batch the worker
//!    must have accepted exactly the batches the model accepts, and what
//!    `/export` streams and what `/read` answers must equal the model. A
//!    batch the worker rejects leaves the model unchanged and the worker's
//!    branch head (its commit id) unchanged. Each case runs on a branch of
//!    its own, made from an empty `main`.
//! 2. `the_worker_accepts_exactly_the_grammar`: branch names in `?branch=`,
//!    in `DELETE /branches/{name}`, and graph ids in `--graph-id`, checked
//!    against the grammar shared with the gateway's test
//!    (`contract/tests/prop_ids.rs`), so the two processes agree.
//!
//! Cases: `PROPTEST_CASES` (defaults below keep each test well under 60 s in
//! a debug build); `MODEL_BATCHES` sets the most batches per case.

mod common;

#[path = "../../contract/tests/prop_ids.rs"]
mod ids;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ids::grammar::{self, branch_ok, graph_id_ok};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

const SCHEMA: &str = "node Person { name: String @key  age: I64?  city: String?  tags: [String]? }
node City { name: String @key  pop: I64? }
edge Knows: Person -> Person { since: I64? }
edge LivesIn: Person -> City
";

// ---------------------------------------------------------------- the worker

/// The real worker binary serving this test's schema (common::WorkerProcess).
struct Worker(common::WorkerProcess);

impl Worker {
    fn start() -> Worker {
        Worker(common::WorkerProcess::start("model", SCHEMA))
    }

    /// One request on a fresh connection: the status and the body (chunked decoded).
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
        self.0.call(method, path, body.as_bytes(), Duration::from_secs(60))
    }

    fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, b) = self.call(method, path, body);
        (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

// ---------------------------------------------------------------- the model

/// The graph as the worker should hold it: rows by type and key, their set
/// properties (never null, the key property included).
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    nodes: BTreeMap<(String, String), Map<String, Value>>,
    edges: BTreeMap<(String, String, String), Map<String, Value>>,
}

/// Type → (key property, optional properties, their kinds).
fn node_props(ty: &str) -> Option<(&'static str, &'static [(&'static str, Kind)])> {
    match ty {
        "Person" => Some(("name", &[("age", Kind::Int), ("city", Kind::Str), ("tags", Kind::StrList)])),
        "City" => Some(("name", &[("pop", Kind::Int)])),
        _ => None,
    }
}

/// Edge type → (from type, to type, optional properties).
fn edge_props(ty: &str) -> Option<(&'static str, &'static str, &'static [(&'static str, Kind)])> {
    match ty {
        "Knows" => Some(("Person", "Person", &[("since", Kind::Int)])),
        "LivesIn" => Some(("Person", "City", &[])),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Str,
    StrList,
}

fn fits(k: Kind, v: &Value) -> bool {
    match k {
        Kind::Int => v.as_i64().is_some(),
        Kind::Str => v.is_string(),
        Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
    }
}

/// Merges `given` into `base` by the rules of `/change`: every name must be
/// a property, `null` clears it, a value must fit its type.
fn merge(base: Option<&Map<String, Value>>, given: &Map<String, Value>, schema: &[(&str, Kind)], key: Option<(&str, &str)>) -> Option<Map<String, Value>> {
    let mut out = base.cloned().unwrap_or_default();
    for (name, v) in given {
        if let Some((kp, kv)) = key {
            if name == kp {
                if v.as_str() != Some(kv) {
                    return None;
                }
                continue;
            }
        }
        let (_, kind) = schema.iter().find(|(n, _)| n == name)?;
        if v.is_null() {
            out.remove(name);
        } else if fits(*kind, v) {
            out.insert(name.clone(), v.clone());
        } else {
            return None;
        }
    }
    if let Some((kp, kv)) = key {
        out.insert(kp.to_string(), json!(kv));
    }
    Some(out)
}

impl Model {
    fn has(&self, ty: &str, key: &str) -> bool {
        self.nodes.contains_key(&(ty.to_string(), key.to_string()))
    }

    /// One op; `None` rejects the whole batch.
    fn op(&mut self, op: &Op) -> Option<()> {
        match op {
            Op::Upsert { ty, key, props } => {
                let (kp, schema) = node_props(ty)?;
                if key.is_empty() {
                    return None;
                }
                let id = (ty.clone(), key.clone());
                let merged = merge(self.nodes.get(&id), props, schema, Some((kp, key)))?;
                self.nodes.insert(id, merged);
            }
            Op::Delete { ty, key } => {
                node_props(ty)?;
                self.nodes.remove(&(ty.clone(), key.clone()))?;
                self.edges.retain(|(e, f, t), _| {
                    let (ft, tt, _) = edge_props(e).expect("model edges are typed");
                    !((ft == ty && f == key) || (tt == ty && t == key))
                });
            }
            Op::Link { edge, from, to, props } => {
                let (ft, tt, schema) = edge_props(edge)?;
                if !self.has(ft, from) || !self.has(tt, to) {
                    return None;
                }
                let id = (edge.clone(), from.clone(), to.clone());
                let merged = merge(self.edges.get(&id), props, schema, None)?;
                self.edges.insert(id, merged);
            }
            Op::Unlink { edge, from, to } => {
                edge_props(edge)?;
                self.edges.remove(&(edge.clone(), from.clone(), to.clone()))?;
            }
        }
        Some(())
    }

    /// A batch, all or nothing: the new model, or `None` when it is rejected.
    fn batch(&self, ops: &[Op]) -> Option<Model> {
        let mut m = self.clone();
        for op in ops {
            m.op(op)?;
        }
        Some(m)
    }

    /// Makes most generated batches valid: before an op that needs a node
    /// or an edge the model lacks, ops that make it are inserted (a node
    /// with no properties, an edge between its nodes). Wrongly typed or
    /// unknown properties stay, so some batches are still rejected.
    fn repair(&self, ops: &[Op]) -> Vec<Op> {
        let mut m = self.clone();
        let mut out = Vec::new();
        let need_node = |m: &mut Model, out: &mut Vec<Op>, ty: &str, key: &str| {
            if !m.has(ty, key) {
                let op = Op::Upsert { ty: ty.into(), key: key.into(), props: Map::new() };
                let _ = m.op(&op);
                out.push(op);
            }
        };
        for op in ops {
            match op {
                Op::Delete { ty, key } => need_node(&mut m, &mut out, ty, key),
                Op::Link { edge, from, to, .. } | Op::Unlink { edge, from, to } => {
                    if let Some((ft, tt, _)) = edge_props(edge) {
                        need_node(&mut m, &mut out, ft, from);
                        need_node(&mut m, &mut out, tt, to);
                        if matches!(op, Op::Unlink { .. }) && !m.edges.contains_key(&(edge.clone(), from.clone(), to.clone())) {
                            let link = Op::Link { edge: edge.clone(), from: from.clone(), to: to.clone(), props: Map::new() };
                            let _ = m.op(&link);
                            out.push(link);
                        }
                    }
                }
                Op::Upsert { .. } => {}
            }
            // An op the model still refuses stays: the batch will be rejected.
            let _ = m.op(op);
            out.push(op.clone());
        }
        out
    }

    /// The export the worker must stream: nodes by type and key, then edges
    /// by type, from and to; `props` without the key property.
    fn export(&self) -> Vec<Value> {
        let mut lines = Vec::new();
        for ((ty, key), props) in &self.nodes {
            let (kp, _) = node_props(ty).expect("typed");
            let p: Map<String, Value> = props.iter().filter(|(k, _)| k.as_str() != kp).map(|(k, v)| (k.clone(), v.clone())).collect();
            lines.push(json!({"type": ty, "key": key, "props": p}));
        }
        for ((e, f, t), props) in &self.edges {
            lines.push(json!({"edge": e, "from": f, "to": t, "props": props}));
        }
        lines
    }
}

#[derive(Debug, Clone)]
enum Op {
    Upsert { ty: String, key: String, props: Map<String, Value> },
    Delete { ty: String, key: String },
    Link { edge: String, from: String, to: String, props: Map<String, Value> },
    Unlink { edge: String, from: String, to: String },
}

impl Op {
    fn json(&self) -> Value {
        match self {
            Op::Upsert { ty, key, props } => json!({"upsert": {"type": ty, "key": key, "props": props}}),
            Op::Delete { ty, key } => json!({"delete": {"type": ty, "key": key}}),
            Op::Link { edge, from, to, props } => json!({"link": {"edge": edge, "from": from, "to": to, "props": props}}),
            Op::Unlink { edge, from, to } => json!({"unlink": {"edge": edge, "from": from, "to": to}}),
        }
    }
}

// ---------------------------------------------------------------- generators

const PEOPLE: &[&str] = &["ann", "bo", "cy", "dee", "é\"x"];
const CITIES: &[&str] = &["Oslo", "Rome"];

fn value(kind: Kind) -> impl Strategy<Value = Value> {
    let good = match kind {
        Kind::Int => prop_oneof![Just(json!(0)), Just(json!(-7)), Just(json!(i64::MAX)), (0i64..100).prop_map(|n| json!(n))].boxed(),
        Kind::Str => prop_oneof![Just(json!("")), Just(json!("Lisbon")), "[a-z]{1,6}".prop_map(|s| json!(s))].boxed(),
        Kind::StrList => prop_oneof![Just(json!([])), prop::collection::vec("[a-z]{0,3}", 0..3).prop_map(|v| json!(v))].boxed(),
    };
    // Mostly good values; null clears; a few of the wrong type reject the batch.
    prop_oneof![32 => good, 6 => Just(Value::Null), 1 => Just(json!("wrong")), 1 => Just(json!(1.5))]
}

fn props(schema: &'static [(&'static str, Kind)]) -> BoxedStrategy<Map<String, Value>> {
    if schema.is_empty() {
        return prop_oneof![40 => Just(Map::new()), 1 => Just(json!({"nope": 1}).as_object().cloned().unwrap_or_default())].boxed();
    }
    let entries = prop::collection::vec(prop::sample::select(schema.to_vec()).prop_flat_map(|(n, k)| value(k).prop_map(move |v| (n.to_string(), v))), 0..3);
    prop_oneof![40 => entries.prop_map(|v| v.into_iter().collect()), 1 => Just(json!({"nope": 1}).as_object().cloned().unwrap_or_default())].boxed()
}

fn op() -> impl Strategy<Value = Op> {
    let person = prop::sample::select(PEOPLE.to_vec()).prop_map(String::from);
    let city = prop::sample::select(CITIES.to_vec()).prop_map(String::from);
    let (_, person_schema) = node_props("Person").expect("Person");
    let (_, city_schema) = node_props("City").expect("City");
    prop_oneof![
        4 => (person.clone(), props(person_schema)).prop_map(|(key, props)| Op::Upsert { ty: "Person".into(), key, props }),
        2 => (city.clone(), props(city_schema)).prop_map(|(key, props)| Op::Upsert { ty: "City".into(), key, props }),
        1 => Just(Op::Upsert { ty: "Person".into(), key: "ann".into(), props: json!({"name": "bo"}).as_object().cloned().unwrap_or_default() }),
        2 => person.clone().prop_map(|key| Op::Delete { ty: "Person".into(), key }),
        1 => city.clone().prop_map(|key| Op::Delete { ty: "City".into(), key }),
        4 => (person.clone(), person.clone(), props(&[("since", Kind::Int)])).prop_map(|(from, to, props)| Op::Link { edge: "Knows".into(), from, to, props }),
        2 => (person.clone(), city.clone()).prop_map(|(from, to)| Op::Link { edge: "LivesIn".into(), from, to, props: Map::new() }),
        2 => (person.clone(), person.clone()).prop_map(|(from, to)| Op::Unlink { edge: "Knows".into(), from, to }),
        1 => (person, city).prop_map(|(from, to)| Op::Unlink { edge: "LivesIn".into(), from, to }),
    ]
}

/// Batches of 1 to 5 ops, each with whether to repair it against the model
/// first (most are, so most batches are valid and the graph grows).
fn batches(max: usize) -> impl Strategy<Value = Vec<(bool, Vec<Op>)>> {
    prop::collection::vec((prop::bool::weighted(0.8), prop::collection::vec(op(), 1..6)), 1..=max)
}

// ---------------------------------------------------------------- checks

/// Percent-encodes every byte but ASCII letters and digits.
fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn head(w: &Worker, branch: &str) -> String {
    let (status, snap) = w.json("GET", &format!("/snapshot?branch={}", enc(branch)), "");
    assert_eq!(status, 200, "snapshot of {branch}: {snap}");
    snap["commit_id"].as_str().expect("commit_id").to_string()
}

/// `/export` and `/read` of `branch` against the model.
fn compare(w: &Worker, branch: &str, m: &Model) -> Result<(), TestCaseError> {
    let (status, body) = w.call("POST", &format!("/export?branch={}", enc(branch)), "");
    prop_assert_eq!(status, 200);
    let got: Vec<Value> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).expect("an NDJSON line")).collect();
    prop_assert_eq!(&got, &m.export(), "export differs from the model");
    for ty in ["Person", "City"] {
        let (status, r) = w.json("POST", &format!("/read?branch={}", enc(branch)), &json!({"match": {"type": ty}, "limit": 10_000}).to_string());
        prop_assert_eq!(status, 200, "read {}: {}", ty, r);
        let (kp, schema) = node_props(ty).expect("typed");
        let mut rows: Vec<(String, Map<String, Value>)> = Vec::new();
        for row in r["rows"].as_array().expect("rows") {
            // `/read` lists every property, unset ones as null.
            let p: Map<String, Value> = row["props"].as_object().expect("props").iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(row["hops"].as_u64(), Some(0));
            prop_assert_eq!(row["props"].as_object().map(|o| o.len()), Some(schema.len() + 1), "{}", row);
            rows.push((row["key"].as_str().expect("key").to_string(), p));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, Map<String, Value>)> = m.nodes.iter().filter(|((t, _), _)| t == ty).map(|((_, k), p)| (k.clone(), p.clone())).collect();
        prop_assert_eq!(&rows, &want, "read of {} differs from the model (key property {})", ty, kp);
    }
    // One traversal per person: out-neighbours over Knows.
    for p in PEOPLE.iter().filter(|p| m.has("Person", p)) {
        let q = json!({"match": {"type": "Person", "key": p}, "traverse": [{"edge": "Knows", "direction": "out"}], "return": ["name"]});
        let (status, r) = w.json("POST", &format!("/read?branch={}", enc(branch)), &q.to_string());
        prop_assert_eq!(status, 200, "{}", r);
        let mut got: Vec<String> = r["rows"].as_array().expect("rows").iter().map(|row| row["key"].as_str().unwrap_or_default().to_string()).collect();
        got.sort();
        let want: Vec<String> = m.edges.keys().filter(|(e, f, _)| e == "Knows" && f == p).map(|(_, _, t)| t.clone()).collect();
        prop_assert_eq!(got, want, "Knows out of {}", p);
    }
    Ok(())
}

// ---------------------------------------------------------------- tests

#[test]
fn change_batches_match_a_model() {
    let started = Instant::now();
    let w = Worker::start();
    let max_batches: usize = std::env::var("MODEL_BATCHES").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let cases = grammar::cases(24);
    let n = AtomicU32::new(0);
    let (accepted, rejected) = (AtomicU32::new(0), AtomicU32::new(0));
    let mut runner = TestRunner::new(Config { cases, max_shrink_iters: 64, failure_persistence: None, ..Config::default() });
    runner
        .run(&batches(max_batches), |batches| {
            let branch = format!("case-{}", n.fetch_add(1, Ordering::Relaxed));
            let (status, body) = w.json("POST", &format!("/branches?branch={branch}&from=main"), "");
            prop_assert_eq!(status, 201, "{}", body);
            let mut model = Model::default();
            for (repair, ops) in &batches {
                let ops = if *repair { model.repair(ops) } else { ops.clone() };
                let ops = &ops;
                let before = head(&w, &branch);
                let body = json!({"ops": ops.iter().map(Op::json).collect::<Vec<_>>()}).to_string();
                let (status, answer) = w.json("POST", &format!("/change?branch={branch}"), &body);
                match model.batch(ops) {
                    Some(next) => {
                        prop_assert_eq!(status, 200, "the model accepts {} but the worker answered {}", body, answer);
                        let after = head(&w, &branch);
                        prop_assert_eq!(answer["commit_id"].as_str(), Some(after.as_str()));
                        prop_assert_ne!(after, before);
                        model = next;
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        prop_assert_eq!(status, 400, "the model rejects {} but the worker answered {} {}", body, status, answer);
                        prop_assert_eq!(answer["code"].as_str(), Some("bad_request"));
                        prop_assert_eq!(head(&w, &branch), before, "a rejected batch moved the head");
                        rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                compare(&w, &branch, &model)?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "model: {} cases, {} batches accepted, {} rejected, {:.1} s",
        n.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// What the worker answers for branch `s` in `?branch=` and in the path.
fn worker_branch_answers(w: &Worker, s: &str) {
    let ok = branch_ok(s);
    let (status, body) = w.json("GET", &format!("/snapshot?branch={}", enc(s)), "");
    match (ok, status) {
        (false, 400) => {}
        (true, 200) => assert_eq!(s, "main"),
        (true, 404) => assert_ne!(s, "main"),
        _ => panic!("?branch={s:?}: the grammar says {ok}, the worker answered {status} {body}"),
    }
    let (status, body) = w.json("DELETE", &format!("/branches/{}", enc(s)), "");
    match (ok, status) {
        (false, 400) => {}
        (true, 400) => assert_eq!(s, "main", "only main is refused: {body}"),
        (true, 404) => {}
        // An empty name is no segment: `/branches/` is no route (404).
        (false, 404) if s.is_empty() => {}
        _ => panic!("DELETE /branches/{s:?}: the grammar says {ok}, the worker answered {status} {body}"),
    }
}

/// `--graph-id`: refused at start-up exactly when the grammar refuses it.
fn worker_graph_id_answer(s: &str) {
    if s.contains('\0') {
        return; // not representable in argv
    }
    let out = Command::new(env!("CARGO_BIN_EXE_omnigraph-worker"))
        .arg("serve")
        .arg(format!("--graph-id={s}"))
        .args(["--uri", "/nonexistent/omnigraph-model-test", "--listen", "127.0.0.1:0"])
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run omnigraph-worker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a worker on a missing URI started: {s:?}");
    let refused_id = err.contains("graph id");
    assert_eq!(!refused_id, graph_id_ok(s), "--graph-id={s:?}: {err}");
}

#[test]
fn the_worker_accepts_exactly_the_grammar() {
    let started = Instant::now();
    let w = Worker::start();
    let edges = grammar::edge_cases();
    for s in &edges {
        worker_branch_answers(&w, s);
        worker_graph_id_answer(s);
    }
    let mut runner = TestRunner::new(Config { cases: grammar::cases(256), failure_persistence: None, ..Config::default() });
    runner
        .run(&grammar::candidate(), |s| {
            worker_branch_answers(&w, &s);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Starting a process per id is slower: fewer random ids.
    let mut runner = TestRunner::new(Config { cases: grammar::cases(256) / 8, failure_persistence: None, ..Config::default() });
    runner
        .run(&grammar::candidate(), |s| {
            worker_graph_id_answer(&s);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("grammar: {} edge names and {} random ones, {:.1} s", edges.len(), grammar::cases(256), started.elapsed().as_secs_f64());
}
