//! The commit log: the `_commits` dataset, one row per graph commit.
//!
//! A commit row is the atomic publish point of a change: the change's table
//! writes land first, and only the appended row makes them visible, because
//! readers check out every table at the version the head commit records.
//!
//! Which commit is a branch's head is not stored here: the branch registry
//! (`branches.rs`) replays this log together with its own ref log.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use lance::dataset::{Dataset, WriteMode};
use serde::{Deserialize, Serialize, Serializer};

use super::location::{Location, COMMITS_TABLE};
use super::log_rows;
use super::StoreError;

/// Where one table's content at a commit lives: a version of one lineage
/// of the table's dataset. A lineage is a Lance branch of that dataset
/// (`None` is Lance's own main); see `lineage.rs` for why writes fork them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TablePin {
    pub lineage: Option<Arc<str>>,
    pub version: u64,
}

impl TablePin {
    pub fn main(version: u64) -> TablePin {
        TablePin { lineage: None, version }
    }
}

/// A pin as the `tables` column stores it: a bare version on Lance's main
/// (the only form graphs written before branches have), or an object.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredPin {
    Main(u64),
    Lineage { lineage: String, version: u64 },
}

impl From<&TablePin> for StoredPin {
    fn from(p: &TablePin) -> StoredPin {
        match &p.lineage {
            None => StoredPin::Main(p.version),
            Some(l) => StoredPin::Lineage { lineage: l.to_string(), version: p.version },
        }
    }
}

impl From<StoredPin> for TablePin {
    fn from(p: StoredPin) -> TablePin {
        match p {
            StoredPin::Main(version) => TablePin::main(version),
            StoredPin::Lineage { lineage, version } => TablePin { lineage: Some(Arc::from(lineage)), version },
        }
    }
}

/// Table name → where a commit's content of the table lives, sorted by
/// name, in one shared allocation with interned names and lineages.
///
/// Every commit in the in-memory log carries one, so it is compact: a
/// `BTreeMap<String, TablePin>` of four tables took about 650 bytes (an
/// 11-slot B-tree node and a string per name), this about 180.
#[derive(Clone, PartialEq, Eq)]
pub struct TablePins(Arc<[(Arc<str>, TablePin)]>);

impl TablePins {
    pub fn get(&self, table: &str) -> Option<&TablePin> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(table)).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, table: &str) -> bool {
        self.get(table).is_some()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &TablePin)> + '_ {
        self.0.iter().map(|(k, p)| (&**k, p))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|(k, _)| &**k)
    }

    pub fn values(&self) -> impl Iterator<Item = &TablePin> + '_ {
        self.0.iter().map(|(_, p)| p)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As a map, for a transaction to edit.
    pub fn to_map(&self) -> BTreeMap<String, TablePin> {
        self.iter().map(|(k, p)| (k.to_string(), p.clone())).collect()
    }
}

impl Default for TablePins {
    fn default() -> TablePins {
        TablePins(Arc::from(Vec::new()))
    }
}

impl std::fmt::Debug for TablePins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(String, TablePin)> for TablePins {
    fn from_iter<I: IntoIterator<Item = (String, TablePin)>>(it: I) -> TablePins {
        let mut pins: Vec<(Arc<str>, TablePin)> = it
            .into_iter()
            .map(|(k, p)| (super::state::intern(&k), TablePin { lineage: p.lineage.as_deref().map(super::state::intern), version: p.version }))
            .collect();
        // A name given twice keeps its last pin, as a map's insert would.
        pins.reverse();
        pins.sort_by(|a, b| a.0.cmp(&b.0));
        pins.dedup_by(|a, b| a.0 == b.0);
        TablePins(Arc::from(pins))
    }
}

impl From<&BTreeMap<String, TablePin>> for TablePins {
    fn from(m: &BTreeMap<String, TablePin>) -> TablePins {
        m.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }
}

type PinEntry = (Arc<str>, TablePin);

impl<'a> IntoIterator for &'a TablePins {
    type Item = (&'a str, &'a TablePin);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, PinEntry>, fn(&'a PinEntry) -> (&'a str, &'a TablePin)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, p)| (&**k, p))
    }
}

/// `/commits` shows each table's version; the lineage is storage detail.
fn versions_only<S: Serializer>(tables: &TablePins, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(tables.iter().map(|(k, p)| (k, p.version)))
}

/// One graph commit, exactly as `/commits` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CommitRecord {
    pub commit_id: Arc<str>,
    /// The commit it was made on; a merge commit has two, the target's head first.
    pub parents: Vec<Arc<str>>,
    /// The branch it was written on (a fast-forward can later make it another branch's head too).
    pub branch: Arc<str>,
    pub actor_id: Arc<str>,
    /// The `x-request-id` of the request that wrote it; `None` for a request
    /// without one (a direct call) and for commits written before it was kept.
    pub request_id: Option<String>,
    pub created_at: String,
    /// Table name → where this commit's content of the table lives.
    #[serde(serialize_with = "versions_only")]
    pub tables: TablePins,
    /// The schema it is read with: the commit that introduced it, or `None`
    /// for the graph's first schema (`_schema.pg`); see `schemas.rs`.
    #[serde(skip)]
    pub schema_id: Option<Arc<str>>,
    /// The `.pg` text, on the commit that introduced it (a schema apply) only.
    #[serde(skip)]
    pub schema_source: Option<Arc<str>>,
    /// Position in the log; orders commits without trusting clocks.
    #[serde(skip)]
    pub seq: i64,
}

/// The whole commit log in memory, ordered by `seq`, with an index by id.
///
/// Both are persistent structures (imbl): a commit publishes a new log
/// with [`CommitLog::push`] on a clone of the current one, and the clone
/// shares all but one chunk and one hash path with its original, so
/// committing costs the same at commit 10 as at commit 1,000,000 (a `Vec`
/// and a `HashMap` were copied whole on every commit).
///
/// A commit belongs to a branch's history when the branch head reaches it
/// through `parents`; that, not the `branch` column, is what scopes
/// `?commit=`, cursors and `/commits/{id}`, so a commit id never reads
/// across branches, and a branch created from another keeps the shared past.
#[derive(Debug, Clone, Default)]
pub struct CommitLog {
    records: imbl::Vector<Arc<CommitRecord>>,
    /// Keyed by the record's own id (one shared allocation).
    by_id: imbl::HashMap<Arc<str>, usize>,
}

impl CommitLog {
    pub fn new(records: Vec<CommitRecord>) -> Self {
        let mut log = CommitLog::default();
        for r in records {
            log.push(r);
        }
        log
    }

    /// Adds a record; its parents' ids become the parents' own (shared)
    /// allocations, so a long history costs one copy of each id.
    pub fn push(&mut self, mut r: CommitRecord) {
        for p in &mut r.parents {
            if let Some(parent) = self.by_id.get(&**p).and_then(|&i| self.records.get(i)) {
                *p = parent.commit_id.clone();
            }
        }
        self.by_id.insert(r.commit_id.clone(), self.records.len());
        self.records.push_back(Arc::new(r));
    }

    pub fn get(&self, commit_id: &str) -> Option<&CommitRecord> {
        self.by_id.get(commit_id).and_then(|&i| self.records.get(i)).map(|r| &**r)
    }

    /// Every record, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &CommitRecord> + ExactSizeIterator + '_ {
        self.records.iter().map(|r| &**r)
    }

    /// How many commits came after the newest one `actor_id` made (all of
    /// them when it made none).
    pub fn commits_since(&self, actor_id: &str) -> usize {
        self.records().rev().position(|r| &*r.actor_id == actor_id).unwrap_or(self.records.len())
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// `commit_id`, when it is `head` or one of its ancestors through
    /// parents. Ancestors never have a larger `seq`, so the walk skips every
    /// commit older than the one it looks for.
    pub fn reaches(&self, head: &str, commit_id: &str) -> Option<&CommitRecord> {
        let target = self.get(commit_id)?;
        let head = self.get(head)?;
        if head.seq < target.seq {
            return None;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        let mut stack = vec![head];
        while let Some(c) = stack.pop() {
            if c.commit_id == target.commit_id {
                return Some(target);
            }
            for p in &c.parents {
                if let Some(pc) = self.get(p) {
                    if pc.seq >= target.seq && seen.insert(&*pc.commit_id) {
                        stack.push(pc);
                    }
                }
            }
        }
        None
    }

    /// Every commit `head` reaches (itself included), unordered.
    pub fn ancestors(&self, head: &str) -> HashSet<&str> {
        let mut seen: HashSet<&str> = HashSet::new();
        let Some(h) = self.get(head) else { return seen };
        seen.insert(&*h.commit_id);
        let mut stack = vec![h];
        while let Some(c) = stack.pop() {
            for p in &c.parents {
                if let Some(pc) = self.get(p) {
                    if seen.insert(&*pc.commit_id) {
                        stack.push(pc);
                    }
                }
            }
        }
        seen
    }

    /// The merge base of two heads: their newest common ancestor (by `seq`).
    /// With criss-cross merges there can be several "best" ancestors; the
    /// newest is taken, which is what a merge needs in the common cases.
    pub fn merge_base(&self, a: &str, b: &str) -> Option<&CommitRecord> {
        let of_a = self.ancestors(a);
        self.ancestors(b).into_iter().filter(|id| of_a.contains(id)).filter_map(|id| self.get(id)).max_by_key(|c| c.seq)
    }

    /// `head`'s history (every commit it reaches), newest first.
    pub fn history(&self, head: &str) -> Vec<CommitRecord> {
        let mut out: Vec<&CommitRecord> = self.ancestors(head).into_iter().filter_map(|id| self.get(id)).collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.seq));
        out.into_iter().cloned().collect()
    }
}

/// The columns added since the first version of the log, all nullable: a
/// graph written before them gets them on open ([`migrate`]).
fn added_fields() -> Vec<Field> {
    vec![Field::new("request_id", DataType::Utf8, true), Field::new("schema_id", DataType::Utf8, true), Field::new("schema", DataType::Utf8, true)]
}

fn schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("commit_id", DataType::Utf8, false),
        Field::new("parents", DataType::Utf8, false),
        Field::new("branch", DataType::Utf8, false),
        Field::new("actor_id", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
        Field::new("tables", DataType::Utf8, false),
    ];
    fields.extend(added_fields());
    Arc::new(Schema::new(fields))
}

/// Brings a log written by an older worker up to today's columns (old rows
/// read the new ones as null). Cheap, and a no-op once done.
pub async fn migrate(ds: &mut Dataset) -> Result<(), StoreError> {
    log_rows::add_missing_columns(ds, &added_fields(), COMMITS_TABLE).await
}

fn to_batch(c: &CommitRecord) -> Result<RecordBatch, StoreError> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![c.seq])),
        Arc::new(StringArray::from(vec![&*c.commit_id])),
        Arc::new(StringArray::from(vec![json(&c.parents)])),
        Arc::new(StringArray::from(vec![&*c.branch])),
        Arc::new(StringArray::from(vec![&*c.actor_id])),
        Arc::new(StringArray::from(vec![c.created_at.as_str()])),
        Arc::new(StringArray::from(vec![json(&c.tables.iter().map(|(k, p)| (k, StoredPin::from(p))).collect::<BTreeMap<_, _>>())])),
        Arc::new(StringArray::from(vec![c.request_id.as_deref()])),
        Arc::new(StringArray::from(vec![c.schema_id.as_deref()])),
        Arc::new(StringArray::from(vec![c.schema_source.as_deref()])),
    ];
    RecordBatch::try_new(schema(), cols).map_err(|e| StoreError::Internal(format!("commit batch: {e}")))
}

/// Vectors of strings and maps of string → pins always serialise.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Creates `_commits` holding the graph's first commit.
pub async fn create(loc: &Location, first: &CommitRecord) -> Result<Dataset, StoreError> {
    let batch = to_batch(first)?;
    let reader = RecordBatchIterator::new(vec![Ok(batch)], schema());
    Dataset::write(reader, loc.table_uri(COMMITS_TABLE).as_str(), Some(loc.log_write_params(WriteMode::Create)))
        .await
        .map_err(|e| StoreError::lance("create _commits", e))
}

/// Appends one commit row; this is the publish point of a change.
pub async fn append(ds: &mut Dataset, loc: &Location, c: &CommitRecord) -> Result<(), StoreError> {
    log_rows::append(ds, loc, to_batch(c)?, schema(), "append commit").await
}

/// Reads the whole log, ordered by `seq`.
pub async fn read_all(ds: &Dataset) -> Result<Vec<CommitRecord>, StoreError> {
    let mut out = Vec::new();
    log_rows::each_batch(ds, "_commits", |b| {
        let c = log_rows::Columns { batch: b, table: "_commits" };
        let seq = c.seq()?;
        let (id, parents, branch, actor, created, tables) =
            (c.string("commit_id")?, c.string("parents")?, c.string("branch")?, c.string("actor_id")?, c.string("created_at")?, c.string("tables")?);
        let (request_id, schema_id, schema) = (c.opt_string("request_id")?, c.opt_string("schema_id")?, c.opt_string("schema")?);
        for i in 0..b.num_rows() {
            let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("_commits row {i}: {what}: {e}"));
            out.push(CommitRecord {
                seq: seq.value(i),
                commit_id: Arc::from(id.value(i)),
                parents: serde_json::from_str(parents.value(i)).map_err(|e| corrupt("parents", e))?,
                branch: super::state::intern(branch.value(i)),
                // Few actors write many commits: one shared copy of each id.
                actor_id: super::state::intern(actor.value(i)),
                request_id: log_rows::optional(request_id, i),
                // Every commit after a schema change names it: one shared copy.
                schema_id: log_rows::optional(schema_id, i).as_deref().map(super::state::intern),
                schema_source: log_rows::optional(schema, i).map(Arc::from),
                created_at: created.value(i).to_string(),
                tables: serde_json::from_str::<BTreeMap<String, StoredPin>>(tables.value(i))
                    .map_err(|e| corrupt("tables", e))?
                    .into_iter()
                    .map(|(k, p)| (k, TablePin::from(p)))
                    .collect::<TablePins>(),
            });
        }
        Ok(())
    })
    .await?;
    out.sort_by_key(|c| c.seq);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: i64, id: &str, branch: &str, parents: &[&str]) -> CommitRecord {
        CommitRecord {
            commit_id: id.into(),
            parents: parents.iter().map(|p| Arc::from(*p)).collect(),
            branch: branch.into(),
            actor_id: "local".into(),
            seq,
            ..Default::default()
        }
    }

    /// main: m0 - m1 - m3 ; dev forks at m1: d2 - d4.
    fn log() -> CommitLog {
        CommitLog::new(vec![
            rec(0, "m0", "main", &[]),
            rec(1, "m1", "main", &["m0"]),
            rec(2, "d2", "dev", &["m1"]),
            rec(3, "m3", "main", &["m1"]),
            rec(4, "d4", "dev", &["d2"]),
        ])
    }

    #[test]
    fn a_commit_is_on_a_branch_only_through_its_heads_parents() {
        let l = log();
        for id in ["m0", "m1", "m3"] {
            assert!(l.reaches("m3", id).is_some(), "{id} is on main");
        }
        assert!(l.reaches("m3", "d2").is_none(), "a dev commit is not on main");
        assert!(l.reaches("m3", "d4").is_none());
        for id in ["m0", "m1", "d2", "d4"] {
            assert!(l.reaches("d4", id).is_some(), "{id} is on dev");
        }
        assert!(l.reaches("d4", "m3").is_none(), "main's commit after the fork is not on dev");
        assert!(l.reaches("m3", "nope").is_none());
        assert!(l.reaches("ghost", "m0").is_none());
        let ids = |v: Vec<CommitRecord>| v.into_iter().map(|c| c.commit_id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(l.history("m3")), ["m3", "m1", "m0"]);
        assert_eq!(ids(l.history("d4")), ["d4", "d2", "m1", "m0"]);
    }

    #[test]
    fn a_merge_brings_the_other_branch_into_history_and_moves_the_base() {
        let mut l = log();
        assert_eq!(l.merge_base("m3", "d4").map(|c| &*c.commit_id), Some("m1"));
        assert_eq!(l.merge_base("m1", "d4").map(|c| &*c.commit_id), Some("m1"));
        l.push(rec(5, "m5", "main", &["m3", "d4"]));
        assert!(l.reaches("m5", "d2").is_some());
        assert_eq!(l.history("m5").len(), 6);
        assert!(l.reaches("d4", "m5").is_none());
        l.push(rec(6, "d6", "dev", &["d4"]));
        assert_eq!(l.merge_base("m5", "d6").map(|c| &*c.commit_id), Some("d4"), "the last merge is the new base");
    }

    #[test]
    fn commits_since_an_actor_counts_from_its_newest_commit() {
        let mut l = CommitLog::default();
        assert_eq!(l.commits_since("maintenance"), 0);
        for (i, actor) in ["a", "a", "maintenance", "a", "maintenance", "a", "a", "a"].iter().enumerate() {
            let mut r = rec(i as i64, &format!("c{i}"), "main", &[]);
            r.actor_id = Arc::from(*actor);
            l.push(r);
        }
        assert_eq!(l.commits_since("maintenance"), 3);
        assert_eq!(l.commits_since("nobody"), 8);
    }

    #[test]
    fn pins_round_trip_and_old_rows_still_read() {
        let mut c = rec(0, "c", "main", &[]);
        c.tables = [("B".to_string(), TablePin { lineage: Some(Arc::from("og-x")), version: 7 }), ("A".to_string(), TablePin::main(3))].into_iter().collect();
        assert_eq!(c.tables.keys().collect::<Vec<_>>(), vec!["A", "B"], "sorted by name");
        assert_eq!(c.tables.get("B").map(|p| p.version), Some(7));
        let stored = json(&c.tables.iter().map(|(k, p)| (k, StoredPin::from(p))).collect::<BTreeMap<_, _>>());
        assert_eq!(stored, r#"{"A":3,"B":{"lineage":"og-x","version":7}}"#);
        let back: BTreeMap<String, StoredPin> = serde_json::from_str(&stored).unwrap();
        let back: BTreeMap<String, TablePin> = back.into_iter().map(|(k, p)| (k, p.into())).collect();
        assert_eq!(back, c.tables.to_map());
        // The API shows versions only.
        assert_eq!(serde_json::to_value(&c).unwrap()["tables"], serde_json::json!({"A": 3, "B": 7}));
    }
}
