//! `/schema/apply`: what a new `.pg` changes against the schema a branch
//! has. Pure (no I/O): the store executes the steps this plans.
//!
//! A new schema may add node and edge types and optional properties, and,
//! with `?allow_data_loss=true`, drop types and properties. Everything else
//! that differs is refused, whatever the flags: a new required property
//! (the rows already there have no value for it), a property whose type or
//! optionality changed, a changed `@key`, a changed edge endpoint, or a name
//! that turned from a node type into an edge type or back. Renaming a type or
//! a property is a drop and an add.

use serde::Serialize;
use serde_json::Map;

use crate::contract::{EdgeType, GraphSchema, NodeType, Property};
use crate::store::state::{self, EdgeTable, GraphData, NodeTable, Props};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    AddType,
    AddProperty,
    DropType,
    DropProperty,
}

impl StepKind {
    pub fn loses_data(self) -> bool {
        matches!(self, StepKind::DropType | StepKind::DropProperty)
    }
}

/// One step, as the answer lists it: `{"kind", "type", "property"?}`
/// (`property` only on property steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub kind: StepKind,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
}

impl Step {
    fn new(kind: StepKind, ty: &str, property: Option<&str>) -> Step {
        Step { kind, ty: ty.to_string(), property: property.map(str::to_string) }
    }

    /// `Person` or `Person.email`, for messages.
    pub fn target(&self) -> String {
        match &self.property {
            Some(p) => format!("{}.{p}", self.ty),
            None => self.ty.clone(),
        }
    }
}

/// Why a difference cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    AddRequiredProperty,
    ChangeProperty,
    ChangeKey,
    ChangeEndpoints,
    ChangeKind,
}

/// A difference no flag makes applicable: `{"kind", "type", "property"?, "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    pub message: String,
}

/// Everything a new schema changes, in a fixed order: for each type of the
/// current schema (nodes, then edges, as declared) its drop or its property
/// drops and adds, then each new type (as declared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaDiff {
    pub steps: Vec<Step>,
    pub refused: Vec<Refusal>,
}

impl SchemaDiff {
    pub fn loses_data(&self) -> bool {
        self.steps.iter().any(|s| s.kind.loses_data())
    }

    /// True when the two schemas describe the same types and properties
    /// (comments, layout and declaration order aside).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.refused.is_empty()
    }

    /// Why this plan must not be applied: a difference it cannot apply, or
    /// a drop without `allow_data_loss`. `None` when it may be.
    pub fn refusal(&self, allow_data_loss: bool) -> Option<String> {
        if !self.refused.is_empty() {
            let why: Vec<&str> = self.refused.iter().map(|r| r.message.as_str()).collect();
            return Some(format!("the new schema cannot be applied: {}; nothing was changed", why.join("; ")));
        }
        if self.loses_data() && !allow_data_loss {
            let lost: Vec<String> = self.steps.iter().filter(|s| s.kind.loses_data()).map(Step::target).collect();
            return Some(format!(
                "the new schema drops {} and the data in it; pass ?allow_data_loss=true to apply it anyway; nothing was changed",
                lost.join(", ")
            ));
        }
        None
    }
}

/// A type of either kind, by name.
#[derive(Clone, Copy)]
enum Ty<'a> {
    Node(&'a NodeType),
    Edge(&'a EdgeType),
}

impl<'a> Ty<'a> {
    fn props(self) -> &'a [Property] {
        match self {
            Ty::Node(n) => &n.props,
            Ty::Edge(e) => &e.props,
        }
    }
}

fn find<'a>(s: &'a GraphSchema, name: &str) -> Option<Ty<'a>> {
    s.node(name).map(Ty::Node).or_else(|| s.edge(name).map(Ty::Edge))
}

fn types(s: &GraphSchema) -> impl Iterator<Item = (&str, Ty<'_>)> {
    s.nodes.iter().map(|n| (n.name.as_str(), Ty::Node(n))).chain(s.edges.iter().map(|e| (e.name.as_str(), Ty::Edge(e))))
}

fn prop_decl(p: &Property) -> String {
    format!("{}{}{}", p.ty, if p.optional { "?" } else { "" }, if p.key { " @key" } else { "" })
}

/// What turning `old` into `new` takes.
pub fn diff(old: &GraphSchema, new: &GraphSchema) -> SchemaDiff {
    let mut d = SchemaDiff::default();
    let mut refuse = |kind, ty: &str, property: Option<&str>, message: String| {
        d.refused.push(Refusal { kind, ty: ty.to_string(), property: property.map(str::to_string), message });
    };
    let mut steps = Vec::new();
    for (name, before) in types(old) {
        let Some(after) = find(new, name) else {
            steps.push(Step::new(StepKind::DropType, name, None));
            continue;
        };
        match (before, after) {
            (Ty::Node(_), Ty::Edge(_)) | (Ty::Edge(_), Ty::Node(_)) => {
                refuse(RefusalKind::ChangeKind, name, None, format!("{name} changes between a node type and an edge type; drop it and add it under another name"));
                continue;
            }
            (Ty::Edge(a), Ty::Edge(b)) if (a.from.as_str(), a.to.as_str()) != (b.from.as_str(), b.to.as_str()) => {
                refuse(
                    RefusalKind::ChangeEndpoints,
                    name,
                    None,
                    format!("edge {name} changes from {} -> {} to {} -> {}; its edges would no longer fit", a.from, a.to, b.from, b.to),
                );
                continue;
            }
            _ => {}
        }
        for p in before.props() {
            match after.props().iter().find(|q| q.name == p.name) {
                None if p.key => refuse(RefusalKind::ChangeKey, name, Some(&p.name), format!("{name}.{} is the @key; a type's key cannot change", p.name)),
                None => steps.push(Step::new(StepKind::DropProperty, name, Some(&p.name))),
                Some(q) if p.key != q.key => {
                    refuse(RefusalKind::ChangeKey, name, Some(&p.name), format!("{name}.{}: a type's @key cannot change", p.name))
                }
                Some(q) if p.ty != q.ty || p.optional != q.optional => refuse(
                    RefusalKind::ChangeProperty,
                    name,
                    Some(&p.name),
                    format!("{name}.{} changes from {} to {}; drop it and add it under another name", p.name, prop_decl(p), prop_decl(q)),
                ),
                Some(_) => {}
            }
        }
        for q in after.props().iter().filter(|q| !before.props().iter().any(|p| p.name == q.name)) {
            if q.key {
                refuse(RefusalKind::ChangeKey, name, Some(&q.name), format!("{name}.{} is a new @key; a type's key cannot change", q.name));
            } else if !q.optional {
                refuse(
                    RefusalKind::AddRequiredProperty,
                    name,
                    Some(&q.name),
                    format!("{name}.{} is a new required property, and the rows already there have no value for it; declare it optional ({}: {}?)", q.name, q.name, q.ty),
                );
            } else {
                steps.push(Step::new(StepKind::AddProperty, name, Some(&q.name)));
            }
        }
    }
    for (name, _) in types(new).filter(|(name, _)| find(old, name).is_none()) {
        steps.push(Step::new(StepKind::AddType, name, None));
    }
    d.steps = steps;
    d
}

/// The properties of `from`'s type that `to`'s type does not have as they
/// were: gone, or of another type or optionality.
fn gone_props<'a>(from: &'a [Property], to: &[Property]) -> Vec<&'a str> {
    from.iter().filter(|p| !to.iter().any(|q| q.name == p.name && q.ty == p.ty && q.optional == p.optional)).map(|p| p.name.as_str()).collect()
}

fn without(p: &Props, gone: &[&str]) -> Props {
    if !gone.iter().any(|g| p.contains_key(*g)) {
        return p.clone();
    }
    let kept: Map<String, serde_json::Value> = p.iter().filter(|(k, _)| !gone.contains(k)).map(|(k, v)| (k.to_string(), v.clone())).collect();
    state::props(kept)
}

/// `data`, read with `from`, as `to` reads it: without the types `to` does
/// not have and the properties it does not have as they were, and with an
/// empty table for each type only `to` has. A table whose properties are
/// the same in both is shared, not copied; one that lost a property costs
/// a pass over its rows.
pub fn conform(data: &GraphData, from: &GraphSchema, to: &GraphSchema) -> GraphData {
    let mut out = GraphData::default();
    for t in &to.nodes {
        let table = match (data.nodes.get(&t.name), from.node(&t.name)) {
            (Some(table), Some(f)) => {
                let gone = gone_props(&f.props, &t.props);
                if gone.is_empty() {
                    table.clone()
                } else {
                    NodeTable { rows: table.rows.iter().map(|(k, p)| (k.clone(), without(p, &gone))).collect() }
                }
            }
            (Some(table), None) => table.clone(),
            (None, _) => NodeTable::default(),
        };
        out.nodes.insert(t.name.clone(), table);
    }
    for t in &to.edges {
        let table = match (data.edges.get(&t.name), from.edge(&t.name)) {
            (Some(table), Some(f)) => {
                let gone = gone_props(&f.props, &t.props);
                if gone.is_empty() {
                    table.clone()
                } else {
                    let rows = table.rows.iter().map(|(k, p)| (k.clone(), without(p, &gone))).collect();
                    EdgeTable { rows, out: table.out.clone(), inc: table.inc.clone() }
                }
            }
            (Some(table), None) => table.clone(),
            (None, _) => EdgeTable::default(),
        };
        out.edges.insert(t.name.clone(), table);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const OLD: &str = "node Person { name: String @key age: I64? }\nnode City { name: String @key }\nedge LivesIn: Person -> City\n";

    fn plan(new: &str) -> SchemaDiff {
        diff(&GraphSchema::parse(OLD).unwrap(), &GraphSchema::parse(new).unwrap())
    }

    fn kinds(d: &SchemaDiff) -> Vec<(StepKind, String)> {
        d.steps.iter().map(|s| (s.kind, s.target())).collect()
    }

    #[test]
    fn the_same_schema_differently_written_changes_nothing() {
        let d = plan("# reordered\nnode City { name: String @key }\nedge LivesIn: Person -> City\nnode Person { age: I64?, name: String @key }\n");
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn additions_and_drops_are_steps() {
        let d = plan("node Person { name: String @key email: String? }\nnode Tag { name: String @key }\nedge Knows: Person -> Person { since: Date? }\n");
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        assert_eq!(
            kinds(&d),
            vec![
                (StepKind::DropProperty, "Person.age".into()),
                (StepKind::AddProperty, "Person.email".into()),
                (StepKind::DropType, "City".into()),
                (StepKind::DropType, "LivesIn".into()),
                (StepKind::AddType, "Tag".into()),
                (StepKind::AddType, "Knows".into()),
            ]
        );
        assert!(d.loses_data());
        assert_eq!(serde_json::to_value(&d.steps[1]).unwrap(), json!({"kind": "add_property", "type": "Person", "property": "email"}));
        assert_eq!(serde_json::to_value(&d.steps[2]).unwrap(), json!({"kind": "drop_type", "type": "City"}));
        let additive = plan(&format!("{OLD}node Tag {{ name: String @key }}\n"));
        assert!(!additive.loses_data() && additive.refused.is_empty());
    }

    #[test]
    fn a_drop_needs_allow_data_loss_and_a_refusal_needs_a_new_schema() {
        let d = plan("node Person { name: String @key }\nnode City { name: String @key }\nedge LivesIn: Person -> City\n");
        let why = d.refusal(false).expect("refused");
        assert!(why.contains("Person.age") && why.contains("allow_data_loss=true"), "{why}");
        assert_eq!(d.refusal(true), None);
        let d = plan("node Person { name: String @key age: I32? }\nnode City { name: String @key }\nedge LivesIn: Person -> City\n");
        assert!(d.refusal(true).is_some_and(|m| m.contains("Person.age changes from I64? to I32?")), "{:?}", d.refusal(true));
    }

    #[test]
    fn conform_drops_what_the_new_schema_lacks_and_shares_the_rest() {
        let old = GraphSchema::parse(OLD).unwrap();
        let new = GraphSchema::parse("node Person { name: String @key email: String? }\nnode City { name: String @key }\nnode Tag { name: String @key }\n").unwrap();
        let mut data = GraphData::default();
        let person = |v: serde_json::Value| state::props(v.as_object().unwrap().clone());
        data.nodes.entry("Person".into()).or_default().rows.insert("a".into(), person(json!({"name": "a", "age": 3})));
        data.nodes.entry("City".into()).or_default().rows.insert("oslo".into(), person(json!({"name": "oslo"})));
        data.edges.entry("LivesIn".into()).or_default().insert("a".into(), "oslo".into(), person(json!({})));
        let out = conform(&data, &old, &new);
        assert_eq!(serde_json::Value::Object(out.nodes["Person"].rows["a"].to_map()), json!({"name": "a"}));
        assert!(out.nodes["City"].rows.ptr_eq(&data.nodes["City"].rows), "an unchanged table is shared");
        assert!(out.nodes["Tag"].rows.is_empty());
        assert!(!out.edges.contains_key("LivesIn"));
    }

    #[test]
    fn what_cannot_be_applied_is_refused() {
        let cases = [
            ("node Person { name: String @key age: I64? email: String }\nnode City { name: String @key }\nedge LivesIn: Person -> City\n", RefusalKind::AddRequiredProperty, "Person.email"),
            ("node Person { name: String @key age: I32? }\nnode City { name: String @key }\nedge LivesIn: Person -> City\n", RefusalKind::ChangeProperty, "Person.age"),
            ("node Person { name: String @key age: I64 }\nnode City { name: String @key }\nedge LivesIn: Person -> City\n", RefusalKind::ChangeProperty, "Person.age"),
            ("node Person { id: String @key name: String? age: I64? }\nnode City { name: String @key }\nedge LivesIn: Person -> City\n", RefusalKind::ChangeKey, "Person.name"),
            ("node Person { name: String @key age: I64? }\nnode City { name: String @key }\nedge LivesIn: City -> Person\n", RefusalKind::ChangeEndpoints, "LivesIn"),
            ("node Person { name: String @key age: I64? }\nnode City { name: String @key }\nnode LivesIn { name: String @key }\n", RefusalKind::ChangeKind, "LivesIn"),
        ];
        for (src, kind, target) in cases {
            let d = plan(src);
            let got: Vec<(RefusalKind, String)> =
                d.refused.iter().map(|r| (r.kind, r.property.as_ref().map_or(r.ty.clone(), |p| format!("{}.{p}", r.ty)))).collect();
            assert!(got.contains(&(kind, target.to_string())), "{src}: {got:?}");
        }
    }
}
