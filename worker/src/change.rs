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
use crate::store::state::{self, GraphData, Key, Props};
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

/// The state a batch of ops builds: the head's data with the ops applied so
/// far, and every node and edge they touched. `/change` runs a whole batch
/// through one; `/ingest` runs its lines through one and drains what they
/// touched at every batch it writes.
pub struct Working<'a> {
    schema: &'a GraphSchema,
    data: GraphData,
    nodes: BTreeMap<String, BTreeSet<Key>>,
    edges: BTreeMap<String, BTreeSet<(Key, Key)>>,
}

/// What ops touched, per node type and per edge type (sorted, distinct).
pub type Touched = (BTreeMap<String, BTreeSet<Key>>, BTreeMap<String, BTreeSet<(Key, Key)>>);

/// `map[name]`, inserted empty first if missing, without allocating the
/// name when it is there (the common case, once per op).
fn slot<'m, V: Default>(map: &'m mut BTreeMap<String, V>, name: &str) -> &'m mut V {
    if !map.contains_key(name) {
        map.insert(name.to_string(), V::default());
    }
    map.get_mut(name).expect("inserted above")
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
/// A new row's map is sized for `given` and `extra` more entries, so a
/// large graph's rows carry no spare capacity.
fn merge_props(i: usize, props: &[Property], base: Option<&Props>, given: Map<String, Value>, what: &str, extra: usize) -> Result<Map<String, Value>, ChangeError> {
    let mut out = match base {
        Some(p) => Map::clone(p),
        None if given.is_empty() => Map::new(),
        None => Map::with_capacity(given.len() + extra),
    };
    // The field's name is only formatted for an error, never per value.
    let field = |name: &str| format!("props.{name}");
    for (name, v) in given {
        let Some(p) = props.iter().find(|p| p.name == name) else {
            return Err(err(i, Some(&field(&name)), format!("{what} has no property {name:?}")));
        };
        if v.is_null() {
            if !p.optional {
                return Err(err(i, Some(&field(&name)), "is required and cannot be null"));
            }
            out.remove(&name);
        } else {
            let v = normalize(&p.ty, &v).map_err(|m| err(i, Some(&field(&name)), m))?;
            out.insert(name, v);
        }
    }
    if let Some(missing) = props.iter().find(|p| !p.optional && !p.key && !out.contains_key(&p.name)) {
        return Err(err(i, Some(&field(&missing.name)), format!("required property of {what} is missing")));
    }
    Ok(out)
}

impl<'a> Working<'a> {
    pub fn new(schema: &'a GraphSchema, data: GraphData) -> Working<'a> {
        Working { schema, data, nodes: BTreeMap::new(), edges: BTreeMap::new() }
    }

    /// The state with every op so far applied.
    pub fn data(&self) -> &GraphData {
        &self.data
    }

    pub fn into_data(self) -> GraphData {
        self.data
    }

    /// What the ops since the last call touched; the record starts empty again.
    pub fn take_touched(&mut self) -> Touched {
        (std::mem::take(&mut self.nodes), std::mem::take(&mut self.edges))
    }

    /// How many distinct nodes and edges the ops since the last
    /// [`Working::take_touched`] touched.
    pub fn touched_len(&self) -> usize {
        self.nodes.values().map(BTreeSet::len).sum::<usize>() + self.edges.values().map(BTreeSet::len).sum::<usize>()
    }

    /// An `upsert` op (the `i`th): creates node `key` of type `ty`, or
    /// updates the properties `props` names.
    pub fn upsert(&mut self, i: usize, ty: &str, key: &str, props: Map<String, Value>) -> Result<(), ChangeError> {
        let t = self.schema.node(ty).ok_or_else(|| err(i, Some("type"), format!("unknown node type {ty:?}")))?;
        let key = check_key(i, "key", key)?;
        let key_name = &t.key_prop().name;
        if let Some(v) = props.get(key_name) {
            if v.as_str() != Some(&*key) {
                return Err(err(i, Some(&format!("props.{key_name}")), "must equal \"key\" (it is the @key property)"));
            }
        }
        let table = slot(&mut self.data.nodes, &t.name);
        let mut props = merge_props(i, &t.props, table.rows.get(&key), props, &t.name, 1)?;
        props.insert(key_name.clone(), Value::String(key.to_string()));
        table.rows.insert(key.clone(), state::props(props));
        slot(&mut self.nodes, &t.name).insert(key);
        Ok(())
    }

    /// A `link` op (the `i`th): creates the `edge` from `from` to `to`, whose
    /// nodes must exist (in the head or earlier in the batch), or updates
    /// the properties `props` names.
    pub fn link(&mut self, i: usize, edge: &str, from: &str, to: &str, props: Map<String, Value>) -> Result<(), ChangeError> {
        let e = self.schema.edge(edge).ok_or_else(|| err(i, Some("edge"), format!("unknown edge type {edge:?}")))?;
        let from = self.endpoint(i, "from", &e.from, from)?;
        let to = self.endpoint(i, "to", &e.to, to)?;
        let table = slot(&mut self.data.edges, &e.name);
        let props = merge_props(i, &e.props, table.rows.get(&(from.clone(), to.clone())), props, &e.name, 0)?;
        table.insert(from.clone(), to.clone(), state::props(props));
        slot(&mut self.edges, &e.name).insert((from, to));
        Ok(())
    }

    fn apply(&mut self, i: usize, op: Op) -> Result<(), ChangeError> {
        match op {
            Op::Upsert(u) => self.upsert(i, &u.ty, &u.key, u.props)?,
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
            Op::Link(l) => self.link(i, &l.edge, &l.from, &l.to, l.props)?,
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
    let mut w = Working::new(schema, base.data.clone());
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
