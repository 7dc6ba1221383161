//! The in-memory graph at one commit: nodes by key, edges with adjacency.
//!
//! Lance is the source of truth; this is the classic graph-database index over
//! it (FACTS.md, "Lookups need indexes"). It uses persistent maps (`imbl`), so
//! a commit's new state shares almost everything with its parent: cloning is
//! O(1) and each op is O(log n). Readers hold an `Arc` of a whole state and
//! never block the writer.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

pub type Key = Arc<str>;
/// A node's or edge's properties, normalised (see `value.rs`). Absent = null.
pub type Props = Arc<Map<String, Value>>;
pub type KeySet = imbl::OrdSet<Key>;

/// `map` as shared properties. Every row without properties (most edges)
/// shares one empty map rather than allocating its own, which matters when
/// a graph has millions of edges.
pub fn props(map: Map<String, Value>) -> Props {
    static EMPTY: std::sync::OnceLock<Props> = std::sync::OnceLock::new();
    if map.is_empty() {
        return EMPTY.get_or_init(|| Arc::new(Map::new())).clone();
    }
    Arc::new(map)
}

#[derive(Clone, Default)]
pub struct NodeTable {
    pub rows: imbl::HashMap<Key, Props>,
}

#[derive(Clone, Default)]
pub struct EdgeTable {
    pub rows: imbl::HashMap<(Key, Key), Props>,
    /// from → to keys
    pub out: imbl::HashMap<Key, KeySet>,
    /// to → from keys
    pub inc: imbl::HashMap<Key, KeySet>,
}

impl EdgeTable {
    pub fn insert(&mut self, from: Key, to: Key, props: Props) {
        self.out.entry(from.clone()).or_default().insert(to.clone());
        self.inc.entry(to.clone()).or_default().insert(from.clone());
        self.rows.insert((from, to), props);
    }

    pub fn remove(&mut self, from: &Key, to: &Key) -> bool {
        let existed = self.rows.remove(&(from.clone(), to.clone())).is_some();
        if existed {
            detach(&mut self.out, from, to);
            detach(&mut self.inc, to, from);
        }
        existed
    }

    pub fn neighbours<'a>(&'a self, key: &Key, outgoing: bool) -> impl Iterator<Item = &'a Key> + 'a {
        let map = if outgoing { &self.out } else { &self.inc };
        map.get(key).into_iter().flat_map(|s| s.iter())
    }
}

fn detach(map: &mut imbl::HashMap<Key, KeySet>, a: &Key, b: &Key) {
    if let Some(set) = map.get_mut(a) {
        set.remove(b);
        if set.is_empty() {
            map.remove(a);
        }
    }
}

/// All tables of a graph at one commit, keyed by type name.
#[derive(Clone, Default)]
pub struct GraphData {
    pub nodes: BTreeMap<String, NodeTable>,
    pub edges: BTreeMap<String, EdgeTable>,
    /// Where the rows of some tables sit in Lance, for the writes that
    /// replace them (see [`RowAddrs`]); a table without an entry has none
    /// known, and code that builds a `GraphData` of its own may leave this empty.
    pub addrs: BTreeMap<String, RowAddrs>,
}

/// The Lance row address (fragment id << 32 | offset) of every row of one
/// table, by a hash of the row's id (a node's key, an edge's `_id`), at one
/// version of one lineage: the only table they describe. A write that
/// replaces rows deletes them by these addresses rather than by scanning the
/// table for their ids, so its cost follows the change, not the table.
///
/// They are hints, never trusted alone: a delete by address also requires
/// each row to be live and to carry one of the ids being removed, and falls
/// back to a delete by id when fewer rows match (`store/write/row_addrs.rs`).
/// An entry costs about 25 bytes (a persistent B-tree of two `u64`s, shared
/// between commits like the rest of the state).
#[derive(Clone, Debug)]
pub struct RowAddrs {
    /// The lineage and version of the table the addresses are for.
    pub lineage: Option<Arc<str>>,
    pub version: u64,
    pub by_id: imbl::OrdMap<u64, u64>,
}

impl RowAddrs {
    /// The hash addresses are filed under. Seeded once per process, so
    /// nobody can choose keys that collide (a collision would only cost a
    /// scan: the delete checks ids).
    pub fn id_hash(id: &str) -> u64 {
        use std::hash::BuildHasher;
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
        SEED.get_or_init(Default::default).hash_one(id)
    }

    /// True when these are the addresses of `lineage` at `version`.
    pub fn describe(&self, lineage: Option<&Arc<str>>, version: u64) -> bool {
        self.version == version && self.lineage.as_ref() == lineage
    }
}

impl GraphData {
    pub fn row_count(&self, table: &str) -> usize {
        self.nodes.get(table).map(|t| t.rows.len()).or_else(|| self.edges.get(table).map(|t| t.rows.len())).unwrap_or(0)
    }
}

/// The `_id` column of an edge table: a JSON pair, unique and reversible.
pub fn edge_id(from: &str, to: &str) -> String {
    serde_json::to_string(&[from, to]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_table_keeps_adjacency_in_step() {
        let mut t = EdgeTable::default();
        let (a, b, c): (Key, Key, Key) = ("a".into(), "b".into(), "c".into());
        t.insert(a.clone(), b.clone(), Props::default());
        t.insert(a.clone(), c.clone(), Props::default());
        let before = t.clone();
        assert!(t.remove(&a, &b));
        assert!(!t.remove(&a, &b));
        assert_eq!(t.neighbours(&a, true).cloned().collect::<Vec<_>>(), vec![c.clone()]);
        assert_eq!(t.neighbours(&b, false).count(), 0);
        assert!(t.inc.get(&b).is_none());
        // The clone taken before is a separate snapshot.
        assert_eq!(before.neighbours(&a, true).count(), 2);
    }

    #[test]
    fn edge_ids_are_unambiguous() {
        assert_ne!(edge_id("a\",\"b", "c"), edge_id("a", "b\",\"c"));
    }
}
