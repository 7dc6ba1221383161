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
