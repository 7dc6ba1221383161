//! The write path: one graph commit on one branch, under the writer lock.
//!
//! A commit writes each touched table (a delete and an append per write, on
//! a lineage the branch owns; `lineage.rs`), then appends its commit row,
//! the publish point. A failure before the row lands restores every lineage
//! it extended to the version the head pins; a lineage it forked is simply
//! never pinned.
//!
//! `/change` and merges write each table once ([`Store::apply`]); `/ingest`
//! holds a [`WriteSession`] and writes each table once per batch, on the
//! same lineage, before the one commit row.
//!
//! A delete removes rows by their Lance row addresses, which the state
//! keeps for the tables writes remove rows from ([`row_addrs`]), so a
//! change does not scan the tables it writes.

mod row_addrs;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator};
use lance::dataset::{Dataset, WriteMode};

use super::commits::{self, CommitRecord, TablePin};
use super::lineage::{self, lineage_of};
use super::state::{edge_id, EdgeTable, GraphData, Key, NodeTable, Props, RowAddrs};
use super::schemas::SchemaVersion;
use super::{now_rfc3339, restore, tables, Author, Snapshot, Store, StoreError, Writer};
use crate::contract::{EdgeType, GraphSchema, NodeType};

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

impl<K> Default for TableWrite<K> {
    fn default() -> Self {
        TableWrite { remove: Vec::new(), put: Vec::new() }
    }
}

/// A validated change, ready to commit: the state after it, and per table
/// what to write to get there from the base.
pub struct Plan {
    pub data: GraphData,
    pub nodes: BTreeMap<String, TableWrite<Key>>,
    pub edges: BTreeMap<String, TableWrite<(Key, Key)>>,
}

pub enum ApplyError<E> {
    Plan(E),
    Store(StoreError),
}

impl<E> From<StoreError> for ApplyError<E> {
    fn from(e: StoreError) -> Self {
        ApplyError::Store(e)
    }
}

/// Where a write goes: a branch, and optionally the head it must still be
/// at (`?if_commit=`), checked under the writer lock.
#[derive(Debug, Clone, Copy)]
pub struct WriteTo<'a> {
    pub branch: &'a str,
    pub if_commit: Option<&'a str>,
}

impl<'a> WriteTo<'a> {
    pub fn branch(branch: &'a str) -> WriteTo<'a> {
        WriteTo { branch, if_commit: None }
    }

    pub fn main() -> WriteTo<'static> {
        WriteTo { branch: crate::contract::BranchName::MAIN, if_commit: None }
    }
}

/// One table's share of a commit, ready to write: the ids of rows to
/// delete (they exist in the table) and the rows to append.
pub struct TableBatch {
    pub table: String,
    pub id_column: String,
    pub remove: Vec<String>,
    pub batch: Option<RecordBatch>,
}

impl TableBatch {
    /// Node rows of `t`: `put` (their values in `data`) replaces `remove`.
    pub fn nodes<'k>(t: &NodeType, data: &NodeTable, remove: impl IntoIterator<Item = &'k Key>, put: impl IntoIterator<Item = &'k Key>) -> Result<TableBatch, StoreError> {
        let rows: Vec<_> = put.into_iter().filter_map(|k| data.rows.get(k)).collect();
        Self::node_rows(t, remove, &rows)
    }

    /// Node rows of `t`: `rows` (their properties) replace `remove`.
    pub fn node_rows<'k>(t: &NodeType, remove: impl IntoIterator<Item = &'k Key>, rows: &[&Props]) -> Result<TableBatch, StoreError> {
        let batch = if rows.is_empty() { None } else { Some(tables::node_batch(t, rows)?) };
        let remove = remove.into_iter().map(|k| k.to_string()).collect();
        Ok(TableBatch { table: t.name.clone(), id_column: t.key_prop().name.clone(), remove, batch })
    }

    /// Edge rows of `t`, as [`TableBatch::nodes`].
    pub fn edges<'k>(
        t: &EdgeType,
        data: &EdgeTable,
        remove: impl IntoIterator<Item = &'k (Key, Key)>,
        put: impl IntoIterator<Item = &'k (Key, Key)>,
    ) -> Result<TableBatch, StoreError> {
        let rows: Vec<_> = put.into_iter().filter_map(|(f, to)| data.rows.get(&(f.clone(), to.clone())).map(|p| (f, to, p))).collect();
        Self::edge_rows(t, remove, &rows)
    }

    /// Edge rows of `t`: `rows` (from, to, properties) replace `remove`.
    pub fn edge_rows<'k>(t: &EdgeType, remove: impl IntoIterator<Item = &'k (Key, Key)>, rows: &[(&Key, &Key, &Props)]) -> Result<TableBatch, StoreError> {
        let batch = if rows.is_empty() { None } else { Some(tables::edge_batch(t, rows)?) };
        let remove = remove.into_iter().map(|(f, to)| edge_id(f, to)).collect();
        Ok(TableBatch { table: t.name.clone(), id_column: tables::EDGE_ID.to_string(), remove, batch })
    }

    pub fn rows(&self) -> usize {
        self.batch.as_ref().map_or(0, RecordBatch::num_rows)
    }
}

/// A table a commit wrote: where, and what to undo if the commit fails.
pub(super) struct Written {
    table: String,
    /// The lineage written, at the version the write left it.
    pin: TablePin,
    /// The base dataset, when the write extended its lineage (not a fork):
    /// the version a failed commit restores.
    extended_from: Option<Arc<Dataset>>,
}

/// A commit being written: the tables written so far, on top of `base`.
pub(super) struct Txn {
    pub(super) branch: String,
    pub(super) base: Arc<Snapshot>,
    datasets: BTreeMap<String, Arc<Dataset>>,
    pins: BTreeMap<String, TablePin>,
    written: Vec<Written>,
    /// A schema apply's new `.pg` text and schema; `None` keeps the base's.
    pub(super) new_schema: Option<(Arc<str>, Arc<GraphSchema>)>,
    /// The row addresses of tables this commit forked or wrote, as they are
    /// now (`None`: not known); the others keep the base's.
    addrs: BTreeMap<String, Option<RowAddrs>>,
}

impl Txn {
    pub(super) fn new(branch: &str, base: &Arc<Snapshot>) -> Txn {
        Txn {
            branch: branch.to_string(),
            base: base.clone(),
            datasets: base.datasets.clone(),
            pins: base.commit.tables.to_map(),
            written: Vec::new(),
            new_schema: None,
            addrs: BTreeMap::new(),
        }
    }

    /// The row addresses `table` has in this commit so far: what an earlier
    /// write or a fork left, else the base's.
    fn take_addrs(&mut self, table: &str) -> Option<RowAddrs> {
        match self.addrs.remove(table) {
            Some(a) => a,
            None => self.base.data.addrs.get(table).cloned(),
        }
    }

    /// `table` at `pin`, just created: the commit pins it, and a failure has
    /// nothing of it to restore (nothing else pins it).
    pub(super) fn created(&mut self, table: &str, pin: TablePin, ds: Arc<Dataset>) {
        self.written.push(Written { table: table.to_string(), pin: pin.clone(), extended_from: None });
        self.pins.insert(table.to_string(), pin);
        self.datasets.insert(table.to_string(), ds);
    }

    /// `table` is no longer part of the graph from this commit on; older
    /// commits keep reading it at their pins.
    pub(super) fn dropped(&mut self, table: &str) {
        self.pins.remove(table);
        self.datasets.remove(table);
    }

    /// Records `after`, the table a write on `lineage` left, as this commit's
    /// content of `table`.
    pub(super) fn wrote(&mut self, table: &str, lineage: Option<Arc<str>>, after: Arc<Dataset>) {
        let pin = TablePin { lineage, version: after.version().version };
        if let Some(wr) = self.written.iter_mut().find(|wr| wr.table == table) {
            wr.pin = pin.clone();
        }
        self.pins.insert(table.to_string(), pin);
        self.datasets.insert(table.to_string(), after);
    }
}

impl Store {
    /// The branch head a write builds on, after the checks every write makes
    /// under the writer lock: writes are not stopped, the branch exists, and
    /// its head is `?if_commit=` when given. `/change`, `/ingest` and
    /// schema apply use it.
    pub(super) fn writable_head(&self, w: &Writer, to: WriteTo<'_>) -> Result<Arc<Snapshot>, StoreError> {
        if w.poisoned {
            return Err(StoreError::Poisoned);
        }
        self.expected_head(to)
    }

    /// `to.branch`'s head, when it is `?if_commit=` (if given).
    pub(super) fn expected_head(&self, to: WriteTo<'_>) -> Result<Arc<Snapshot>, StoreError> {
        let head = self.head(to.branch)?;
        if let Some(expected) = to.if_commit {
            if *head.commit.commit_id != *expected {
                return Err(StoreError::PreconditionFailed {
                    branch: to.branch.to_string(),
                    expected: expected.to_string(),
                    head: head.commit.commit_id.to_string(),
                });
            }
        }
        Ok(head)
    }

    /// Runs `plan` against the head of `to.branch` under the writer lock and
    /// commits its result as one graph commit by `author`.
    pub async fn apply<E, R>(
        &self,
        to: WriteTo<'_>,
        author: &Author,
        plan: impl FnOnce(&Snapshot) -> Result<(Plan, R), E>,
    ) -> Result<(Arc<Snapshot>, R), ApplyError<E>> {
        let mut w = self.writer.lock().await;
        let base = self.writable_head(&w, to)?;
        self.loc.check_writer().await?;
        let (plan, extra) = plan(&base).map_err(ApplyError::Plan)?;
        let parents = vec![base.commit.commit_id.clone()];
        let snap = self.commit(&mut w, to.branch, &base, plan, parents, author).await?;
        Ok((snap, extra))
    }

    /// Takes the writer lock for a commit on `to.branch` written batch by
    /// batch. Other writes wait until the session commits, aborts or is dropped.
    pub async fn begin(&self, to: WriteTo<'_>) -> Result<WriteSession<'_>, StoreError> {
        let w = self.writer.lock().await;
        let base = self.writable_head(&w, to)?;
        self.loc.check_writer().await?;
        let txn = Txn::new(to.branch, &base);
        Ok(WriteSession { store: self, w, txn: Some(txn) })
    }

    /// Writes `plan` on `branch` on top of `base` (its head), appends the
    /// commit row with `parents`, and publishes the new head. On failure the
    /// extended lineages are restored and the head keeps its content.
    pub(super) async fn commit(&self, w: &mut Writer, branch: &str, base: &Arc<Snapshot>, plan: Plan, parents: Vec<Arc<str>>, author: &Author) -> Result<Arc<Snapshot>, StoreError> {
        let mut txn = Txn::new(branch, base);
        for job in self.table_jobs(&plan, &base.schema.graph)? {
            if let Err(e) = self.txn_write(w, &mut txn, job).await {
                self.txn_rollback(w, txn).await;
                return Err(e);
            }
        }
        self.txn_finish(w, txn, plan.data, parents, author).await
    }

    /// Writes one table's batch in `txn`: on the lineage the commit already
    /// wrote this table on, or else on the pinned lineage, extended in place
    /// only when this branch owns it at its tip and forked otherwise, so no
    /// other branch's chain moves.
    async fn txn_write(&self, w: &mut Writer, txn: &mut Txn, job: TableBatch) -> Result<(), StoreError> {
        if job.remove.is_empty() && job.batch.is_none() {
            return Ok(());
        }
        let (lineage, start) = self.txn_open(w, txn, &job.table).await?;
        let addrs = txn.take_addrs(&job.table);
        let (after, addrs) = self.write_table(start, &job.table, &job.id_column, job.remove, job.batch, addrs).await?;
        txn.wrote(&job.table, lineage, after);
        txn.addrs.insert(job.table, addrs);
        Ok(())
    }

    /// The lineage `txn` writes `table` on, and the table there to write on
    /// top of: the lineage this commit already wrote, or else the pinned
    /// one, extended in place only when this branch owns it at its tip, and
    /// forked otherwise. The table is registered as written before any
    /// write, so a failure part-way is undone too. Record the write's result
    /// with [`Txn::wrote`].
    pub(super) async fn txn_open(&self, w: &Writer, txn: &mut Txn, table: &str) -> Result<(Option<Arc<str>>, Arc<Dataset>), StoreError> {
        let ds = txn.datasets.get(table).cloned().ok_or_else(|| StoreError::Internal(format!("table {table} is not open")))?;
        let pin = txn.pins.get(table).cloned().ok_or_else(|| StoreError::Internal(format!("table {table} is not pinned")))?;
        if txn.written.iter().any(|wr| wr.table == table) {
            // This commit owns the lineage it wrote, at its tip.
            return Ok((pin.lineage.clone(), ds));
        }
        let (lineage, start, extended_from) = if w.lineages.can_extend(&txn.branch, table, pin.lineage.as_ref(), ds.version().version) {
            (pin.lineage.clone(), ds.clone(), Some(ds.clone()))
        } else {
            let (name, forked) = lineage::fork(&self.loc, table, &ds).await?;
            // A fork holds its parent's fragments: the rows keep their addresses.
            let addrs = txn.take_addrs(table).filter(|a| a.describe(pin.lineage.as_ref(), ds.version().version)).map(|a| RowAddrs {
                lineage: Some(name.clone()),
                version: forked.version().version,
                ..a
            });
            txn.addrs.insert(table.to_string(), addrs);
            (Some(name), Arc::new(forked), None)
        };
        txn.written.push(Written { table: table.to_string(), pin: TablePin { lineage: lineage.clone(), version: start.version().version }, extended_from });
        Ok((lineage, start))
    }

    /// Appends the commit row (the publish point) and publishes the new
    /// head; on failure, rolls `txn` back. A schema apply's commit carries
    /// the new schema's text and is its id.
    pub(super) async fn txn_finish(&self, w: &mut Writer, mut txn: Txn, mut data: GraphData, parents: Vec<Arc<str>>, author: &Author) -> Result<Arc<Snapshot>, StoreError> {
        let commit_id: Arc<str> = Arc::from(ulid::Ulid::new().to_string());
        let (schema, introduced) = match txn.new_schema.take() {
            Some((source, graph)) => (Arc::new(SchemaVersion { id: Some(commit_id.clone()), source: source.clone(), graph }), Some(source)),
            None => (txn.base.schema.clone(), None),
        };
        let record = CommitRecord {
            commit_id,
            parents,
            branch: super::state::intern(&txn.branch),
            actor_id: super::state::intern(&author.actor_id),
            request_id: author.request_id.clone(),
            created_at: now_rfc3339(),
            tables: commits::TablePins::from(&txn.pins),
            schema_id: schema.id.clone(),
            schema_source: introduced,
            seq: Self::take_seq(w),
        };
        if let Err(e) = commits::append(&mut w.commits, &self.loc, &record).await {
            self.txn_rollback(w, txn).await;
            return Err(e);
        }
        if record.schema_source.is_some() {
            self.schemas.rcu(|all| {
                let mut all = super::Schemas::clone(all);
                all.insert(schema.clone());
                all
            });
        }
        // Row addresses of the tables this commit wrote, or none: those of a
        // table written another way (a schema apply, a compaction) are stale.
        for wr in &txn.written {
            match txn.addrs.remove(&wr.table).flatten() {
                Some(a) if a.describe(wr.pin.lineage.as_ref(), wr.pin.version) => data.addrs.insert(wr.table.clone(), a),
                _ => data.addrs.remove(&wr.table),
            };
        }
        data.addrs.retain(|table, _| txn.pins.contains_key(table));
        let snap = Arc::new(Snapshot { commit: record, schema, data, datasets: txn.datasets });
        for wr in &txn.written {
            w.lineages.set_tip(&wr.table, wr.pin.lineage.as_ref(), wr.pin.version);
        }
        w.lineages.record(&snap.commit);
        let mut log = commits::CommitLog::clone(&self.log.load());
        log.push(snap.commit.clone());
        self.log.store(Arc::new(log));
        self.set_head(&txn.branch, snap.clone());
        retire(txn.base);
        Ok(snap)
    }

    /// Undoes `txn`: every lineage it extended is restored to the version
    /// the head pins; lineages it forked are never pinned. The head keeps
    /// its content (at the restored versions). A restore that fails stops
    /// further writes until a restart repairs the table.
    pub(super) async fn txn_rollback(&self, w: &mut Writer, txn: Txn) {
        if let Err(e) = self.loc.check_writer().await {
            // A restore is a write on lineages a newer worker may now own (or
            // ownership is unknown): write nothing; the next open repairs.
            tracing::error!(error = %e, "not rolling back: this worker may no longer own the graph; refusing further writes and stopping");
            w.poisoned = true;
            if let Some(f) = self.loc.fence() {
                f.give_up();
            }
            return;
        }
        let mut repaired = Snapshot::clone(&txn.base);
        for wr in txn.written {
            let Some(from) = wr.extended_from else { continue };
            let lineage = lineage_of(&from);
            match restore(&self.loc, &wr.table, lineage.as_deref(), from.version().version).await {
                Ok(ds) => {
                    w.lineages.set_tip(&wr.table, lineage.as_ref(), ds.version().version);
                    repaired.datasets.insert(wr.table, ds);
                }
                Err(re) => {
                    tracing::error!(table = %wr.table, error = %re, "rollback failed; refusing further writes");
                    w.lineages.forget_tip(&wr.table, lineage.as_ref());
                    w.poisoned = true;
                }
            }
        }
        self.set_head(&txn.branch, Arc::new(repaired));
    }

    /// Turns a plan into one write per touched table (ids to delete, rows
    /// to append), with the types of `schema`.
    fn table_jobs(&self, plan: &Plan, schema: &GraphSchema) -> Result<Vec<TableBatch>, StoreError> {
        let mut jobs = Vec::new();
        for (name, tw) in plan.nodes.iter().filter(|(_, tw)| !tw.is_empty()) {
            let t = schema.node(name).ok_or_else(|| StoreError::Internal(format!("unknown node type {name}")))?;
            let table = plan.data.nodes.get(name).ok_or_else(|| StoreError::Internal(format!("no data for {name}")))?;
            jobs.push(TableBatch::nodes(t, table, &tw.remove, &tw.put)?);
        }
        for (name, tw) in plan.edges.iter().filter(|(_, tw)| !tw.is_empty()) {
            let t = schema.edge(name).ok_or_else(|| StoreError::Internal(format!("unknown edge type {name}")))?;
            let table = plan.data.edges.get(name).ok_or_else(|| StoreError::Internal(format!("no data for {name}")))?;
            jobs.push(TableBatch::edges(t, table, &tw.remove, &tw.put)?);
        }
        Ok(jobs)
    }

    /// One delete (of the rows whose `id_column` is in `remove`) and one
    /// append on a table, on the lineage `ds` is on; returns the table after
    /// them, and its row addresses when known. `addrs` are the addresses
    /// the state has for the table, used only when they are `ds`'s.
    async fn write_table(
        &self,
        mut ds: Arc<Dataset>,
        name: &str,
        id_column: &str,
        remove: Vec<String>,
        batch: Option<RecordBatch>,
        addrs: Option<RowAddrs>,
    ) -> Result<(Arc<Dataset>, Option<RowAddrs>), StoreError> {
        let mut addrs = addrs.filter(|a| a.describe(lineage_of(&ds).as_ref(), ds.version().version));
        if !remove.is_empty() {
            let before = ds.version().version;
            (ds, addrs) = row_addrs::delete(ds, name, id_column, remove, addrs).await?;
            self.loc.check_own_version(name, before, ds.version().version)?;
        }
        if let Some(batch) = batch {
            let mut next = Dataset::clone(&ds);
            let schema = batch.schema();
            next.append(RecordBatchIterator::new(vec![Ok(batch.clone())], schema), Some(self.loc.write_params(WriteMode::Append)))
                .await
                .map_err(|e| StoreError::lance(format!("append to {name}"), e))?;
            self.loc.check_own_version(name, ds.version().version, next.version().version)?;
            addrs = addrs.and_then(|a| row_addrs::appended(a, &ds, &next, &batch, id_column));
            ds = Arc::new(next);
        }
        Ok((ds, addrs))
    }
}

/// Drops `base`, the head a commit replaced, on a blocking thread when this
/// is its last reference. Its state shares all but the paths the commit
/// copied with the new head, and freeing those paths touches nodes spread
/// over the whole map: about 8 ms of a 1,000-op change on a million-node
/// graph, which the writer and the client no longer wait for.
fn retire(base: Arc<Snapshot>) {
    if Arc::strong_count(&base) == 1 && tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::spawn_blocking(move || drop(base));
    }
}

/// One graph commit written batch by batch under the writer lock (`/ingest`):
/// each [`WriteSession::write`] lands on the branch's own lineage of its
/// table, nothing is visible until [`WriteSession::commit`] appends the
/// commit row, and [`WriteSession::abort`] undoes every table write.
pub struct WriteSession<'s> {
    store: &'s Store,
    w: tokio::sync::MutexGuard<'s, Writer>,
    /// `None` once committed or aborted.
    txn: Option<Txn>,
}

impl WriteSession<'_> {
    /// The head this commit builds on.
    pub fn base(&self) -> Option<&Arc<Snapshot>> {
        self.txn.as_ref().map(|t| &t.base)
    }

    /// Writes one batch (deletes, then appends) of one table. On a failure
    /// the session is aborted.
    pub async fn write(&mut self, job: TableBatch) -> Result<(), StoreError> {
        let mut txn = self.txn.take().ok_or_else(|| StoreError::Internal("the write session is over".into()))?;
        match self.store.txn_write(&mut self.w, &mut txn, job).await {
            Ok(()) => {
                self.txn = Some(txn);
                Ok(())
            }
            Err(e) => {
                self.store.txn_rollback(&mut self.w, txn).await;
                Err(e)
            }
        }
    }

    /// Appends the commit row, with the base head as its parent, and
    /// publishes `data` (the state after every batch) as the branch's head.
    pub async fn commit(mut self, data: GraphData, author: &Author) -> Result<Arc<Snapshot>, StoreError> {
        let txn = self.txn.take().ok_or_else(|| StoreError::Internal("the write session is over".into()))?;
        let parents = vec![txn.base.commit.commit_id.clone()];
        self.store.txn_finish(&mut self.w, txn, data, parents, author).await
    }

    /// Undoes every table write; the head is as before.
    pub async fn abort(mut self) {
        if let Some(txn) = self.txn.take() {
            self.store.txn_rollback(&mut self.w, txn).await;
        }
    }
}

impl Drop for WriteSession<'_> {
    /// Dropped mid-way (its future was cancelled): nothing is published, and
    /// a lineage left ahead of its pin is never extended in place again (the
    /// next write forks from the pin; the next start restores it).
    fn drop(&mut self) {
        if let Some(txn) = self.txn.take() {
            tracing::warn!(branch = %txn.branch, "a write session was dropped before it committed; its table writes stay unpublished");
            for wr in &txn.written {
                if let Some(from) = &wr.extended_from {
                    self.w.lineages.forget_tip(&wr.table, lineage_of(from).as_ref());
                }
            }
        }
    }
}
