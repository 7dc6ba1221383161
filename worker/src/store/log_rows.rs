//! The two append-only logs, `_commits` and `_branches`: each event is one
//! appended row (its publish point), and both are read back whole and
//! ordered by `seq`. Appending and reading share this code; each log keeps
//! its own schema and row type.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lance::dataset::{Dataset, NewColumnTransform, WriteMode};

use super::location::Location;
use super::StoreError;

/// Appends one row; `what` names the write in an error. The row is a
/// publish point, so every table file written before it is made durable
/// first ([`Location::sync_tables`]); the log's own files are fsynced as
/// Lance writes them (the logs go through the object-store path, see
/// [`Location::table_uri`]), so the row is durable when this returns.
pub async fn append(ds: &mut Dataset, loc: &Location, row: RecordBatch, schema: SchemaRef, what: &str) -> Result<(), StoreError> {
    // The last check before the publish point (object storage only).
    loc.check_writer().await?;
    loc.sync_tables().await?;
    let reader = RecordBatchIterator::new(vec![Ok(row)], schema);
    ds.append(reader, Some(loc.log_write_params(WriteMode::Append))).await.map_err(|e| StoreError::lance(what, e))
}

/// Calls `f` on each batch of the log `table` (say `_commits`), one at a
/// time: a reader keeps what it parses, and the Arrow copy of a long log is
/// never whole in memory beside it.
pub async fn each_batch(ds: &Dataset, table: &str, mut f: impl FnMut(&RecordBatch) -> Result<(), StoreError>) -> Result<(), StoreError> {
    let what = format!("scan {table}");
    let mut batches = ds.scan().try_into_stream().await.map_err(|e| StoreError::lance(&what, e))?;
    while let Some(b) = batches.try_next().await.map_err(|e| StoreError::lance(&what, e))? {
        f(&b)?;
    }
    Ok(())
}

/// Adds each of `fields` (nullable) that the log `table` lacks, as a column
/// of nulls. Lance does this in metadata alone, in one version: a log
/// written before a column existed then reads it as null for its old rows
/// and takes new rows with it. A log that has them all is left untouched.
pub async fn add_missing_columns(ds: &mut Dataset, fields: &[Field], table: &str) -> Result<(), StoreError> {
    let missing: Vec<Field> = fields.iter().filter(|f| ds.schema().field(f.name()).is_none()).cloned().collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(|f| f.name().clone()).collect();
    ds.add_columns(NewColumnTransform::AllNulls(Arc::new(Schema::new(missing))), None, None)
        .await
        .map_err(|e| StoreError::lance(format!("add columns {} to {table}", names.join(", ")), e))?;
    tracing::info!(table, columns = %names.join(", "), "added columns to a log written by an older worker");
    Ok(())
}

/// The columns of one batch of the log `table`; a missing one is corruption.
pub struct Columns<'a> {
    pub batch: &'a RecordBatch,
    pub table: &'a str,
}

impl<'a> Columns<'a> {
    pub fn string(&self, name: &str) -> Result<&'a StringArray, StoreError> {
        self.batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| StoreError::Corrupt(format!("{} has no string column {name}", self.table)))
    }

    /// A nullable string column; `None` when the batch has no such column
    /// (a row written before it existed reads as null).
    pub fn opt_string(&self, name: &str) -> Result<Option<&'a StringArray>, StoreError> {
        match self.batch.column_by_name(name) {
            None => Ok(None),
            Some(c) => c.as_string_opt::<i32>().map(Some).ok_or_else(|| StoreError::Corrupt(format!("{} column {name} is not a string column", self.table))),
        }
    }

    pub fn seq(&self) -> Result<&'a Int64Array, StoreError> {
        self.batch
            .column_by_name("seq")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| StoreError::Corrupt(format!("{} has no seq column", self.table)))
    }
}

/// Row `i` of a nullable string column that may be missing altogether.
pub fn optional(col: Option<&StringArray>, i: usize) -> Option<String> {
    col.filter(|c| c.is_valid(i)).map(|c| c.value(i).to_string())
}
