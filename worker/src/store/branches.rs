//! The branch registry: which branches exist and which commit each points at.
//!
//! A branch is a name and a head commit; its tables are whatever that commit
//! pins, so creating one copies nothing (see `lineage.rs` for how its writes
//! stay apart). Heads are kept in two append-only logs that share one `seq`:
//!
//! - `_commits`: a commit moves the head of the branch it was written on;
//! - `_branches` (this module): ref events, one row each: a branch created
//!   at a commit, moved to a commit (a fast-forward), or deleted.
//!
//! Every branch operation appends exactly one row to one of them, so it is
//! atomic: after a crash a branch exists completely or not at all, and the
//! list survives restarts. Replaying both logs in `seq` order gives every
//! live branch's head ([`replay`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use lance::dataset::{Dataset, WriteMode};

use super::commits::CommitLog;
use super::lineage::Lineages;
use super::location::Location;
use super::log_rows;
use super::StoreError;
use crate::contract::BranchName;

/// The ref log dataset.
pub const REFS_TABLE: &str = "_branches";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefOp {
    /// A new branch, at `head`, made from branch `from`.
    Create,
    /// An existing branch moved to `head` (a fast-forward merge).
    Move,
    Delete,
}

impl RefOp {
    fn as_str(self) -> &'static str {
        match self {
            RefOp::Create => "create",
            RefOp::Move => "move",
            RefOp::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<RefOp> {
        [RefOp::Create, RefOp::Move, RefOp::Delete].into_iter().find(|o| o.as_str() == s)
    }
}

/// One row of `_branches`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefEvent {
    pub seq: i64,
    pub branch: String,
    pub op: RefOp,
    /// The commit the branch points at after the event; empty for a delete.
    pub head: String,
    /// For a create, the branch it was made from; for a move, the branch merged in.
    pub from: String,
    pub actor_id: String,
    /// The `x-request-id` of the request that made the event, when it had one.
    pub request_id: Option<String>,
    pub created_at: String,
}

/// The columns added since the first version of the log (nullable; see [`migrate`]).
fn added_fields() -> Vec<Field> {
    vec![Field::new("request_id", DataType::Utf8, true)]
}

fn schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("branch", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("head", DataType::Utf8, false),
        Field::new("from", DataType::Utf8, false),
        Field::new("actor_id", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
    ];
    fields.extend(added_fields());
    Arc::new(Schema::new(fields))
}

/// Brings a ref log written by an older worker up to today's columns.
pub async fn migrate(ds: &mut Dataset) -> Result<(), StoreError> {
    log_rows::add_missing_columns(ds, &added_fields(), REFS_TABLE).await
}

fn to_batch(e: &RefEvent) -> Result<RecordBatch, StoreError> {
    let s = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v.to_string()])) };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![e.seq])),
        s(&e.branch),
        s(e.op.as_str()),
        s(&e.head),
        s(&e.from),
        s(&e.actor_id),
        s(&e.created_at),
        Arc::new(StringArray::from(vec![e.request_id.as_deref()])),
    ];
    RecordBatch::try_new(schema(), cols).map_err(|e| StoreError::Internal(format!("ref batch: {e}")))
}

/// Opens `_branches`, creating it empty when the graph has none (a graph
/// made before branches existed, or a create that crashed before its first
/// version: Lance then finds no dataset and creates it again).
pub async fn open_or_create(loc: &Location) -> Result<Dataset, StoreError> {
    match loc.open(REFS_TABLE, None).await {
        Ok(ds) => Ok(ds),
        Err(e) if loc.has_versions(REFS_TABLE).await? => Err(e),
        Err(_) => {
            let reader = RecordBatchIterator::new(Vec::<Result<RecordBatch, arrow_schema::ArrowError>>::new(), schema());
            Dataset::write(reader, loc.table_uri(REFS_TABLE).as_str(), Some(loc.log_write_params(WriteMode::Create)))
                .await
                .map_err(|e| StoreError::lance("create _branches", e))
        }
    }
}

/// Appends one ref event: the publish point of a branch create, move or delete.
pub async fn append(ds: &mut Dataset, loc: &Location, e: &RefEvent) -> Result<(), StoreError> {
    log_rows::append(ds, loc, to_batch(e)?, schema(), "append to _branches").await
}

/// Reads every ref event, ordered by `seq`.
pub async fn read_all(ds: &Dataset) -> Result<Vec<RefEvent>, StoreError> {
    let mut out = Vec::new();
    log_rows::each_batch(ds, "_branches", |b| {
        let c = log_rows::Columns { batch: b, table: "_branches" };
        let seq = c.seq()?;
        let (branch, op, head, from, actor, created) = (c.string("branch")?, c.string("op")?, c.string("head")?, c.string("from")?, c.string("actor_id")?, c.string("created_at")?);
        let request_id = c.opt_string("request_id")?;
        for i in 0..b.num_rows() {
            let op = RefOp::parse(op.value(i)).ok_or_else(|| StoreError::Corrupt(format!("_branches: unknown op {:?}", op.value(i))))?;
            out.push(RefEvent {
                seq: seq.value(i),
                branch: branch.value(i).to_string(),
                op,
                head: head.value(i).to_string(),
                from: from.value(i).to_string(),
                actor_id: actor.value(i).to_string(),
                request_id: log_rows::optional(request_id, i),
                created_at: created.value(i).to_string(),
            });
        }
        Ok(())
    })
    .await?;
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// What replaying the two logs gives.
#[derive(Debug)]
pub struct Replayed {
    /// Every live branch → its head commit id.
    pub heads: BTreeMap<String, String>,
    /// Who owns each lineage (tips are filled in when the tables are opened).
    pub lineages: Lineages,
    /// The `seq` the next row of either log takes.
    pub next_seq: i64,
}

/// Replays `_commits` and `_branches` in `seq` order. `main` is live from
/// the first commit on; a commit on a branch that is not live (which the
/// worker never writes) is ignored with a warning rather than resurrecting it.
pub fn replay(log: &CommitLog, refs: &[RefEvent]) -> Result<Replayed, StoreError> {
    let mut heads: BTreeMap<String, String> = BTreeMap::new();
    let mut lineages = Lineages::default();
    let mut next_seq = 0;
    let (mut commits, mut events) = (log.records().peekable(), refs.iter().peekable());
    loop {
        let take_commit = match (commits.peek(), events.peek()) {
            (Some(c), Some(e)) => c.seq < e.seq,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_commit {
            let Some(c) = commits.next() else { break };
            next_seq = next_seq.max(c.seq + 1);
            let live = heads.contains_key(&*c.branch) || (&*c.branch == BranchName::MAIN && c.parents.is_empty());
            if !live {
                tracing::warn!(commit = %c.commit_id, branch = %c.branch, "a commit on a branch that does not exist; ignored");
                continue;
            }
            heads.insert(c.branch.to_string(), c.commit_id.to_string());
            lineages.record(c);
        } else {
            let Some(e) = events.next() else { break };
            next_seq = next_seq.max(e.seq + 1);
            match e.op {
                RefOp::Create | RefOp::Move => {
                    if log.get(&e.head).is_none() {
                        return Err(StoreError::Corrupt(format!("_branches row {} points {} at unknown commit {}", e.seq, e.branch, e.head)));
                    }
                    heads.insert(e.branch.clone(), e.head.clone());
                }
                RefOp::Delete => {
                    heads.remove(&e.branch);
                    lineages.retire(&e.branch);
                }
            }
        }
    }
    if !heads.contains_key(BranchName::MAIN) {
        return Err(StoreError::Corrupt("the commit log has no commit on main".into()));
    }
    Ok(Replayed { heads, lineages, next_seq })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::commits::CommitRecord;

    fn rec(seq: i64, id: &str, branch: &str, parents: &[&str]) -> CommitRecord {
        CommitRecord {
            commit_id: id.into(),
            parents: parents.iter().map(|p| Arc::from(*p)).collect(),
            branch: branch.into(),
            actor_id: "t".into(),
            seq,
            ..Default::default()
        }
    }

    fn ev(seq: i64, branch: &str, op: RefOp, head: &str) -> RefEvent {
        RefEvent { seq, branch: branch.into(), op, head: head.into(), from: "main".into(), actor_id: "t".into(), request_id: None, created_at: String::new() }
    }

    #[test]
    fn replay_orders_both_logs_by_seq() {
        let log = CommitLog::new(vec![rec(0, "m0", "main", &[]), rec(2, "d2", "dev", &["m0"]), rec(3, "m3", "main", &["m0"]), rec(6, "x6", "gone", &["m0"])]);
        let refs = vec![
            ev(1, "dev", RefOp::Create, "m0"),
            ev(4, "main", RefOp::Move, "d2"),
            ev(5, "old", RefOp::Create, "m0"),
            ev(7, "old", RefOp::Delete, ""),
        ];
        let r = replay(&log, &refs).unwrap();
        assert_eq!(r.heads.get("dev").map(String::as_str), Some("d2"));
        assert_eq!(r.heads.get("main").map(String::as_str), Some("d2"), "the move came after m3");
        assert!(!r.heads.contains_key("old"));
        assert!(!r.heads.contains_key("gone"), "a commit never creates a branch");
        assert_eq!(r.next_seq, 8);
    }

    #[test]
    fn a_ref_to_an_unknown_commit_is_corruption() {
        let log = CommitLog::new(vec![rec(0, "m0", "main", &[])]);
        assert!(matches!(replay(&log, &[ev(1, "dev", RefOp::Create, "nope")]), Err(StoreError::Corrupt(_))));
        assert!(matches!(replay(&CommitLog::default(), &[]), Err(StoreError::Corrupt(_))));
    }
}
