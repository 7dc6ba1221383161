//! `/change`: validating a batch of ops against the schema and the head state,
//! and turning it into a [`Plan`] that the store commits atomically.
//!
//! Ops apply in order to a working copy of the head state (cheap: persistent
//! maps), so a batch may create a node and link it in one go. The first
//! invalid op rejects the whole batch before anything is written.
//!
//! The body is read by [`body`] into typed ops that borrow their strings
//! from it, never through a `serde_json::Value` tree, and the op limit is
//! enforced while it is read.

mod body;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use body::{parse_batch, BodyError};

use crate::contract::{GraphSchema, Property};
use crate::store::state::{self, touch, GraphData, Key, Props, Touches};
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

/// One op, typed. Its strings borrow from the request body unless they
/// have escapes, and its `props` stay JSON text until the op is applied, so
/// a batch costs little more than its body while it waits to be planned.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Op<'a> {
    #[serde(borrow)]
    Upsert(UpsertOp<'a>),
    #[serde(borrow)]
    Delete(NodeRef<'a>),
    #[serde(borrow)]
    Link(LinkOp<'a>),
    #[serde(borrow)]
    Unlink(EdgeRef<'a>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertOp<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    props: PropsIn<'a>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRef<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkOp<'a> {
    #[serde(borrow)]
    edge: Cow<'a, str>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(default, borrow)]
    props: PropsIn<'a>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeRef<'a> {
    #[serde(borrow)]
    edge: Cow<'a, str>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
}

/// An op's `props`: absent, a JSON object's text (read when the op is
/// applied), or already a map (an op that came as a `Value`).
#[derive(Debug, Default)]
enum PropsIn<'a> {
    #[default]
    Absent,
    Text(&'a RawValue),
    Map(Box<Map<String, Value>>),
}

impl<'de: 'a, 'a> Deserialize<'de> for PropsIn<'a> {
    /// Only a JSON object is props; anything else (`null` too) is not an op.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        if raw.get().trim_start().starts_with('{') {
            Ok(PropsIn::Text(raw))
        } else {
            Err(serde::de::Error::custom("props must be a JSON object"))
        }
    }
}

impl PropsIn<'_> {
    /// The properties as a map. Text is a JSON object already checked as
    /// such, so reading it fails only if the body's checks were bypassed.
    fn into_map(self, i: usize) -> Result<Map<String, Value>, ChangeError> {
        match self {
            PropsIn::Absent => Ok(Map::new()),
            PropsIn::Map(m) => Ok(*m),
            PropsIn::Text(raw) => serde_json::from_str(raw.get()).map_err(|e| err(i, None, format!("not a valid op: {e}"))),
        }
    }
}

/// An op as it was read before ops borrowed from the body: the shape
/// `serde_json::from_value` checks, so an op given as a `Value` (and any op
/// the typed read refuses) is accepted or refused, with the same message,
/// exactly as it always was.
mod owned {
    use serde::Deserialize;
    use serde_json::{Map, Value};

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase", deny_unknown_fields)]
    pub(super) enum Op {
        Upsert(UpsertOp),
        Delete(NodeRef),
        Link(LinkOp),
        Unlink(EdgeRef),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct UpsertOp {
        #[serde(rename = "type")]
        pub(super) ty: String,
        pub(super) key: String,
        #[serde(default)]
        pub(super) props: Map<String, Value>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct NodeRef {
        #[serde(rename = "type")]
        pub(super) ty: String,
        pub(super) key: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct LinkOp {
        pub(super) edge: String,
        pub(super) from: String,
        pub(super) to: String,
        #[serde(default)]
        pub(super) props: Map<String, Value>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct EdgeRef {
        pub(super) edge: String,
        pub(super) from: String,
        pub(super) to: String,
    }
}

impl From<owned::Op> for Op<'static> {
    fn from(op: owned::Op) -> Self {
        let props = |m: Map<String, Value>| if m.is_empty() { PropsIn::Absent } else { PropsIn::Map(Box::new(m)) };
        match op {
            owned::Op::Upsert(u) => Op::Upsert(UpsertOp { ty: u.ty.into(), key: u.key.into(), props: props(u.props) }),
            owned::Op::Delete(d) => Op::Delete(NodeRef { ty: d.ty.into(), key: d.key.into() }),
            owned::Op::Link(l) => Op::Link(LinkOp { edge: l.edge.into(), from: l.from.into(), to: l.to.into(), props: props(l.props) }),
            owned::Op::Unlink(u) => Op::Unlink(EdgeRef { edge: u.edge.into(), from: u.from.into(), to: u.to.into() }),
        }
    }
}

/// One op of a batch, as [`parse_batch`] read it: typed, or, when it does
/// not have an op's shape, its JSON text, whose error is reported only if
/// the batch gets that far (ops are checked in order). Also made from a
/// `Value` (`From`), for callers that hold the body as one.
#[derive(Debug)]
pub struct OpSlot<'a>(Slot<'a>);

#[derive(Debug)]
enum Slot<'a> {
    Typed(Op<'a>),
    Text(&'a RawValue),
    Value(Value),
}

impl<'a> OpSlot<'a> {
    /// The op whose JSON text is `raw`.
    fn from_text(raw: &'a RawValue) -> OpSlot<'a> {
        match serde_json::from_str::<Op<'a>>(raw.get()) {
            Ok(op) => OpSlot(Slot::Typed(op)),
            Err(_) => OpSlot(Slot::Text(raw)),
        }
    }

    /// The op (the `i`th), or why it is not one: the message
    /// `serde_json::from_value` gives for its JSON.
    fn into_op(self, i: usize) -> Result<Op<'a>, ChangeError> {
        let value = match self.0 {
            Slot::Typed(op) => return Ok(op),
            Slot::Value(v) => v,
            Slot::Text(raw) => serde_json::from_str::<Value>(raw.get()).map_err(|e| err(i, None, format!("not a valid op: {e}")))?,
        };
        serde_json::from_value::<owned::Op>(value).map(Op::from).map_err(|e| err(i, None, format!("not a valid op: {e}")))
    }
}

impl From<Value> for OpSlot<'static> {
    fn from(v: Value) -> Self {
        OpSlot(Slot::Value(v))
    }
}

/// How many distinct nodes and edges a change touched (cascaded edge deletes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affected {
    pub nodes: usize,
    pub edges: usize,
}

/// An error about the whole body, not one op.
fn plain(m: &str) -> ChangeError {
    ChangeError { op: None, field: None, message: m.to_string() }
}

// The body's own mistakes, in the order they are reported, whichever way it is read.
const NOT_AN_OBJECT: &str = "the body must be a JSON object {\"ops\": [...]}";
const BRANCH_IN_BODY: &str = "the branch goes in the query string (?branch=), never in the body";
const OPS_NOT_AN_ARRAY: &str = "\"ops\" must be an array of ops";
const OPS_EMPTY: &str = "\"ops\" is empty";

fn unknown_field(k: &str) -> ChangeError {
    plain(&format!("unknown field {k:?}; the body is {{\"ops\": [...]}}"))
}

/// Checks a `/change` body already parsed as a `Value` (`{"ops": [...]}`)
/// and returns its ops, as [`parse_batch`] does from bytes (tests and
/// fuzzing hold bodies as values; the route uses [`parse_batch`]). It holds
/// the body twice: not for large batches.
pub fn parse_body(body: &Value) -> Result<Vec<Value>, ChangeError> {
    let obj = body.as_object().ok_or_else(|| plain(NOT_AN_OBJECT))?;
    if obj.contains_key("branch") {
        return Err(plain(BRANCH_IN_BODY));
    }
    if let Some(k) = obj.keys().find(|k| k.as_str() != "ops") {
        return Err(unknown_field(k));
    }
    let ops = obj.get("ops").and_then(Value::as_array).ok_or_else(|| plain(OPS_NOT_AN_ARRAY))?;
    if ops.is_empty() {
        return Err(plain(OPS_EMPTY));
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
    nodes: BTreeMap<String, Touches<Key>>,
    edges: BTreeMap<String, Touches<(Key, Key)>>,
    /// `Some` when links leave the adjacency (`out` / `inc`) to the caller
    /// ([`Working::deferring_adjacency`]): the edges linked since the last
    /// [`Working::take_linked`], per edge type.
    linked: Option<BTreeMap<String, Vec<(Key, Key)>>>,
}

/// What ops touched, per node type and per edge type (distinct, in the
/// order the ops first touched them, each with whether it existed before).
pub type Touched = (BTreeMap<String, Touches<Key>>, BTreeMap<String, Touches<(Key, Key)>>);

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
        Some(p) => p.to_map(),
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
        Working { schema, data, nodes: BTreeMap::new(), edges: BTreeMap::new(), linked: None }
    }

    /// A working state whose links record their edges' rows but not their
    /// adjacency: the caller indexes what [`Working::take_linked`] hands it
    /// (`/ingest` does it on a thread of its own, in bulk). Only `upsert`
    /// and `link` may be applied to it: a delete or an unlink reads the
    /// adjacency.
    pub fn deferring_adjacency(schema: &'a GraphSchema, data: GraphData) -> Working<'a> {
        Working { linked: Some(BTreeMap::new()), ..Working::new(schema, data) }
    }

    /// The edges linked since the last call (empty unless deferring), per edge type.
    pub fn take_linked(&mut self) -> BTreeMap<String, Vec<(Key, Key)>> {
        self.linked.as_mut().map(std::mem::take).unwrap_or_default()
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
        self.nodes.values().map(Touches::len).sum::<usize>() + self.edges.values().map(Touches::len).sum::<usize>()
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
        let old = table.rows.get_key_value(&key);
        let existed = old.is_some();
        let mut props = merge_props(i, &t.props, old.map(|(_, p)| p), props, &t.name, 1)?;
        props.insert(key_name.clone(), Value::String(key.to_string()));
        // An update keeps the key string its edges share (imbl's insert replaces the key too).
        let key = old.map_or(key, |(stored, _)| stored.clone());
        let row = state::props(props);
        table.rows.insert(key.clone(), row.clone());
        touch(slot(&mut self.nodes, &t.name), key, existed, Some(row));
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
        let pair = (from, to);
        let old = table.rows.get(&pair);
        let existed = old.is_some();
        let props = merge_props(i, &e.props, old, props, &e.name, 0)?;
        let row = state::props(props);
        match self.linked.as_mut() {
            None => table.insert(pair.0.clone(), pair.1.clone(), row.clone()),
            Some(linked) => {
                if table.rows.insert(pair.clone(), row.clone()).is_none() {
                    slot(linked, &e.name).push(pair.clone());
                }
            }
        }
        touch(slot(&mut self.edges, &e.name), pair, existed, Some(row));
        Ok(())
    }

    fn apply(&mut self, i: usize, op: Op<'_>) -> Result<(), ChangeError> {
        if self.linked.is_some() && matches!(op, Op::Delete(_) | Op::Unlink(_)) {
            // Both read the adjacency, which a deferring state does not keep.
            return Err(err(i, None, "only upserts and links can be applied here"));
        }
        match op {
            Op::Upsert(u) => self.upsert(i, &u.ty, &u.key, u.props.into_map(i)?)?,
            Op::Delete(d) => {
                let t = self.schema.node(&d.ty).ok_or_else(|| err(i, Some("type"), format!("unknown node type {:?}", d.ty)))?;
                let key = check_key(i, "key", &d.key)?;
                let table = self.data.nodes.entry(t.name.clone()).or_default();
                if table.rows.remove(&key).is_none() {
                    return Err(err(i, Some("key"), format!("{} {:?} does not exist", t.name, d.key)));
                }
                touch(self.nodes.entry(t.name.clone()).or_default(), key.clone(), true, None);
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
                            touch(self.edges.entry(e.name.clone()).or_default(), (f, to), true, None);
                        }
                    }
                }
            }
            Op::Link(l) => {
                let props = l.props.into_map(i)?;
                self.link(i, &l.edge, &l.from, &l.to, props)?
            }
            Op::Unlink(u) => {
                let e = self.schema.edge(&u.edge).ok_or_else(|| err(i, Some("edge"), format!("unknown edge type {:?}", u.edge)))?;
                let (from, to): (Key, Key) = (Arc::from(u.from.as_ref()), Arc::from(u.to.as_ref()));
                let table = self.data.edges.entry(e.name.clone()).or_default();
                if !table.remove(&from, &to) {
                    return Err(err(i, None, format!("{} edge {:?} -> {:?} does not exist", e.name, u.from, u.to)));
                }
                touch(self.edges.entry(e.name.clone()).or_default(), (from, to), true, None);
            }
        }
        Ok(())
    }

    /// The key of an edge's endpoint: its node's own key string, shared, so
    /// a million edges hold no copies of keys the graph already has.
    fn endpoint(&self, i: usize, field: &str, node_type: &str, key: &str) -> Result<Key, ChangeError> {
        let k = check_key(i, field, key)?;
        match self.data.nodes.get(node_type).and_then(|t| t.rows.get_key_value(&k)) {
            Some((stored, _)) => Ok(stored.clone()),
            None => Err(err(i, Some(field), format!("{node_type} {key:?} does not exist"))),
        }
    }
}

/// Touched rows that existed before are removed; those that exist after are
/// (re)written. A batch's first touch of a row sees it as the base has it
/// (every op that changes a row touches it), so the touches alone say both.
fn table_write<K: Clone>(touched: Touches<K>) -> TableWrite<K> {
    let mut tw = TableWrite::default();
    for (k, t) in touched {
        if t.existed {
            tw.remove.push(k.clone());
        }
        if t.row.is_some() {
            tw.put.push(k);
        }
    }
    tw
}

/// Validates `ops` ([`parse_batch`]'s, or `Value`s) against `base`, in
/// order, and returns the plan and the affected counts.
pub fn plan<'a, O: Into<OpSlot<'a>>>(schema: &GraphSchema, base: &Snapshot, ops: impl IntoIterator<Item = O>) -> Result<(Plan, Affected), ChangeError> {
    let mut w = Working::new(schema, base.data.clone());
    for (i, slot) in ops.into_iter().enumerate() {
        let op = slot.into().into_op(i)?;
        w.apply(i, op)?;
    }
    let affected = Affected { nodes: w.nodes.values().map(Touches::len).sum(), edges: w.edges.values().map(Touches::len).sum() };
    let mut plan = Plan { data: GraphData::default(), nodes: BTreeMap::new(), edges: BTreeMap::new() };
    for (ty, keys) in w.nodes {
        plan.nodes.insert(ty, table_write(keys));
    }
    for (ty, pairs) in w.edges {
        plan.edges.insert(ty, table_write(pairs));
    }
    plan.data = w.data;
    Ok((plan, affected))
}
