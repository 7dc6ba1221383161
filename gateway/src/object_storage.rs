//! What the gateway does to a graph's objects on object storage: ask whether
//! a prefix is empty (before a create) and delete a graph's prefix (a purge,
//! or the undo of a failed create). Each runs `omnigraph-worker storage`
//! with the workers' environment, so the gateway links no object-store
//! client and object storage is reached by one code path, the worker's.

use std::time::Duration;

use serde::Deserialize;

use crate::supervisor::Supervisor;

/// How long one storage command may run. A purge of a large graph lists and
/// deletes in pages; past this the command is killed and the purge reported
/// as failed (running it again finishes it).
const STORAGE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the storage command could not run: {0}")]
    Spawn(std::io::Error),
    #[error("the storage command took longer than {0:?}")]
    Timeout(Duration),
    /// The worker's own words go to the log, not to a client.
    #[error("the storage command failed (the gateway's log says why)")]
    Failed,
}

#[derive(Deserialize)]
struct EmptyAnswer {
    empty: bool,
}

#[derive(Deserialize)]
struct PurgeAnswer {
    deleted: u64,
}

/// True when no object lies under `uri`.
pub async fn is_empty(sup: &Supervisor, uri: &str) -> Result<bool, StorageError> {
    Ok(run::<EmptyAnswer>(sup, "empty", uri).await?.empty)
}

/// Deletes every object under `uri` (whole segments only); returns how many.
pub async fn purge(sup: &Supervisor, uri: &str) -> Result<u64, StorageError> {
    Ok(run::<PurgeAnswer>(sup, "purge", uri).await?.deleted)
}

async fn run<T: for<'de> Deserialize<'de>>(sup: &Supervisor, op: &str, uri: &str) -> Result<T, StorageError> {
    let child = sup.storage_command(op, uri).spawn().map_err(StorageError::Spawn)?;
    let out = tokio::time::timeout(STORAGE_TIMEOUT, child.wait_with_output()).await.map_err(|_| StorageError::Timeout(STORAGE_TIMEOUT))?.map_err(StorageError::Spawn)?;
    let answer = out.status.success().then(|| serde_json::from_slice::<T>(&out.stdout).ok()).flatten();
    answer.ok_or_else(|| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        tracing::error!(op, uri, status = %out.status, stderr = %stderr.trim(), "omnigraph-worker storage failed");
        StorageError::Failed
    })
}
