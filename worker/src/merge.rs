//! Three-way merge of two graph states against their common ancestor, at
//! property grain. Pure (no I/O): the store finds the states and commits the
//! [`Plan`] this returns.
//!
//! The result starts as the target's state ("ours"); only rows the source
//! ("theirs") changed since the base are looked at, each resolved on its own:
//!
//! - the same change on both sides, or a change on theirs only: taken;
//! - both sides changed a row that both kept: merged property by property;
//!   a property changed to different values is a `divergent_update`;
//! - both inserted the same key with different values: `divergent_insert`;
//! - one side deleted a row the other changed: `delete_vs_update`;
//! - an edge left in the result whose endpoint node is gone (one side added
//!   or kept it, the other deleted the node): `orphan_edge`.
//!
//! Any conflict fails the whole merge, with every conflict listed, sorted.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::contract::GraphSchema;
use crate::store::state::{edge_id, EdgeTable, GraphData, Key, KeyMap, NodeTable, Props};
use crate::store::{Plan, TableWrite};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    DivergentUpdate,
    DivergentInsert,
    DeleteVsUpdate,
    OrphanEdge,
}

/// One conflict, as the 409 lists it. An edge's `key` is its `_id`, the JSON
/// pair `["from","to"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Conflict {
    pub table: String,
    pub key: String,
    pub kind: ConflictKind,
}

/// What the merge does to one row theirs changed.
#[derive(Debug, PartialEq)]
enum Resolution {
    /// The result keeps ours (both sides agree, or only ours changed it).
    Ours,
    /// The result takes this value (`None` deletes the row).
    Take(Option<Props>),
    Conflict(ConflictKind),
}

fn same(a: Option<&Props>, b: Option<&Props>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Resolves one row that theirs changed (`theirs != base`).
fn resolve(base: Option<&Props>, ours: Option<&Props>, theirs: Option<&Props>) -> Resolution {
    if same(ours, theirs) {
        return Resolution::Ours;
    }
    if same(base, ours) {
        return Resolution::Take(theirs.cloned());
    }
    match (base, ours, theirs) {
        (None, _, _) => Resolution::Conflict(ConflictKind::DivergentInsert),
        (Some(b), Some(o), Some(t)) => match merge_props(b, o, t) {
            Some(m) => Resolution::Take(Some(crate::store::state::props(m))),
            None => Resolution::Conflict(ConflictKind::DivergentUpdate),
        },
        (Some(_), _, _) => Resolution::Conflict(ConflictKind::DeleteVsUpdate),
    }
}

/// Merges the properties of a row both sides changed: each property takes
/// the side that changed it; `None` when both changed one differently.
/// An absent property is null, so clearing one is a change like any other.
fn merge_props(base: &Props, ours: &Props, theirs: &Props) -> Option<Map<String, Value>> {
    let mut out = ours.to_map();
    let names: BTreeSet<&str> = base.keys().chain(ours.keys()).chain(theirs.keys()).collect();
    for name in names {
        let (b, o, t) = (base.get(name), ours.get(name), theirs.get(name));
        if o == t || t == b {
            continue;
        }
        if o != b {
            return None;
        }
        match t {
            Some(v) => out.insert(name.to_string(), v.clone()),
            None => out.remove(name),
        };
    }
    Some(out)
}

/// The keys whose value differs between `base` and `theirs`, sorted. Shared
/// structure is skipped whole when the maps are the same map.
fn changed<K: Clone + Ord + Hash + Eq>(base: &KeyMap<K, Props>, theirs: &KeyMap<K, Props>) -> Vec<K> {
    if base.ptr_eq(theirs) {
        return Vec::new();
    }
    let mut keys: Vec<K> = theirs.iter().filter(|(k, v)| !same(base.get(*k), Some(v))).map(|(k, _)| k.clone()).collect();
    keys.extend(base.keys().filter(|k| !theirs.contains_key(*k)).cloned());
    keys.sort();
    keys
}

struct Merger<'a> {
    schema: &'a GraphSchema,
    result: GraphData,
    nodes: BTreeMap<String, TableWrite<Key>>,
    edges: BTreeMap<String, TableWrite<(Key, Key)>>,
    conflicts: BTreeSet<Conflict>,
    /// Edges theirs put into the result, and nodes theirs deleted from it:
    /// the only places an orphan edge can come from.
    edges_put: Vec<(String, Key, Key)>,
    nodes_deleted: Vec<(String, Key)>,
}

impl Merger<'_> {
    fn conflict(&mut self, table: &str, key: String, kind: ConflictKind) {
        self.conflicts.insert(Conflict { table: table.to_string(), key, kind });
    }

    fn nodes(&mut self, name: &str, base: &NodeTable, ours: &NodeTable, theirs: &NodeTable) {
        if ours.rows.ptr_eq(&theirs.rows) {
            return;
        }
        for k in changed(&base.rows, &theirs.rows) {
            match resolve(base.rows.get(&k), ours.rows.get(&k), theirs.rows.get(&k)) {
                Resolution::Ours => {}
                Resolution::Conflict(kind) => self.conflict(name, k.to_string(), kind),
                Resolution::Take(v) => {
                    let tw = self.nodes.entry(name.to_string()).or_default();
                    if ours.rows.contains_key(&k) {
                        tw.remove.push(k.clone());
                    }
                    let table = self.result.nodes.entry(name.to_string()).or_default();
                    match v {
                        Some(p) => {
                            tw.put.push(k.clone());
                            // Keep the key string edges already share (imbl's insert replaces the key too).
                            let k = table.rows.get_key_value(&k).map_or(k, |(stored, _)| stored.clone());
                            table.rows.insert(k, p);
                        }
                        None => {
                            table.rows.remove(&k);
                            self.nodes_deleted.push((name.to_string(), k));
                        }
                    }
                }
            }
        }
    }

    fn edges(&mut self, name: &str, base: &EdgeTable, ours: &EdgeTable, theirs: &EdgeTable) {
        if ours.rows.ptr_eq(&theirs.rows) {
            return;
        }
        for (f, t) in changed(&base.rows, &theirs.rows) {
            let k = (f.clone(), t.clone());
            match resolve(base.rows.get(&k), ours.rows.get(&k), theirs.rows.get(&k)) {
                Resolution::Ours => {}
                Resolution::Conflict(kind) => self.conflict(name, edge_id(&f, &t), kind),
                Resolution::Take(v) => {
                    let tw = self.edges.entry(name.to_string()).or_default();
                    if ours.rows.contains_key(&k) {
                        tw.remove.push(k.clone());
                    }
                    let table = self.result.edges.entry(name.to_string()).or_default();
                    match v {
                        Some(p) => {
                            tw.put.push(k);
                            table.insert(f.clone(), t.clone(), p);
                            self.edges_put.push((name.to_string(), f, t));
                        }
                        None => {
                            table.remove(&f, &t);
                        }
                    }
                }
            }
        }
    }

    fn node_exists(&self, ty: &str, key: &Key) -> bool {
        self.result.nodes.get(ty).is_some_and(|t| t.rows.contains_key(key))
    }

    /// Every edge in the result must still have both endpoints.
    fn orphans(&mut self) {
        let mut found: Vec<(String, Key, Key)> = Vec::new();
        for (name, f, t) in &self.edges_put {
            let Some(e) = self.schema.edge(name) else { continue };
            if !self.node_exists(&e.from, f) || !self.node_exists(&e.to, t) {
                found.push((name.clone(), f.clone(), t.clone()));
            }
        }
        for (ty, key) in &self.nodes_deleted {
            for e in &self.schema.edges {
                let Some(table) = self.result.edges.get(&e.name) else { continue };
                if e.from == *ty {
                    found.extend(table.neighbours(key, true).map(|to| (e.name.clone(), key.clone(), to.clone())));
                }
                if e.to == *ty {
                    found.extend(table.neighbours(key, false).map(|from| (e.name.clone(), from.clone(), key.clone())));
                }
            }
        }
        for (name, f, t) in found {
            let key = edge_id(&f, &t);
            // An edge already in conflict is reported once, for its first cause.
            if !self.conflicts.iter().any(|c| c.table == name && c.key == key) {
                self.conflict(&name, key, ConflictKind::OrphanEdge);
            }
        }
    }
}

/// Merges `theirs` into `ours` against their common ancestor `base`:
/// the plan to commit on the target, or every conflict, sorted.
pub fn three_way(schema: &GraphSchema, base: &GraphData, ours: &GraphData, theirs: &GraphData) -> Result<Plan, Vec<Conflict>> {
    let mut m = Merger {
        schema,
        result: ours.clone(),
        nodes: BTreeMap::new(),
        edges: BTreeMap::new(),
        conflicts: BTreeSet::new(),
        edges_put: Vec::new(),
        nodes_deleted: Vec::new(),
    };
    let empty_nodes = NodeTable::default();
    for t in &schema.nodes {
        let get = |d: &GraphData| d.nodes.get(&t.name).cloned().unwrap_or_else(|| empty_nodes.clone());
        m.nodes(&t.name, &get(base), &get(ours), &get(theirs));
    }
    let empty_edges = EdgeTable::default();
    for t in &schema.edges {
        let get = |d: &GraphData| d.edges.get(&t.name).cloned().unwrap_or_else(|| empty_edges.clone());
        m.edges(&t.name, &get(base), &get(ours), &get(theirs));
    }
    m.orphans();
    if !m.conflicts.is_empty() {
        return Err(m.conflicts.into_iter().collect());
    }
    Ok(Plan { data: m.result, nodes: m.nodes, edges: m.edges })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SCHEMA: &str = "node Person { name: String @key age: I64? city: String? }\nedge Knows: Person -> Person { since: I64? }\n";

    fn schema() -> GraphSchema {
        GraphSchema::parse(SCHEMA).unwrap()
    }

    fn props(v: Value) -> Props {
        crate::store::state::props(v.as_object().unwrap().clone())
    }

    /// A graph from `people` (key, props) and `knows` (from, to).
    fn graph(people: &[(&str, Value)], knows: &[(&str, &str)]) -> GraphData {
        let mut d = GraphData::default();
        let p = d.nodes.entry("Person".into()).or_default();
        for (k, v) in people {
            let mut v = v.clone();
            v["name"] = json!(k);
            p.rows.insert(Key::from(*k), props(v));
        }
        let e = d.edges.entry("Knows".into()).or_default();
        for (f, t) in knows {
            e.insert(Key::from(*f), Key::from(*t), props(json!({})));
        }
        d
    }

    fn person(d: &GraphData, k: &str) -> Option<Value> {
        d.nodes["Person"].rows.get(k).map(|p| Value::Object(p.to_map()))
    }

    fn kinds(r: Result<Plan, Vec<Conflict>>) -> Vec<(String, String, ConflictKind)> {
        r.err().expect("a conflict").into_iter().map(|c| (c.table, c.key, c.kind)).collect()
    }

    #[test]
    fn different_properties_of_one_node_merge() {
        let base = graph(&[("a", json!({"age": 1, "city": "x"}))], &[]);
        let ours = graph(&[("a", json!({"age": 2, "city": "x"}))], &[]);
        let theirs = graph(&[("a", json!({"age": 1, "city": "y"}))], &[]);
        let plan = three_way(&schema(), &base, &ours, &theirs).unwrap();
        assert_eq!(person(&plan.data, "a"), Some(json!({"name": "a", "age": 2, "city": "y"})));
        assert_eq!(plan.nodes["Person"].remove, vec![Key::from("a")]);
        assert_eq!(plan.nodes["Person"].put, vec![Key::from("a")]);
        // Clearing a property is a change too.
        let theirs = graph(&[("a", json!({"age": 1}))], &[]);
        let plan = three_way(&schema(), &base, &ours, &theirs).unwrap();
        assert_eq!(person(&plan.data, "a"), Some(json!({"name": "a", "age": 2})));
    }

    #[test]
    fn the_same_property_changed_differently_is_divergent_update() {
        let base = graph(&[("a", json!({"age": 1})), ("b", json!({}))], &[]);
        let ours = graph(&[("a", json!({"age": 2})), ("b", json!({}))], &[]);
        let theirs = graph(&[("a", json!({"age": 3})), ("b", json!({"age": 9}))], &[]);
        assert_eq!(kinds(three_way(&schema(), &base, &ours, &theirs)), vec![("Person".into(), "a".into(), ConflictKind::DivergentUpdate)]);
        // The same change on both sides is no conflict.
        let theirs = graph(&[("a", json!({"age": 2})), ("b", json!({}))], &[]);
        let plan = three_way(&schema(), &base, &ours, &theirs).unwrap();
        assert!(plan.nodes.is_empty(), "nothing to write");
    }

    #[test]
    fn inserts_deletes_and_their_conflicts() {
        let base = graph(&[("a", json!({"age": 1}))], &[]);
        // Both insert c: equal values merge, different values conflict.
        let ours = graph(&[("a", json!({"age": 1})), ("c", json!({"age": 5}))], &[]);
        let same_insert = graph(&[("a", json!({"age": 1})), ("c", json!({"age": 5})), ("d", json!({}))], &[]);
        let plan = three_way(&schema(), &base, &ours, &same_insert).unwrap();
        assert_eq!(plan.nodes["Person"].put, vec![Key::from("d")]);
        assert!(plan.nodes["Person"].remove.is_empty());
        let other_insert = graph(&[("a", json!({"age": 1})), ("c", json!({"age": 6}))], &[]);
        assert_eq!(kinds(three_way(&schema(), &base, &ours, &other_insert)), vec![("Person".into(), "c".into(), ConflictKind::DivergentInsert)]);
        // They delete what we updated, and the other way round.
        let updated = graph(&[("a", json!({"age": 2}))], &[]);
        let deleted = graph(&[], &[]);
        for (o, t) in [(&updated, &deleted), (&deleted, &updated)] {
            assert_eq!(kinds(three_way(&schema(), &base, o, t)), vec![("Person".into(), "a".into(), ConflictKind::DeleteVsUpdate)]);
        }
        // A delete on theirs alone is taken.
        let plan = three_way(&schema(), &base, &base, &deleted).unwrap();
        assert!(person(&plan.data, "a").is_none());
        assert_eq!(plan.nodes["Person"].remove, vec![Key::from("a")]);
        assert!(plan.nodes["Person"].put.is_empty());
    }

    #[test]
    fn an_edge_to_a_node_the_other_side_deleted_is_an_orphan() {
        let base = graph(&[("a", json!({})), ("b", json!({}))], &[]);
        let linked = graph(&[("a", json!({})), ("b", json!({}))], &[("a", "b")]);
        let b_deleted = graph(&[("a", json!({}))], &[]);
        let expect = vec![("Knows".to_string(), r#"["a","b"]"#.to_string(), ConflictKind::OrphanEdge)];
        // Theirs links to b, ours deleted b; and the other way round.
        assert_eq!(kinds(three_way(&schema(), &base, &b_deleted, &linked)), expect);
        assert_eq!(kinds(three_way(&schema(), &base, &linked, &b_deleted)), expect);
        // Deleting b with its edge on one side while the other left the edge alone is clean.
        let plan = three_way(&schema(), &linked, &linked, &b_deleted).unwrap();
        assert!(plan.data.edges["Knows"].rows.is_empty());
        assert_eq!(plan.edges["Knows"].remove, vec![(Key::from("a"), Key::from("b"))]);
    }

    #[test]
    fn conflicts_are_all_listed_sorted_and_the_plan_is_not_returned() {
        let base = graph(&[("a", json!({"age": 1})), ("b", json!({"age": 1}))], &[]);
        let ours = graph(&[("a", json!({"age": 2})), ("b", json!({"age": 2})), ("z", json!({}))], &[]);
        let theirs = graph(&[("a", json!({"age": 3})), ("z", json!({"age": 1}))], &[]);
        assert_eq!(
            kinds(three_way(&schema(), &base, &ours, &theirs)),
            vec![
                ("Person".into(), "a".into(), ConflictKind::DivergentUpdate),
                ("Person".into(), "b".into(), ConflictKind::DeleteVsUpdate),
                ("Person".into(), "z".into(), ConflictKind::DivergentInsert),
            ]
        );
    }

    #[test]
    fn kinds_serialise_as_the_contract_spells_them() {
        let c = Conflict { table: "T".into(), key: "k".into(), kind: ConflictKind::DeleteVsUpdate };
        assert_eq!(serde_json::to_value(&c).unwrap(), json!({"table": "T", "key": "k", "kind": "delete_vs_update"}));
        assert_eq!(serde_json::to_value(ConflictKind::OrphanEdge).unwrap(), "orphan_edge");
    }
}
