//! Deleting the rows a write replaces by their Lance row addresses, so a
//! change costs what it changes rather than a scan of its table (issue 8).
//!
//! A table's addresses ([`RowAddrs`]) are learnt once, by one scan of its id
//! column, the first time a write removes rows from it (after a start, a
//! compaction, a rollback…), and then kept up to date by each write: the
//! rows a delete removes leave, and an append's rows are found in the
//! fragments it added. A fork of a lineage keeps its parent's fragments, so
//! it keeps the addresses too.
//!
//! The delete itself is `_rowaddr IN (…)`, which Lance runs as a take of
//! those addresses, live rows only, reading no column: it costs what it
//! deletes, where a filter on the id column reads that whole column. It is
//! staged, and committed only when it removes one row per id; a sample of
//! the rows is read back first to check their ids. Otherwise (addresses that
//! cannot be right) the rows are deleted by id with a scan, as before, and
//! the table's addresses are forgotten. Either way a write is one Lance
//! delete. `tests/change_cost.rs` pins the Lance behaviour this rests on.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, RecordBatch};
use datafusion_common::{Column, ScalarValue};
use datafusion_expr::{lit, Expr};
use futures::TryStreamExt;
use lance::dataset::{CommitBuilder, Dataset, DeleteBuilder};

use crate::store::lineage::lineage_of;
use crate::store::state::RowAddrs;
use crate::store::StoreError;

/// Lance's column of row addresses (`lance_core::ROW_ADDR`).
const ROW_ADDR: &str = "_rowaddr";

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// `<id_column> IN (ids)`, built as an expression, never as filter text: ids are user input.
fn ids_predicate(id_column: &str, ids: &[String]) -> Expr {
    column(id_column).in_list(ids.iter().map(|id| lit(ScalarValue::Utf8(Some(id.clone())))).collect(), false)
}

fn stamp(addrs: &mut RowAddrs, ds: &Dataset) {
    addrs.lineage = lineage_of(ds);
    addrs.version = ds.version().version;
}

/// The address of every row of `ds`, read from its id column. `None` when
/// two rows file under one hash (a duplicate id, or a hash collision): such
/// a table is only ever deleted from by id.
pub(super) async fn scan(ds: &Dataset, table: &str, id_column: &str) -> Result<Option<RowAddrs>, StoreError> {
    let context = || format!("read the row addresses of {table}");
    let mut scanner = ds.scan();
    scanner.project(&[id_column]).map_err(|e| StoreError::lance(context(), e))?;
    scanner.with_row_address();
    let mut stream = scanner.try_into_stream().await.map_err(|e| StoreError::lance(context(), e))?;
    let mut by_id = imbl::OrdMap::new();
    while let Some(b) = stream.try_next().await.map_err(|e| StoreError::lance(context(), e))? {
        let ids = b.column_by_name(id_column).and_then(|c| c.as_string_opt::<i32>());
        let addrs = b.column_by_name(ROW_ADDR).and_then(|c| c.as_primitive_opt::<UInt64Type>());
        let (Some(ids), Some(addrs)) = (ids, addrs) else {
            return Err(StoreError::Corrupt(format!("{table}: no string column {id_column} or no {ROW_ADDR} in a scan")));
        };
        for i in 0..b.num_rows() {
            if by_id.insert(RowAddrs::id_hash(ids.value(i)), addrs.value(i)).is_some() {
                tracing::warn!(table, "two rows share an id hash; this table's rows are deleted by id");
                return Ok(None);
            }
        }
    }
    let mut out = RowAddrs { lineage: None, version: 0, by_id };
    stamp(&mut out, ds);
    Ok(Some(out))
}

/// Deletes the rows whose ids (`id_column`) are `ids` from `ds`, by address
/// when `addrs` (or a scan, when they are not `ds`'s) know them all, else by
/// id. Returns the table after the delete and the addresses of its rows
/// then, when known.
pub(super) async fn delete(ds: Arc<Dataset>, table: &str, id_column: &str, mut ids: Vec<String>, addrs: Option<RowAddrs>) -> Result<(Arc<Dataset>, Option<RowAddrs>), StoreError> {
    ids.sort_unstable();
    ids.dedup();
    let lineage = lineage_of(&ds);
    let mut addrs = match addrs.filter(|a| a.describe(lineage.as_ref(), ds.version().version)) {
        Some(a) => Some(a),
        None => scan(&ds, table, id_column).await?,
    };
    if let Some(a) = addrs.as_mut() {
        if let Some(after) = delete_by_address(&ds, table, id_column, &ids, a).await? {
            for id in &ids {
                a.by_id.remove(&RowAddrs::id_hash(id));
            }
            stamp(a, &after);
            return Ok((Arc::new(after), addrs));
        }
    }
    let after = DeleteBuilder::from_expr(ds, ids_predicate(id_column, &ids))
        .execute()
        .await
        .map_err(|e| StoreError::lance(format!("delete from {table}"), e))?
        .new_dataset;
    Ok((after, None))
}

/// How many of a delete's rows are read back to check their ids first.
const SAMPLE: usize = 8;

/// The delete by address, committed only when it removes exactly one live
/// row per id in `ids` (distinct) and a sample of those rows read back
/// carries the ids expected; `None` otherwise (nothing is committed).
async fn delete_by_address(ds: &Arc<Dataset>, table: &str, id_column: &str, ids: &[String], addrs: &RowAddrs) -> Result<Option<Dataset>, StoreError> {
    let Some(at) = ids.iter().map(|id| addrs.by_id.get(&RowAddrs::id_hash(id)).copied()).collect::<Option<Vec<u64>>>() else {
        tracing::warn!(table, "a row to delete has no known address; deleting by id");
        return Ok(None);
    };
    if !sample_matches(ds, table, id_column, ids, &at).await {
        return Ok(None);
    }
    let predicate = column(ROW_ADDR).in_list(at.into_iter().map(|a| lit(ScalarValue::UInt64(Some(a)))).collect(), false);
    let staged = match DeleteBuilder::from_expr(ds.clone(), predicate).execute_uncommitted().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(table, error = %e, "a delete by row address failed; deleting by id");
            return Ok(None);
        }
    };
    if staged.num_deleted_rows != ids.len() as u64 {
        // Nothing is committed: the deletion files it wrote are referenced by no version.
        tracing::error!(table, found = staged.num_deleted_rows, wanted = ids.len(), "row addresses of deleted rows; deleting by id");
        return Ok(None);
    }
    let mut commit = CommitBuilder::new(ds.clone());
    if let Some(rows) = staged.affected_rows {
        commit = commit.with_affected_rows(rows);
    }
    let after = commit.execute(staged.transaction).await.map_err(|e| StoreError::lance(format!("delete from {table}"), e))?;
    Ok(Some(after))
}

/// Reads the ids at up to [`SAMPLE`] of the addresses `at` (of `ids`,
/// pairwise) and checks they are those ids: the addresses are right by
/// construction, and this keeps a mistake in them from deleting other rows
/// unnoticed, at the cost of a few small reads (reading every row would
/// read most of the id column of a table, the cost this module avoids).
async fn sample_matches(ds: &Dataset, table: &str, id_column: &str, ids: &[String], at: &[u64]) -> bool {
    let step = ids.len().div_ceil(SAMPLE).max(1);
    let picked: Vec<usize> = (0..ids.len()).step_by(step).collect();
    let rows: Vec<u64> = picked.iter().map(|&i| at[i]).collect();
    let read = match ds.schema().project(&[id_column]) {
        Ok(projection) => ds.take_rows(&rows, projection).await,
        Err(e) => Err(e),
    };
    let mut found: Vec<u64> = match &read {
        Ok(b) => match b.column_by_name(id_column).and_then(|c| c.as_string_opt::<i32>()) {
            Some(col) => (0..col.len()).map(|i| RowAddrs::id_hash(col.value(i))).collect(),
            None => Vec::new(),
        },
        Err(e) => {
            tracing::warn!(table, error = %e, "reading rows by address failed; deleting by id");
            return false;
        }
    };
    let mut wanted: Vec<u64> = picked.iter().map(|&i| RowAddrs::id_hash(&ids[i])).collect();
    found.sort_unstable();
    wanted.sort_unstable();
    if found != wanted {
        tracing::error!(table, "row addresses point at other rows; deleting by id");
        return false;
    }
    true
}

/// `addrs` (of `before`) with the rows of `batch`, which an append to
/// `before` wrote in order into the fragments `after` has and `before` has
/// not. `None` when they cannot be placed for sure.
pub(super) fn appended(mut addrs: RowAddrs, before: &Dataset, after: &Dataset, batch: &RecordBatch, id_column: &str) -> Option<RowAddrs> {
    if !addrs.describe(lineage_of(before).as_ref(), before.version().version) {
        return None;
    }
    let ids = batch.column_by_name(id_column)?.as_string_opt::<i32>()?;
    let old: HashSet<u64> = before.fragments().iter().map(|f| f.id).collect();
    let mut new: Vec<_> = after.fragments().iter().filter(|f| !old.contains(&f.id)).collect();
    new.sort_by_key(|f| f.id);
    let mut row = 0;
    for f in new {
        let fragment = u32::try_from(f.id).ok()?;
        for offset in 0..u32::try_from(f.physical_rows?).ok()? {
            if row >= ids.len() {
                return None;
            }
            let address = (u64::from(fragment) << 32) | u64::from(offset);
            if addrs.by_id.insert(RowAddrs::id_hash(ids.value(row)), address).is_some() {
                return None;
            }
            row += 1;
        }
    }
    if row != batch.num_rows() {
        return None;
    }
    stamp(&mut addrs, after);
    Some(addrs)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow_array::{RecordBatchIterator, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use lance::dataset::{WriteMode, WriteParams};

    use super::*;

    fn batch(keys: impl IntoIterator<Item = String>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(keys.into_iter().collect::<Vec<_>>()))]).expect("batch")
    }

    async fn append(ds: &Dataset, b: &RecordBatch) -> Dataset {
        let mut next = ds.clone();
        let params = WriteParams { mode: WriteMode::Append, max_rows_per_file: 7, ..Default::default() };
        next.append(RecordBatchIterator::new(vec![Ok(b.clone())], b.schema()), Some(params)).await.expect("append");
        next
    }

    /// A table of `k0`..`k29` in several fragments.
    async fn table(dir: &tempfile::TempDir) -> Arc<Dataset> {
        let uri = dir.path().join("t.lance");
        let first = batch((0..10).map(|i| format!("k{i}")));
        let ds = Dataset::write(RecordBatchIterator::new(vec![Ok(first.clone())], first.schema()), uri.to_str().expect("utf-8"), None).await.expect("write");
        Arc::new(append(&ds, &batch((10..30).map(|i| format!("k{i}")))).await)
    }

    async fn keys(ds: &Dataset) -> BTreeSet<String> {
        let batches: Vec<RecordBatch> = ds.scan().try_into_stream().await.expect("scan").try_collect().await.expect("scan");
        batches.iter().flat_map(|b| {
            let col = b.column_by_name("k").and_then(|c| c.as_string_opt::<i32>()).expect("k");
            (0..col.len()).map(|i| col.value(i).to_string()).collect::<Vec<_>>()
        }).collect()
    }

    fn ids(keys: &[usize]) -> Vec<String> {
        keys.iter().map(|i| format!("k{i}")).collect()
    }

    fn all_but(gone: &[usize]) -> BTreeSet<String> {
        (0..30).filter(|i| !gone.contains(i)).map(|i| format!("k{i}")).collect()
    }

    #[tokio::test]
    async fn deletes_by_address_and_keeps_the_addresses_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = table(&dir).await;
        let addrs = scan(&ds, "t", "k").await.expect("scan").expect("distinct ids");
        assert_eq!(addrs.by_id.len(), 30);

        // Learnt on the way when missing, then kept in step with the table.
        let (ds, learnt) = delete(ds, "t", "k", ids(&[3, 12, 25]), None).await.expect("delete");
        assert_eq!(keys(&ds).await, all_but(&[3, 12, 25]));
        let learnt = learnt.expect("addresses");
        assert_eq!(learnt.by_id, scan(&ds, "t", "k").await.expect("scan").expect("distinct").by_id);
        let (ds, kept) = delete(ds, "t", "k", ids(&[0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]), Some(learnt)).await.expect("delete");
        let kept = kept.expect("addresses");
        assert!(kept.describe(lineage_of(&ds).as_ref(), ds.version().version));
        assert_eq!(keys(&ds).await, all_but(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 25]));
        assert_eq!(kept.by_id, scan(&ds, "t", "k").await.expect("scan").expect("distinct").by_id);

        // An append's rows are placed where Lance put them, over several fragments.
        let more = batch((0..16).map(|i| format!("n{i}")));
        let after = append(&ds, &more).await;
        let placed = appended(kept.clone(), &ds, &after, &more, "k").expect("placed");
        assert_eq!(placed.by_id, scan(&after, "t", "k").await.expect("scan").expect("distinct").by_id);
        assert!(appended(kept, &after, &after, &more, "k").is_none(), "addresses of another version are not extended");
    }

    #[tokio::test]
    async fn wrong_addresses_delete_by_id_instead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = table(&dir).await;
        let right = scan(&ds, "t", "k").await.expect("scan").expect("distinct");
        let at = |a: &RowAddrs, i: usize| a.by_id[&RowAddrs::id_hash(&format!("k{i}"))];

        // An address of another live row: the sample read back catches it.
        let mut wrong = right.clone();
        wrong.by_id.insert(RowAddrs::id_hash("k1"), at(&right, 2));
        let (ds, out) = delete(ds, "t", "k", ids(&[1]), Some(wrong)).await.expect("delete");
        assert_eq!(keys(&ds).await, all_but(&[1]), "k2 is still there");
        assert!(out.is_none(), "the table's addresses are forgotten");

        // An address of a deleted row, outside the sample: the count catches it.
        let mut stale = scan(&ds, "t", "k").await.expect("scan").expect("distinct");
        stale.by_id.insert(RowAddrs::id_hash("k5"), at(&right, 1));
        let (ds, out) = delete(ds, "t", "k", ids(&[4, 5, 6, 7, 8, 9, 10, 11, 13, 14]), Some(stale)).await.expect("delete");
        assert_eq!(keys(&ds).await, all_but(&[1, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14]));
        assert!(out.is_none());

        // An id with no address at all.
        let mut short = scan(&ds, "t", "k").await.expect("scan").expect("distinct");
        short.by_id.remove(&RowAddrs::id_hash("k20"));
        let (ds, out) = delete(ds, "t", "k", ids(&[20]), Some(short)).await.expect("delete");
        assert_eq!(keys(&ds).await, all_but(&[1, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 20]));
        assert!(out.is_none());

        // Addresses of another version are not used, but learnt again.
        let (ds, out) = delete(ds, "t", "k", ids(&[21]), Some(right)).await.expect("delete");
        assert_eq!(keys(&ds).await, all_but(&[1, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 20, 21]));
        assert_eq!(out.expect("learnt").by_id, scan(&ds, "t", "k").await.expect("scan").expect("distinct").by_id);
    }

    #[tokio::test]
    async fn a_table_with_a_duplicate_id_is_only_deleted_from_by_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ds = table(&dir).await;
        let ds = Arc::new(append(&ds, &batch(["k3".to_string()])).await);
        assert!(scan(&ds, "t", "k").await.expect("scan").is_none());
        let (ds, out) = delete(ds, "t", "k", ids(&[3]), None).await.expect("delete");
        assert!(out.is_none());
        assert_eq!(keys(&ds).await, all_but(&[3]), "both rows of k3 are gone");
    }
}
