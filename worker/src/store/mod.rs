//! Lance storage for one graph: the tables, the commit log and the in-memory
//! state of the head commit.
//!
//! Write path (one writer at a time, behind a mutex): validate the whole batch
//! against the head state, write each touched table (one delete and one append
//! at most), then append the commit row. Only that row publishes the change;
//! a failure before it restores every touched table to the version the head
//! commit pins, and a crash before it is repaired the same way on the next open.
//!
//! Read path: readers load the head snapshot from an `ArcSwap` and never wait
//! on the writer.

pub mod commits;
pub mod location;
pub mod state;
pub mod tables;
pub mod value;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use arrow_array::{RecordBatch, RecordBatchIterator};
use datafusion_common::{Column, ScalarValue};
use datafusion_expr::{lit, Expr};
use futures::future::try_join_all;
use lance::dataset::{Dataset, DeleteBuilder, WriteMode};

use crate::contract::{GraphSchema, SchemaError};
pub use commits::{CommitLog, CommitRecord};
use location::{Location, COMMITS_TABLE, SCHEMA_FILE};
use state::{edge_id, GraphData, Key};

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
    #[error("writes are stopped: a failed change could not be rolled back; restart the worker to repair the tables")]
    Poisoned,
}

impl StoreError {
    pub fn lance(context: impl std::fmt::Display, e: lance::Error) -> StoreError {
        StoreError::Lance(format!("{context}: {e}"))
    }
}

/// The graph at one commit: its record, its in-memory state, and each table
/// checked out at the version the commit pins (or at a later version with the
/// same content, after a rollback restored it).
#[derive(Clone)]
pub struct Snapshot {
    pub commit: CommitRecord,
    pub data: GraphData,
    pub datasets: BTreeMap<String, Arc<Dataset>>,
}

/// What a change writes to one table: rows to remove (they exist in the base
/// state) and rows to append (their final values are in [`Plan::data`]).
pub struct TableWrite<K> {
    pub remove: Vec<K>,
    pub put: Vec<K>,
}

impl<K> TableWrite<K> {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.put.is_empty()
    }
}

/// One table's share of a commit, ready to write.
struct TableJob<'a> {
    table: String,
    id_column: &'a str,
    remove: Vec<String>,
    batch: Option<RecordBatch>,
}

impl<K> Default for TableWrite<K> {
    fn default() -> Self {
        TableWrite { remove: Vec::new(), put: Vec::new() }
    }
}

/// A validated change, ready to commit.
pub struct Plan {
    pub data: GraphData,
    pub nodes: BTreeMap<String, TableWrite<Key>>,
    pub edges: BTreeMap<String, TableWrite<(Key, Key)>>,
}

pub enum ApplyError<E> {
    Plan(E),
    Store(StoreError),
}

struct Writer {
    commits: Dataset,
    poisoned: bool,
}

const HISTORY_CACHE: usize = 4;

pub struct Store {
    pub graph_id: String,
    loc: Location,
    pub schema: Arc<GraphSchema>,
    pub schema_source: Arc<str>,
    head: ArcSwap<Snapshot>,
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
        if !loc.is_empty()? {
            return Err(StoreError::NotEmpty(loc.display.clone()));
        }
        let dir = loc.local.clone().ok_or_else(|| StoreError::BadUri(loc.display.clone()))?;
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        omnigraph_durable::write_atomically(&dir.join(SCHEMA_FILE), schema_source.as_bytes()).map_err(|e| StoreError::Io(format!("write schema: {e}")))?;
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
            versions.insert(name, ds.version().version);
        }
        // The commit log goes last: a graph without `_commits` is not a graph yet.
        let first = CommitRecord {
            commit_id: ulid::Ulid::new().to_string(),
            parents: Vec::new(),
            branch: crate::contract::BranchName::MAIN.to_string(),
            actor_id: actor.to_string(),
            created_at: now_rfc3339(),
            tables: versions,
            seq: 0,
        };
        commits::create(&loc, &first).await?;
        Self::open(graph_id, uri).await
    }

    /// Opens an existing graph, repairs tables a crashed change left ahead of
    /// the head commit, and loads the head state.
    pub async fn open(graph_id: &str, uri: &str) -> Result<Store, StoreError> {
        let loc = Location::parse(uri)?;
        if let Some(dir) = &loc.local {
            if !dir.join(format!("{COMMITS_TABLE}.lance")).exists() {
                return Err(StoreError::NotAGraph(format!(
                    "{} is not an omnigraph graph (it has no {COMMITS_TABLE}.lance); create one with --init --schema FILE",
                    loc.display
                )));
            }
        }
        let schema_source: String = match &loc.local {
            Some(dir) => std::fs::read_to_string(dir.join(SCHEMA_FILE)).map_err(|e| StoreError::Corrupt(format!("read {SCHEMA_FILE}: {e}")))?,
            None => return Err(StoreError::BadUri(format!("{}: only local paths are supported by this build", loc.display))),
        };
        let schema = GraphSchema::parse(&schema_source).map_err(StoreError::Schema)?;
        let commits_ds = loc.open(COMMITS_TABLE, None).await?;
        let log = CommitLog::new(commits::read_all(&commits_ds).await?);
        let head = log
            .head(crate::contract::BranchName::MAIN)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt("the commit log has no commit on main".into()))?;
        let mut restored = Vec::new();
        for name in table_names(&schema) {
            let pinned = *head.tables.get(name).ok_or_else(|| StoreError::Corrupt(format!("head commit does not pin table {name}")))?;
            let latest = loc.open(name, None).await?;
            let v = latest.version().version;
            if v > pinned {
                tracing::warn!(table = name, latest = v, pinned, "table is ahead of the head commit (a change crashed before committing); restoring");
                restored.push((name.to_string(), restore(&loc, name, pinned).await?));
            } else if v < pinned {
                return Err(StoreError::Corrupt(format!("table {name} is at version {v}, behind the head commit's {pinned}")));
            }
        }
        let schema = Arc::new(schema);
        let mut snapshot = load_snapshot(&loc, &schema, head).await?;
        // The next write must build on the restored version, or Lance sees a conflict.
        snapshot.datasets.extend(restored);
        Ok(Store {
            graph_id: graph_id.to_string(),
            loc,
            schema,
            schema_source: Arc::from(schema_source),
            head: ArcSwap::from_pointee(snapshot),
            log: ArcSwap::from_pointee(log),
            writer: tokio::sync::Mutex::new(Writer { commits: commits_ds, poisoned: false }),
            history: Mutex::new(VecDeque::new()),
        })
    }

    pub fn head(&self) -> Arc<Snapshot> {
        self.head.load_full()
    }

    /// `branch`'s history, newest first.
    pub fn commits(&self, branch: &str) -> Vec<CommitRecord> {
        self.log.load().history(branch)
    }

    /// `commit_id`, when it is in `branch`'s history.
    pub fn commit_on(&self, branch: &str, commit_id: &str) -> Result<CommitRecord, StoreError> {
        self.log
            .load()
            .on_branch(branch, commit_id)
            .cloned()
            .ok_or_else(|| StoreError::NotOnBranch { commit: commit_id.to_string(), branch: branch.to_string() })
    }

    /// The graph at `commit_id`, which must be in `branch`'s history: the
    /// head itself, a cached snapshot, or one loaded from the table versions
    /// the commit pins.
    pub async fn snapshot_at(&self, branch: &str, commit_id: &str) -> Result<Arc<Snapshot>, StoreError> {
        let record = self.commit_on(branch, commit_id)?;
        let head = self.head();
        if head.commit.commit_id == commit_id {
            return Ok(head);
        }
        if let Some(s) = self.cached(commit_id) {
            return Ok(s);
        }
        let snap = Arc::new(load_snapshot(&self.loc, &self.schema, record).await?);
        let mut cache = self.history.lock().map_err(|_| StoreError::Internal("history cache lock".into()))?;
        if cache.len() >= HISTORY_CACHE {
            cache.pop_front();
        }
        cache.push_back(snap.clone());
        Ok(snap)
    }

    fn cached(&self, commit_id: &str) -> Option<Arc<Snapshot>> {
        let cache = self.history.lock().ok()?;
        cache.iter().find(|s| s.commit.commit_id == commit_id).cloned()
    }

    /// Runs `plan` against the head under the writer lock and commits its
    /// result as one graph commit by `actor`.
    pub async fn apply<E, R>(
        &self,
        actor: &str,
        plan: impl FnOnce(&Snapshot) -> Result<(Plan, R), E>,
    ) -> Result<(Arc<Snapshot>, R), ApplyError<E>> {
        let mut w = self.writer.lock().await;
        if w.poisoned {
            return Err(ApplyError::Store(StoreError::Poisoned));
        }
        let base = self.head();
        let (plan, extra) = plan(&base).map_err(ApplyError::Plan)?;
        let snap = match self.commit_plan(&mut w, &base, plan, actor).await {
            Ok(s) => Arc::new(s),
            Err((e, touched)) => {
                let mut repaired = Snapshot::clone(&base);
                for name in touched {
                    let pinned = base.commit.tables.get(&name).copied().unwrap_or_default();
                    match restore(&self.loc, &name, pinned).await {
                        Ok(ds) => {
                            repaired.datasets.insert(name, ds);
                        }
                        Err(re) => {
                            tracing::error!(table = %name, error = %re, "rollback failed; refusing further writes");
                            w.poisoned = true;
                        }
                    }
                }
                self.head.store(Arc::new(repaired));
                return Err(ApplyError::Store(e));
            }
        };
        let mut log = CommitLog::clone(&self.log.load());
        log.push(snap.commit.clone());
        self.log.store(Arc::new(log));
        self.head.store(snap.clone());
        Ok((snap, extra))
    }

    async fn commit_plan(&self, w: &mut Writer, base: &Snapshot, plan: Plan, actor: &str) -> Result<Snapshot, (StoreError, Vec<String>)> {
        let mut touched = Vec::new();
        let mut datasets = base.datasets.clone();
        let mut versions = base.commit.tables.clone();
        let jobs = match self.table_jobs(&plan) {
            Ok(j) => j,
            Err(e) => return Err((e, touched)),
        };
        for job in jobs {
            touched.push(job.table.clone());
            match self.write_table(base.datasets.get(&job.table), &job.table, job.id_column, job.remove, job.batch).await {
                Ok(ds) => {
                    versions.insert(job.table.clone(), ds.version().version);
                    datasets.insert(job.table, ds);
                }
                Err(e) => return Err((e, touched)),
            }
        }
        let record = CommitRecord {
            commit_id: ulid::Ulid::new().to_string(),
            parents: vec![base.commit.commit_id.clone()],
            branch: base.commit.branch.clone(),
            actor_id: actor.to_string(),
            created_at: now_rfc3339(),
            tables: versions,
            seq: self.log.load().last().map_or(0, |c| c.seq) + 1,
        };
        if let Err(e) = commits::append(&mut w.commits, &self.loc, &record).await {
            return Err((e, touched));
        }
        Ok(Snapshot { commit: record, data: plan.data, datasets })
    }

    /// Turns a plan into one write per touched table (ids to delete, rows to append).
    fn table_jobs(&self, plan: &Plan) -> Result<Vec<TableJob<'_>>, StoreError> {
        let mut jobs = Vec::new();
        for (name, tw) in plan.nodes.iter().filter(|(_, tw)| !tw.is_empty()) {
            let t = self.schema.node(name).ok_or_else(|| StoreError::Internal(format!("unknown node type {name}")))?;
            let table = plan.data.nodes.get(name).ok_or_else(|| StoreError::Internal(format!("no data for {name}")))?;
            let rows: Vec<_> = tw.put.iter().filter_map(|k| table.rows.get(k)).collect();
            let batch = if rows.is_empty() { None } else { Some(tables::node_batch(t, &rows)?) };
            let remove = tw.remove.iter().map(|k| k.to_string()).collect();
            jobs.push(TableJob { table: name.clone(), id_column: &t.key_prop().name, remove, batch });
        }
        for (name, tw) in plan.edges.iter().filter(|(_, tw)| !tw.is_empty()) {
            let t = self.schema.edge(name).ok_or_else(|| StoreError::Internal(format!("unknown edge type {name}")))?;
            let table = plan.data.edges.get(name).ok_or_else(|| StoreError::Internal(format!("no data for {name}")))?;
            let rows: Vec<_> = tw.put.iter().filter_map(|(f, to)| table.rows.get(&(f.clone(), to.clone())).map(|p| (f, to, p))).collect();
            let batch = if rows.is_empty() { None } else { Some(tables::edge_batch(t, &rows)?) };
            let remove = tw.remove.iter().map(|(f, to)| edge_id(f, to)).collect();
            jobs.push(TableJob { table: name.clone(), id_column: tables::EDGE_ID, remove, batch });
        }
        Ok(jobs)
    }

    /// One delete (by id column) and one append on a table; returns the new head of that table.
    async fn write_table(
        &self,
        base: Option<&Arc<Dataset>>,
        name: &str,
        id_column: &str,
        remove: Vec<String>,
        batch: Option<RecordBatch>,
    ) -> Result<Arc<Dataset>, StoreError> {
        let mut ds = base.cloned().ok_or_else(|| StoreError::Internal(format!("table {name} is not open")))?;
        if !remove.is_empty() {
            // Built as an expression, never as filter text: keys are user input.
            let ids: Vec<Expr> = remove.into_iter().map(|id| lit(ScalarValue::Utf8(Some(id)))).collect();
            let predicate = Expr::Column(Column::new_unqualified(id_column)).in_list(ids, false);
            ds = DeleteBuilder::from_expr(ds, predicate).execute().await.map_err(|e| StoreError::lance(format!("delete from {name}"), e))?.new_dataset;
        }
        if let Some(batch) = batch {
            let mut next = Dataset::clone(&ds);
            let schema = batch.schema();
            next.append(RecordBatchIterator::new(vec![Ok(batch)], schema), Some(self.loc.write_params(WriteMode::Append)))
                .await
                .map_err(|e| StoreError::lance(format!("append to {name}"), e))?;
            ds = Arc::new(next);
        }
        Ok(ds)
    }
}

/// Makes `pinned` the latest version of `table` again (a new version with
/// that content) and returns the table at that new version.
async fn restore(loc: &Location, table: &str, pinned: u64) -> Result<Arc<Dataset>, StoreError> {
    let mut ds = loc.open(table, Some(pinned)).await?;
    ds.restore().await.map_err(|e| StoreError::lance(format!("restore {table} to v{pinned}"), e))?;
    Ok(Arc::new(loc.open(table, None).await?))
}

async fn load_snapshot(loc: &Location, schema: &GraphSchema, commit: CommitRecord) -> Result<Snapshot, StoreError> {
    let version = |name: &str| commit.tables.get(name).copied().ok_or_else(|| StoreError::Corrupt(format!("commit does not pin table {name}")));
    let node_loads = schema.nodes.iter().map(|t| async {
        let ds = loc.open(&t.name, Some(version(&t.name)?)).await?;
        let table = tables::load_nodes(t, &ds).await?;
        Ok::<_, StoreError>((t.name.clone(), table, Arc::new(ds)))
    });
    let edge_loads = schema.edges.iter().map(|t| async {
        let ds = loc.open(&t.name, Some(version(&t.name)?)).await?;
        let table = tables::load_edges(t, &ds).await?;
        Ok::<_, StoreError>((t.name.clone(), table, Arc::new(ds)))
    });
    let (nodes, edges) = futures::try_join!(try_join_all(node_loads), try_join_all(edge_loads))?;
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
    Ok(Snapshot { commit, data, datasets })
}
