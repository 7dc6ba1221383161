//! The registry of graphs that outlives the gateway: a `Catalog` with two
//! backends. [`YamlCatalog`] is `omnigraph.yaml` on one host (the embedded
//! default); `etcd_catalog::EtcdCatalog` is an etcd v3 prefix that several
//! stateless gateways share. `POST /graphs` and `DELETE /graphs/{id}` go
//! through this trait only, so both backends give the same answers.

use std::sync::Arc;

use async_trait::async_trait;
use omnigraph_contract::GraphId;
use serde::{Deserialize, Serialize};

use crate::config::{canonical_uri, uris_overlap, GraphSection};
use crate::config_store::{ConfigStore, RewriteError};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The id is taken.
    #[error("{0}")]
    Conflict(String),
    /// The storage equals, contains or lies inside another graph's (or a
    /// reservation's); which one is not said.
    #[error("the URI overlaps the storage of another graph (the same folder, or one inside the other)")]
    Overlap,
    /// The id is not in the catalog.
    #[error("{0}")]
    NotFound(String),
    /// The file changed under the gateway (YAML only).
    #[error("{0}")]
    Drift(String),
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(String),
    /// The catalog could not be reached or answered wrongly; nothing changed
    /// that the caller must undo beyond its own work.
    #[error("{0}")]
    Unavailable(String),
}

/// One graph as a shared catalog stores it: its section, the key its
/// storage is compared by, and its own Cedar policies as text, so every
/// gateway decides its requests from the very same policies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub section: GraphSection,
    pub canonical_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_source: Option<String>,
}

/// A running worker as a shared catalog registers it: where it listens
/// (a Unix socket on one host) and the key it accepts, held under the
/// lease of the gateway that runs it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub gateway: String,
    pub address: String,
    pub key: String,
}

impl std::fmt::Debug for Registration {
    // The key is a secret: never in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("gateway", &self.gateway).field("address", &self.address).finish_non_exhaustive()
    }
}

/// A change another gateway (or this one) made to a shared catalog.
#[derive(Debug, Clone)]
pub enum CatalogEvent {
    Published { id: String, entry: CatalogEntry },
    Removed { id: String },
    /// A graph's worker registration changed; `None`: no worker is registered.
    Worker { id: String, revision: i64, registration: Option<Registration> },
    /// The whole catalog, first and again whenever the event stream had to
    /// restart (a compaction, a lost connection): the receiver makes its
    /// graphs and registrations exactly these (`revision` per registration).
    Snapshot { graphs: Vec<(String, CatalogEntry)>, workers: Vec<(String, i64, Registration)>, revision: i64 },
}

#[async_trait]
pub trait Catalog: Send + Sync {
    /// Every graph in the catalog.
    async fn list(&self) -> Result<Vec<(String, CatalogEntry)>, CatalogError>;
    /// Holds `id` and the storage `canonical_uri` for one create. Exactly one
    /// of many concurrent callers (on any gateway) wins an id; the storage
    /// may not equal, contain or lie inside another graph's or reservation's.
    async fn reserve(&self, id: &GraphId, canonical_uri: &str) -> Result<(), CatalogError>;
    /// Gives up a reservation that did not become a graph.
    async fn release(&self, id: &GraphId);
    /// Turns this caller's reservation into a catalog entry, with its running
    /// worker's registration where workers are shared.
    async fn publish(&self, id: &GraphId, entry: &CatalogEntry, worker: Option<&Registration>) -> Result<(), CatalogError>;
    /// Removes a graph; `during` runs inside the same critical section, once
    /// the removal is certain to be written (it stops the local worker). The
    /// id and `canonical_uri` stay reserved until [`Catalog::release`], so a
    /// purge that follows never races a create of the same storage.
    async fn remove(&self, id: &GraphId, canonical_uri: &str, during: Box<dyn FnOnce() + Send>) -> Result<(), CatalogError>;
    /// Streams the catalog's changes into `events` until the receiver is
    /// dropped: first a [`CatalogEvent::Snapshot`], then every change any
    /// gateway makes. The file has one writer, this gateway, so it sends nothing.
    async fn watch(self: Arc<Self>, events: tokio::sync::mpsc::Sender<CatalogEvent>);
    /// Whether other gateways share this catalog (and its events must be watched).
    fn is_shared(&self) -> bool;
}

/// `omnigraph.yaml` as the catalog: every change is a drift-checked
/// read-modify-write of the file (config_store.rs). Reservations are the
/// gateway's own (the registry and the per-URI lock): one file has one writer host.
pub struct YamlCatalog {
    pub store: Arc<ConfigStore>,
    pub config_dir: std::path::PathBuf,
}

fn rewrite_error(e: RewriteError<CatalogError>) -> CatalogError {
    match e {
        RewriteError::Drift(path) => CatalogError::Drift(crate::config_store::drift_message(&path)),
        RewriteError::Io(m) => CatalogError::Io(m),
        RewriteError::Rejected(e) => e,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, CatalogError> + Send + 'static) -> Result<T, CatalogError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CatalogError::Io(format!("background task: {e}")))?
}

#[async_trait]
impl Catalog for YamlCatalog {
    async fn list(&self) -> Result<Vec<(String, CatalogEntry)>, CatalogError> {
        let (path, dir) = (self.store.path().to_path_buf(), self.config_dir.clone());
        blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| CatalogError::Io(format!("read {}: {e}", path.display())))?;
            let cfg = crate::config::parse(&path, &bytes).map_err(|e| CatalogError::Io(e.to_string()))?;
            Ok(cfg
                .graphs
                .into_iter()
                .map(|(id, section)| {
                    let canonical_uri = canonical_uri(&dir, &section.uri);
                    (id, CatalogEntry { section, canonical_uri, policy_source: None })
                })
                .collect())
        })
        .await
    }

    async fn reserve(&self, _id: &GraphId, _canonical_uri: &str) -> Result<(), CatalogError> {
        Ok(())
    }

    async fn release(&self, _id: &GraphId) {}

    async fn publish(&self, id: &GraphId, entry: &CatalogEntry, _worker: Option<&Registration>) -> Result<(), CatalogError> {
        let (store, dir, gid, entry) = (self.store.clone(), self.config_dir.clone(), id.to_string(), entry.clone());
        blocking(move || {
            store
                .rewrite(|cfg| {
                    if cfg.graphs.contains_key(&gid) {
                        return Err(CatalogError::Conflict(format!("graph {gid:?} already exists in the config file")));
                    }
                    // Inside the lock: what another gateway wrote meanwhile counts too.
                    if cfg.graphs.values().any(|g| uris_overlap(&canonical_uri(&dir, &g.uri), &entry.canonical_uri)) {
                        return Err(CatalogError::Conflict("the URI overlaps the storage of another graph in the config file".to_string()));
                    }
                    cfg.graphs.insert(gid.clone(), entry.section);
                    Ok(())
                })
                .map_err(rewrite_error)
        })
        .await
    }

    async fn remove(&self, id: &GraphId, _canonical_uri: &str, during: Box<dyn FnOnce() + Send>) -> Result<(), CatalogError> {
        let (store, gid) = (self.store.clone(), id.to_string());
        blocking(move || {
            store
                .rewrite(|cfg| {
                    during();
                    if cfg.graphs.remove(&gid).is_none() {
                        tracing::warn!(graph = %gid, "graph was not in the config file; removing it from the gateway only");
                    }
                    Ok::<_, CatalogError>(())
                })
                .map_err(rewrite_error)
        })
        .await
    }

    async fn watch(self: Arc<Self>, _events: tokio::sync::mpsc::Sender<CatalogEvent>) {}

    fn is_shared(&self) -> bool {
        false
    }
}
