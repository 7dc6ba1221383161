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

use omnigraph_contract::{BranchName, ErrorCode, GraphId, GraphSchema};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::catalog::{CatalogEntry, CatalogError, Registration};
use crate::config::{uris_overlap, FileRef, GraphSection};
use crate::containment::{read_policy_file, resolve_physical, ContainmentError};
use crate::config_store::{write_atomically, RewriteError};
use crate::registry::{GraphEntry, ReserveError};
use crate::object_storage;
use crate::supervisor::{stop_group_blocking, uri_is_empty, Supervisor};
use omnigraph_contract::object_uri::ObjectUri;

/// `POST /graphs` bodies above this get 413 (DESIGN.md section 2).
pub const CREATE_BODY_LIMIT: usize = 1024 * 1024;

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
    Busy(String),
    /// The shared catalog is unreachable (503, retry).
    #[error("{0}")]
    Unavailable(String),
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
            LifecycleError::Busy(_) => ErrorCode::TooManyRequests,
            LifecycleError::Unavailable(_) => ErrorCode::WorkerUnavailable,
            LifecycleError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<ContainmentError> for LifecycleError {
    fn from(e: ContainmentError) -> LifecycleError {
        match e {
            ContainmentError::Outside(m) | ContainmentError::Unusable(m) => LifecycleError::BadRequest(m),
            ContainmentError::Overlap(m) => LifecycleError::Conflict(m),
        }
    }
}

impl From<CatalogError> for LifecycleError {
    fn from(e: CatalogError) -> LifecycleError {
        match e {
            CatalogError::Conflict(m) => LifecycleError::Conflict(m),
            e @ CatalogError::Overlap => LifecycleError::Conflict(e.to_string()),
            CatalogError::NotFound(m) => LifecycleError::NotFound(m),
            CatalogError::Drift(m) => LifecycleError::Drift(m),
            CatalogError::Io(m) => LifecycleError::Internal(m),
            CatalogError::Unavailable(m) => LifecycleError::Unavailable(m),
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
    /// An object-store prefix that was empty when this create began: all
    /// of it is ours to delete.
    objects: Option<(Arc<Supervisor>, String)>,
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
        if let Some((sup, uri)) = &self.objects {
            // `run` is on a blocking thread; the purge is one short-lived child process.
            let purged = tokio::runtime::Handle::try_current().map(|h| h.block_on(object_storage::purge(sup, uri)));
            if !matches!(purged, Ok(Ok(_))) {
                tracing::warn!(uri = %uri, "could not delete the objects this failed create wrote; purge the prefix by hand");
            }
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

fn not_empty(uri: &str) -> LifecycleError {
    LifecycleError::Conflict(format!("the URI {uri:?} is not empty; a new graph needs an empty location"))
}

fn storage_failed(e: object_storage::StorageError) -> LifecycleError {
    LifecycleError::Internal(format!("object storage: {e}"))
}

fn bad(m: impl Into<String>) -> LifecycleError {
    LifecycleError::BadRequest(m.into())
}

/// What Cedar sees of a `POST /graphs` body before anything is validated:
/// the id and tenant asked for, as sent.
#[derive(Debug, Default)]
pub struct Requested {
    pub graph: Option<String>,
    pub tenant: Option<String>,
}

/// Parses a `POST /graphs` body just far enough to authorize it. Only a body
/// that is not a JSON object is refused here; everything else is checked
/// after Cedar has allowed the request, so a caller who may not create
/// graphs learns nothing from validation errors.
pub fn requested(body: &[u8]) -> Result<(Value, Requested), LifecycleError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))?;
    if !v.is_object() {
        return Err(bad("invalid body: expected a JSON object"));
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let r = Requested { graph: text("graph_id"), tenant: text("tenant") };
    Ok((v, r))
}

/// A create request after validation, ready to run.
struct Validated {
    id: GraphId,
    req: CreateRequest,
    section: GraphSection,
    /// The graph's own policies, parsed and validated.
    own: Vec<cedar_policy::Policy>,
    /// The policy source to write into the policy folder, with its path.
    policy_write: Option<(PathBuf, String)>,
    /// The policy text a shared catalog stores with the graph (instead of a file).
    policy_source: Option<String>,
    storage: Storage,
    canonical: String,
}

/// Where a new graph's data goes, checked against the fences.
#[derive(Clone)]
enum Storage {
    /// A local folder, resolved as the kernel would (see `containment`).
    Local(PathBuf),
    /// A prefix under one of `server.object_store.roots`.
    Object(ObjectUri),
}

/// Everything `POST /graphs` checks before it touches anything: the body's
/// shape, the id, the schema, the URI's containment, the policy (read with
/// a cap from inside the policy folder). CPU and file work: runs on a
/// blocking thread, never on the proxy's.
fn validate(state: &AppState, body: Value) -> Result<Validated, LifecycleError> {
    let req: CreateRequest = serde_json::from_value(body).map_err(|e| bad(format!("invalid body: {e}")))?;
    let id = GraphId::parse(&req.graph_id).map_err(|e| bad(e.to_string()))?;
    GraphSchema::parse(&req.schema.source).map_err(|e| bad(format!("invalid schema: {}", e.render("schema", &req.schema.source))))?;
    if req.uri.trim().is_empty() {
        return Err(bad("uri is empty"));
    }
    let storage = match crate::config::local_path(&req.uri) {
        Some(local) => {
            let cfg_dir = &state.config.dir;
            let data_dir = resolve_physical(&crate::config::resolve_in(cfg_dir, local)).map_err(|e| bad(format!("the URI {:?} cannot be used: {e}", req.uri)))?;
            state.fences.check_graph_dir(&data_dir, &req.uri)?;
            Storage::Local(data_dir)
        }
        None => Storage::Object(state.fences.check_object_uri(&req.uri)?),
    };
    let policy_dir = Path::new(&state.config.config.server.policy_dir);
    let label = format!("{id}.cedar");
    let (own, mut policy_ref, mut policy_write, policy_text) = match &req.policy {
        None => (Vec::new(), None, None, None),
        Some(PolicySource { source: Some(src), file: None }) => {
            let own = state.engine.parse_file(&label, src).map_err(|e| bad(format!("invalid policy: {}", e.rendered)))?;
            let target = state.fences.policy_dir.join(&label);
            (own, Some(FileRef { file: policy_dir.join(&label).display().to_string() }), Some((target, src.clone())), Some(src.clone()))
        }
        Some(PolicySource { file: Some(f), source: None }) => {
            let path = state.fences.check_policy_file(&state.config.resolve(f), f)?;
            let src = read_policy_file(&path, f)?;
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("policy").to_string();
            // The file is not the client's to read: its text never comes back.
            let own = state.engine.parse_file(&name, &src).map_err(|e| bad(format!("invalid policy: {}", e.without_source())))?;
            (own, Some(FileRef { file: f.clone() }), None, Some(src))
        }
        Some(_) => return Err(bad("policy takes exactly one of \"file\" or \"source\"")),
    };
    for b in &req.protected_branches {
        BranchName::parse(b).map_err(|e| bad(e.to_string()))?;
    }
    // A shared catalog holds the policy text itself, so every gateway
    // decides the graph from the same policies; no file is written or named.
    let policy_source = if state.is_shared() {
        policy_ref = None;
        policy_write = None;
        policy_text
    } else {
        None
    };
    let (uri, canonical) = match &storage {
        // The YAML gets the folder that was checked, in a spelling that resolves
        // to it again on the next start (not, say, `/proc/<pid>/cwd/...`).
        // A shared catalog is read by gateways with other config folders: absolute.
        Storage::Local(dir) if state.is_shared() => (dir.display().to_string(), crate::containment::uri_key(dir)),
        Storage::Local(dir) => (crate::config::stored_uri(&state.config.dir, dir), crate::containment::uri_key(dir)),
        Storage::Object(u) => (u.to_string(), u.to_string()),
    };
    let section = GraphSection { start: None, uri, tenant: req.tenant.clone(), protected_branches: req.protected_branches.clone(), policy: policy_ref, schema: None };
    Ok(Validated { id, req, section, own, policy_write, policy_source, storage, canonical })
}

/// Runs blocking work off the proxy thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, LifecycleError> + Send + 'static) -> Result<T, LifecycleError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| LifecycleError::Internal(format!("background task: {e}")))?
}

/// How long a create waits for its turn before it gets 429.
const CREATE_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits for one of `limits.max_creates_in_flight` turns. Creates beyond
/// those wait, in order, unless `limits.max_creates_queued` already wait:
/// then 429 at once, so a flood of creates costs a counter, not memory.
async fn create_turn(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>, LifecycleError> {
    use std::sync::atomic::Ordering;
    if let Ok(p) = state.creates.try_acquire() {
        return Ok(p);
    }
    let limits = &state.config.config.limits;
    let busy = || {
        LifecycleError::Busy(format!(
            "{} graph creations are in flight and {} wait (limits.max_creates_in_flight, limits.max_creates_queued); retry shortly",
            limits.max_creates_in_flight, limits.max_creates_queued
        ))
    };
    if state.creates_waiting.fetch_add(1, Ordering::SeqCst) >= limits.max_creates_queued {
        state.creates_waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(busy());
    }
    let turn = tokio::time::timeout(CREATE_QUEUE_WAIT, state.creates.acquire()).await;
    state.creates_waiting.fetch_sub(1, Ordering::SeqCst);
    match turn {
        Ok(Ok(p)) => Ok(p),
        _ => Err(busy()),
    }
}

/// Handles `POST /graphs` once Cedar has allowed it, with the parsed body.
pub async fn create(state: &Arc<AppState>, body: Value) -> Result<Value, LifecycleError> {
    let _in_flight = create_turn(state).await?;
    let st = state.clone();
    let v = blocking(move || validate(&st, body)).await?;
    let id = v.id.clone();
    let catalog = state.catalog()?;
    // Which graph is not said: the caller may not be allowed to know it exists.
    let overlaps = || LifecycleError::Conflict(format!("the URI {:?} overlaps the storage of another graph (the same folder, or one inside the other)", v.req.uri));
    let _reservation = state.registry.reserve(&id, &v.canonical, state.config.config.limits.max_graphs).map_err(|e| match e {
        ReserveError::Id => LifecycleError::Conflict(format!("graph {:?} already exists", id.as_str())),
        ReserveError::Uri(_) => overlaps(),
        ReserveError::Full(n) => bad(format!("the gateway already serves limits.max_graphs ({n}) graphs")),
    })?;
    // Across gateways sharing a catalog: exactly one create of an id wins.
    if let Err(e) = catalog.reserve(&id, &v.canonical).await {
        if matches!(e, CatalogError::Unavailable(_)) {
            // It may have been written with its answer lost.
            catalog.release(&id).await;
        }
        return Err(match e {
            CatalogError::Overlap => overlaps(),
            other => other.into(),
        });
    }
    let result = create_reserved(state, &catalog, v).await;
    if result.is_err() {
        catalog.release(&id).await;
    }
    result
}

/// [`create`] once the id and URI are reserved, locally and in the catalog.
async fn create_reserved(state: &Arc<AppState>, catalog: &Arc<dyn crate::catalog::Catalog>, v: Validated) -> Result<Value, LifecycleError> {
    let Validated { id, req, section, own, policy_write, policy_source, storage, canonical } = v;
    let st = state.clone();
    let (gid, sec, canon, write, own_for_entry) = (id.clone(), section.clone(), canonical.clone(), policy_write.clone(), own.clone());
    let (entry, claim, journal) = blocking(move || {
        let claim = claim_uri(&st.config.dir, &canon)?;
        // Validates the policy against the live server policies too (duplicate @id).
        // With the live server policies (a clashing @id): say where, not what they hold.
        let entry = st.graph_entry(gid.as_str(), &sec, &own_for_entry).map_err(|e| match e {
            crate::app::StartupError::Policy(p) => bad(format!("invalid policy: {}", p.without_source())),
            other => bad(other.to_string()),
        })?;
        // With a shared catalog every graph starts on demand wherever its
        // requests arrive (this create's worker is its first).
        let entry = if st.is_shared() { entry.lazy() } else { entry };
        if crate::config::local_path(&entry.resolved_uri).is_some() && !uri_is_empty(&entry.resolved_uri) {
            return Err(not_empty(&sec.uri));
        }
        if let Some((p, _)) = &write {
            if p.exists() {
                return Err(LifecycleError::Conflict(format!("{} already exists; pass the policy as {{\"file\": ...}} or remove it", p.display())));
            }
        }
        let pending = pending_dir(&st.runtime_dir);
        let journal = pending.join(format!("{gid}.json"));
        let record = PendingCreate { graph_id: gid.to_string(), uri: entry.resolved_uri.clone(), started_at_unix: crate::authn::now_unix() };
        std::fs::create_dir_all(&pending).map_err(|e| LifecycleError::Internal(format!("create {}: {e}", pending.display())))?;
        write_atomically(&journal, &serde_json::to_vec(&record).unwrap_or_default()).map_err(|e| LifecycleError::Internal(format!("journal: {e}")))?;
        Ok((entry, claim, journal))
    })
    .await?;
    let mut entry = entry;

    let undo = Arc::new(std::sync::Mutex::new(Undo::default()));
    let result = async {
        if let Storage::Object(u) = &storage {
            // Checked under the URI claim, so no create on this gateway races it;
            // from here a failure purges the prefix, which held nothing before.
            if !object_storage::is_empty(&state.supervisor, &u.to_string()).await.map_err(storage_failed)? {
                return Err(not_empty(&req.uri));
            }
        }
        // Storage: make the folder ourselves first, so an unwritable URI is a clear 400.
        let (u, st, uri, schema_src, runtime) = (undo.clone(), storage.clone(), req.uri.clone(), req.schema.source.clone(), state.runtime_dir.clone());
        let gid = id.clone();
        let schema_file = blocking(move || {
            let mut undo = u.lock().map_err(|_| LifecycleError::Internal("undo lock".into()))?;
            if let Storage::Local(dir) = &st {
                make_graph_dir(dir, &uri, &mut undo)?;
            }
            let schema_file = runtime.join(format!("{gid}.create.pg"));
            write_atomically(&schema_file, schema_src.as_bytes()).map_err(|e| LifecycleError::Internal(format!("schema temp file: {e}")))?;
            undo.files.push(schema_file.clone());
            Ok(schema_file)
        })
        .await?;
        entry.schema_file = Some(schema_file);
        if let (Storage::Object(obj), Ok(mut u)) = (&storage, undo.lock()) {
            // The worker creates the graph under the prefix, which was empty:
            // whatever it wrote before a failure (even one before it was
            // ready) is deleted, unless it found the prefix not empty.
            u.objects = Some((state.supervisor.clone(), obj.to_string()));
        }
        let running = state.supervisor.start_new(&entry).await.map_err(|e| {
            if matches!(storage, Storage::Object(_)) && e.exit_code == Some(omnigraph_contract::headers::EXIT_NOT_EMPTY) {
                // Something appeared there since the check: not ours, and `--init` wrote nothing.
                if let Ok(mut u) = undo.lock() {
                    u.objects = None;
                }
                return not_empty(&req.uri);
            }
            // The worker's own words (paths, a backtrace) go to the log, not to the client.
            tracing::error!(graph = %entry.id, error = %e, "the new graph's worker failed to start");
            LifecycleError::Internal("the graph's worker failed to start; the gateway's log says why".into())
        })?;
        if let Ok(mut u) = undo.lock() {
            u.worker_pid = Some(running.pid);
        }
        let u = undo.clone();
        blocking(move || {
            if let Some((p, src)) = &policy_write {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| LifecycleError::Internal(format!("policies folder: {e}")))?;
                }
                write_atomically(p, src.as_bytes()).map_err(|e| LifecycleError::Internal(format!("write policy: {e}")))?;
                if let Ok(mut u) = u.lock() {
                    u.files.push(p.clone());
                }
            }
            Ok(())
        })
        .await?;
        // A shared catalog registers the new worker with the graph, in one transaction.
        let registration = state.supervisor.shared().and_then(|shared| {
            let ws = entry.state.load();
            let address = ws.address.as_deref().map(str::to_string).unwrap_or_else(|| entry.socket.display().to_string());
            Some(Registration { gateway: shared.gateway().to_string(), address, key: ws.key.as_deref()?.to_string() })
        });
        let record = CatalogEntry { section: section.clone(), canonical_uri: canonical.clone(), policy_source: policy_source.clone() };
        catalog.publish(&id, &record, registration.as_ref()).await?;
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
            let entry = Arc::new(entry.with_policy_source(policy_source));
            entry.adopt(running.pid);
            let (st, e2) = (state.clone(), entry.clone());
            if tokio::task::spawn_blocking(move || st.publish(e2, &own)).await.is_err() {
                state.registry.insert(entry.clone());
            }
            tokio::spawn(state.supervisor.clone().supervise(entry.clone(), Some(running)));
            drop(claim);
            tracing::info!(graph = %id, uri = %section.uri, "graph created");
            Ok(json!({"graph_id": id.as_str(), "uri": section.uri, "status": "up"}))
        }
        Err(e) => {
            tracing::warn!(graph = %id, error = %e, "graph create failed; undoing what it made");
            let undo = std::mem::take(&mut *undo.lock().unwrap_or_else(|p| p.into_inner()));
            tokio::task::spawn_blocking(move || undo.run()).await.ok();
            // Held until the undo is over: no create of this URI on this host
            // (or one sharing the config folder) writes there while it is purged.
            drop(claim);
            Err(e)
        }
    }
}

/// Creates the graph's folder for this request (exclusively: a folder that
/// appears meanwhile is not ours) and records in `undo` what it made, so a
/// failure removes exactly that. An existing empty folder is used, and only
/// its contents are ours.
fn make_graph_dir(dir: &Path, shown: &str, undo: &mut Undo) -> Result<(), LifecycleError> {
    if dir.exists() {
        // Checked again here, on the very folder the undo would empty.
        if std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some()) {
            return Err(LifecycleError::Conflict(format!("the URI {shown:?} is not empty; a new graph needs an empty location")));
        }
        undo.emptied_dir = Some(dir.to_path_buf());
        return Ok(());
    }
    let cannot = |e: std::io::Error| bad(format!("cannot create the URI {shown:?}: {e}"));
    if let Some(parent) = dir.parent() {
        undo.created_parents = missing_ancestors(parent);
        std::fs::create_dir_all(parent).map_err(cannot)?;
    }
    std::fs::create_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            LifecycleError::Conflict(format!("the URI {shown:?} appeared while creating the graph"))
        } else {
            cannot(e)
        }
    })?;
    undo.created_dir = Some(dir.to_path_buf());
    Ok(())
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

/// Handles `DELETE /graphs/{id}` (already authorized). With `purge`, the
/// graph's folder is checked before anything changes and again right before
/// it is removed: it must still be the folder the graph was created with,
/// inside the data root, holding no other graph, the runtime or policy
/// folder or the config file. Only that folder is removed.
pub async fn delete(state: &Arc<AppState>, id: &GraphId, purge: bool) -> Result<Value, LifecycleError> {
    let entry = state.registry.get(id).ok_or_else(|| LifecycleError::NotFound(format!("graph {:?} does not exist", id.as_str())))?;
    // Until the delete (and its purge) is over, nothing may be created at or inside this folder.
    let _held = state.registry.hold(id, &entry.canonical_uri);
    // Taken as create takes it, so no create can be initialising this folder meanwhile.
    let claim = if purge {
        let (st, e) = (state.clone(), entry.clone());
        Some(blocking(move || {
            let claim = claim_uri(&st.config.dir, &e.canonical_uri)?;
            match crate::config::local_path(&e.uri) {
                Some(_) => drop(purge_target(&st, &e)?),
                None => drop(purge_object_target(&st, &e)?),
            }
            Ok(claim)
        })
        .await?)
    } else {
        None
    };
    let catalog = state.catalog()?;
    let e2 = entry.clone();
    // Removing the entry and stopping the worker: one critical section
    // (with the file, after its drift check).
    let during = Box::new(move || {
        // After this no worker is adopted for the graph, even one mid-start.
        if let Some(pid) = e2.mark_removed() {
            stop_group_blocking(pid);
        }
    });
    if let Err(e) = catalog.remove(id, &entry.canonical_uri, during).await {
        if entry.is_removed() {
            // The worker was stopped but the file could not be written: serve the graph again.
            entry.unmark_removed();
            tokio::spawn(state.supervisor.clone().supervise(entry.clone(), None));
        }
        return Err(e.into());
    }
    state.registry.remove(id);
    // The catalog holds the id and storage until the purge is over.
    let result = purge_removed(state, id, &entry, purge, claim).await;
    catalog.release(id).await;
    result
}

/// The rest of a `DELETE` once the graph is out of the catalog: the purge, if asked.
async fn purge_removed(state: &Arc<AppState>, id: &GraphId, entry: &Arc<GraphEntry>, purge: bool, claim: Option<UriClaim>) -> Result<Value, LifecycleError> {
    if purge {
        if let Some(shared) = state.supervisor.shared() {
            // Another gateway may run the graph's worker: it stops it when its
            // watch sees the removal (or its lease expires). Never purge under it.
            let wait = std::time::Duration::from_secs(state.config.config.catalog.as_ref().map_or(10, |c| c.etcd.lease_ttl_s) + 10);
            if !shared.wait_unregistered(id.as_str(), wait).await {
                return Err(LifecycleError::Unavailable(format!(
                    "the graph was removed, but its worker on another gateway did not stop within {wait:?}; its data at {} was not purged",
                    entry.uri
                )));
            }
        }
    }
    let mut purged = false;
    if purge && crate::config::local_path(&entry.uri).is_none() {
        let target = purge_object_target(state, &entry)?;
        let deleted = object_storage::purge(&state.supervisor, &target.to_string()).await.map_err(|err| {
            LifecycleError::Internal(format!("the graph was removed from the config, but purging {} failed: {err}", entry.uri))
        })?;
        tracing::info!(graph = %id, uri = %target, deleted, "purged the graph's objects");
        purged = true;
    } else if purge {
        let (st, e) = (state.clone(), entry.clone());
        purged = blocking(move || {
            let dir = purge_target(&st, &e)?;
            // The policy file a create wrote from `{"source"}` belongs to the graph too.
            let own_policy = st.fences.policy_dir.join(format!("{}.cedar", e.id));
            if e.policy_file.as_deref().and_then(|p| resolve_physical(p).ok()).is_some_and(|p| p == own_policy) {
                let _ = std::fs::remove_file(&own_policy);
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(true),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(true),
                Err(err) => Err(LifecycleError::Internal(format!("the graph was removed from the config, but purging {} failed: {err}", e.uri))),
            }
        })
        .await?;
    }
    drop(claim);
    tracing::info!(graph = %id, purged, "graph deleted");
    Ok(json!({"graph_id": id.as_str(), "uri": entry.uri, "status": "deleted", "purged": purged}))
}

/// The folder a purge may remove, re-checked now: a local URI that still
/// resolves to the folder the graph was registered with (no link swapped in
/// since), passes the fences, and holds no other graph.
fn purge_target(state: &AppState, entry: &GraphEntry) -> Result<PathBuf, LifecycleError> {
    if crate::config::local_path(&entry.uri).is_none() {
        return Err(bad("purge only works for local paths"));
    }
    let dir = resolve_physical(Path::new(&entry.resolved_uri))?;
    if crate::containment::uri_key(&dir) != entry.canonical_uri {
        return Err(LifecycleError::Conflict(format!(
            "the graph's folder {} now resolves to {}; not purging a path that changed under the graph",
            entry.resolved_uri,
            dir.display()
        )));
    }
    state.fences.check_graph_dir(&dir, &entry.uri)?;
    refuse_overlapping_purge(state, entry, "folder")?;
    Ok(dir)
}

/// A purge never removes storage another graph lies in or around (`what`
/// names the graph's storage in the message: a folder or a prefix).
fn refuse_overlapping_purge(state: &AppState, entry: &GraphEntry, what: &str) -> Result<(), LifecycleError> {
    let others = state.registry.list();
    if let Some(other) = others.iter().find(|o| o.id != entry.id && uris_overlap(&o.canonical_uri, &entry.canonical_uri)) {
        return Err(LifecycleError::Conflict(format!("the graph's {what} overlaps the storage of graph {:?}; not purging", other.id.as_str())));
    }
    Ok(())
}

/// The prefix a purge may delete on object storage, checked as a create's
/// URI is: inside `server.object_store.roots` (a graph declared in the file
/// elsewhere can be deleted, never purged through the API), and holding no
/// other graph.
fn purge_object_target(state: &AppState, entry: &GraphEntry) -> Result<ObjectUri, LifecycleError> {
    let target = state.fences.check_object_uri(&entry.canonical_uri).map_err(|e| bad(format!("not purging: {e}")))?;
    refuse_overlapping_purge(state, entry, "prefix")?;
    Ok(target)
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
