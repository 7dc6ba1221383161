//! `/read`: match nodes, traverse edges, project, order and page.

pub mod filter;
pub mod traverse;

use std::cmp::Ordering;
use std::sync::Arc;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::{GraphSchema, NodeType};
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

/// Runs `req` against `snap`.
pub async fn execute(schema: &GraphSchema, snap: &Snapshot, req: &ReadRequest, offset: usize) -> Result<ReadResponse, QueryError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(bad(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    let t = schema.node(&req.matcher.ty).ok_or_else(|| bad(format!("match: unknown node type {:?}", req.matcher.ty)))?;
    let start = match_nodes(t, snap, &req.matcher).await?;
    let mut reached: Vec<Reached> = start.iter().map(|k| (t.name.clone(), k.clone(), 0)).collect();
    let mut result_types = vec![t.name.clone()];
    for s in &req.traverse {
        let frontier: Vec<(String, Key)> = reached.into_iter().map(|(ty, k, _)| (ty, k)).collect();
        reached = traverse::step(schema, &snap.data, &frontier, s)?;
        let e = schema.edge(&s.edge).ok_or_else(|| bad(format!("traverse: unknown edge type {:?}", s.edge)))?;
        result_types = vec![e.from.clone(), e.to.clone()];
    }
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
            Row { props: project(nt, props.as_deref(), req.projection.as_deref()), ty, key, hops }
        })
        .collect();
    let next = offset.saturating_add(limit);
    let next_cursor = (next < total).then(|| Cursor { commit_id: snap.commit.commit_id.clone(), offset: next }.encode());
    Ok(ReadResponse { commit_id: snap.commit.commit_id.clone(), row_count: page.len(), rows: page, next_cursor })
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

fn project(nt: Option<&NodeType>, props: Option<&Map<String, Value>>, projection: Option<&[String]>) -> Map<String, Value> {
    let get = |name: &str| props.and_then(|p| p.get(name)).cloned().unwrap_or(Value::Null);
    match projection {
        Some(names) => names.iter().filter(|n| nt.is_some_and(|t| t.prop(n).is_some())).map(|n| (n.clone(), get(n))).collect(),
        None => nt.map(|t| t.props.iter().map(|p| (p.name.clone(), get(&p.name))).collect()).unwrap_or_default(),
    }
}

/// The start set: a key lookup in memory, or a Lance scan with the compiled filter.
async fn match_nodes(t: &NodeType, snap: &Snapshot, m: &Match) -> Result<Vec<Key>, QueryError> {
    let table = snap.data.nodes.get(&t.name);
    if m.filters.is_empty() {
        return Ok(match &m.key {
            Some(k) => table.and_then(|tb| tb.rows.get_key_value(k.as_str())).map(|(k, _)| vec![k.clone()]).unwrap_or_default(),
            None => table.map(|tb| tb.rows.keys().cloned().collect()).unwrap_or_default(),
        });
    }
    let mut filters = m.filters.clone();
    if let Some(k) = &m.key {
        filters.push(Predicate { prop: t.key_prop().name.clone(), op: "=".into(), value: Some(Value::String(k.clone())) });
    }
    let Some(expr) = filter::compile_all(t, &filters)? else { return Ok(Vec::new()) };
    let ds = snap.datasets.get(&t.name).ok_or_else(|| QueryError::Store(StoreError::Internal(format!("table {} is not open", t.name))))?;
    let key = t.key_prop().name.clone();
    let mut scan = ds.scan();
    scan.project(&[key.as_str()]).map_err(|e| StoreError::lance("project", e))?;
    scan.filter_expr(expr);
    let batches: Vec<arrow_array::RecordBatch> = scan
        .try_into_stream()
        .await
        .map_err(|e| StoreError::lance(format!("scan {}", t.name), e))?
        .try_collect()
        .await
        .map_err(|e| StoreError::lance(format!("scan {}", t.name), e))?;
    let mut out = Vec::new();
    for b in batches {
        use arrow_array::cast::AsArray;
        let col = b.column(0).as_string_opt::<i32>().ok_or_else(|| StoreError::Corrupt(format!("{}: key column is not a string", t.name)))?;
        out.extend(col.iter().flatten().map(|k| -> Key { Arc::from(k) }));
    }
    Ok(out)
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

    #[test]
    fn value_order() {
        use serde_json::json;
        assert_eq!(compare_values(Some(&json!(2)), Some(&json!(10))), Ordering::Less);
        assert_eq!(compare_values(Some(&json!(2.5)), Some(&json!(2))), Ordering::Greater);
        assert_eq!(compare_values(None, Some(&json!(1))), Ordering::Greater);
        assert_eq!(compare_values(Some(&json!("2024-01-02")), Some(&json!("2024-01-10"))), Ordering::Less);
    }
}
