//! `/change`: validating a batch of ops against the schema and the head state,
//! and turning it into a [`Plan`] that the store commits atomically.
//!
//! Ops apply in order to a working copy of the head state (cheap: persistent
//! maps), so a batch may create a node and link it in one go. The first
//! invalid op rejects the whole batch before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::contract::{GraphSchema, Property};
use crate::store::state::{GraphData, Key, Props};
use crate::store::value::normalize;
use crate::store::{Plan, Snapshot, TableWrite};

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", render(.op, .field, .message))]
pub struct ChangeError {
    pub op: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

fn render(op: &Option<usize>, field: &Option<String>, message: &str) -> String {
    match (op, field) {
        (Some(i), Some(f)) => format!("ops[{i}].{f}: {message}"),
        (Some(i), None) => format!("ops[{i}]: {message}"),
        (None, _) => message.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Op {
    Upsert(UpsertOp),
    Delete(NodeRef),
    Link(LinkOp),
    Unlink(EdgeRef),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertOp {
    #[serde(rename = "type")]
    ty: String,
    key: String,
    #[serde(default)]
    props: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRef {
    #[serde(rename = "type")]
    ty: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkOp {
    edge: String,
    from: String,
    to: String,
    #[serde(default)]
    props: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeRef {
    edge: String,
    from: String,
    to: String,
}

/// How many distinct nodes and edges a change touched (cascaded edge deletes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affected {
    pub nodes: usize,
    pub edges: usize,
}

/// Parses the `/change` body: `{"ops": [...]}`.
pub fn parse_body(body: &Value) -> Result<Vec<Value>, ChangeError> {
    let plain = |m: &str| ChangeError { op: None, field: None, message: m.to_string() };
    let obj = body.as_object().ok_or_else(|| plain("the body must be a JSON object {\"ops\": [...]}"))?;
    if obj.contains_key("branch") {
        return Err(plain("the branch goes in the query string (?branch=), never in the body"));
    }
    if let Some(k) = obj.keys().find(|k| k.as_str() != "ops") {
        return Err(plain(&format!("unknown field {k:?}; the body is {{\"ops\": [...]}}")));
    }
    let ops = obj.get("ops").and_then(Value::as_array).ok_or_else(|| plain("\"ops\" must be an array of ops"))?;
    if ops.is_empty() {
        return Err(plain("\"ops\" is empty"));
    }
    Ok(ops.clone())
}

struct Working<'a> {
    schema: &'a GraphSchema,
    data: GraphData,
    nodes: BTreeMap<String, BTreeSet<Key>>,
    edges: BTreeMap<String, BTreeSet<(Key, Key)>>,
}

fn err(i: usize, field: Option<&str>, message: impl Into<String>) -> ChangeError {
    ChangeError { op: Some(i), field: field.map(str::to_string), message: message.into() }
}

fn check_key(i: usize, field: &str, key: &str) -> Result<Key, ChangeError> {
    if key.is_empty() {
        return Err(err(i, Some(field), "must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(err(i, Some(field), format!("is longer than {MAX_KEY_BYTES} bytes")));
    }
    Ok(Arc::from(key))
}

/// Merges `given` into `base` after checking each value against `props`.
/// `null` clears an optional property. Required properties must end up set.
fn merge_props(i: usize, props: &[Property], base: Option<&Props>, given: Map<String, Value>, what: &str) -> Result<Map<String, Value>, ChangeError> {
    let mut out = base.map(|p| Map::clone(p)).unwrap_or_default();
    for (name, v) in given {
        let field = format!("props.{name}");
        let p = props.iter().find(|p| p.name == name).ok_or_else(|| err(i, Some(&field), format!("{what} has no property {name:?}")))?;
        if v.is_null() {
            if !p.optional {
                return Err(err(i, Some(&field), "is required and cannot be null"));
            }
            out.remove(&name);
        } else {
            let v = normalize(&p.ty, &v).map_err(|m| err(i, Some(&field), m))?;
            out.insert(name, v);
        }
    }
    if let Some(missing) = props.iter().find(|p| !p.optional && !p.key && !out.contains_key(&p.name)) {
        return Err(err(i, Some(&format!("props.{}", missing.name)), format!("required property of {what} is missing")));
    }
    Ok(out)
}

impl Working<'_> {
    fn apply(&mut self, i: usize, op: Op) -> Result<(), ChangeError> {
        match op {
            Op::Upsert(u) => {
                let t = self.schema.node(&u.ty).ok_or_else(|| err(i, Some("type"), format!("unknown node type {:?}", u.ty)))?;
                let key = check_key(i, "key", &u.key)?;
                let key_name = &t.key_prop().name;
                if let Some(v) = u.props.get(key_name) {
                    if v.as_str() != Some(&*key) {
                        return Err(err(i, Some(&format!("props.{key_name}")), "must equal \"key\" (it is the @key property)"));
                    }
                }
                let table = self.data.nodes.entry(t.name.clone()).or_default();
                let mut props = merge_props(i, &t.props, table.rows.get(&key), u.props, &t.name)?;
                props.insert(key_name.clone(), Value::String(key.to_string()));
                table.rows.insert(key.clone(), Arc::new(props));
                self.nodes.entry(t.name.clone()).or_default().insert(key);
            }
            Op::Delete(d) => {
                let t = self.schema.node(&d.ty).ok_or_else(|| err(i, Some("type"), format!("unknown node type {:?}", d.ty)))?;
                let key = check_key(i, "key", &d.key)?;
                let table = self.data.nodes.entry(t.name.clone()).or_default();
                if table.rows.remove(&key).is_none() {
                    return Err(err(i, Some("key"), format!("{} {:?} does not exist", t.name, d.key)));
                }
                self.nodes.entry(t.name.clone()).or_default().insert(key.clone());
                // Deleting a node deletes every edge that touches it.
                for e in &self.schema.edges {
                    let Some(et) = self.data.edges.get_mut(&e.name) else { continue };
                    let mut gone: Vec<(Key, Key)> = Vec::new();
                    if e.from == t.name {
                        gone.extend(et.neighbours(&key, true).map(|to| (key.clone(), to.clone())));
                    }
                    if e.to == t.name {
                        gone.extend(et.neighbours(&key, false).map(|from| (from.clone(), key.clone())));
                    }
                    for (f, to) in gone {
                        if et.remove(&f, &to) {
                            self.edges.entry(e.name.clone()).or_default().insert((f, to));
                        }
                    }
                }
            }
            Op::Link(l) => {
                let e = self.schema.edge(&l.edge).ok_or_else(|| err(i, Some("edge"), format!("unknown edge type {:?}", l.edge)))?;
                let from = self.endpoint(i, "from", &e.from, &l.from)?;
                let to = self.endpoint(i, "to", &e.to, &l.to)?;
                let table = self.data.edges.entry(e.name.clone()).or_default();
                let props = merge_props(i, &e.props, table.rows.get(&(from.clone(), to.clone())), l.props, &e.name)?;
                table.insert(from.clone(), to.clone(), Arc::new(props));
                self.edges.entry(e.name.clone()).or_default().insert((from, to));
            }
            Op::Unlink(u) => {
                let e = self.schema.edge(&u.edge).ok_or_else(|| err(i, Some("edge"), format!("unknown edge type {:?}", u.edge)))?;
                let (from, to): (Key, Key) = (Arc::from(u.from.as_str()), Arc::from(u.to.as_str()));
                let table = self.data.edges.entry(e.name.clone()).or_default();
                if !table.remove(&from, &to) {
                    return Err(err(i, None, format!("{} edge {:?} -> {:?} does not exist", e.name, u.from, u.to)));
                }
                self.edges.entry(e.name.clone()).or_default().insert((from, to));
            }
        }
        Ok(())
    }

    fn endpoint(&self, i: usize, field: &str, node_type: &str, key: &str) -> Result<Key, ChangeError> {
        let k = check_key(i, field, key)?;
        let exists = self.data.nodes.get(node_type).is_some_and(|t| t.rows.contains_key(&k));
        if !exists {
            return Err(err(i, Some(field), format!("{node_type} {key:?} does not exist")));
        }
        Ok(k)
    }
}

/// Touched rows that existed before are removed; those that exist after are (re)written.
fn table_write<K: Clone>(touched: BTreeSet<K>, existed: impl Fn(&K) -> bool, exists: impl Fn(&K) -> bool) -> TableWrite<K> {
    let mut tw = TableWrite::default();
    for k in touched {
        if existed(&k) {
            tw.remove.push(k.clone());
        }
        if exists(&k) {
            tw.put.push(k);
        }
    }
    tw
}

/// Validates `ops` against `base` and returns the plan and the affected counts.
pub fn plan(schema: &GraphSchema, base: &Snapshot, ops: Vec<Value>) -> Result<(Plan, Affected), ChangeError> {
    let mut w = Working { schema, data: base.data.clone(), nodes: BTreeMap::new(), edges: BTreeMap::new() };
    for (i, raw) in ops.into_iter().enumerate() {
        let op: Op = serde_json::from_value(raw).map_err(|e| err(i, None, format!("not a valid op: {e}")))?;
        w.apply(i, op)?;
    }
    let affected = Affected { nodes: w.nodes.values().map(BTreeSet::len).sum(), edges: w.edges.values().map(BTreeSet::len).sum() };
    let mut plan = Plan { data: GraphData::default(), nodes: BTreeMap::new(), edges: BTreeMap::new() };
    for (ty, keys) in w.nodes {
        let (before, after) = (base.data.nodes.get(&ty), w.data.nodes.get(&ty));
        let tw = table_write(keys, |k| before.is_some_and(|t| t.rows.contains_key(k)), |k| after.is_some_and(|t| t.rows.contains_key(k)));
        plan.nodes.insert(ty, tw);
    }
    for (ty, pairs) in w.edges {
        let (before, after) = (base.data.edges.get(&ty), w.data.edges.get(&ty));
        let tw = table_write(pairs, |p| before.is_some_and(|t| t.rows.contains_key(p)), |p| after.is_some_and(|t| t.rows.contains_key(p)));
        plan.edges.insert(ty, tw);
    }
    plan.data = w.data;
    Ok((plan, affected))
}
