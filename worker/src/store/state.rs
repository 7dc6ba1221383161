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

/// The keys at the other end of one node's edges of one type, sorted.
///
/// Most nodes have a handful of edges of a type, and a persistent B-tree
/// set allocates a 16-slot leaf (about 300 bytes) even for one key; so a
/// set of up to [`KeySet::FEW`] keys is a sorted shared slice, copied on
/// change (as cheap as a B-tree path at that size), and only a larger one
/// (a hub) is a B-tree, whose inserts stay O(log n).
#[derive(Clone)]
pub enum KeySet {
    Few(Arc<[Key]>),
    Many(imbl::OrdSet<Key>),
}

impl Default for KeySet {
    fn default() -> KeySet {
        static EMPTY: std::sync::OnceLock<Arc<[Key]>> = std::sync::OnceLock::new();
        KeySet::Few(EMPTY.get_or_init(|| Arc::from(Vec::new())).clone())
    }
}

/// Iterates a [`KeySet`] in key order.
pub enum KeySetIter<'a> {
    Few(std::slice::Iter<'a, Key>),
    Many(imbl::ordset::Iter<'a, Key, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a> Iterator for KeySetIter<'a> {
    type Item = &'a Key;

    fn next(&mut self) -> Option<&'a Key> {
        match self {
            KeySetIter::Few(i) => i.next(),
            KeySetIter::Many(i) => i.next(),
        }
    }
}

impl KeySet {
    /// The largest set kept as a slice.
    pub const FEW: usize = 16;

    pub fn len(&self) -> usize {
        match self {
            KeySet::Few(v) => v.len(),
            KeySet::Many(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, k: &Key) -> bool {
        match self {
            KeySet::Few(v) => v.binary_search(k).is_ok(),
            KeySet::Many(s) => s.contains(k),
        }
    }

    pub fn iter(&self) -> KeySetIter<'_> {
        match self {
            KeySet::Few(v) => KeySetIter::Few(v.iter()),
            KeySet::Many(s) => KeySetIter::Many(s.iter()),
        }
    }

    /// Adds `k`; false when it was there.
    pub fn insert(&mut self, k: Key) -> bool {
        match self {
            KeySet::Few(v) => {
                let Err(at) = v.binary_search(&k) else { return false };
                if v.len() < Self::FEW {
                    let mut keys = Vec::with_capacity(v.len() + 1);
                    keys.extend_from_slice(&v[..at]);
                    keys.push(k);
                    keys.extend_from_slice(&v[at..]);
                    *v = Arc::from(keys);
                } else {
                    let mut set: imbl::OrdSet<Key> = v.iter().cloned().collect();
                    set.insert(k);
                    *self = KeySet::Many(set);
                }
                true
            }
            KeySet::Many(s) => s.insert(k).is_none(),
        }
    }

    /// Removes `k`; false when it was not there. A hub that shrinks to half
    /// of [`KeySet::FEW`] becomes a slice again.
    pub fn remove(&mut self, k: &Key) -> bool {
        match self {
            KeySet::Few(v) => {
                let Ok(at) = v.binary_search(k) else { return false };
                let keys: Vec<Key> = v[..at].iter().chain(&v[at + 1..]).cloned().collect();
                *v = Arc::from(keys);
                true
            }
            KeySet::Many(s) => {
                let removed = s.remove(k).is_some();
                if s.len() <= Self::FEW / 2 {
                    *self = KeySet::Few(s.iter().cloned().collect::<Vec<_>>().into());
                }
                removed
            }
        }
    }
}

/// A node's or edge's properties, normalised (see `value.rs`): (name,
/// value) pairs sorted by name, in one shared allocation. Absent = null.
///
/// Compact on purpose: the in-memory graph holds one per row, and a
/// `serde_json::Map` (a B-tree whose every node has room for 11 entries,
/// plus a heap string per name) took about 650 bytes for a two-property
/// row where this takes 112; names are interned, one string per property
/// name in the process. Every row without properties (most edges) shares
/// one empty value.
#[derive(Clone)]
pub struct Props(Arc<[(Arc<str>, Value)]>);

impl Props {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name)).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// (name, value) pairs, sorted by name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|(k, _)| &**k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same two rows' properties, without comparing them.
    pub fn ptr_eq(a: &Props, b: &Props) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// As a JSON object, for answers and for edits.
    pub fn to_map(&self) -> Map<String, Value> {
        self.0.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
}

impl Default for Props {
    fn default() -> Props {
        static EMPTY: std::sync::OnceLock<Props> = std::sync::OnceLock::new();
        EMPTY.get_or_init(|| Props(Arc::from(Vec::new()))).clone()
    }
}

impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        Props::ptr_eq(self, other) || self.0 == other.0
    }
}

impl std::fmt::Debug for Props {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Props {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl From<Map<String, Value>> for Props {
    fn from(map: Map<String, Value>) -> Props {
        props(map)
    }
}

/// One shared string per name: rows repeat a handful of property names
/// millions of times, and commits the same table names and lineages. Only
/// names a schema declares (a change or a table row is checked against its
/// type first) and lineage names reach here, so the set stays small.
pub(crate) fn intern(name: &str) -> Arc<str> {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<Arc<str>>>> = std::sync::OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.get(name) {
        return n.clone();
    }
    let n: Arc<str> = Arc::from(name);
    names.insert(n.clone());
    n
}

/// `map` as compact shared properties (see [`Props`]).
pub fn props(map: Map<String, Value>) -> Props {
    if map.is_empty() {
        return Props::default();
    }
    let mut pairs: Vec<(Arc<str>, Value)> = map.into_iter().map(|(k, v)| (intern(&k), v)).collect();
    // Required: serde_json's `preserve_order` is on in this workspace (a
    // dependency enables it), so a Map iterates in insertion order.
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Props(Arc::from(pairs))
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
    fn props_are_sorted_by_name_and_compare_by_content() {
        let m = |v: Value| v.as_object().unwrap().clone();
        let p = props(m(serde_json::json!({"b": 2, "a": "x"})));
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(p.get("b"), Some(&serde_json::json!(2)));
        assert_eq!(p.get("c"), None);
        assert_eq!(p, props(m(serde_json::json!({"a": "x", "b": 2}))));
        assert_ne!(p, props(m(serde_json::json!({"a": "x"}))));
        assert_eq!(serde_json::to_value(&p).unwrap(), serde_json::json!({"a": "x", "b": 2}));
        assert_eq!(p.to_map(), m(serde_json::json!({"a": "x", "b": 2})));
        assert!(Props::ptr_eq(&props(Map::new()), &Props::default()), "every empty row shares one value");
    }

    #[test]
    fn a_key_set_is_a_sorted_set_through_its_slice_and_tree_forms() {
        // A model check: random inserts and removes over 64 keys, so sets
        // grow past FEW into a tree and shrink back into a slice.
        let mut set = KeySet::default();
        let mut model = std::collections::BTreeSet::new();
        let mut x: u64 = 7;
        let (mut grew, mut shrank) = (false, false);
        for step in 0..6_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k: Key = format!("k{:02}", (x >> 33) % 64).into();
            let was_many = matches!(set, KeySet::Many(_));
            // Phases of mostly inserts, then mostly removes.
            let removing = (step / 1_000) % 2 == 1;
            if ((x >> 20) % 4 == 0) != removing {
                assert_eq!(set.remove(&k), model.remove(&k));
            } else {
                assert_eq!(set.insert(k.clone()), model.insert(k.clone()));
            }
            let is_many = matches!(set, KeySet::Many(_));
            grew |= !was_many && is_many;
            shrank |= was_many && !is_many;
            assert_eq!(set.len(), model.len());
            assert!(set.iter().eq(model.iter()), "same keys, in order");
            assert!(set.contains(&k) == model.contains(&k));
        }
        assert!(grew && shrank, "both forms and both changes were exercised");
    }

    #[test]
    fn edge_ids_are_unambiguous() {
        assert_ne!(edge_id("a\",\"b", "c"), edge_id("a", "b\",\"c"));
    }
}
