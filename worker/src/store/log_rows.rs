//! The two append-only logs, `_commits` and `_branches`: each event is one
//! appended row (its publish point), and both are read back whole and
//! ordered by `seq`. Appending and reading share this code; each log keeps
//! its own schema and row type.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::SchemaRef;
use futures::TryStreamExt;
use lance::dataset::{Dataset, WriteMode};

use super::location::Location;
use super::StoreError;

/// Appends one row; `what` names the write in an error.
pub async fn append(ds: &mut Dataset, loc: &Location, row: RecordBatch, schema: SchemaRef, what: &str) -> Result<(), StoreError> {
    let reader = RecordBatchIterator::new(vec![Ok(row)], schema);
    ds.append(reader, Some(loc.write_params(WriteMode::Append))).await.map_err(|e| StoreError::lance(what, e))
}

/// Every batch of the log `table` (say `_commits`).
pub async fn scan(ds: &Dataset, table: &str) -> Result<Vec<RecordBatch>, StoreError> {
    let what = format!("scan {table}");
    ds.scan().try_into_stream().await.map_err(|e| StoreError::lance(&what, e))?.try_collect().await.map_err(|e| StoreError::lance(&what, e))
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

    pub fn seq(&self) -> Result<&'a Int64Array, StoreError> {
        self.batch
            .column_by_name("seq")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| StoreError::Corrupt(format!("{} has no seq column", self.table)))
    }
}
