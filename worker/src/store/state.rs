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

/// The hasher of every in-memory map keyed by row keys: foldhash, several
/// times faster than std's SipHash on short keys (hashing was a tenth of an
/// ingest's time), and still randomly seeded, so keys chosen by a client
/// cannot be made to collide.
pub type KeyHasher = foldhash::fast::RandomState;

/// A persistent hash map keyed by row keys (see [`KeyHasher`]).
pub type KeyMap<K, V> = imbl::GenericHashMap<K, V, KeyHasher, imbl::shared_ptr::DefaultSharedPtr>;

/// The rows a batch of ops touched, in the order first touched (see [`KeyHasher`]).
pub type Touches<K> = indexmap::IndexMap<K, Touch, KeyHasher>;

/// One touched row: whether it existed just before its first touch, and
/// its properties after the last (`None`: deleted), so a write can be built
/// from the touches alone, without looking each row up again.
#[derive(Clone, Debug)]
pub struct Touch {
    pub existed: bool,
    pub row: Option<Props>,
}

/// Records a touch of `k`: the first sets `existed`, every one the row.
pub fn touch<K: std::hash::Hash + Eq>(touches: &mut Touches<K>, k: K, existed: bool, row: Option<Props>) {
    match touches.entry(k) {
        indexmap::map::Entry::Occupied(mut e) => e.get_mut().row = row,
        indexmap::map::Entry::Vacant(e) => {
            e.insert(Touch { existed, row });
        }
    }
}

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

    /// Adds every key of `keys` at once: one new slice (or B-tree inserts
    /// for a hub) instead of a copy of the slice per key. The set ends as
    /// [`KeySet::insert`] one key at a time would leave it.
    pub fn extend(&mut self, keys: impl IntoIterator<Item = Key>) {
        match self {
            KeySet::Many(s) => s.extend(keys),
            KeySet::Few(v) => {
                let mut all: Vec<Key> = v.iter().cloned().chain(keys).collect();
                all.sort_unstable();
                all.dedup();
                *self = if all.len() <= Self::FEW { KeySet::Few(Arc::from(all)) } else { KeySet::Many(all.into_iter().collect()) };
            }
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
///
/// The pointer is thin (the length sits in the allocation): one word in
/// each slot of the row maps, where a slice pointer took two.
#[derive(Clone)]
pub struct Props(triomphe::ThinArc<(), (Arc<str>, Value)>);

impl Props {
    fn new(pairs: Vec<(Arc<str>, Value)>) -> Props {
        Props(triomphe::ThinArc::from_header_and_iter((), pairs.into_iter()))
    }

    fn pairs(&self) -> &[(Arc<str>, Value)] {
        &self.0.slice
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.pairs().binary_search_by(|(k, _)| (**k).cmp(name)).ok().map(|i| &self.pairs()[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// (name, value) pairs, sorted by name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.pairs().iter().map(|(k, v)| (&**k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.pairs().iter().map(|(k, _)| &**k)
    }

    pub fn len(&self) -> usize {
        self.pairs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }

    /// The same two rows' properties, without comparing them.
    pub fn ptr_eq(a: &Props, b: &Props) -> bool {
        std::ptr::addr_eq(&*a.0, &*b.0)
    }

    /// As a JSON object, for answers and for edits.
    pub fn to_map(&self) -> Map<String, Value> {
        self.pairs().iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }
}

impl Default for Props {
    fn default() -> Props {
        static EMPTY: std::sync::OnceLock<Props> = std::sync::OnceLock::new();
        EMPTY.get_or_init(|| Props::new(Vec::new())).clone()
    }
}

impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        Props::ptr_eq(self, other) || self.pairs() == other.pairs()
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
/// millions of times, and commits the same table names, lineages, branch
/// names, actor ids and schema ids. Only names a schema declares (a change
/// or a table row is checked against its type first), lineage and branch
/// names, and the ids of actors and schemas that committed reach here: the
/// set grows with what the commit log names, never faster than the log.
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
    Props::new(pairs)
}

#[derive(Clone, Default)]
pub struct NodeTable {
    pub rows: KeyMap<Key, Props>,
}

#[derive(Clone, Default)]
pub struct EdgeTable {
    pub rows: KeyMap<(Key, Key), Props>,
    /// from → to keys
    pub out: KeyMap<Key, KeySet>,
    /// to → from keys
    pub inc: KeyMap<Key, KeySet>,
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

    /// Takes the adjacency out, leaving it empty, so that it can be built
    /// apart from the rows ([`Adjacency::add`]) and put back with
    /// [`EdgeTable::put_adjacency`].
    pub fn take_adjacency(&mut self) -> Adjacency {
        Adjacency { out: std::mem::take(&mut self.out), inc: std::mem::take(&mut self.inc) }
    }

    pub fn put_adjacency(&mut self, a: Adjacency) {
        self.out = a.out;
        self.inc = a.inc;
    }

    pub fn neighbours<'a>(&'a self, key: &Key, outgoing: bool) -> impl Iterator<Item = &'a Key> + 'a {
        let map = if outgoing { &self.out } else { &self.inc };
        map.get(key).into_iter().flat_map(|s| s.iter())
    }
}

/// One edge table's adjacency (`out` and `inc`), built apart from its rows.
#[derive(Clone, Default)]
pub struct Adjacency {
    pub out: KeyMap<Key, KeySet>,
    pub inc: KeyMap<Key, KeySet>,
}

/// Groups `pairs` by the allocation of the key `side` picks: sorting reads
/// no string, and since an edge's endpoints share their node's key string
/// (`Working::endpoint`), equal keys fall in one group. Equal keys in two
/// allocations just make two groups, each added to the same entry.
fn group_by_key<'p>(pairs: &'p mut [(Key, Key)], side: fn(&(Key, Key)) -> &Key) -> impl Iterator<Item = &'p [(Key, Key)]> {
    pairs.sort_unstable_by_key(|p| Arc::as_ptr(side(p)).cast::<u8>() as usize);
    pairs.chunk_by(move |a, b| Arc::ptr_eq(side(a), side(b)))
}

impl Adjacency {
    /// Indexes the edges `pairs` (from, to): one map entry per distinct
    /// endpoint and one [`KeySet::extend`] each, where linking one edge at
    /// a time costs two entries and two set copies per edge. (`/ingest`
    /// builds its adjacency this way, on a thread beside its parser.)
    pub fn add(&mut self, pairs: &mut [(Key, Key)]) {
        for g in group_by_key(pairs, |p| &p.0) {
            self.out.entry(g[0].0.clone()).or_default().extend(g.iter().map(|p| p.1.clone()));
        }
        for g in group_by_key(pairs, |p| &p.1) {
            self.inc.entry(g[0].1.clone()).or_default().extend(g.iter().map(|p| p.0.clone()));
        }
    }
}

fn detach(map: &mut KeyMap<Key, KeySet>, a: &Key, b: &Key) {
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

    /// The adjacency of `t` as sorted lists, to compare two tables.
    fn adjacency_lists(out: &KeyMap<Key, KeySet>) -> BTreeMap<String, Vec<String>> {
        out.iter().map(|(k, s)| (k.to_string(), s.iter().map(|v| v.to_string()).collect())).collect()
    }

    #[test]
    fn adding_edges_in_bulk_indexes_them_as_linking_one_at_a_time_does() {
        // 40 nodes, 600 random edges (so some nodes pass FEW and become a
        // tree), added in four bulk batches on top of an existing table;
        // some endpoints are equal strings in separate allocations.
        let keys: Vec<Key> = (0..40).map(|i| Key::from(format!("n{i}"))).collect();
        let mut one_by_one = EdgeTable::default();
        one_by_one.insert(keys[0].clone(), keys[1].clone(), Props::default());
        let mut bulk = one_by_one.clone();
        let mut adjacency = bulk.take_adjacency();
        assert!(bulk.out.is_empty() && bulk.inc.is_empty());
        let mut x: u64 = 11;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        for _ in 0..4 {
            let mut pairs = Vec::new();
            for _ in 0..150 {
                let (f, t) = (next() % 40, next() % 40);
                let from = if next() % 5 == 0 { Key::from(&*keys[f]) } else { keys[f].clone() };
                one_by_one.insert(from.clone(), keys[t].clone(), Props::default());
                pairs.push((from, keys[t].clone()));
            }
            adjacency.add(&mut pairs);
        }
        bulk.put_adjacency(adjacency);
        assert_eq!(adjacency_lists(&bulk.out), adjacency_lists(&one_by_one.out));
        assert_eq!(adjacency_lists(&bulk.inc), adjacency_lists(&one_by_one.inc));
        assert!(bulk.out.values().any(|s| matches!(s, KeySet::Many(_))), "a hub became a tree");
        for (k, s) in bulk.out.iter() {
            let other = one_by_one.out.get(k).map(|s| matches!(s, KeySet::Many(_)));
            assert_eq!(Some(matches!(s, KeySet::Many(_))), other, "{k}: the same form");
        }
    }

    #[test]
    fn edge_ids_are_unambiguous() {
        assert_ne!(edge_id("a\",\"b", "c"), edge_id("a", "b\",\"c"));
    }
}
