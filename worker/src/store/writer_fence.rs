//! One writer per graph on object storage: a fence made of S3 conditional
//! writes, so a worker that another worker has replaced stops writing.
//!
//! On a local path the gateway that owns the host is the only one that
//! starts a worker for a graph. On object storage another host (a second
//! gateway, a developer's `omnigraph-worker serve`) can open the same graph,
//! and two writers would both append to the commit log. So a worker opening
//! a graph on object storage claims a *writer epoch*: it lists `_writers/`
//! and creates `_writers/<epoch>` with a create-if-absent PUT (`If-None-Match:
//! *`, what Lance's own commits rely on), for an epoch above every claim
//! there and at least the current time in milliseconds (so epochs keep
//! rising even after a purge emptied `_writers/`, as far as the hosts'
//! clocks agree); a lost race retries. The
//! newest claim wins. Before every write, before every destructive step of
//! maintenance and before every publish (a log row), the worker lists
//! `_writers/` after its own claim (one LIST request past its own claim): any claim
//! there means a newer worker owns the graph, and the write is refused (503),
//! writes stay stopped, and the worker shuts down. Older claims are deleted
//! by the worker that superseded them, so `_writers/` stays small.
//!
//! The window this leaves: a takeover that lands while an old worker's write
//! is already past its check. That write still completes, and its log row
//! lands after the new worker read the log (docs/scale-out.md says what a
//! reader then sees). A shared lease (the etcd design) is what removes it.

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
    /// `_writers/`, and our claim in it: any claim listed after ours fences us.
    dir: ObjectPath,
    own: ObjectPath,
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
    /// Claims a writer epoch above every claim on the graph at `root`.
    pub async fn claim(store: Arc<ObjectStore>, root: &ObjectPath, who: &str) -> Result<WriterFence, StoreError> {
        let dir = root.clone().join(WRITERS_DIR);
        for _ in 0..CLAIM_ATTEMPTS {
            let claims = claims(&store, &dir).await?;
            let newest = claims.iter().map(|(n, _)| *n).max().unwrap_or(0);
            let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
            let epoch = newest.saturating_add(1).max(now_ms);
            let body = serde_json::json!({"epoch": epoch, "writer": who, "claimed_at": chrono::Utc::now().to_rfc3339()}).to_string();
            let own = dir.clone().join(claim_name(epoch));
            match store.put_if_absent(&own, PutPayload::from(body)).await {
                Ok(()) => {
                    tracing::info!(epoch, "claimed the graph's writer epoch");
                    // The claims this one supersedes fence their workers as
                    // well as ours does: keep only ours.
                    for (_, path) in claims.iter().filter(|(n, _)| *n < epoch) {
                        if let Err(e) = store.delete(path).await {
                            tracing::debug!(path = %path, error = %e, "could not delete a superseded writer claim");
                        }
                    }
                    return Ok(WriterFence { store, epoch, dir, own, fenced: AtomicBool::new(false), on_fenced: tokio::sync::Notify::new() });
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

    /// Stops the server (as a fence would) without claiming to be fenced:
    /// for a worker that can no longer tell whether it owns the graph, so a
    /// restart (and the repair at open) takes over instead of a worker that
    /// refuses every write until someone restarts it.
    pub fn give_up(&self) {
        self.on_fenced.notify_one();
    }

    /// Refuses when a newer worker has claimed the graph (and remembers it:
    /// once fenced, always fenced).
    pub async fn check(&self) -> Result<(), StoreError> {
        if !self.fenced.load(Ordering::Acquire) {
            // Claims sort by epoch (fixed-width names), so a newer one lists
            // after ours; each listed name is still read as a number, so a
            // store that ignores the offset, or a stray object, fences nobody.
            let mut listing = self.store.inner.list_with_offset(Some(&self.dir), &self.own);
            let mut newer = None;
            while let Some(item) = listing.next().await {
                match item {
                    Ok(meta) if meta.location.filename().and_then(|f| f.parse::<u64>().ok()).is_some_and(|n| n > self.epoch) => {
                        newer = Some(Ok(()));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        newer = Some(Err(e));
                        break;
                    }
                }
            }
            match newer {
                None => return Ok(()),
                Some(Ok(())) => {
                    self.fenced.store(true, Ordering::Release);
                    tracing::error!(epoch = self.epoch, "a newer worker claimed this graph: this worker stops writing and shuts down");
                    self.on_fenced.notify_one();
                }
                // Unknown is not safe to write under.
                Some(Err(e)) => return Err(StoreError::Io(format!("check the writer epoch: {e}"))),
            }
        }
        Err(StoreError::Fenced(self.epoch))
    }
}

/// Every claim under `dir`: its epoch and path.
async fn claims(store: &ObjectStore, dir: &ObjectPath) -> Result<Vec<(u64, ObjectPath)>, StoreError> {
    let mut out = Vec::new();
    let mut listing = store.list(Some(dir.clone()));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| StoreError::Io(format!("list {WRITERS_DIR}: {e}")))?;
        if let Some(n) = meta.location.filename().and_then(|f| f.parse::<u64>().ok()) {
            out.push((n, meta.location));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> ObjectPath {
        ObjectPath::from("graphs/g")
    }

    #[tokio::test]
    async fn a_newer_claim_fences_the_older_worker_for_good_and_strays_fence_nobody() {
        let store = Arc::new(ObjectStore::memory());
        let old = WriterFence::claim(store.clone(), &root(), "old").await.unwrap();
        old.check().await.unwrap();
        // A stray object in `_writers/` that is not a claim fences nobody.
        store.put(&root().join(WRITERS_DIR).join("zzz-not-a-claim"), b"x").await.unwrap();
        old.check().await.unwrap();
        let new = WriterFence::claim(store.clone(), &root(), "new").await.unwrap();
        assert!(new.epoch() > old.epoch());
        assert!(matches!(old.check().await, Err(StoreError::Fenced(e)) if e == old.epoch()));
        new.check().await.unwrap();
        // The superseded claim is gone; the old worker stays fenced.
        assert!(!store.exists(&root().join(WRITERS_DIR).join(claim_name(old.epoch()))).await.unwrap());
        assert!(old.check().await.is_err());
    }

    #[tokio::test]
    async fn epochs_keep_rising_after_the_claims_are_purged() {
        let store = Arc::new(ObjectStore::memory());
        let old = WriterFence::claim(store.clone(), &root(), "old").await.unwrap();
        store.delete(&root().join(WRITERS_DIR).join(claim_name(old.epoch()))).await.unwrap();
        // With no claim left, only the clock orders epochs: a later claim
        // (here a few ms; across hosts, clocks that agree) is a newer one.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let new = WriterFence::claim(store.clone(), &root(), "new").await.unwrap();
        assert!(new.epoch() > old.epoch());
        assert!(old.check().await.is_err(), "a worker whose claim was purged is still fenced by the next one");
    }
}
