//! Breadth-first expansion over one edge type, from a set of start nodes.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::QueryError;
use crate::contract::GraphSchema;
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
/// `[min_hops, max_hops]`.
pub fn step(schema: &GraphSchema, data: &GraphData, frontier: &[(String, Key)], s: &Step) -> Result<Vec<Reached>, QueryError> {
    let e = schema.edge(&s.edge).ok_or_else(|| QueryError::BadRequest(format!("traverse: unknown edge type {:?}", s.edge)))?;
    let min = s.min_hops.unwrap_or(1);
    let max = s.max_hops.unwrap_or(min.max(1));
    if min > max || max == 0 || max > MAX_HOPS {
        return Err(QueryError::BadRequest(format!("traverse: need 0 <= min_hops <= max_hops, 1 <= max_hops <= {MAX_HOPS}; got {min}..{max}")));
    }
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
            let forward = matches!(s.direction, Direction::Out | Direction::Both) && *ty == e.from;
            let backward = matches!(s.direction, Direction::In | Direction::Both) && *ty == e.to;
            if forward {
                for n in table.neighbours(key, true) {
                    let node = (e.to.clone(), n.clone());
                    if !visited.contains(&node) {
                        next.insert(node, ());
                    }
                }
            }
            if backward {
                for n in table.neighbours(key, false) {
                    let node = (e.from.clone(), n.clone());
                    if !visited.contains(&node) {
                        next.insert(node, ());
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
