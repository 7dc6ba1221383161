//! The write path: one graph commit on one branch, under the writer lock.
//!
//! A commit writes each touched table (at most one delete and one append,
//! on a lineage the branch owns; `lineage.rs`), then appends its commit row,
//! the publish point. A failure before the row lands restores every lineage
//! it extended to the version the head pins; a lineage it forked is simply
//! never pinned.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator};
use datafusion_common::{Column, ScalarValue};
use datafusion_expr::{lit, Expr};
use lance::dataset::{Dataset, DeleteBuilder, WriteMode};

use super::commits::{self, CommitRecord, TablePin};
use super::lineage::{self, lineage_of};
use super::state::{edge_id, GraphData, Key};
use super::{now_rfc3339, restore, tables, Snapshot, Store, StoreError, Writer};

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

/// One table's share of a commit, ready to write.
struct TableJob<'a> {
    table: String,
    id_column: &'a str,
    remove: Vec<String>,
    batch: Option<RecordBatch>,
}

/// A table a commit wrote: where, and what to undo if the commit fails.
struct Written {
    table: String,
    /// The lineage written, at the version the write left it.
    pin: TablePin,
    /// The base dataset, when the write extended its lineage (not a fork):
    /// the version a failed commit restores.
    extended_from: Option<Arc<Dataset>>,
}

impl Store {
    /// The branch head a write builds on, after the checks every write makes
    /// under the writer lock: writes are not stopped, the branch exists, and
    /// its head is `?if_commit=` when given. `/change` uses it today; ingest
    /// and schema apply are to use it too.
    fn writable_head(&self, w: &Writer, to: WriteTo<'_>) -> Result<Arc<Snapshot>, StoreError> {
        if w.poisoned {
            return Err(StoreError::Poisoned);
        }
        let head = self.head(to.branch)?;
        if let Some(expected) = to.if_commit {
            if head.commit.commit_id != expected {
                return Err(StoreError::PreconditionFailed {
                    branch: to.branch.to_string(),
                    expected: expected.to_string(),
                    head: head.commit.commit_id.clone(),
                });
            }
        }
        Ok(head)
    }

    /// Runs `plan` against the head of `to.branch` under the writer lock and
    /// commits its result as one graph commit by `actor`.
    pub async fn apply<E, R>(
        &self,
        to: WriteTo<'_>,
        actor: &str,
        plan: impl FnOnce(&Snapshot) -> Result<(Plan, R), E>,
    ) -> Result<(Arc<Snapshot>, R), ApplyError<E>> {
        let mut w = self.writer.lock().await;
        let base = self.writable_head(&w, to)?;
        let (plan, extra) = plan(&base).map_err(ApplyError::Plan)?;
        let parents = vec![base.commit.commit_id.clone()];
        let snap = self.commit(&mut w, to.branch, &base, plan, parents, actor).await?;
        Ok((snap, extra))
    }

    /// Writes `plan` on `branch` on top of `base` (its head), appends the
    /// commit row with `parents`, and publishes the new head. On failure the
    /// extended lineages are restored and the head keeps its content.
    pub(super) async fn commit(&self, w: &mut Writer, branch: &str, base: &Arc<Snapshot>, plan: Plan, parents: Vec<String>, actor: &str) -> Result<Arc<Snapshot>, StoreError> {
        let mut written = Vec::new();
        let result = self.write_commit(w, branch, base, plan, parents, actor, &mut written).await;
        match result {
            Ok(snap) => {
                let snap = Arc::new(snap);
                for wr in &written {
                    w.lineages.set_tip(&wr.table, wr.pin.lineage.as_ref(), wr.pin.version);
                }
                w.lineages.record(&snap.commit);
                let mut log = commits::CommitLog::clone(&self.log.load());
                log.push(snap.commit.clone());
                self.log.store(Arc::new(log));
                self.set_head(branch, snap.clone());
                Ok(snap)
            }
            Err(e) => {
                let mut repaired = Snapshot::clone(base);
                for wr in written {
                    let Some(from) = wr.extended_from else { continue };
                    let lineage = lineage_of(&from);
                    match restore(&self.loc, &wr.table, lineage.as_deref(), from.version().version).await {
                        Ok(ds) => {
                            w.lineages.set_tip(&wr.table, lineage.as_ref(), ds.version().version);
                            repaired.datasets.insert(wr.table, ds);
                        }
                        Err(re) => {
                            tracing::error!(table = %wr.table, error = %re, "rollback failed; refusing further writes");
                            w.poisoned = true;
                        }
                    }
                }
                self.set_head(branch, Arc::new(repaired));
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_commit(
        &self,
        w: &mut Writer,
        branch: &str,
        base: &Snapshot,
        plan: Plan,
        parents: Vec<String>,
        actor: &str,
        written: &mut Vec<Written>,
    ) -> Result<Snapshot, StoreError> {
        let mut datasets = base.datasets.clone();
        let mut pins = base.commit.tables.clone();
        for job in self.table_jobs(&plan)? {
            let ds = base.datasets.get(&job.table).cloned().ok_or_else(|| StoreError::Internal(format!("table {} is not open", job.table)))?;
            let pin = pins.get(&job.table).cloned().ok_or_else(|| StoreError::Internal(format!("table {} is not pinned", job.table)))?;
            // Extend the lineage in place only when this branch owns it at
            // its tip; otherwise fork it, so no other branch's chain moves.
            let (lineage, start, extended_from) = if w.lineages.can_extend(branch, &job.table, pin.lineage.as_ref(), ds.version().version) {
                (pin.lineage.clone(), ds.clone(), Some(ds.clone()))
            } else {
                let (name, forked) = lineage::fork(&self.loc, &job.table, &ds).await?;
                (Some(name), Arc::new(forked), None)
            };
            // Registered before writing, so a failure part-way is undone too.
            written.push(Written { table: job.table.clone(), pin: TablePin { lineage: lineage.clone(), version: start.version().version }, extended_from });
            let after = self.write_table(start, &job.table, job.id_column, job.remove, job.batch).await?;
            let pin = TablePin { lineage, version: after.version().version };
            if let Some(last) = written.last_mut() {
                last.pin = pin.clone();
            }
            pins.insert(job.table.clone(), pin);
            datasets.insert(job.table, after);
        }
        let record = CommitRecord {
            commit_id: ulid::Ulid::new().to_string(),
            parents,
            branch: branch.to_string(),
            actor_id: actor.to_string(),
            created_at: now_rfc3339(),
            tables: pins,
            seq: Self::take_seq(w),
        };
        commits::append(&mut w.commits, &self.loc, &record).await?;
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

    /// One delete (by id column) and one append on a table, on the lineage
    /// `ds` is on; returns the table after them.
    async fn write_table(&self, mut ds: Arc<Dataset>, name: &str, id_column: &str, remove: Vec<String>, batch: Option<RecordBatch>) -> Result<Arc<Dataset>, StoreError> {
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
