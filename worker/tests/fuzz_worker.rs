//! Fuzz targets of the worker's decoders: the read query (`/read`), the
//! change batch (`/change`) and the NDJSON ingest line (`/ingest`). One file,
//! so the three share one test binary (each links Lance).
//!
//! Short form: `cargo test -p omnigraph-worker --test fuzz_worker` runs each
//! target's corpus in `tests/__fuzz__/fuzz_worker__<target>/corpus/`, then
//! random inputs for a bounded time. Long form (libFuzzer):
//! `cargo bolero test -p omnigraph-worker --test fuzz_worker <target> --profile dev -T 60s`.
//!
//! Everything runs in memory against a snapshot of a real store (made once
//! with `Store::init` in a temp dir, then given a small seeded graph).
//!
//! Properties:
//! - read: decoding never panics; a decoded query is validated, its `where`
//!   compiled and it is evaluated, each answering a value or a typed error;
//!   an answer has at most `limit` distinct rows, each an existing node at a
//!   distance the query allows, with only the properties asked for, and a
//!   cursor that decodes to the page after it;
//! - change: parsing and planning never panic; a rejected batch names an op
//!   that exists; an accepted batch leaves a graph whose every row is valid
//!   for the schema (canonical values, required properties set, the key
//!   property equal to the key), every edge joins two existing nodes of the
//!   edge's types, adjacency agrees with the rows, the plan's writes are
//!   exactly the touched rows, and every value survives the trip into an
//!   Arrow column and back (what Lance stores is what memory holds);
//! - ingest: splitting and applying lines never panic; the result does not
//!   depend on how the body is cut into chunks; an error names a line that
//!   exists; and a body ingests exactly when the same lines sent as
//!   `/change` upserts and links are accepted, to the same graph.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bolero::check;
use omnigraph_worker::change::{self, Working};
use omnigraph_worker::contract::GraphSchema;
use omnigraph_worker::ingest::line::{self, Kind, Lines};
use omnigraph_worker::limits::{Cancel, Limits, VisitBudget};
use omnigraph_worker::query::{self, filter, Cursor, QueryError, ReadRequest};
use omnigraph_worker::store::state::GraphData;
use omnigraph_worker::store::value::{from_array, normalize, to_array};
use omnigraph_worker::store::{Snapshot, Store};
use serde_json::{json, Map, Value};

const SHORT: Duration = Duration::from_millis(2500);

/// Every property type, optional and required, lists, and two edge types.
const SCHEMA: &str = "node Person { name: String @key  age: I64?  score: F64?  ratio: F32?  small: I32?  ok: Bool?  born: Date?  seen: DateTime?  pic: Blob?  tags: [String]?  nums: [I64]? }
node City { name: String @key  country: String }
edge Knows: Person -> Person { since: Date?  w: F32? }
edge LivesIn: Person -> City
";

struct Fixture {
    schema: Arc<GraphSchema>,
    /// The seeded graph, at a real commit of a real store.
    snap: Arc<Snapshot>,
    /// The same commit with no data.
    empty: Arc<Snapshot>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let uri = dir.path().join("g").display().to_string();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store: Store = rt.block_on(Store::init("fz", &uri, SCHEMA, "fuzz")).expect("init");
        let empty = store.head("main").expect("head");
        let schema = Arc::new(GraphSchema::parse(SCHEMA).expect("schema"));
        let seed = json!({"ops": [
            {"upsert": {"type": "City", "key": "Lisbon", "props": {"country": "PT"}}},
            {"upsert": {"type": "City", "key": "Oslo", "props": {"country": "NO"}}},
            {"upsert": {"type": "Person", "key": "alice", "props": {"age": 34, "tags": ["admin"], "born": "1990-02-03", "score": 1.5}}},
            {"upsert": {"type": "Person", "key": "bob", "props": {"age": 41, "ok": true, "seen": "2024-01-01T00:00:00Z"}}},
            {"upsert": {"type": "Person", "key": "carol", "props": {"age": 29, "pic": "AAEC", "nums": [1, 2]}}},
            {"upsert": {"type": "Person", "key": "dave", "props": {"small": -3, "ratio": 0.5}}},
            {"upsert": {"type": "Person", "key": "é\"x", "props": {}}},
            {"link": {"edge": "Knows", "from": "alice", "to": "bob", "props": {"since": "2019-04-01"}}},
            {"link": {"edge": "Knows", "from": "bob", "to": "carol"}},
            {"link": {"edge": "Knows", "from": "carol", "to": "alice"}},
            {"link": {"edge": "Knows", "from": "carol", "to": "dave"}},
            {"link": {"edge": "LivesIn", "from": "alice", "to": "Lisbon"}},
            {"link": {"edge": "LivesIn", "from": "bob", "to": "Oslo"}}
        ]});
        let ops = change::parse_body(&seed).expect("seed body");
        let (plan, _) = change::plan(&schema, &empty, ops).expect("seed plan");
        let mut snap = (*empty).clone();
        snap.data = plan.data;
        Fixture { schema, snap: Arc::new(snap), empty, _dir: dir }
    })
}

fn report(name: &str, n: &AtomicU64, t: Instant) {
    eprintln!("fuzz {name}: {} executions in {:.1} s", n.load(Ordering::Relaxed), t.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- read

fn limits() -> Limits {
    Limits { max_visited: 10_000, max_traverse_steps: 4, max_in_list: 64, ..Limits::default() }
}

fn check_read(req: ReadRequest) {
    let f = fixture();
    let (schema, snap) = (&*f.schema, &*f.snap);
    let offset = match req.cursor.as_deref().map(Cursor::decode) {
        None => 0,
        Some(Ok(c)) => {
            assert_eq!(Cursor::decode(&c.encode()).ok(), Some(c.clone()), "a cursor re-encodes to itself");
            c.offset
        }
        Some(Err(e)) => return assert!(matches!(e, QueryError::BadRequest(_))),
    };
    let l = limits();
    if query::validate(schema, &req, &l).is_err() {
        return;
    }
    let t = schema.node(&req.matcher.ty).expect("validated");
    if !req.matcher.filters.is_empty() {
        // The `where` of a real read compiles into a Lance filter; it must compile or refuse.
        let _ = filter::compile_all(t, &req.matcher.filters);
        return;
    }
    let out = match query::evaluate(schema, snap, &req, None, offset, &mut VisitBudget::new(&l, Cancel::default())) {
        Ok(o) => o,
        Err(QueryError::BadRequest(_) | QueryError::Limit(_)) => return,
        Err(e) => panic!("an in-memory read failed inside: {e}"),
    };
    let limit = req.limit.unwrap_or(query::DEFAULT_LIMIT);
    assert_eq!(out.row_count, out.rows.len());
    assert!(out.rows.len() <= limit);
    assert_eq!(*out.commit_id, *snap.commit.commit_id);
    let mut seen = BTreeSet::new();
    let (lo, hi) = match req.traverse.last() {
        None => (0, 0),
        Some(s) => query::traverse::hop_range(s).expect("validated"),
    };
    for r in &out.rows {
        assert!(seen.insert((r.ty.clone(), r.key.clone())), "row {}/{} twice", r.ty, r.key);
        let nt = schema.node(&r.ty).unwrap_or_else(|| panic!("row of unknown type {}", r.ty));
        assert!(snap.data.nodes.get(&r.ty).is_some_and(|n| n.rows.contains_key(&r.key)), "row {}/{} does not exist", r.ty, r.key);
        assert!(r.hops <= hi && (r.hops >= lo || r.hops == 0), "hops {} outside {lo}..{hi}", r.hops);
        for k in r.props.keys() {
            assert!(nt.prop(k).is_some(), "{}: unknown property {k} returned", r.ty);
            if let Some(p) = &req.projection {
                assert!(p.contains(k), "{k} returned but not asked for");
            }
        }
    }
    if let Some(c) = &out.next_cursor {
        let c = Cursor::decode(c).expect("the worker's own cursor decodes");
        assert_eq!((c.commit_id.as_str(), c.offset), (&*snap.commit.commit_id.to_string(), offset.saturating_add(limit)));
    }
}

#[test]
fn read_query_bytes() {
    fixture();
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        if let Ok(req) = serde_json::from_slice::<ReadRequest>(bytes) {
            check_read(req);
        }
    });
    report("read_query_bytes", &n, t);
}

fn choose<T: Clone>(c: u8, xs: &[T]) -> T {
    xs[c as usize % xs.len()].clone()
}

/// Structure-aware: queries assembled from the schema's names and values
/// near every check's edge.
#[test]
fn read_query_structured() {
    fixture();
    let (n, t) = (AtomicU64::new(0), Instant::now());
    let props = ["name", "age", "score", "ratio", "small", "ok", "born", "seen", "pic", "tags", "nums", "country", "since", "nope", "_id"];
    let values = [json!(30), json!("alice"), json!(1.5), json!(true), json!(null), json!([1, 2]), json!([]), json!("2020-01-01"), json!("x' OR 1=1 --"), json!({"a": 1}), json!(i64::MIN), json!(u64::MAX), json!("50%_\\")];
    let ops = ["=", "!=", "<", "<=", ">", ">=", "in", "prefix", "is_null", "~", ""];
    check!().with_type::<Vec<u8>>().with_test_time(SHORT).for_each(|c: &Vec<u8>| {
        n.fetch_add(1, Ordering::Relaxed);
        let mut it = c.iter().copied().chain(std::iter::repeat(0));
        let mut next = || it.next().unwrap_or(0);
        let mut m = Map::new();
        m.insert("type".into(), json!(choose(next(), &["Person", "City", "Knows", "person", ""])));
        match next() % 3 {
            0 => {
                m.insert("key".into(), json!(choose(next(), &["alice", "bob", "carol", "Lisbon", "ghost", "", "é\"x"])));
            }
            1 => {
                let w: Vec<Value> = (0..next() % 4).map(|_| json!({"prop": choose(next(), &props), "op": choose(next(), &ops), "value": choose(next(), &values)})).collect();
                m.insert("where".into(), Value::Array(w));
            }
            _ => {}
        }
        let mut q = Map::new();
        q.insert("match".into(), Value::Object(m));
        let steps: Vec<Value> = (0..next() % 4)
            .map(|_| {
                let mut s = Map::new();
                s.insert("edge".into(), json!(choose(next(), &["Knows", "LivesIn", "Person", "nope"])));
                s.insert("direction".into(), json!(choose(next(), &["out", "in", "both", "sideways"])));
                for k in ["min_hops", "max_hops"] {
                    let v = next();
                    if v % 3 != 0 {
                        s.insert(k.into(), json!(choose(v, &[0u64, 1, 2, 3, 16, 17, 4_294_967_295, 4_294_967_296])));
                    }
                }
                Value::Object(s)
            })
            .collect();
        if !steps.is_empty() {
            q.insert("traverse".into(), Value::Array(steps));
        }
        if next() % 2 == 0 {
            q.insert("return".into(), json!((0..next() % 3).map(|_| choose(next(), &props)).collect::<Vec<_>>()));
        }
        if next() % 2 == 0 {
            q.insert("order_by".into(), json!((0..next() % 3).map(|_| json!({"prop": choose(next(), &props), "desc": next() % 2 == 0})).collect::<Vec<_>>()));
        }
        if next() % 2 == 0 {
            q.insert("limit".into(), json!(choose(next(), &[0u64, 1, 2, 100, 10_000, 10_001, u64::MAX])));
        }
        if next() % 3 == 0 {
            q.insert("cursor".into(), json!(choose(next(), &["c1.x.1", "c1..1", "c1.x.-1", "c2.x.1", "c1.x.18446744073709551615", "c1.x.y.z", "", "c1.x.1.2"])));
        }
        if let Ok(req) = serde_json::from_value::<ReadRequest>(Value::Object(q)) {
            check_read(req);
        }
    });
    report("read_query_structured", &n, t);
}

// ---------------------------------------------------------------- change

/// The invariants of a graph that a batch of ops produced.
fn check_graph(schema: &GraphSchema, data: &GraphData) {
    for (ty, table) in &data.nodes {
        let nt = schema.node(ty).unwrap_or_else(|| panic!("node table {ty} is not in the schema"));
        let key = &nt.key_prop().name;
        for (k, props) in table.rows.iter() {
            assert!(!k.is_empty() && k.len() <= change::MAX_KEY_BYTES);
            assert_eq!(props.get(key).and_then(Value::as_str), Some(&**k), "{ty}/{k}: the key property is not the key");
            check_props(ty, &nt.props, props);
        }
    }
    for (ty, table) in &data.edges {
        let et = schema.edge(ty).unwrap_or_else(|| panic!("edge table {ty} is not in the schema"));
        for ((from, to), props) in table.rows.iter() {
            assert!(data.nodes.get(&et.from).is_some_and(|t| t.rows.contains_key(from)), "{ty}: {from} -> {to} dangles at {from}");
            assert!(data.nodes.get(&et.to).is_some_and(|t| t.rows.contains_key(to)), "{ty}: {from} -> {to} dangles at {to}");
            assert!(table.neighbours(from, true).any(|x| x == to) && table.neighbours(to, false).any(|x| x == from), "{ty}: adjacency lost {from} -> {to}");
            check_props(ty, &et.props, props);
        }
        let adjacency: usize = table.out.values().map(|s| s.len()).sum();
        let incoming: usize = table.inc.values().map(|s| s.len()).sum();
        assert_eq!((adjacency, incoming), (table.rows.len(), table.rows.len()), "{ty}: adjacency and rows disagree");
    }
}

fn check_props(owner: &str, schema: &[omnigraph_worker::contract::Property], props: &omnigraph_worker::store::state::Props) {
    for (name, v) in props.iter() {
        let p = schema.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{owner}: unknown property {name} stored"));
        assert!(!v.is_null(), "{owner}.{name}: a null is stored");
        assert_eq!(normalize(&p.ty, v).as_ref(), Ok(v), "{owner}.{name}: {v} is not canonical");
        let arr = to_array(&p.ty, &[Some(v)]).unwrap_or_else(|e| panic!("{owner}.{name}: {v} has no Arrow form: {e}"));
        assert_eq!(&from_array(&p.ty, arr.as_ref(), 0), v, "{owner}.{name}: {v} does not survive Arrow");
    }
    for p in schema.iter().filter(|p| !p.optional) {
        assert!(props.contains_key(&p.name), "{owner}: required {} missing", p.name);
    }
}

fn check_change(body: &Value, base: &Snapshot) {
    let f = fixture();
    let ops = match change::parse_body(body) {
        Ok(ops) => ops,
        Err(e) => return assert!(e.op.is_none() && !e.message.is_empty()),
    };
    let n = ops.len();
    match change::plan(&f.schema, base, ops.clone()) {
        Err(e) => {
            let i = e.op.expect("a rejected op is named");
            assert!(i < n, "error names op {i} of {n}");
        }
        Ok((plan, affected)) => {
            check_graph(&f.schema, &plan.data);
            for (ty, w) in &plan.nodes {
                let (before, after) = (base.data.nodes.get(ty), plan.data.nodes.get(ty));
                for k in &w.remove {
                    assert!(before.is_some_and(|t| t.rows.contains_key(k)), "{ty}/{k}: removes a row that was not there");
                }
                for k in &w.put {
                    assert!(after.is_some_and(|t| t.rows.contains_key(k)), "{ty}/{k}: writes a row that is not there");
                }
            }
            // A row made and deleted within the batch was touched but is written nowhere.
            assert!(affected.nodes >= plan.nodes.values().map(|w| w.remove.iter().chain(&w.put).collect::<BTreeSet<_>>().len()).sum::<usize>());
            assert!(affected.edges >= plan.edges.values().map(|w| w.remove.iter().chain(&w.put).collect::<BTreeSet<_>>().len()).sum::<usize>());
            // Every table the plan touched can be made into the batch Lance appends.
            for (ty, w) in &plan.nodes {
                if let (Some(t), Some(table)) = (f.schema.node(ty), plan.data.nodes.get(ty)) {
                    let b = omnigraph_worker::store::TableBatch::nodes(t, table, &w.remove, &w.put);
                    assert!(b.is_ok(), "{ty}: no Arrow batch: {:?}", b.err().map(|e| e.to_string()));
                }
            }
            for (ty, w) in &plan.edges {
                if let (Some(t), Some(table)) = (f.schema.edge(ty), plan.data.edges.get(ty)) {
                    let b = omnigraph_worker::store::TableBatch::edges(t, table, &w.remove, &w.put);
                    assert!(b.is_ok(), "{ty}: no Arrow batch: {:?}", b.err().map(|e| e.to_string()));
                }
            }
            // Planning is a function of the base and the ops.
            let (again, _) = change::plan(&f.schema, base, ops).expect("the same batch again");
            assert_eq!(again.nodes.len(), plan.nodes.len());
        }
    }
}

#[test]
fn change_batch_bytes() {
    fixture();
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        if let Ok(body) = serde_json::from_slice::<Value>(bytes) {
            check_change(&body, &fixture().snap);
        }
    });
    report("change_batch_bytes", &n, t);
}

/// Property values near each type's edges, valid and not.
fn value_pool() -> Vec<Value> {
    vec![
        json!(null), json!(0), json!(-1), json!(2_147_483_647), json!(2_147_483_648i64), json!(i64::MIN), json!(u64::MAX), json!(1.5), json!(-0.0),
        json!(3.4e38), json!(3.5e38), json!(1e308), json!(5e-324), json!(true), json!("x"), json!(""), json!("2024-02-29"), json!("2023-02-29"),
        json!("+262142-01-01"), json!("2024-01-01T00:00:00Z"), json!("2024-01-01T00:00:00.1234567+14:00"), json!("9999-12-31T23:59:59-23:59"), json!("0000-01-01T00:00:00+00:01"),
        json!("AAEC"), json!("AAE="), json!("!!"), json!(["a", "b"]), json!([1, null]), json!([1, 2]), json!([[1]]), json!([]), json!({"x": 1}),
        json!("é\u{0}\"\\"),
    ]
}

fn structured_ops(c: &[u8]) -> Value {
    let pool = value_pool();
    let props = ["name", "age", "score", "ratio", "small", "ok", "born", "seen", "pic", "tags", "nums", "country", "since", "w", "nope"];
    let keys = ["alice", "bob", "carol", "dave", "eve", "Lisbon", "Oslo", "Rome", "", "é\"x", "a\u{0}b"];
    let mut it = c.iter().copied().chain(std::iter::repeat(0));
    let mut next = || it.next().unwrap_or(0);
    let count = 1 + (c.len() / 6).min(24);
    let ops: Vec<Value> = (0..count)
        .map(|_| {
            let mut p = Map::new();
            for _ in 0..next() % 3 {
                p.insert(choose(next(), &props).into(), choose(next(), &pool));
            }
            match next() % 9 {
                0..=2 => json!({"upsert": {"type": choose(next(), &["Person", "City", "Knows", "Nope"]), "key": choose(next(), &keys), "props": p}}),
                3 => json!({"delete": {"type": choose(next(), &["Person", "City"]), "key": choose(next(), &keys)}}),
                4 | 5 => json!({"link": {"edge": choose(next(), &["Knows", "LivesIn", "Person"]), "from": choose(next(), &keys), "to": choose(next(), &keys), "props": p}}),
                6 => json!({"unlink": {"edge": choose(next(), &["Knows", "LivesIn"]), "from": choose(next(), &keys), "to": choose(next(), &keys)}}),
                7 => json!({"upsert": {"type": "Person", "key": "x".repeat(1024 + (next() % 2) as usize)}}),
                _ => json!({choose(next(), &["upsert", "link", "merge", "Upsert"]): {"type": "Person", "key": "bob", "extra": 1}}),
            }
        })
        .collect();
    json!({ "ops": ops })
}

#[test]
fn change_batch_structured() {
    fixture();
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_type::<(Vec<u8>, bool)>().with_test_time(SHORT).for_each(|(c, empty): &(Vec<u8>, bool)| {
        n.fetch_add(1, Ordering::Relaxed);
        let f = fixture();
        check_change(&structured_ops(c), if *empty { &f.empty } else { &f.snap });
    });
    report("change_batch_structured", &n, t);
}

// ---------------------------------------------------------------- ingest

/// Runs `body` through the splitter in chunks of `chunk` bytes and the line
/// validator, as `/ingest` does; the kinds and the graph, or the first error.
fn ingest(body: &[u8], chunk: usize, max_line: usize) -> Result<(Vec<Kind>, GraphData), line::LineError> {
    let f = fixture();
    let mut w = Working::new(&f.schema, f.snap.data.clone());
    let mut lines = Lines::new(max_line);
    let mut kinds = Vec::new();
    for part in body.chunks(chunk.max(1)) {
        lines.feed(part, |n, l| line::apply(&mut w, n, l).map(|k| kinds.push(k)))?;
    }
    lines.finish(|n, l| line::apply(&mut w, n, l).map(|k| kinds.push(k)))?;
    Ok((kinds, w.into_data()))
}

/// The same lines as `/change` ops, when every line has one of the two shapes.
fn as_ops(body: &[u8]) -> Option<Vec<Value>> {
    let mut ops = Vec::new();
    for l in body.split(|b| *b == b'\n') {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        if l.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(l) else { return None };
        let props = m.remove("props");
        let node = m.len() == 2 && m.contains_key("type") && m.contains_key("key");
        let edge = m.len() == 3 && m.contains_key("edge") && m.contains_key("from") && m.contains_key("to");
        if let Some(p) = props {
            m.insert("props".into(), p);
        }
        match (node, edge) {
            (true, _) => ops.push(json!({ "upsert": m })),
            (_, true) => ops.push(json!({ "link": m })),
            _ => return None,
        }
    }
    Some(ops)
}

fn same_graph(a: &GraphData, b: &GraphData) -> bool {
    let rows = |d: &GraphData| -> (Vec<(String, String, Value)>, Vec<(String, String, String, Value)>) {
        let mut n: Vec<_> = d.nodes.iter().flat_map(|(t, tb)| tb.rows.iter().map(move |(k, p)| (t.clone(), k.to_string(), Value::Object(p.to_map())))).collect();
        let mut e: Vec<_> = d.edges.iter().flat_map(|(t, tb)| tb.rows.iter().map(move |((f, to), p)| (t.clone(), f.to_string(), to.to_string(), Value::Object(p.to_map())))).collect();
        n.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        e.sort_by(|x, y| (&x.0, &x.1, &x.2).cmp(&(&y.0, &y.1, &y.2)));
        (n, e)
    };
    rows(a) == rows(b)
}

fn check_ingest(body: &[u8], chunk: usize) {
    let f = fixture();
    let max_line = 512;
    let whole = ingest(body, body.len().max(1), max_line);
    let cut = ingest(body, chunk, max_line);
    match (&whole, &cut) {
        (Ok((k1, d1)), Ok((k2, d2))) => assert!(k1 == k2 && same_graph(d1, d2), "chunks of {chunk} changed the result"),
        (Err(e1), Err(e2)) => assert_eq!(e1, e2, "chunks of {chunk} changed the error"),
        _ => panic!("chunks of {chunk} changed the outcome: {:?} vs {:?}", whole.as_ref().map(|r| r.0.len()), cut.as_ref().map(|r| r.0.len())),
    }
    let lines = body.split(|b| *b == b'\n').count() as u64;
    match &whole {
        Err(e) => assert!(e.line >= 1 && e.line <= lines, "error at line {} of {lines}", e.line),
        Ok((kinds, data)) => {
            assert_eq!(kinds.len() as u64, lines - u64::from(body.ends_with(b"\n") || body.is_empty()));
            check_graph(&f.schema, data);
        }
    }
    // `/ingest` and `/change` accept exactly the same nodes and edges.
    if body.split(|b| *b == b'\n').any(|l| l.len() > max_line) {
        return;
    }
    let Some(ops) = as_ops(body) else {
        assert!(whole.is_err(), "a line of neither shape was ingested");
        return;
    };
    if ops.is_empty() {
        return;
    }
    let by_change = change::plan(&f.schema, &f.snap, ops);
    match (&whole, &by_change) {
        (Ok((_, a)), Ok((plan, _))) => assert!(same_graph(a, &plan.data), "ingest and change built different graphs"),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("ingested, but /change refuses the same ops: {e}"),
        (Err(e), Ok(_)) => panic!("/change accepts the ops, but ingest refused: {e}"),
    }
}

#[test]
fn ingest_lines_bytes() {
    fixture();
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        let Some((c, body)) = bytes.split_first() else { return };
        check_ingest(body, 1 + *c as usize % 16);
    });
    report("ingest_lines_bytes", &n, t);
}

/// Structure-aware: bodies made of node and edge lines (valid-ish JSON),
/// blank lines, `\r\n` endings and junk lines.
#[test]
fn ingest_lines_structured() {
    fixture();
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_type::<(Vec<u8>, u8)>().with_test_time(SHORT).for_each(|(c, chunk): &(Vec<u8>, u8)| {
        n.fetch_add(1, Ordering::Relaxed);
        let ops = structured_ops(c);
        let pool = value_pool();
        let mut body = Vec::new();
        for (i, op) in ops["ops"].as_array().into_iter().flatten().enumerate() {
            let (kind, inner) = op.as_object().and_then(|o| o.iter().next()).map(|(k, v)| (k.as_str(), v.clone())).unwrap_or(("", json!(null)));
            let line = match (kind, c.get(i).copied().unwrap_or(0) % 7) {
                (_, 0) => String::new(),
                (_, 1) => format!("{}\r", inner),
                (_, 2) => format!("{{\"type\": \"Person\", \"key\": \"k{i}\", \"props\": {}}}", json!({"age": choose(i as u8, &pool)})),
                (_, 3) => "{\"type\": \"Person\", \"key\": \"z\", \"props\": null}".into(),
                ("upsert" | "link", _) => inner.to_string(),
                _ => format!("{} junk", inner),
            };
            body.extend_from_slice(line.as_bytes());
            body.push(b'\n');
        }
        check_ingest(&body, 1 + *chunk as usize % 32);
    });
    report("ingest_lines_structured", &n, t);
}

/// Edges of the three decoders, pinned by name.
#[test]
fn regression_worker_decoder_edges() {
    fixture();
    for q in [
        json!({"match": {"type": "Person"}, "traverse": [{"edge": "Knows", "direction": "both", "min_hops": 0, "max_hops": 16}]}),
        json!({"match": {"type": "Person", "key": "alice"}, "traverse": [{"edge": "LivesIn", "direction": "in"}]}),
        json!({"match": {"type": "Person"}, "order_by": [{"prop": "tags"}]}),
        json!({"match": {"type": "Person"}, "limit": 1, "cursor": "c1.x.18446744073709551615"}),
        json!({"match": {"type": "Person", "where": [{"prop": "name", "op": "prefix", "value": "50%_\\"}]}}),
    ] {
        check_read(serde_json::from_value(q).expect("query"));
    }
    let f = fixture();
    for body in [
        json!({"ops": [{"delete": {"type": "Person", "key": "alice"}}, {"link": {"edge": "Knows", "from": "alice", "to": "bob"}}]}),
        json!({"ops": [{"upsert": {"type": "Person", "key": "n", "props": {"ratio": 3.5e38}}}]}),
        json!({"ops": [{"upsert": {"type": "Person", "key": "n", "props": {"seen": "2024-01-01T00:00:00.1234567+14:00"}}}]}),
        json!({"ops": [{"upsert": {"type": "Person", "key": "n", "props": {"born": "+262142-01-01"}}}]}),
        json!({"ops": [{"upsert": {"type": "City", "key": "X"}}]}),
        json!({"ops": []}),
        json!({"ops": [], "branch": "main"}),
    ] {
        check_change(&body, &f.snap);
    }
    for body in ["", "\n", "\r\n\r\n", "{\"type\": \"Person\", \"key\": \"n\"}", "{\"type\": \"Person\", \"key\": \"n\", \"props\": null}\n"] {
        check_ingest(body.as_bytes(), 1);
    }
}

/// Found by `ingest_lines_structured`: ingest read a `null` field as absent
/// (`"props": null`, `"edge": null` on a node line), so it took lines that
/// `/change` refuses as ops. Both now refuse them.
#[test]
fn regression_ingest_refuses_null_fields_like_change() {
    let f = fixture();
    for l in [
        r#"{"type": "Person", "key": "z", "props": null}"#,
        r#"{"type": "Person", "key": "z", "edge": null}"#,
        r#"{"type": null, "key": "z"}"#,
        r#"{"edge": "Knows", "from": "alice", "to": "bob", "props": null}"#,
        r#"{"edge": "Knows", "from": "alice", "to": "bob", "key": null}"#,
    ] {
        let e = ingest(l.as_bytes(), 4096, 512).map(|r| r.0).expect_err(l);
        assert_eq!(e.line, 1, "{l}");
        let as_op: Value = serde_json::from_str(l).expect("json");
        let op = if as_op.get("edge").is_some_and(|v| !v.is_null()) { json!({ "link": as_op }) } else { json!({ "upsert": as_op }) };
        assert!(change::plan(&f.schema, &f.snap, vec![op]).is_err(), "{l}");
        check_ingest(l.as_bytes(), 3);
    }
}

/// Found by `change_batch_structured` and `ingest_lines_structured`: a
/// DateTime whose UTC form falls outside the years 0000-9999
/// (`9999-12-31T23:59:59-23:59`) passed validation, was kept as
/// `+10000-01-01T23:58:59.000000Z`, which is not RFC 3339, and the write
/// then failed with 500. `/change` must refuse it (400).
#[test]
fn regression_datetime_past_year_9999_is_refused() {
    let f = fixture();
    for v in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+00:01"] {
        let ops = vec![json!({"upsert": {"type": "Person", "key": "t", "props": {"seen": v}}})];
        assert!(change::plan(&f.schema, &f.snap, ops).is_err(), "{v} is accepted");
    }
}
