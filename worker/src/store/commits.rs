//! The commit log: the `_commits` dataset, one row per graph commit.
//!
//! A commit row is the atomic publish point of a change: the change's table
//! writes land first, and only the appended row makes them visible, because
//! readers check out every table at the version the head commit records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lance::dataset::{Dataset, WriteMode};
use serde::{Deserialize, Serialize};

use super::location::{Location, COMMITS_TABLE};
use super::StoreError;

/// One graph commit, exactly as `/commits` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub commit_id: String,
    pub parents: Vec<String>,
    pub branch: String,
    pub actor_id: String,
    pub created_at: String,
    /// Table name → the Lance version this commit pins.
    pub tables: BTreeMap<String, u64>,
    /// Position in the log; orders commits without trusting clocks.
    #[serde(skip)]
    pub seq: i64,
}

/// The whole commit log in memory, ordered by `seq`, with an index by id.
///
/// A commit belongs to a branch's history when the branch head reaches it
/// through `parents`; that, not the `branch` column, is what scopes
/// `?commit=`, cursors and `/commits/{id}`, so a commit id never reads
/// across branches, and a branch created from another keeps the shared past.
#[derive(Debug, Clone, Default)]
pub struct CommitLog {
    records: Vec<CommitRecord>,
    by_id: HashMap<String, usize>,
}

impl CommitLog {
    pub fn new(records: Vec<CommitRecord>) -> Self {
        let mut log = CommitLog::default();
        for r in records {
            log.push(r);
        }
        log
    }

    pub fn push(&mut self, r: CommitRecord) {
        self.by_id.insert(r.commit_id.clone(), self.records.len());
        self.records.push(r);
    }

    pub fn get(&self, commit_id: &str) -> Option<&CommitRecord> {
        self.by_id.get(commit_id).and_then(|&i| self.records.get(i))
    }

    pub fn last(&self) -> Option<&CommitRecord> {
        self.records.last()
    }

    /// The newest commit written on `branch`: its head.
    pub fn head(&self, branch: &str) -> Option<&CommitRecord> {
        self.records.iter().rev().find(|c| c.branch == branch)
    }

    /// `commit_id`, when it is in `branch`'s history: the head itself or an
    /// ancestor reached through parents. Ancestors never have a larger `seq`,
    /// so the walk skips every commit older than the one it looks for.
    pub fn on_branch(&self, branch: &str, commit_id: &str) -> Option<&CommitRecord> {
        let target = self.get(commit_id)?;
        let head = self.head(branch)?;
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
                    if pc.seq >= target.seq && seen.insert(pc.commit_id.as_str()) {
                        stack.push(pc);
                    }
                }
            }
        }
        None
    }

    /// `branch`'s history (every commit its head reaches), newest first.
    pub fn history(&self, branch: &str) -> Vec<CommitRecord> {
        let Some(head) = self.head(branch) else { return Vec::new() };
        let mut seen: HashSet<&str> = HashSet::from([head.commit_id.as_str()]);
        let mut stack = vec![head];
        let mut out = Vec::new();
        while let Some(c) = stack.pop() {
            out.push(c);
            for p in &c.parents {
                if let Some(pc) = self.get(p) {
                    if seen.insert(pc.commit_id.as_str()) {
                        stack.push(pc);
                    }
                }
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.seq));
        out.into_iter().cloned().collect()
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("commit_id", DataType::Utf8, false),
        Field::new("parents", DataType::Utf8, false),
        Field::new("branch", DataType::Utf8, false),
        Field::new("actor_id", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
        Field::new("tables", DataType::Utf8, false),
    ]))
}

fn to_batch(c: &CommitRecord) -> Result<RecordBatch, StoreError> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![c.seq])),
        Arc::new(StringArray::from(vec![c.commit_id.as_str()])),
        Arc::new(StringArray::from(vec![json(&c.parents)])),
        Arc::new(StringArray::from(vec![c.branch.as_str()])),
        Arc::new(StringArray::from(vec![c.actor_id.as_str()])),
        Arc::new(StringArray::from(vec![c.created_at.as_str()])),
        Arc::new(StringArray::from(vec![json(&c.tables)])),
    ];
    RecordBatch::try_new(schema(), cols).map_err(|e| StoreError::Internal(format!("commit batch: {e}")))
}

/// Vectors of strings and maps of string → u64 always serialise.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Creates `_commits` holding the graph's first commit.
pub async fn create(loc: &Location, first: &CommitRecord) -> Result<Dataset, StoreError> {
    let batch = to_batch(first)?;
    let reader = RecordBatchIterator::new(vec![Ok(batch)], schema());
    Dataset::write(reader, loc.table_uri(COMMITS_TABLE).as_str(), Some(loc.write_params(WriteMode::Create)))
        .await
        .map_err(|e| StoreError::lance("create _commits", e))
}

/// Appends one commit row; this is the publish point of a change.
pub async fn append(ds: &mut Dataset, loc: &Location, c: &CommitRecord) -> Result<(), StoreError> {
    let batch = to_batch(c)?;
    let reader = RecordBatchIterator::new(vec![Ok(batch)], schema());
    ds.append(reader, Some(loc.write_params(WriteMode::Append)))
        .await
        .map_err(|e| StoreError::lance("append commit", e))
}

/// Reads the whole log, ordered by `seq`.
pub async fn read_all(ds: &Dataset) -> Result<Vec<CommitRecord>, StoreError> {
    let batches: Vec<RecordBatch> = ds
        .scan()
        .try_into_stream()
        .await
        .map_err(|e| StoreError::lance("scan _commits", e))?
        .try_collect()
        .await
        .map_err(|e| StoreError::lance("scan _commits", e))?;
    let mut out = Vec::new();
    for b in batches {
        let col = |name: &str| -> Result<&StringArray, StoreError> {
            b.column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| StoreError::Corrupt(format!("_commits has no string column {name}")))
        };
        let seq = b
            .column_by_name("seq")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| StoreError::Corrupt("_commits has no seq column".into()))?;
        let (id, parents, branch, actor, created, tables) =
            (col("commit_id")?, col("parents")?, col("branch")?, col("actor_id")?, col("created_at")?, col("tables")?);
        for i in 0..b.num_rows() {
            let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("_commits row {i}: {what}: {e}"));
            out.push(CommitRecord {
                seq: seq.value(i),
                commit_id: id.value(i).to_string(),
                parents: serde_json::from_str(parents.value(i)).map_err(|e| corrupt("parents", e))?,
                branch: branch.value(i).to_string(),
                actor_id: actor.value(i).to_string(),
                created_at: created.value(i).to_string(),
                tables: serde_json::from_str(tables.value(i)).map_err(|e| corrupt("tables", e))?,
            });
        }
    }
    out.sort_by_key(|c| c.seq);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: i64, id: &str, branch: &str, parents: &[&str]) -> CommitRecord {
        CommitRecord {
            commit_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            branch: branch.into(),
            actor_id: "local".into(),
            created_at: String::new(),
            tables: BTreeMap::new(),
            seq,
        }
    }

    /// main: m0 - m1 - m3 ; dev forks at m1: d2 - d4 ; m5 merges d4 into main.
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
            assert!(l.on_branch("main", id).is_some(), "{id} is on main");
        }
        assert!(l.on_branch("main", "d2").is_none(), "a dev commit is not on main");
        assert!(l.on_branch("main", "d4").is_none());
        for id in ["m0", "m1", "d2", "d4"] {
            assert!(l.on_branch("dev", id).is_some(), "{id} is on dev");
        }
        assert!(l.on_branch("dev", "m3").is_none(), "main's commit after the fork is not on dev");
        assert!(l.on_branch("main", "nope").is_none());
        assert!(l.on_branch("ghost", "m0").is_none());
        let ids = |v: Vec<CommitRecord>| v.into_iter().map(|c| c.commit_id).collect::<Vec<_>>();
        assert_eq!(ids(l.history("main")), ["m3", "m1", "m0"]);
        assert_eq!(ids(l.history("dev")), ["d4", "d2", "m1", "m0"]);
    }

    #[test]
    fn a_merge_brings_the_other_branch_into_history() {
        let mut l = log();
        l.push(rec(5, "m5", "main", &["m3", "d4"]));
        assert!(l.on_branch("main", "d2").is_some());
        assert_eq!(l.history("main").len(), 6);
        assert!(l.on_branch("dev", "m5").is_none());
    }
}
