//! `/read`: match nodes, traverse edges, project, order and page.

pub mod filter;
pub mod traverse;

use std::cmp::Ordering;
use std::sync::Arc;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::{GraphSchema, NodeType};
use crate::limits::{Cancel, LimitExceeded, Limits, VisitBudget};
use crate::store::state::Key;
use crate::store::{Snapshot, StoreError};
use filter::Predicate;
use traverse::{Reached, Step};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    /// Past one of the worker's limits; 400 with the limit in `details`.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    #[serde(rename = "match")]
    pub matcher: Match,
    #[serde(default)]
    pub traverse: Vec<Step>,
    #[serde(rename = "return")]
    pub projection: Option<Vec<String>>,
    #[serde(default)]
    pub order_by: Vec<OrderBy>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(rename = "type")]
    pub ty: String,
    pub key: Option<String>,
    #[serde(rename = "where", default)]
    pub filters: Vec<Predicate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub prop: String,
    #[serde(default)]
    pub desc: bool,
}

#[derive(Debug, Serialize)]
pub struct Row {
    #[serde(rename = "type")]
    pub ty: String,
    pub key: Key,
    pub hops: u32,
    pub props: Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct ReadResponse {
    pub commit_id: String,
    pub rows: Vec<Row>,
    pub row_count: usize,
    pub next_cursor: Option<String>,
}

/// A cursor pins the commit it was issued at and the offset of the next page,
/// so paging through a result never mixes two versions of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub commit_id: String,
    pub offset: usize,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("c1.{}.{}", self.commit_id, self.offset)
    }

    pub fn decode(s: &str) -> Result<Cursor, QueryError> {
        let bad = || QueryError::BadRequest(format!("invalid cursor {s:?}"));
        let mut parts = s.splitn(3, '.');
        if parts.next() != Some("c1") {
            return Err(bad());
        }
        let commit_id = parts.next().filter(|c| !c.is_empty()).ok_or_else(bad)?.to_string();
        let offset = parts.next().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
        Ok(Cursor { commit_id, offset })
    }
}

fn bad(m: impl Into<String>) -> QueryError {
    QueryError::BadRequest(m.into())
}

/// Checks everything about `req` that needs no data, before any work: the
/// page size, the types and hop ranges it names, and the request-shape limits.
pub fn validate(schema: &GraphSchema, req: &ReadRequest, limits: &Limits) -> Result<(), QueryError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(bad(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    schema.node(&req.matcher.ty).ok_or_else(|| bad(format!("match: unknown node type {:?}", req.matcher.ty)))?;
    limits.check_traverse_steps(req.traverse.len())?;
    for s in &req.traverse {
        schema.edge(&s.edge).ok_or_else(|| bad(format!("traverse: unknown edge type {:?}", s.edge)))?;
        traverse::hop_range(s)?;
    }
    if req.matcher.filters.len() > filter::MAX_WHERE {
        return Err(bad(format!("where: {} predicates, more than {}", req.matcher.filters.len(), filter::MAX_WHERE)));
    }
    if req.order_by.len() > filter::MAX_WHERE {
        return Err(bad(format!("order_by: {} keys, more than {}", req.order_by.len(), filter::MAX_WHERE)));
    }
    for p in req.matcher.filters.iter().filter(|p| p.op == "in") {
        if let Some(Value::Array(items)) = &p.value {
            limits.check_in_list(&p.prop, items.len())?;
        }
    }
    Ok(())
}

/// Runs `req` against `snap` within `limits`, stopping when `cancel` is set.
///
/// A `where` match is a Lance scan and stays on the async runtime; the rest
/// (traversal, sort, projection over the in-memory snapshot) is CPU-bound and
/// runs on a blocking thread, so a huge read never starves `/healthz` or the
/// other requests of the runtime's few threads.
pub async fn execute(
    schema: Arc<GraphSchema>,
    snap: Arc<Snapshot>,
    req: ReadRequest,
    offset: usize,
    limits: &Limits,
    cancel: Cancel,
) -> Result<ReadResponse, QueryError> {
    validate(&schema, &req, limits)?;
    let mut budget = VisitBudget::new(limits, cancel);
    let t = schema.node(&req.matcher.ty).ok_or_else(|| bad(format!("match: unknown node type {:?}", req.matcher.ty)))?;
    let scanned = scan_start(t, &snap, &req.matcher, &mut budget).await?;
    if is_point_lookup(&req) {
        // One key, no traversal: bounded work, cheaper than a thread hop.
        return evaluate(&schema, &snap, &req, scanned, offset, &mut budget);
    }
    tokio::task::spawn_blocking(move || evaluate(&schema, &snap, &req, scanned, offset, &mut budget))
        .await
        .map_err(|e| QueryError::Store(StoreError::Internal(format!("the read task failed: {e}"))))?
}

/// A read of one node by key with nothing to traverse: at most one row, so
/// it runs in place instead of on a blocking thread.
fn is_point_lookup(req: &ReadRequest) -> bool {
    req.matcher.key.is_some() && req.matcher.filters.is_empty() && req.traverse.is_empty()
}

/// The CPU-bound part of a read. `scanned` is the start set when a Lance
/// scan produced it (already charged to `budget`); `None` resolves the start
/// set from memory.
pub fn evaluate(
    schema: &GraphSchema,
    snap: &Snapshot,
    req: &ReadRequest,
    scanned: Option<Vec<Key>>,
    offset: usize,
    budget: &mut VisitBudget,
) -> Result<ReadResponse, QueryError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    let t = schema.node(&req.matcher.ty).ok_or_else(|| bad(format!("match: unknown node type {:?}", req.matcher.ty)))?;
    let start = match scanned {
        Some(keys) => keys,
        None => match_in_memory(t, snap, &req.matcher, budget)?,
    };
    let mut reached: Vec<Reached> = start.into_iter().map(|k| (t.name.clone(), k, 0)).collect();
    let mut result_types = vec![t.name.clone()];
    for s in &req.traverse {
        budget.check()?;
        let frontier: Vec<(String, Key)> = reached.into_iter().map(|(ty, k, _)| (ty, k)).collect();
        reached = traverse::step(schema, &snap.data, &frontier, s, budget)?;
        let e = schema.edge(&s.edge).ok_or_else(|| bad(format!("traverse: unknown edge type {:?}", s.edge)))?;
        result_types = vec![e.from.clone(), e.to.clone()];
    }
    budget.check()?;
    let result_types: Vec<&NodeType> = result_types.iter().filter_map(|n| schema.node(n)).collect();
    for name in req.projection.iter().flatten().chain(req.order_by.iter().map(|o| &o.prop)) {
        if !result_types.iter().any(|nt| nt.prop(name).is_some()) {
            return Err(bad(format!("no result type has a property {name:?}")));
        }
    }
    for o in &req.order_by {
        if result_types.iter().filter_map(|nt| nt.prop(&o.prop)).any(|p| !(p.ty.is_ordered() || p.ty == crate::contract::PropType::Bool)) {
            return Err(bad(format!("order_by: property {:?} cannot be ordered", o.prop)));
        }
    }
    let props_of = |ty: &str, key: &Key| snap.data.nodes.get(ty).and_then(|n| n.rows.get(key)).cloned();
    let mut rows: Vec<(Reached, Option<crate::store::state::Props>)> = reached.into_iter().map(|r| {
        let p = props_of(&r.0, &r.1);
        (r, p)
    }).collect();
    rows.sort_by(|(a, pa), (b, pb)| {
        for o in &req.order_by {
            let va = pa.as_ref().and_then(|p| p.get(&o.prop));
            let vb = pb.as_ref().and_then(|p| p.get(&o.prop));
            let ord = compare_values(va, vb);
            let ord = if o.desc { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        (a.2, &a.0, &a.1).cmp(&(b.2, &b.0, &b.1))
    });
    let total = rows.len();
    let page: Vec<Row> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|((ty, key, hops), props)| {
            let nt = schema.node(&ty);
            Row { props: project(nt, props.as_ref(), req.projection.as_deref()), ty, key, hops }
        })
        .collect();
    let next = offset.saturating_add(limit);
    let next_cursor = (next < total).then(|| Cursor { commit_id: snap.commit.commit_id.to_string(), offset: next }.encode());
    Ok(ReadResponse { commit_id: snap.commit.commit_id.to_string(), row_count: page.len(), rows: page, next_cursor })
}

/// Nulls sort last ascending (first descending); numbers numerically; strings
/// (dates and date-times are canonical ISO strings) lexically.
fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(Value::Number(x)), Some(Value::Number(y))) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i.cmp(&j),
            _ => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Ordering::Equal),
        },
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

fn project(nt: Option<&NodeType>, props: Option<&crate::store::state::Props>, projection: Option<&[String]>) -> Map<String, Value> {
    let get = |name: &str| props.and_then(|p| p.get(name)).cloned().unwrap_or(Value::Null);
    match projection {
        Some(names) => names.iter().filter(|n| nt.is_some_and(|t| t.prop(n).is_some())).map(|n| (n.clone(), get(n))).collect(),
        None => nt.map(|t| t.props.iter().map(|p| (p.name.clone(), get(&p.name))).collect()).unwrap_or_default(),
    }
}

/// The start set without a `where`: a key lookup or every node of the type,
/// charged to the budget before any key is copied.
fn match_in_memory(t: &NodeType, snap: &Snapshot, m: &Match, budget: &mut VisitBudget) -> Result<Vec<Key>, QueryError> {
    let table = snap.data.nodes.get(&t.name);
    let keys: Vec<Key> = match &m.key {
        Some(k) => table.and_then(|tb| tb.rows.get_key_value(k.as_str())).map(|(k, _)| vec![k.clone()]).unwrap_or_default(),
        None => {
            budget.visit(table.map_or(0, |tb| tb.rows.len()))?;
            return Ok(table.map(|tb| tb.rows.keys().cloned().collect()).unwrap_or_default());
        }
    };
    budget.visit(keys.len())?;
    Ok(keys)
}

/// The start set of a `where` match: a Lance scan with the compiled filter,
/// charged to the budget batch by batch. `None` when there is no `where`.
async fn scan_start(t: &NodeType, snap: &Snapshot, m: &Match, budget: &mut VisitBudget) -> Result<Option<Vec<Key>>, QueryError> {
    if m.filters.is_empty() {
        return Ok(None);
    }
    let mut filters = m.filters.clone();
    if let Some(k) = &m.key {
        filters.push(Predicate { prop: t.key_prop().name.clone(), op: "=".into(), value: Some(Value::String(k.clone())) });
    }
    let Some(expr) = filter::compile_all(t, &filters)? else { return Ok(Some(Vec::new())) };
    let ds = snap.datasets.get(&t.name).ok_or_else(|| QueryError::Store(StoreError::Internal(format!("table {} is not open", t.name))))?;
    let key = t.key_prop().name.clone();
    let mut scan = ds.scan();
    scan.project(&[key.as_str()]).map_err(|e| StoreError::lance("project", e))?;
    scan.filter_expr(expr);
    let mut stream = scan.try_into_stream().await.map_err(|e| StoreError::lance(format!("scan {}", t.name), e))?;
    let mut out = Vec::new();
    while let Some(b) = stream.try_next().await.map_err(|e| StoreError::lance(format!("scan {}", t.name), e))? {
        use arrow_array::cast::AsArray;
        budget.visit(b.num_rows())?;
        let col = b.column(0).as_string_opt::<i32>().ok_or_else(|| StoreError::Corrupt(format!("{}: key column is not a string", t.name)))?;
        out.extend(col.iter().flatten().map(|k| -> Key { Arc::from(k) }));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = Cursor { commit_id: "01ABC".into(), offset: 200 };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for junk in ["", "c1", "c1..5", "c2.x.5", "c1.x.-1", "c1.x.y"] {
            assert!(Cursor::decode(junk).is_err(), "{junk}");
        }
    }

    mod limit_tests {
        use super::super::*;
        use crate::store::state::{EdgeTable, GraphData, NodeTable, Props};
        use crate::store::CommitRecord;
        use serde_json::json;

        const SCHEMA: &str = "node P { k: String @key  n: I64? }\nedge E: P -> P\n";

        /// p0 linked to p1..p(n-1): a star, in memory only.
        fn star(n: usize) -> (GraphSchema, Snapshot) {
            let schema = GraphSchema::parse(SCHEMA).unwrap();
            let mut nodes = NodeTable::default();
            let mut edges = EdgeTable::default();
            for i in 0..n {
                nodes.rows.insert(Key::from(format!("p{i}")), crate::store::state::props(json!({"k": format!("p{i}"), "n": i}).as_object().unwrap().clone()));
                if i > 0 {
                    edges.insert(Key::from("p0"), Key::from(format!("p{i}")), Props::default());
                }
            }
            let mut data = GraphData::default();
            data.nodes.insert("P".into(), nodes);
            data.edges.insert("E".into(), edges);
            let commit = CommitRecord { commit_id: "C1".into(), branch: "main".into(), actor_id: "local".into(), ..Default::default() };
            let version = Arc::new(crate::store::schemas::SchemaVersion { id: None, source: Arc::from(SCHEMA), graph: Arc::new(schema.clone()) });
            (schema, Snapshot { commit, schema: version, data, datasets: Default::default() })
        }

        fn req(v: serde_json::Value) -> ReadRequest {
            serde_json::from_value(v).unwrap()
        }

        fn run(schema: &GraphSchema, snap: &Snapshot, r: &ReadRequest, l: &Limits) -> Result<ReadResponse, QueryError> {
            validate(schema, r, l)?;
            evaluate(schema, snap, r, None, 0, &mut VisitBudget::new(l, Cancel::default()))
        }

        fn limit_of(e: QueryError) -> &'static str {
            match e {
                QueryError::Limit(l) => l.limit,
                other => panic!("expected a limit error, got {other:?}"),
            }
        }

        #[test]
        fn request_shape_limits() {
            let (schema, _) = star(2);
            let l = Limits { max_traverse_steps: 2, max_in_list: 3, ..Limits::default() };
            let step = json!({"edge": "E"});
            assert!(validate(&schema, &req(json!({"match": {"type": "P"}, "traverse": [step, step]})), &l).is_ok());
            let e = validate(&schema, &req(json!({"match": {"type": "P"}, "traverse": [step, step, step]})), &l).unwrap_err();
            assert_eq!(limit_of(e), "max_traverse_steps");
            let in_list = |n: usize| req(json!({"match": {"type": "P", "where": [{"prop": "n", "op": "in", "value": (0..n).collect::<Vec<_>>()}]}}));
            assert!(validate(&schema, &in_list(3), &l).is_ok());
            assert_eq!(limit_of(validate(&schema, &in_list(4), &l).unwrap_err()), "max_in_list");
            let mut wide = in_list(1);
            wide.matcher.filters = (0..=filter::MAX_WHERE).map(|_| wide.matcher.filters[0].clone()).collect();
            assert!(validate(&schema, &wide, &Limits::default()).unwrap_err().to_string().contains("more than 32"));
            // A bad hop range in a later step is refused before any work.
            let e = validate(&schema, &req(json!({"match": {"type": "P"}, "traverse": [step, {"edge": "E", "max_hops": 99}]})), &l).unwrap_err();
            assert!(matches!(e, QueryError::BadRequest(_)), "{e:?}");
        }

        #[test]
        fn the_start_set_and_every_step_count_toward_max_visited() {
            let (schema, snap) = star(10);
            let all = req(json!({"match": {"type": "P"}}));
            assert_eq!(run(&schema, &snap, &all, &Limits { max_visited: 10, ..Limits::default() }).unwrap().row_count, 10);
            assert_eq!(limit_of(run(&schema, &snap, &all, &Limits { max_visited: 9, ..Limits::default() }).unwrap_err()), "max_visited");
            // 1 start node + 9 reached = 10.
            let hop = req(json!({"match": {"type": "P", "key": "p0"}, "traverse": [{"edge": "E"}]}));
            assert_eq!(run(&schema, &snap, &hop, &Limits { max_visited: 10, ..Limits::default() }).unwrap().row_count, 9);
            let e = run(&schema, &snap, &hop, &Limits { max_visited: 9, ..Limits::default() }).unwrap_err();
            assert_eq!(e.to_string(), "the read visited more than 9 nodes (limits.max_visited)");
        }

        #[test]
        fn a_cancelled_read_stops() {
            let (schema, snap) = star(10);
            let cancel = Cancel::default();
            cancel.cancel();
            let r = req(json!({"match": {"type": "P", "key": "p0"}, "traverse": [{"edge": "E"}]}));
            let e = evaluate(&schema, &snap, &r, None, 0, &mut VisitBudget::new(&Limits::default(), cancel)).unwrap_err();
            assert_eq!(limit_of(e), "read_timeout_ms");
        }
    }

    #[test]
    fn value_order() {
        use serde_json::json;
        assert_eq!(compare_values(Some(&json!(2)), Some(&json!(10))), Ordering::Less);
        assert_eq!(compare_values(Some(&json!(2.5)), Some(&json!(2))), Ordering::Greater);
        assert_eq!(compare_values(None, Some(&json!(1))), Ordering::Greater);
        assert_eq!(compare_values(Some(&json!("2024-01-02")), Some(&json!("2024-01-10"))), Ordering::Less);
    }
}
