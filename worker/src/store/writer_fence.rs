//! One writer per graph on object storage: a fence made of S3 conditional
//! writes, so a worker that another worker has replaced stops writing.
//!
//! On a local path the gateway that owns the host is the only one that
//! starts a worker for a graph. On object storage another host (a second
//! gateway, a developer's `omnigraph-worker serve`) can open the same graph,
//! and two writers would both append to the commit log. So a worker opening
//! a graph on object storage claims the next *writer epoch*: it lists
//! `_writers/`, and creates `_writers/<n+1>` with a create-if-absent PUT
//! (`If-None-Match: *`, what Lance's own commits rely on), retrying on a lost
//! race. The newest claim wins. Before every write and before every publish
//! (a log row), the worker asks whether `_writers/<own+1>` exists (one HEAD);
//! if it does, a newer worker owns the graph: the write is refused (503),
//! writes stay stopped, and the worker shuts down.
//!
//! The window this leaves: a takeover that lands while an old worker's write
//! is already past its check. Its log row is then appended after the new
//! worker read the log; the replay's rule that a commit must extend its
//! branch's head (`branches::replay`) keeps such a row out of every head,
//! and it was never acknowledged... unless the takeover also raced the
//! old worker's acknowledgement. docs/scale-out.md states this precisely;
//! the etcd lease (not built yet) is what removes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use lance::io::ObjectStore;
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;

use super::StoreError;

/// The folder of writer claims under the graph's prefix.
pub const WRITERS_DIR: &str = "_writers";

/// How often a claim is retried after another worker claimed the same epoch.
const CLAIM_ATTEMPTS: usize = 8;

pub struct WriterFence {
    store: Arc<ObjectStore>,
    epoch: u64,
    /// The claim a newer worker would make: its existence fences us.
    next: ObjectPath,
    fenced: AtomicBool,
    /// Woken once when this worker learns it was fenced (the server stops).
    pub on_fenced: tokio::sync::Notify,
}

impl std::fmt::Debug for WriterFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterFence").field("epoch", &self.epoch).field("fenced", &self.fenced.load(Ordering::Relaxed)).finish()
    }
}

fn claim_name(epoch: u64) -> String {
    format!("{epoch:020}")
}

impl WriterFence {
    /// Claims the next writer epoch of the graph at `root` on `store`.
    pub async fn claim(store: Arc<ObjectStore>, root: &ObjectPath, who: &str) -> Result<WriterFence, StoreError> {
        let dir = root.clone().join(WRITERS_DIR);
        for _ in 0..CLAIM_ATTEMPTS {
            let newest = newest_epoch(&store, &dir).await?;
            let epoch = newest + 1;
            let body = serde_json::json!({"epoch": epoch, "writer": who, "claimed_at": chrono::Utc::now().to_rfc3339()}).to_string();
            match store.put_if_absent(&dir.clone().join(claim_name(epoch)), PutPayload::from(body)).await {
                Ok(()) => {
                    tracing::info!(epoch, "claimed the graph's writer epoch");
                    let next = dir.clone().join(claim_name(epoch + 1));
                    return Ok(WriterFence { store, epoch, next, fenced: AtomicBool::new(false), on_fenced: tokio::sync::Notify::new() });
                }
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(StoreError::Io(format!("claim writer epoch {epoch}: {e}"))),
            }
        }
        Err(StoreError::Io(format!("could not claim a writer epoch in {CLAIM_ATTEMPTS} attempts: other workers keep claiming this graph")))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Refuses when a newer worker has claimed the graph (and remembers it:
    /// once fenced, always fenced).
    pub async fn check(&self) -> Result<(), StoreError> {
        if !self.fenced.load(Ordering::Acquire) {
            match self.store.exists(&self.next).await {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    self.fenced.store(true, Ordering::Release);
                    tracing::error!(epoch = self.epoch, "a newer worker claimed this graph: this worker stops writing and shuts down");
                    self.on_fenced.notify_one();
                }
                // Unknown is not safe to write under.
                Err(e) => return Err(StoreError::Io(format!("check the writer epoch: {e}"))),
            }
        }
        Err(StoreError::Fenced(self.epoch))
    }
}

/// The highest claimed epoch under `dir` (0 when none).
async fn newest_epoch(store: &ObjectStore, dir: &ObjectPath) -> Result<u64, StoreError> {
    let mut newest = 0;
    let mut listing = store.list(Some(dir.clone()));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| StoreError::Io(format!("list {WRITERS_DIR}: {e}")))?;
        if let Some(n) = meta.location.filename().and_then(|f| f.parse::<u64>().ok()) {
            newest = newest.max(n);
        }
    }
    Ok(newest)
}
