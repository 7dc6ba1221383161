//! The Lance behaviour the branch design rests on (see `store/lineage.rs`),
//! pinned so an upgrade that changes it fails here first:
//!
//! - a Lance branch forked from a version copies no data, and writes on it
//!   and on its parent are invisible to each other;
//! - an append made through a dataset object that is behind its branch's
//!   latest version is *rebased* onto that latest version by Lance's conflict
//!   resolution, so it sees (and keeps) rows it never read. This is why a
//!   table is only ever written on a lineage its own graph branch owns, at
//!   the lineage's tip.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema};
use lance::dataset::builder::DatasetBuilder;
use lance::dataset::{Dataset, WriteMode, WriteParams};

type Batches = RecordBatchIterator<std::vec::IntoIter<Result<RecordBatch, arrow_schema::ArrowError>>>;

fn batch(keys: &[&str]) -> (Batches, Arc<Schema>) {
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
    let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(keys.to_vec()))]).unwrap();
    (RecordBatchIterator::new(vec![Ok(b)].into_iter(), schema.clone()), schema)
}

fn append_params() -> Option<WriteParams> {
    Some(WriteParams { mode: WriteMode::Append, ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_are_isolated_and_stale_appends_are_rebased() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("t.lance");
    let uri = uri.to_str().unwrap();
    let (r, _) = batch(&["a"]);
    let mut main = Dataset::write(r, uri, None).await.unwrap();
    let v1 = main.version().version;

    // Fork at v1: the fork starts with v1's rows.
    let mut fork = Dataset::clone(&main).create_branch("f1", (None::<&str>, Some(v1)), None).await.unwrap();
    assert_eq!(fork.count_rows(None).await.unwrap(), 1);
    let fork_v0 = fork.version().version;

    // Writes on either side stay on that side.
    main.append(batch(&["m"]).0, append_params()).await.unwrap();
    fork.append(batch(&["f"]).0, append_params()).await.unwrap();
    assert_eq!(main.count_rows(None).await.unwrap(), 2);
    assert_eq!(fork.count_rows(None).await.unwrap(), 2);
    assert_eq!(fork.count_rows(Some("k = 'm'".into())).await.unwrap(), 0);
    assert_eq!(main.count_rows(Some("k = 'f'".into())).await.unwrap(), 0);

    // A fork can be re-opened at a version, and forked again.
    let reopened = DatasetBuilder::from_uri(uri).with_branch("f1", Some(fork.version().version)).load().await.unwrap();
    assert_eq!(reopened.count_rows(None).await.unwrap(), 2);
    assert_eq!(reopened.manifest().branch.as_deref(), Some("f1"));
    let at_fork = DatasetBuilder::from_uri(uri).with_branch("f1", Some(fork_v0)).load().await.unwrap();
    assert_eq!(at_fork.count_rows(None).await.unwrap(), 1);
    let nested = Dataset::clone(&reopened).create_branch("f2", (Some("f1"), Some(fork.version().version)), None).await.unwrap();
    assert_eq!(nested.count_rows(None).await.unwrap(), 2);
    assert_eq!(main.latest_version_id().await.unwrap(), main.version().version);
    assert_eq!(fork.latest_version_id().await.unwrap(), fork.version().version);

    // The hazard: an append through a stale object lands on top of the
    // latest version, keeping rows the writer never saw.
    let mut stale = DatasetBuilder::from_uri(uri).with_version(v1).load().await.unwrap();
    stale.append(batch(&["s"]).0, append_params()).await.unwrap();
    assert_eq!(stale.count_rows(None).await.unwrap(), 3, "rebased onto main's latest: a, m, s");
}

/// What schema apply rests on (`store/schema_apply.rs`):
///
/// - `add_columns` with `AllNulls` and `drop_columns` on a dataset object
///   checked out on a Lance branch make a new version of that branch only;
///   older versions keep their columns, and old rows read an added column as null;
/// - an append whose columns come in another order than the dataset's, or
///   leave out a nullable column, is accepted;
/// - an `Overwrite` of no rows through a branch's dataset object gives that
///   branch a new, empty table with another schema (a type dropped and added
///   again starts empty), and the parent keeps its rows and schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_evolve_per_branch_and_a_branch_can_start_over() {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use futures::TryStreamExt;
    use lance::dataset::{InsertBuilder, NewColumnTransform, WriteDestination};

    let tmp = tempfile::tempdir().unwrap();
    let uri = tmp.path().join("t.lance");
    let uri = uri.to_str().unwrap();
    let (r, _) = batch(&["a"]);
    let main = Dataset::write(r, uri, None).await.unwrap();
    let v1 = main.version().version;
    let mut fork = Dataset::clone(&main).create_branch("f1", (None::<&str>, Some(v1)), None).await.unwrap();
    let nullable = |n: &str| Arc::new(Schema::new(vec![Field::new(n, DataType::Utf8, true)]));
    fork.add_columns(NewColumnTransform::AllNulls(nullable("email")), None, None).await.unwrap();
    assert_eq!(fork.manifest().branch.as_deref(), Some("f1"));
    let rows: Vec<RecordBatch> = fork.scan().try_into_stream().await.unwrap().try_collect().await.unwrap();
    let email = rows[0].column_by_name("email").expect("the new column");
    assert_eq!((email.len(), email.null_count()), (1, 1), "an old row reads the new column as null");

    // An append with the columns swapped, and one leaving the nullable column out.
    let two = Arc::new(Schema::new(vec![Field::new("email", DataType::Utf8, true), Field::new("k", DataType::Utf8, false)]));
    let b = RecordBatch::try_new(two.clone(), vec![Arc::new(StringArray::from(vec![Some("b@x")])), Arc::new(StringArray::from(vec!["b"]))]).unwrap();
    fork.append(RecordBatchIterator::new(vec![Ok(b)], two), append_params()).await.unwrap();
    let (r, _) = batch(&["c"]);
    fork.append(r, append_params()).await.unwrap();
    assert_eq!(fork.count_rows(None).await.unwrap(), 3);

    // The parent is untouched; reopening the branch finds the column.
    let reopened_main = Dataset::open(uri).await.unwrap();
    assert_eq!(reopened_main.version().version, v1);
    assert!(reopened_main.schema().field("email").is_none());
    let on_branch = DatasetBuilder::from_uri(uri).with_branch("f1", None).load().await.unwrap();
    assert!(on_branch.schema().field("email").is_some());

    // Dropping the column is a new version of the branch only.
    let with_email = on_branch.version().version;
    let mut dropped = on_branch.clone();
    dropped.drop_columns(&["email"]).await.unwrap();
    assert!(dropped.schema().field("email").is_none());
    let before = DatasetBuilder::from_uri(uri).with_branch("f1", Some(with_email)).load().await.unwrap();
    assert!(before.schema().field("email").is_some(), "an older version keeps the column");
    assert_eq!(before.count_rows(None).await.unwrap(), 3);

    // A second fork starts over: no rows, another schema.
    let f2 = Dataset::clone(&reopened_main).create_branch("f2", (None::<&str>, Some(v1)), None).await.unwrap();
    let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let none = RecordBatchIterator::new(Vec::<Result<RecordBatch, arrow_schema::ArrowError>>::new(), other);
    let params = WriteParams { mode: WriteMode::Overwrite, ..Default::default() };
    let fresh = InsertBuilder::new(WriteDestination::Dataset(Arc::new(f2)))
        .with_params(&params)
        .execute_stream(Box::new(none) as Box<dyn arrow_array::RecordBatchReader + Send>)
        .await
        .unwrap();
    assert_eq!(fresh.manifest().branch.as_deref(), Some("f2"));
    assert_eq!(fresh.count_rows(None).await.unwrap(), 0);
    assert!(fresh.schema().field("id").is_some() && fresh.schema().field("k").is_none());
    let main_again = Dataset::open(uri).await.unwrap();
    assert_eq!((main_again.version().version, main_again.count_rows(None).await.unwrap()), (v1, 1));
    let rows: Vec<RecordBatch> = main_again.scan().try_into_stream().await.unwrap().try_collect().await.unwrap();
    assert_eq!(rows[0].column_by_name("k").unwrap().as_string::<i32>().value(0), "a");
}
