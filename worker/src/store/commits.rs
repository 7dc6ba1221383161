//! The commit log: the `_commits` dataset, one row per graph commit.
//!
//! A commit row is the atomic publish point of a change: the change's table
//! writes land first, and only the appended row makes them visible, because
//! readers check out every table at the version the head commit records.

use std::collections::BTreeMap;
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
