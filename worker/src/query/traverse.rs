//! Breadth-first expansion over one edge type, from a set of start nodes.
//!
//! Runs on a blocking thread (see `query::execute`) and charges every newly
//! discovered node to the read's [`VisitBudget`], which also carries the
//! cancellation flag, so a huge or timed-out traversal stops mid-hop.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::QueryError;
use crate::contract::GraphSchema;
use crate::limits::VisitBudget;
use crate::store::state::{GraphData, Key};

/// The longest hop range one step may ask for.
pub const MAX_HOPS: u32 = 16;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Out,
    In,
    Both,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub edge: String,
    #[serde(default)]
    pub direction: Direction,
    pub min_hops: Option<u32>,
    pub max_hops: Option<u32>,
}

/// A node reached by a query, and at what distance in the last step.
pub type Reached = (String, Key, u32);

/// Runs one step from `frontier`. Each node is visited at most once; the
/// start nodes are not marked visited, so a cycle that comes back to one
/// reports it. Returns the distinct nodes first reached at a distance in
/// `[min_hops, max_hops]`. Each node discovered (once per step) costs one
/// unit of `budget`.
pub fn step(
    schema: &GraphSchema,
    data: &GraphData,
    frontier: &[(String, Key)],
    s: &Step,
    budget: &mut VisitBudget,
) -> Result<Vec<Reached>, QueryError> {
    let e = schema.edge(&s.edge).ok_or_else(|| QueryError::BadRequest(format!("traverse: unknown edge type {:?}", s.edge)))?;
    let (min, max) = hop_range(s)?;
    let Some(table) = data.edges.get(&e.name) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    if min == 0 {
        out.extend(frontier.iter().map(|(t, k)| (t.clone(), k.clone(), 0)));
    }
    let mut visited: HashSet<(String, Key)> = HashSet::new();
    let mut current: Vec<(String, Key)> = frontier.to_vec();
    for hop in 1..=max {
        let mut next: BTreeMap<(String, Key), ()> = BTreeMap::new();
        for (ty, key) in &current {
            budget.check()?;
            let forward = matches!(s.direction, Direction::Out | Direction::Both) && *ty == e.from;
            let backward = matches!(s.direction, Direction::In | Direction::Both) && *ty == e.to;
            if forward {
                for n in table.neighbours(key, true) {
                    let node = (e.to.clone(), n.clone());
                    if !visited.contains(&node) && next.insert(node, ()).is_none() {
                        budget.visit(1)?;
                    }
                }
            }
            if backward {
                for n in table.neighbours(key, false) {
                    let node = (e.from.clone(), n.clone());
                    if !visited.contains(&node) && next.insert(node, ()).is_none() {
                        budget.visit(1)?;
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        current = next.into_keys().collect();
        for node in &current {
            visited.insert(node.clone());
            if hop >= min {
                out.push((node.0.clone(), node.1.clone(), hop));
            }
        }
    }
    if min == 0 {
        // A start node also reached by a cycle is reported once, at distance 0.
        let mut seen = HashSet::new();
        out.retain(|(t, k, _)| seen.insert((t.clone(), k.clone())));
    }
    Ok(out)
}

/// A step's `[min_hops, max_hops]`, checked.
pub fn hop_range(s: &Step) -> Result<(u32, u32), QueryError> {
    let min = s.min_hops.unwrap_or(1);
    let max = s.max_hops.unwrap_or(min.max(1));
    if min > max || max == 0 || max > MAX_HOPS {
        return Err(QueryError::BadRequest(format!("traverse: need 0 <= min_hops <= max_hops, 1 <= max_hops <= {MAX_HOPS}; got {min}..{max}")));
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Cancel, Limits};
    use crate::store::state::{EdgeTable, NodeTable, Props};

    /// A chain p0 -> p1 -> ... -> p(n-1), plus a back edge to p0 from the end.
    fn ring(n: usize) -> (GraphSchema, GraphData) {
        let schema = GraphSchema::parse("node P { k: String @key }\nedge E: P -> P\n").unwrap();
        let mut data = GraphData::default();
        let mut nodes = NodeTable::default();
        let mut edges = EdgeTable::default();
        for i in 0..n {
            nodes.rows.insert(Key::from(format!("p{i}")), Props::default());
            edges.insert(Key::from(format!("p{i}")), Key::from(format!("p{}", (i + 1) % n)), Props::default());
        }
        data.nodes.insert("P".into(), nodes);
        data.edges.insert("E".into(), edges);
        (schema, data)
    }

    fn step_both(max_hops: u32) -> Step {
        Step { edge: "E".into(), direction: Direction::Both, min_hops: Some(1), max_hops: Some(max_hops) }
    }

    #[test]
    fn the_budget_counts_each_discovered_node_once() {
        let (schema, data) = ring(10);
        let frontier = vec![("P".to_string(), Key::from("p0"))];
        let limits = Limits { max_visited: 10, ..Limits::default() };
        let mut budget = VisitBudget::new(&limits, Cancel::default());
        // Both ways around a ring of 10 from p0: p1..p9 and then p0 again via the cycle.
        let out = step(&schema, &data, &frontier, &step_both(16), &mut budget).unwrap();
        assert_eq!(out.len(), 10);
        assert_eq!(budget.used(), 10);
    }

    #[test]
    fn a_traversal_past_max_visited_stops_with_the_limit() {
        let (schema, data) = ring(1000);
        let frontier = vec![("P".to_string(), Key::from("p0"))];
        let limits = Limits { max_visited: 7, ..Limits::default() };
        let mut budget = VisitBudget::new(&limits, Cancel::default());
        match step(&schema, &data, &frontier, &step_both(16), &mut budget) {
            Err(QueryError::Limit(e)) => assert_eq!(e.limit, "max_visited"),
            other => panic!("expected a limit error, got {:?}", other.map(|r| r.len())),
        }
        assert_eq!(budget.used(), 8, "it stopped at the first node past the limit");
    }

    #[test]
    fn a_cancelled_traversal_stops() {
        let (schema, data) = ring(100);
        let frontier = vec![("P".to_string(), Key::from("p0"))];
        let cancel = Cancel::default();
        cancel.cancel();
        let mut budget = VisitBudget::new(&Limits::default(), cancel);
        let err = step(&schema, &data, &frontier, &step_both(3), &mut budget).map(|r| r.len()).unwrap_err();
        assert!(matches!(err, QueryError::Limit(ref e) if e.limit == "read_timeout_ms"), "{err:?}");
    }
}
