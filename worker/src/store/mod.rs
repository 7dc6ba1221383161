//! Lance storage for one graph: the tables, the commit log, the branches and
//! the in-memory state of each branch head.
//!
//! Write path (one writer at a time, behind a mutex; `write.rs`): validate
//! the whole batch against the branch head, write each touched table (one
//! delete and one append at most, on a lineage the branch owns; see
//! `lineage.rs`), then append the commit row. Only that row publishes the
//! change; a failure before it restores every touched table to the version
//! the head pins, and a crash before it is repaired the same way on the next
//! open. Branch operations append one row to the ref log (`branches.rs`).
//!
//! Read path: readers load the map of branch heads from an `ArcSwap` and
//! never wait on the writer. Each head is an `Arc<Snapshot>`; branches at
//! the same commit share one, and a commit's new state shares all but what
//! it changed with its parent (persistent maps, `state.rs`).

mod author;
mod branch_ops;
pub mod branches;
pub mod commits;
pub mod lineage;
pub mod location;
mod log_rows;
mod maintenance;
mod schema_apply;
pub mod schemas;
pub mod state;
pub mod tables;
pub mod value;
mod write;
pub mod writer_fence;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use arrow_array::{RecordBatch, RecordBatchIterator};
use futures::future::try_join_all;
use lance::dataset::{Dataset, WriteMode};

use crate::contract::{BranchName, GraphSchema, SchemaError};
use schemas::{SchemaVersion, Schemas};
use branches::{RefEvent, RefOp};
pub use commits::{CommitLog, CommitRecord, TablePin};
use lineage::Lineages;
use location::{Location, COMMITS_TABLE};
use state::GraphData;
pub use author::Author;
pub use branch_ops::{MergeOutcome, MergeResult};
pub use maintenance::{retained, MaintenanceReport, Retention};
pub use schema_apply::{SchemaApplied, SchemaOptions, SchemaRefused};
pub use write::{ApplyError, Plan, TableBatch, TableWrite, WriteSession, WriteTo};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad graph URI: {0}")]
    BadUri(String),
    #[error("{0} is not empty; --init only creates a graph in an empty location")]
    NotEmpty(String),
    #[error("{0}")]
    NotAGraph(String),
    #[error("invalid schema: {0}")]
    Schema(SchemaError),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("storage error: {0}")]
    Lance(String),
    #[error("the graph's storage is inconsistent: {0}")]
    Corrupt(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Unknown, or not in the branch's history: the same answer either way,
    /// so a commit id never reveals or reads another branch.
    #[error("no commit {commit:?} on branch {branch:?}")]
    NotOnBranch { commit: String, branch: String },
    /// In the branch's history, but maintenance removed the table versions
    /// it pins: it is older than the retained history (`maintenance.rs`).
    #[error("commit {commit:?} is older than the history this graph keeps readable (limits.retain_commits, limits.retain_days): maintenance removed its table versions; GET /commits/{commit} still shows it")]
    Expired { commit: String },
    #[error("branch {0:?} does not exist")]
    NoBranch(String),
    #[error("branch {0:?} already exists")]
    BranchExists(String),
    #[error("invalid branch name: {0}")]
    BadBranch(String),
    #[error("branch main cannot be deleted")]
    MainIsPermanent,
    /// `?if_commit=` named another commit than the branch head.
    #[error("branch {branch:?} is at {head}, not at {expected} (?if_commit=); nothing was written")]
    PreconditionFailed { branch: String, expected: String, head: String },
    #[error("writes are stopped: a failed change could not be rolled back; restart the worker to repair the tables")]
    Poisoned,
    /// A newer worker claimed the graph on object storage (`writer_fence`).
    #[error("writes are stopped: a newer worker (after writer epoch {0}) took over this graph; this worker is shutting down")]
    Fenced(u64),
    /// A table moved by more than this change's own write: another process
    /// committed to it meanwhile (`Location::check_own_version`).
    #[error("another writer committed to table {0} during this change; nothing was written, retry")]
    ForeignWrite(String),
}

impl StoreError {
    pub fn lance(context: impl std::fmt::Display, e: lance::Error) -> StoreError {
        StoreError::Lance(format!("{context}: {e}"))
    }
}

/// The graph at one commit: its record, the schema it is read with, its
/// in-memory state, and each table checked out at the version the commit
/// pins (or at a later version with the same content, after a rollback
/// restored it).
#[derive(Clone)]
pub struct Snapshot {
    pub commit: CommitRecord,
    pub schema: Arc<SchemaVersion>,
    pub data: GraphData,
    pub datasets: BTreeMap<String, Arc<Dataset>>,
}

/// Every live branch and its head. An `OrdMap`, so it lists sorted and a
/// new map shares everything but the changed entry with the old one.
pub type Heads = imbl::OrdMap<String, Arc<Snapshot>>;

/// The writer's state; only the holder of the writer lock touches it.
struct Writer {
    commits: Dataset,
    refs: Dataset,
    lineages: Lineages,
    /// The `seq` of the next row of `_commits` or `_branches`.
    next_seq: i64,
    poisoned: bool,
}

const HISTORY_CACHE: usize = 4;

pub struct Store {
    pub graph_id: String,
    loc: Location,
    /// Every schema version, by id (`schemas.rs`); a branch's current one
    /// is its head's [`Snapshot::schema`].
    schemas: ArcSwap<Schemas>,
    heads: ArcSwap<Heads>,
    log: ArcSwap<CommitLog>,
    writer: tokio::sync::Mutex<Writer>,
    history: Mutex<VecDeque<Arc<Snapshot>>>,
}

fn now_rfc3339() -> String {
    value::format_datetime(chrono::Utc::now())
}

fn table_names(schema: &GraphSchema) -> impl Iterator<Item = &str> {
    schema.nodes.iter().map(|n| n.name.as_str()).chain(schema.edges.iter().map(|e| e.name.as_str()))
}


impl Store {
    /// Creates a graph at an empty location, then opens it.
    pub async fn init(graph_id: &str, uri: &str, schema_source: &str, actor: &str) -> Result<Store, StoreError> {
        let schema = GraphSchema::parse(schema_source).map_err(StoreError::Schema)?;
        let loc = Location::parse(uri)?;
        if !loc.is_empty().await? {
            return Err(StoreError::NotEmpty(loc.display.clone()));
        }
        loc.write_schema(schema_source).await?;
        let mut versions = BTreeMap::new();
        let creates = schema
            .nodes
            .iter()
            .map(|n| (n.name.clone(), tables::node_schema(n)))
            .chain(schema.edges.iter().map(|e| (e.name.clone(), tables::edge_schema(e))));
        for (name, arrow_schema) in creates {
            let reader = RecordBatchIterator::new(Vec::<Result<RecordBatch, arrow_schema::ArrowError>>::new(), arrow_schema);
            let ds = Dataset::write(reader, loc.table_uri(&name).as_str(), Some(loc.write_params(WriteMode::Create)))
                .await
                .map_err(|e| StoreError::lance(format!("create {name}"), e))?;
            versions.insert(name, TablePin::main(ds.version().version));
        }
        // The commit log goes last: a graph without `_commits` is not a graph yet.
        let first = CommitRecord {
            commit_id: Arc::from(ulid::Ulid::new().to_string()),
            parents: Vec::new(),
            branch: Arc::from(BranchName::MAIN),
            actor_id: Arc::from(actor),
            request_id: None,
            created_at: now_rfc3339(),
            tables: commits::TablePins::from(&versions),
            // The first schema is `_schema.pg` (see `schemas.rs`).
            schema_id: None,
            schema_source: None,
            seq: 0,
        };
        commits::create(&loc, &first).await?;
        Self::open(graph_id, uri).await
    }

    /// True when nothing lies at `uri` yet (a missing or empty folder, or no
    /// object under the prefix).
    pub async fn location_is_empty(uri: &str) -> Result<bool, StoreError> {
        Location::parse(uri)?.is_empty().await
    }

    /// Deletes every object of the graph at the object-store `uri`; returns
    /// how many. The graph's worker must be stopped first.
    pub async fn purge_objects(uri: &str) -> Result<u64, StoreError> {
        Location::parse(uri)?.purge_objects().await
    }

    /// Resolves when a newer worker has taken this graph over on object
    /// storage (never for a local graph): the server then shuts down.
    pub async fn fenced(&self) {
        match self.loc.fence() {
            Some(f) => f.on_fenced.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Opens an existing graph: replays the commit and ref logs into the
    /// live branches, loads each head, and repairs tables a crashed change
    /// left ahead of the head that owns them.
    pub async fn open(graph_id: &str, uri: &str) -> Result<Store, StoreError> {
        let loc = Location::parse(uri)?;
        if !loc.holds_graph().await? {
            return Err(StoreError::NotAGraph(format!(
                "{} is not an omnigraph graph (it has no {COMMITS_TABLE}.lance); create one with --init --schema FILE",
                loc.display
            )));
        }
        // On object storage: become the graph's one writer before reading
        // anything a previous writer may still be appending to.
        loc.claim_writer(graph_id).await?;
        let schema_source = loc.read_schema().await?;
        let genesis = GraphSchema::parse(&schema_source).map_err(StoreError::Schema)?;
        let mut schemas = Schemas::new(SchemaVersion { id: None, source: Arc::from(schema_source), graph: Arc::new(genesis) });
        let mut commits_ds = loc.open(COMMITS_TABLE, None).await?;
        commits::migrate(&mut commits_ds).await?;
        let log = CommitLog::new(commits::read_all(&commits_ds).await?);
        for r in log.records() {
            if let (Some(id), Some(source)) = (&r.schema_id, &r.schema_source) {
                schemas.insert(Arc::new(SchemaVersion::parse(Some(id.clone()), source)?));
            }
        }
        let mut refs_ds = branches::open_or_create(&loc).await?;
        branches::migrate(&mut refs_ds).await?;
        let replayed = branches::replay(&log, &branches::read_all(&refs_ds).await?)?;
        let mut lineages = replayed.lineages;

        // One snapshot per distinct head commit; tables pinned alike are shared.
        let mut loaded: Vec<Arc<Snapshot>> = Vec::new();
        let mut heads = Heads::new();
        for (name, commit_id) in &replayed.heads {
            let snap = match loaded.iter().find(|s| *s.commit.commit_id == **commit_id) {
                Some(s) => s.clone(),
                None => {
                    let record = log.get(commit_id).cloned().ok_or_else(|| StoreError::Corrupt(format!("head {commit_id} of {name} is not in the log")))?;
                    let schema = schemas.get(record.schema_id.as_deref())?;
                    let s = Arc::new(load_snapshot(&loc, schema, record, &loaded).await?);
                    loaded.push(s.clone());
                    s
                }
            };
            heads.insert(name.clone(), snap);
        }
        for (name, snap) in heads.clone() {
            if let Some(repaired) = repair(&loc, &name, &snap, &mut lineages).await? {
                heads.insert(name, Arc::new(repaired));
            }
        }
        Ok(Store {
            graph_id: graph_id.to_string(),
            loc,
            schemas: ArcSwap::from_pointee(schemas),
            heads: ArcSwap::from_pointee(heads),
            log: ArcSwap::from_pointee(log),
            writer: tokio::sync::Mutex::new(Writer { commits: commits_ds, refs: refs_ds, lineages, next_seq: replayed.next_seq, poisoned: false }),
            history: Mutex::new(VecDeque::new()),
        })
    }

    /// `branch`'s head.
    pub fn head(&self, branch: &str) -> Result<Arc<Snapshot>, StoreError> {
        self.heads.load().get(branch).cloned().ok_or_else(|| StoreError::NoBranch(branch.to_string()))
    }

    /// Every branch and its head commit id, sorted by name.
    pub fn branches(&self) -> Vec<(String, String)> {
        self.heads.load().iter().map(|(name, s)| (name.clone(), s.commit.commit_id.to_string())).collect()
    }

    /// `branch`'s history, newest first.
    pub fn commits(&self, branch: &str) -> Result<Vec<CommitRecord>, StoreError> {
        let head = self.head(branch)?;
        Ok(self.log.load().history(&head.commit.commit_id))
    }

    /// `commit_id`, when it is in `branch`'s history.
    pub fn commit_on(&self, branch: &str, commit_id: &str) -> Result<CommitRecord, StoreError> {
        let head = self.head(branch)?;
        self.log
            .load()
            .reaches(&head.commit.commit_id, commit_id)
            .cloned()
            .ok_or_else(|| StoreError::NotOnBranch { commit: commit_id.to_string(), branch: branch.to_string() })
    }

    /// The schema the graph had at `commit_id`, which must be in `branch`'s history.
    pub fn schema_at(&self, branch: &str, commit_id: &str) -> Result<Arc<SchemaVersion>, StoreError> {
        let record = self.commit_on(branch, commit_id)?;
        self.schemas.load().get(record.schema_id.as_deref())
    }

    /// The graph at `commit_id`, which must be in `branch`'s history: a
    /// branch head, a cached snapshot, or one loaded from the table versions
    /// the commit pins.
    pub async fn snapshot_at(&self, branch: &str, commit_id: &str) -> Result<Arc<Snapshot>, StoreError> {
        let record = self.commit_on(branch, commit_id)?;
        self.snapshot_of(record).await
    }

    /// The graph at `record`, whatever branch it is on (callers check that).
    async fn snapshot_of(&self, record: CommitRecord) -> Result<Arc<Snapshot>, StoreError> {
        let heads: Vec<Arc<Snapshot>> = self.heads.load().values().cloned().collect();
        if let Some(s) = heads.iter().find(|s| s.commit.commit_id == record.commit_id) {
            return Ok(s.clone());
        }
        if let Some(s) = self.cached(&record.commit_id) {
            return Ok(s);
        }
        let schema = self.schemas.load().get(record.schema_id.as_deref())?;
        let snap = match load_snapshot(&self.loc, schema, record.clone(), &heads).await {
            Ok(s) => Arc::new(s),
            Err(e) => return Err(self.load_error(&record, e).await),
        };
        let mut cache = self.history.lock().map_err(|_| StoreError::Internal("history cache lock".into()))?;
        if cache.len() >= HISTORY_CACHE {
            cache.pop_front();
        }
        cache.push_back(snap.clone());
        Ok(snap)
    }

    fn cached(&self, commit_id: &str) -> Option<Arc<Snapshot>> {
        let cache = self.history.lock().ok()?;
        cache.iter().find(|s| &*s.commit.commit_id == commit_id).cloned()
    }

    /// Publishes `snap` as `branch`'s head (writer lock held).
    fn set_head(&self, branch: &str, snap: Arc<Snapshot>) {
        let mut heads = Heads::clone(&self.heads.load());
        heads.insert(branch.to_string(), snap);
        self.heads.store(Arc::new(heads));
    }

    /// The next `seq`, for a row of either log (writer lock held).
    fn take_seq(w: &mut Writer) -> i64 {
        let seq = w.next_seq;
        w.next_seq += 1;
        seq
    }

    /// Appends one ref event: the publish point of a branch operation.
    async fn append_ref(&self, w: &mut Writer, branch: &str, op: RefOp, head: &str, from: &str, author: &Author) -> Result<(), StoreError> {
        let event = RefEvent {
            seq: Self::take_seq(w),
            branch: branch.to_string(),
            op,
            head: head.to_string(),
            from: from.to_string(),
            actor_id: author.actor_id.clone(),
            request_id: author.request_id.clone(),
            created_at: now_rfc3339(),
        };
        branches::append(&mut w.refs, &self.loc, &event).await
    }
}

/// Makes `version` the latest version of `table`'s `lineage` again (a new
/// version with that content) and returns the table at that new version.
/// Versions are immutable, so every commit that pins a later one still reads it.
async fn restore(loc: &Location, table: &str, lineage: Option<&str>, version: u64) -> Result<Arc<Dataset>, StoreError> {
    let mut ds = loc.open_on(table, lineage, Some(version)).await?;
    ds.restore().await.map_err(|e| StoreError::lance(format!("restore {table} to v{version}"), e))?;
    Ok(Arc::new(loc.open_on(table, lineage, None).await?))
}

/// On open, for every table whose lineage `branch` owns: records the
/// lineage's tip, after restoring it to the pinned version when a change
/// crashed between its table writes and its commit row. Returns the head
/// with the restored datasets, when any was.
async fn repair(loc: &Location, branch: &str, snap: &Snapshot, lineages: &mut Lineages) -> Result<Option<Snapshot>, StoreError> {
    let mut repaired: Option<Snapshot> = None;
    for name in table_names(&snap.schema.graph) {
        let pin = snap.commit.tables.get(name).ok_or_else(|| StoreError::Corrupt(format!("head commit does not pin table {name}")))?;
        if lineages.owner(pin.lineage.as_ref()) != Some(branch) {
            continue;
        }
        let latest = loc.open_on(name, pin.lineage.as_deref(), None).await?;
        let v = latest.version().version;
        if v > pin.version {
            tracing::warn!(table = name, branch, latest = v, pinned = pin.version, "table is ahead of the head commit (a change crashed before committing); restoring");
            // A restore is a write: only by the graph's current writer.
            loc.check_writer().await?;
            let ds = restore(loc, name, pin.lineage.as_deref(), pin.version).await?;
            lineages.set_tip(name, pin.lineage.as_ref(), ds.version().version);
            // The next write must build on the restored version, or Lance sees a conflict.
            repaired.get_or_insert_with(|| snap.clone()).datasets.insert(name.to_string(), ds);
        } else if v < pin.version {
            return Err(StoreError::Corrupt(format!("table {name} is at version {v}, behind the head commit's {}", pin.version)));
        } else {
            lineages.set_tip(name, pin.lineage.as_ref(), v);
        }
    }
    Ok(repaired)
}

/// Loads the graph at `commit`. A table pinned exactly as in one of `known`
/// is shared with it rather than read again, so branches that did not touch
/// a table share its state, and the common ancestor of a merge costs only
/// the tables that changed.
async fn load_snapshot(loc: &Location, schema_version: Arc<SchemaVersion>, commit: CommitRecord, known: &[Arc<Snapshot>]) -> Result<Snapshot, StoreError> {
    let schema = &*schema_version.graph;
    let pin = |name: &str| commit.tables.get(name).ok_or_else(|| StoreError::Corrupt(format!("commit does not pin table {name}")));
    let same = |name: &str, p: &TablePin| known.iter().find(|s| s.commit.tables.get(name) == Some(p));
    let node_loads = schema.nodes.iter().map(|t| async {
        let p = pin(&t.name)?;
        if let Some(s) = same(&t.name, p) {
            if let (Some(table), Some(ds)) = (s.data.nodes.get(&t.name), s.datasets.get(&t.name)) {
                return Ok::<_, StoreError>((t.name.clone(), table.clone(), ds.clone()));
            }
        }
        let ds = loc.open_on(&t.name, p.lineage.as_deref(), Some(p.version)).await?;
        let table = tables::load_nodes(t, &ds).await?;
        Ok((t.name.clone(), table, Arc::new(ds)))
    });
    // Nodes first: an edge's endpoints then share their nodes' key strings.
    // (Opening a graph waits for the slowest node table, then the slowest
    // edge table, where it used to load all at once; the memory is worth it.)
    let nodes = try_join_all(node_loads).await?;
    let node_tables: BTreeMap<&str, &state::NodeTable> = nodes.iter().map(|(name, table, _)| (name.as_str(), table)).collect();
    let node_tables = &node_tables;
    let edge_loads = schema.edges.iter().map(|t| async move {
        let p = pin(&t.name)?;
        if let Some(s) = same(&t.name, p) {
            if let (Some(table), Some(ds)) = (s.data.edges.get(&t.name), s.datasets.get(&t.name)) {
                return Ok::<_, StoreError>((t.name.clone(), table.clone(), ds.clone()));
            }
        }
        let ds = loc.open_on(&t.name, p.lineage.as_deref(), Some(p.version)).await?;
        let table = tables::load_edges(t, &ds, node_tables).await?;
        Ok((t.name.clone(), table, Arc::new(ds)))
    });
    let edges = try_join_all(edge_loads).await?;
    let mut data = GraphData::default();
    let mut datasets = BTreeMap::new();
    for (name, table, ds) in nodes {
        data.nodes.insert(name.clone(), table);
        datasets.insert(name, ds);
    }
    for (name, table, ds) in edges {
        data.edges.insert(name.clone(), table);
        datasets.insert(name, ds);
    }
    Ok(Snapshot { commit, schema: schema_version, data, datasets })
}
