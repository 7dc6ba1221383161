//! Branch operations: create, delete and merge (fast-forward or three-way).
//!
//! Each takes the writer lock, so it sees every write before it and none
//! during it, and publishes with exactly one row: a ref event for create,
//! delete and fast-forward, a commit with two parents for a merge.
//!
//! Schemas: a branch made from another starts with its schema, and a
//! fast-forward takes the source's schema with its head. A three-way merge
//! keeps the target's schema, so it needs the source's schema to be the
//! target's (structurally: text, comments and order aside) or to be the
//! one they shared at their common ancestor. Otherwise (the source applied
//! a schema the target lacks) it is refused, and the source's schema must be
//! applied to the target first. Base and source rows are read as the
//! target's schema has them: what the target dropped is not merged back.

use std::sync::Arc;

use super::branches::RefOp;
use super::schemas::SchemaVersion;
use super::{Author, Snapshot, Store, StoreError};
use crate::contract::BranchName;
use crate::merge::{self, Conflict};
use crate::schema_change::{self, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeResult {
    /// The target already holds every commit of the source.
    AlreadyUpToDate,
    /// The target had no commit of its own: it now points at the source's head.
    FastForward,
    /// A merge commit: parents the target's head, then the source's.
    Merged,
}

impl MergeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MergeResult::AlreadyUpToDate => "already_up_to_date",
            MergeResult::FastForward => "fast_forward",
            MergeResult::Merged => "merged",
        }
    }
}

#[derive(Debug)]
pub enum MergeOutcome {
    /// `commit_id` is the target's head after the merge (unchanged by a dry run).
    Done { result: MergeResult, commit_id: String },
    /// Nothing was written.
    Conflicts(Vec<Conflict>),
    /// A three-way merge whose source applied a schema the target lacks:
    /// nothing was written. The steps turn the target's schema into the source's.
    SchemaDiffers(Vec<Step>),
}

/// The same types and properties (the same version, or two that differ in
/// text only).
fn same_schema(a: &SchemaVersion, b: &SchemaVersion) -> bool {
    a.id == b.id || schema_change::diff(&a.graph, &b.graph).is_empty()
}

fn checked(name: &str) -> Result<BranchName, StoreError> {
    BranchName::parse(name).map_err(|e| StoreError::BadBranch(e.to_string()))
}

impl Store {
    /// Creates `name` at `from`'s head. Nothing is copied: the new branch
    /// shares the head's snapshot until it writes.
    pub async fn create_branch(&self, name: &str, from: &str, author: &Author) -> Result<Arc<Snapshot>, StoreError> {
        let name = checked(name)?;
        let mut w = self.writer.lock().await;
        if w.poisoned {
            return Err(StoreError::Poisoned);
        }
        if self.heads.load().contains_key(name.as_str()) {
            return Err(StoreError::BranchExists(name.to_string()));
        }
        let base = self.head(from)?;
        self.append_ref(&mut w, name.as_str(), RefOp::Create, &base.commit.commit_id, from, author).await?;
        self.set_head(name.as_str(), base.clone());
        tracing::info!(branch = %name, from, head = %base.commit.commit_id, actor = %author.actor_id, "branch created");
        Ok(base)
    }

    /// Deletes `name` (never `main`). Its commits stay in the log but no
    /// branch reaches them, so they can no longer be read; its lineages are
    /// never written again.
    pub async fn delete_branch(&self, name: &str, author: &Author) -> Result<(), StoreError> {
        let name = checked(name)?;
        if name.as_str() == BranchName::MAIN {
            return Err(StoreError::MainIsPermanent);
        }
        let mut w = self.writer.lock().await;
        if w.poisoned {
            return Err(StoreError::Poisoned);
        }
        self.head(name.as_str())?;
        self.append_ref(&mut w, name.as_str(), RefOp::Delete, "", "", author).await?;
        w.lineages.retire(name.as_str());
        let mut heads = super::Heads::clone(&self.heads.load());
        heads.remove(name.as_str());
        self.heads.store(Arc::new(heads));
        tracing::info!(branch = %name, actor = %author.actor_id, "branch deleted");
        Ok(())
    }

    /// Merges `source` into `target`: nothing to do, a fast-forward, or a
    /// three-way merge against their newest common ancestor, committed with
    /// two parents. A conflict, or `dry_run`, writes nothing.
    pub async fn merge(&self, source: &str, target: &str, dry_run: bool, author: &Author) -> Result<MergeOutcome, StoreError> {
        let mut w = self.writer.lock().await;
        if w.poisoned && !dry_run {
            return Err(StoreError::Poisoned);
        }
        if !dry_run {
            self.loc.check_writer().await?;
        }
        let (src, tgt) = (self.head(source)?, self.head(target)?);
        let (src_id, tgt_id) = (src.commit.commit_id.clone(), tgt.commit.commit_id.clone());
        let log = self.log.load_full();
        let done = |result, commit_id: &str| Ok(MergeOutcome::Done { result, commit_id: commit_id.to_string() });
        if log.reaches(&tgt_id, &src_id).is_some() {
            return done(MergeResult::AlreadyUpToDate, &tgt_id);
        }
        if log.reaches(&src_id, &tgt_id).is_some() {
            if dry_run {
                return done(MergeResult::FastForward, &tgt_id);
            }
            self.append_ref(&mut w, target, RefOp::Move, &src_id, source, author).await?;
            self.set_head(target, src.clone());
            tracing::info!(source, target, head = %src_id, actor = %author.actor_id, "fast-forward");
            return done(MergeResult::FastForward, &src_id);
        }
        let base = log
            .merge_base(&tgt_id, &src_id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("{source} and {target} have no common commit")))?;
        let base = self.snapshot_of(base).await?;
        let (ours, theirs) = (&tgt.schema, &src.schema);
        if !same_schema(theirs, ours) && !same_schema(theirs, &base.schema) {
            return Ok(MergeOutcome::SchemaDiffers(schema_change::diff(&ours.graph, &theirs.graph).steps));
        }
        let conformed = |s: &Snapshot| if same_schema(&s.schema, ours) { s.data.clone() } else { schema_change::conform(&s.data, &s.schema.graph, &ours.graph) };
        let plan = match merge::three_way(&ours.graph, &conformed(&base), &tgt.data, &conformed(&src)) {
            Ok(plan) => plan,
            Err(conflicts) => return Ok(MergeOutcome::Conflicts(conflicts)),
        };
        if dry_run {
            return done(MergeResult::Merged, &tgt_id);
        }
        let snap = self.commit(&mut w, target, &tgt, plan, vec![tgt_id, src_id], author).await?;
        tracing::info!(source, target, commit = %snap.commit.commit_id, actor = %author.actor_id, "merged");
        done(MergeResult::Merged, &snap.commit.commit_id)
    }
}
