//! The graphs the gateway serves: one entry per graph, read lock-free on
//! every request (`DashMap` of `Arc` entries, `ArcSwap` inside).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use omnigraph_worker::contract::{BranchName, GraphId};
use serde::Serialize;

use crate::authz::ActionSets;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Starting (or restarting) its worker.
    Starting,
    /// Its worker is serving.
    Up,
    /// Its worker crashed and is waiting for the next restart.
    Down,
    /// Its worker could not start; retried with backoff.
    Failed,
    /// Being removed.
    Stopping,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Up => "up",
            Status::Down => "down",
            Status::Failed => "failed",
            Status::Stopping => "stopping",
        }
    }
}

/// The live state of a graph's worker, swapped as a whole.
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub status: Status,
    /// The key this worker was started with (`OMNIGRAPH_WORKER_KEY`).
    pub key: Option<Arc<str>>,
    pub pid: Option<i32>,
    pub error: Option<String>,
    pub restarts: u64,
}

pub struct GraphEntry {
    pub id: GraphId,
    /// The URI as configured, shown to users.
    pub uri: String,
    /// The URI resolved against the config folder (absolute for local paths).
    pub resolved_uri: String,
    /// The URI as a comparable key (see `config::canonical_uri`).
    pub canonical_uri: String,
    pub tenant: Option<String>,
    pub protected_branches: Vec<BranchName>,
    pub policy_file: Option<PathBuf>,
    pub schema_file: Option<PathBuf>,
    pub socket: PathBuf,
    /// Server policies ∪ this graph's policies, sliced by action.
    pub policies: ArcSwap<ActionSets>,
    pub state: ArcSwap<WorkerState>,
}

impl GraphEntry {
    pub fn status(&self) -> Status {
        self.state.load().status
    }

    pub fn is_protected(&self, branch: &BranchName) -> bool {
        self.protected_branches.iter().any(|b| b == branch)
    }

    pub fn set_state(&self, f: impl FnOnce(&mut WorkerState)) {
        let mut s = WorkerState::clone(&self.state.load());
        f(&mut s);
        self.state.store(Arc::new(s));
    }
}

#[derive(Default)]
pub struct Registry {
    graphs: DashMap<GraphId, Arc<GraphEntry>>,
    /// Ids and canonical URIs of graphs being created, not yet published.
    pending: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A graph id and URI held for one `POST /graphs`; released on drop.
pub struct Reservation<'a> {
    registry: &'a Registry,
    keys: [String; 2],
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.registry.pending.lock() {
            for k in &self.keys {
                p.remove(k);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReserveError {
    Id,
    Uri,
}

impl Registry {
    pub fn get(&self, id: &GraphId) -> Option<Arc<GraphEntry>> {
        self.graphs.get(id).map(|e| e.value().clone())
    }

    pub fn insert(&self, entry: Arc<GraphEntry>) {
        self.graphs.insert(entry.id.clone(), entry);
    }

    pub fn remove(&self, id: &GraphId) -> Option<Arc<GraphEntry>> {
        self.graphs.remove(id).map(|(_, e)| e)
    }

    /// All entries, sorted by id.
    pub fn list(&self) -> Vec<Arc<GraphEntry>> {
        let mut v: Vec<_> = self.graphs.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Reserves `id` and `canonical_uri` against published graphs and other
    /// creations in flight. Exactly one of many concurrent callers wins.
    pub fn reserve(&self, id: &GraphId, canonical_uri: &str) -> Result<Reservation<'_>, ReserveError> {
        let mut pending = self.pending.lock().map_err(|_| ReserveError::Id)?;
        let (kid, kuri) = (format!("id:{id}"), format!("uri:{canonical_uri}"));
        if self.graphs.contains_key(id) || pending.contains(&kid) {
            return Err(ReserveError::Id);
        }
        if self.graphs.iter().any(|e| e.canonical_uri == canonical_uri) || pending.contains(&kuri) {
            return Err(ReserveError::Uri);
        }
        pending.insert(kid.clone());
        pending.insert(kuri.clone());
        Ok(Reservation { registry: self, keys: [kid, kuri] })
    }

    /// Ready when every graph is up or has definitively failed.
    pub fn ready(&self) -> bool {
        self.graphs.iter().all(|e| matches!(e.status(), Status::Up | Status::Failed))
    }
}
