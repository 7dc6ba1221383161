//! `POST /graphs` and `DELETE /graphs/{id}`: adding and removing graphs at
//! run time without ever losing a graph, a hand edit, or data this request
//! did not create.
//!
//! Create, in order: validate → reserve the id and URI (a concurrent
//! duplicate gets 409) → journal the attempt → initialise the storage with a
//! worker (`--init` refuses a non-empty URI) and wait until it is ready →
//! write the policy file, if given as source → rewrite `omnigraph.yaml`
//! (drift-checked, duplicates re-checked on disk) → publish. Any failure
//! undoes exactly what this request created, and the YAML stays untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use omnigraph_worker::contract::{ErrorCode, GraphId, GraphSchema};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::config::{canonical_uri, FileRef, GraphSection};
use crate::config_store::{write_atomically, RewriteError};
use crate::registry::{ReserveError, Status};
use crate::supervisor::{stop_group_blocking, uri_is_empty};

/// `POST /graphs` bodies above this get 413.
pub const CREATE_BODY_LIMIT: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Drift(String),
    #[error("{0}")]
    Internal(String),
}

impl LifecycleError {
    pub fn code(&self) -> ErrorCode {
        match self {
            LifecycleError::BadRequest(_) => ErrorCode::BadRequest,
            LifecycleError::Conflict(_) => ErrorCode::Conflict,
            LifecycleError::NotFound(_) => ErrorCode::NotFound,
            LifecycleError::Drift(_) => ErrorCode::ConfigDrift,
            LifecycleError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl<E: Into<LifecycleError>> From<RewriteError<E>> for LifecycleError {
    fn from(e: RewriteError<E>) -> LifecycleError {
        match e {
            RewriteError::Drift(path) => LifecycleError::Drift(crate::config_store::drift_message(&path)),
            RewriteError::Io(m) => LifecycleError::Internal(m),
            RewriteError::Rejected(e) => e.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub graph_id: String,
    pub uri: String,
    pub schema: SchemaSource,
    #[serde(default)]
    pub policy: Option<PolicySource>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub protected_branches: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSource {
    pub source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySource {
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

/// A record of a create in progress, so a crash mid-create leaves a trace
/// that `omnigraph-gateway graphs orphans` can report.
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingCreate {
    pub graph_id: String,
    pub uri: String,
    pub started_at_unix: u64,
}

pub fn pending_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("pending")
}

/// What this request created, to remove on failure and nothing more.
#[derive(Default)]
struct Undo {
    /// The graph folder, when this request created it (exclusively, under the URI lock).
    created_dir: Option<PathBuf>,
    /// Parent folders this request created, deepest first. They are removed
    /// only if still empty: a concurrent create may have put its graph there.
    created_parents: Vec<PathBuf>,
    /// A folder that existed empty: only its contents are ours.
    emptied_dir: Option<PathBuf>,
    files: Vec<PathBuf>,
    worker_pid: Option<i32>,
}

impl Undo {
    fn run(self) {
        if let Some(pid) = self.worker_pid {
            stop_group_blocking(pid);
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(d) = &self.created_dir {
            if let Err(e) = std::fs::remove_dir_all(d) {
                tracing::warn!(dir = %d.display(), error = %e, "could not remove a folder this failed create made");
            }
        }
        for p in &self.created_parents {
            // Non-recursive on purpose: never remove what someone else put there.
            let _ = std::fs::remove_dir(p);
        }
        if let Some(d) = &self.emptied_dir {
            if let Ok(entries) = std::fs::read_dir(d) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }
        }
    }
}

fn bad(m: impl Into<String>) -> LifecycleError {
    LifecycleError::BadRequest(m.into())
}

/// Handles `POST /graphs` with an already-authorized, fully read body.
pub async fn create(state: &Arc<AppState>, body: &[u8]) -> Result<Value, LifecycleError> {
    let req: CreateRequest = serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))?;
    let id = GraphId::parse(&req.graph_id).map_err(|e| bad(e.to_string()))?;
    GraphSchema::parse(&req.schema.source).map_err(|e| bad(format!("invalid schema: {}", e.render("schema", &req.schema.source))))?;
    if req.uri.trim().is_empty() {
        return Err(bad("uri is empty"));
    }
    if crate::config::local_path(&req.uri).is_none() {
        return Err(bad(format!("uri {:?}: only local paths are supported by this build", req.uri)));
    }
    let cfg_dir = state.config.dir.clone();
    let policy_label = format!("{id}.cedar");
    let (own, policy_ref, policy_source) = match &req.policy {
        None => (Vec::new(), None, None),
        Some(PolicySource { source: Some(src), file: None }) => {
            let own = state.engine.parse_file(&policy_label, src).map_err(|e| bad(format!("invalid policy: {}", e.rendered)))?;
            (own, Some(FileRef { file: format!("policies/{policy_label}") }), Some(src.clone()))
        }
        Some(PolicySource { file: Some(f), source: None }) => {
            let own = state.engine.parse_path(&state.config.resolve(f)).map_err(|e| bad(format!("invalid policy: {}", e.rendered)))?;
            (own, Some(FileRef { file: f.clone() }), None)
        }
        Some(_) => return Err(bad("policy takes exactly one of \"file\" or \"source\"")),
    };
    let section = GraphSection { uri: req.uri.clone(), tenant: req.tenant.clone(), protected_branches: req.protected_branches.clone(), policy: policy_ref, schema: None };
    let canonical = canonical_uri(&cfg_dir, &req.uri);
    let _reservation = state.registry.reserve(&id, &canonical).map_err(|e| match e {
        ReserveError::Id => LifecycleError::Conflict(format!("graph {:?} already exists", id.as_str())),
        ReserveError::Uri => LifecycleError::Conflict(format!("another graph already uses the URI {:?}", req.uri)),
    })?;
    let _claim = claim_uri(&cfg_dir, &canonical)?;
    // Validates the policy against the live server policies too (duplicate @id).
    let mut entry = state.graph_entry(id.as_str(), &section, &own).map_err(|e| bad(e.to_string()))?;
    let data_dir = PathBuf::from(&entry.resolved_uri);
    if !uri_is_empty(&entry.resolved_uri) {
        return Err(LifecycleError::Conflict(format!("the URI {:?} is not empty; a new graph needs an empty location", req.uri)));
    }
    let policy_path = policy_source.as_ref().map(|_| cfg_dir.join("policies").join(&policy_label));
    if policy_path.as_ref().is_some_and(|p| p.exists()) {
        return Err(LifecycleError::Conflict(format!("policies/{policy_label} already exists; pass the policy as {{\"file\": ...}} or remove it")));
    }

    let pending = pending_dir(&state.runtime_dir);
    let journal = pending.join(format!("{id}.json"));
    let record = PendingCreate { graph_id: id.to_string(), uri: entry.resolved_uri.clone(), started_at_unix: crate::authn::now_unix() };
    std::fs::create_dir_all(&pending).map_err(|e| LifecycleError::Internal(format!("create {}: {e}", pending.display())))?;
    write_atomically(&journal, &serde_json::to_vec(&record).unwrap_or_default()).map_err(|e| LifecycleError::Internal(format!("journal: {e}")))?;

    let mut undo = Undo::default();
    let result = async {
        // Storage: make the folder ourselves first, so an unwritable URI is a clear 400.
        if data_dir.exists() {
            undo.emptied_dir = Some(data_dir.clone());
        } else {
            let cannot = |e: std::io::Error| bad(format!("cannot create the URI {:?}: {e}", req.uri));
            if let Some(parent) = data_dir.parent() {
                undo.created_parents = missing_ancestors(parent);
                std::fs::create_dir_all(parent).map_err(cannot)?;
            }
            // Exclusive: if it appeared meanwhile, it is not ours.
            std::fs::create_dir(&data_dir).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    LifecycleError::Conflict(format!("the URI {:?} appeared while creating the graph", req.uri))
                } else {
                    cannot(e)
                }
            })?;
            undo.created_dir = Some(data_dir.clone());
        }
        let schema_file = state.runtime_dir.join(format!("{id}.create.pg"));
        write_atomically(&schema_file, req.schema.source.as_bytes()).map_err(|e| LifecycleError::Internal(format!("schema temp file: {e}")))?;
        undo.files.push(schema_file.clone());
        entry.schema_file = Some(schema_file);
        let running = state.supervisor.start(&entry).await.map_err(|e| LifecycleError::Internal(format!("the worker failed to start: {e}")))?;
        undo.worker_pid = Some(running.pid);
        if let (Some(p), Some(src)) = (&policy_path, &policy_source) {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| LifecycleError::Internal(format!("policies folder: {e}")))?;
            }
            write_atomically(p, src.as_bytes()).map_err(|e| LifecycleError::Internal(format!("write policy: {e}")))?;
            undo.files.push(p.clone());
        }
        let store = state.config_store.clone();
        let (gid, sec, canon, dir) = (id.to_string(), section.clone(), canonical.clone(), cfg_dir.clone());
        tokio::task::spawn_blocking(move || {
            store.rewrite(|cfg| {
                if cfg.graphs.contains_key(&gid) {
                    return Err(LifecycleError::Conflict(format!("graph {gid:?} already exists in the config file")));
                }
                if cfg.graphs.values().any(|g| canonical_uri(&dir, &g.uri) == canon) {
                    return Err(LifecycleError::Conflict("another graph in the config file already uses this URI".to_string()));
                }
                cfg.graphs.insert(gid.clone(), sec);
                Ok(())
            })
        })
        .await
        .map_err(|e| LifecycleError::Internal(format!("config task: {e}")))??;
        Ok::<_, LifecycleError>(running)
    }
    .await;
    let _ = std::fs::remove_file(&journal);
    match result {
        Ok(running) => {
            // The schema temp file was only for --init.
            if let Some(s) = entry.schema_file.take() {
                let _ = std::fs::remove_file(s);
            }
            let entry = Arc::new(entry);
            entry.set_state(|s| {
                s.status = Status::Up;
                s.pid = Some(running.pid);
            });
            state.registry.insert(entry.clone());
            tokio::spawn(state.supervisor.clone().supervise(entry.clone(), Some(running)));
            tracing::info!(graph = %id, uri = %req.uri, "graph created");
            Ok(json!({"graph_id": id.as_str(), "uri": req.uri, "status": "up"}))
        }
        Err(e) => {
            tracing::warn!(graph = %id, error = %e, "graph create failed; undoing what it made");
            tokio::task::spawn_blocking(move || undo.run()).await.ok();
            Err(e)
        }
    }
}

/// `dir` and its ancestors that do not exist yet, deepest first.
fn missing_ancestors(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        out.push(d.to_path_buf());
        cur = d.parent();
    }
    out
}

/// Holds the cross-process claim on a URI for the length of one create: an
/// exclusive `flock` on `<config dir>/.omnigraph-create-locks/<hash>.lock`.
/// Two gateways sharing a config share these files, so they cannot both
/// initialise one URI; a crash releases the lock with the process.
struct UriClaim(#[allow(dead_code)] std::fs::File);

fn claim_uri(cfg_dir: &Path, canonical: &str) -> Result<UriClaim, LifecycleError> {
    use sha2::Digest;
    let dir = cfg_dir.join(".omnigraph-create-locks");
    std::fs::create_dir_all(&dir).map_err(|e| LifecycleError::Internal(format!("create {}: {e}", dir.display())))?;
    let name = hex::encode(&sha2::Sha256::digest(canonical.as_bytes())[..16]);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{name}.lock")))
        .map_err(|e| LifecycleError::Internal(format!("URI lock: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(UriClaim(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(LifecycleError::Conflict("another create is using this URI right now".into())),
        Err(std::fs::TryLockError::Error(e)) => Err(LifecycleError::Internal(format!("URI lock: {e}"))),
    }
}

/// Handles `DELETE /graphs/{id}` (already authorized).
pub async fn delete(state: &Arc<AppState>, id: &GraphId, purge: bool) -> Result<Value, LifecycleError> {
    let entry = state.registry.get(id).ok_or_else(|| LifecycleError::NotFound(format!("graph {:?} does not exist", id.as_str())))?;
    let store = state.config_store.clone();
    let e2 = entry.clone();
    let gid = id.to_string();
    // Drift check, stopping the worker and removing the entry: one critical section.
    let rewritten = tokio::task::spawn_blocking(move || {
        store.rewrite(|cfg| {
            e2.set_state(|s| s.status = Status::Stopping);
            if let Some(pid) = e2.state.load().pid {
                stop_group_blocking(pid);
            }
            if cfg.graphs.remove(&gid).is_none() {
                tracing::warn!(graph = %gid, "graph was not in the config file; removing it from the gateway only");
            }
            Ok::<_, LifecycleError>(())
        })
    })
    .await
    .map_err(|e| LifecycleError::Internal(format!("config task: {e}")))?;
    if let Err(e) = rewritten {
        if entry.status() == Status::Stopping {
            // The worker was stopped but the file could not be written: serve the graph again.
            entry.set_state(|s| s.status = Status::Starting);
            tokio::spawn(state.supervisor.clone().supervise(entry.clone(), None));
        }
        return Err(e.into());
    }
    state.registry.remove(id);
    let mut purged = false;
    if purge {
        if crate::config::local_path(&entry.resolved_uri).is_none() {
            return Err(LifecycleError::BadRequest("purge only works for local paths".into()));
        }
        match std::fs::remove_dir_all(&entry.resolved_uri) {
            Ok(()) => purged = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => purged = true,
            Err(e) => return Err(LifecycleError::Internal(format!("the graph was removed from the config, but purging {} failed: {e}", entry.uri))),
        }
    }
    tracing::info!(graph = %id, purged, "graph deleted");
    Ok(json!({"graph_id": id.as_str(), "uri": entry.uri, "status": "deleted", "purged": purged}))
}

/// Create attempts that a crash interrupted: journaled, but not in the config.
pub fn orphans(runtime_dir: &Path, configured: &std::collections::BTreeMap<String, GraphSection>) -> Vec<(PendingCreate, bool)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(pending_dir(runtime_dir)) else { return out };
    for e in dir.flatten() {
        let Ok(bytes) = std::fs::read(e.path()) else { continue };
        let Ok(p) = serde_json::from_slice::<PendingCreate>(&bytes) else { continue };
        if !configured.contains_key(&p.graph_id) {
            let has_data = Path::new(&p.uri).exists();
            out.push((p, has_data));
        }
    }
    out.sort_by(|a, b| a.0.graph_id.cmp(&b.0.graph_id));
    out
}
