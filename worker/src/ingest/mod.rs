//! `/ingest`: an NDJSON body of nodes and edges loaded as ONE graph commit,
//! streamed, never held whole (DESIGN.md section 5, "Ingest and export").
//!
//! Three stages run at once, joined by small bounded channels, so memory is
//! the graph's state plus a few chunks and one batch whatever the body's size:
//!
//! 1. the **reader** (async) takes the body chunk by chunk and counts it
//!    against `limits.max_ingest_bytes`;
//! 2. the **parser** (a blocking thread) splits lines, validates each with
//!    `/change`'s code against the branch head plus every earlier line, and
//!    every [`BATCH_ROWS`] lines turns what they touched into Arrow batches;
//! 3. the **writer** (async) appends each batch to its table, on the
//!    branch's own lineage, inside one [`WriteSession`] that holds the
//!    writer lock from the first byte to the commit row.
//!
//! Nothing is visible until the commit row: a bad line, a body past the
//! limit, a client that goes away or a storage error aborts the session,
//! which restores every table written ([`WriteSession::abort`]), and the
//! branch head and its in-memory state are as before.

pub mod line;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::change::Working;
use crate::contract::GraphSchema;
use crate::limits::{LimitExceeded, Limits};
use crate::store::state::{GraphData, Key};
use crate::store::{Author, Snapshot, Store, StoreError, TableBatch, WriteTo};
use line::{Kind, LineError, Lines};

/// Lines validated between two table writes: each write is one Lance append
/// per touched table, so a million lines make about twenty versions of a table.
pub const BATCH_ROWS: usize = 50_000;
/// Body chunks waiting for the parser.
const CHUNKS_IN_FLIGHT: usize = 16;

/// The answer: `{"commit_id", "lines", "nodes", "edges"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub commit_id: String,
    /// Node and edge lines read (blank lines are not counted).
    pub lines: u64,
    /// Distinct nodes written.
    pub nodes: u64,
    /// Distinct edges written.
    pub edges: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// 400, with `details.line`.
    #[error("{0}; nothing was written")]
    Line(LineError),
    /// 413.
    #[error("{0}")]
    TooLarge(LimitExceeded),
    /// The body could not be read (the client went away): 400.
    #[error("the request body could not be read: {0}; nothing was written")]
    Body(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LineError> for IngestError {
    fn from(e: LineError) -> IngestError {
        IngestError::Line(e)
    }
}

/// Why the parser stopped early.
enum Stop {
    Line(LineError),
    /// The writer or the reader gave up; their error is the answer.
    Cancelled,
    Store(StoreError),
}

impl From<LineError> for Stop {
    fn from(e: LineError) -> Stop {
        Stop::Line(e)
    }
}

/// What the parser hands back when the body is all read and written.
struct Parsed {
    data: GraphData,
    lines: u64,
    nodes: u64,
    edges: u64,
}

/// Loads `body` into `to.branch` as one commit by `author`. Run it in a task
/// of its own: it must finish (commit or abort) even if its caller is dropped.
pub async fn run(store: Arc<Store>, to: WriteTo<'_>, author: &Author, body: Body, limits: Limits) -> Result<Summary, IngestError> {
    let mut session = store.begin(to).await?;
    let base = session.base().cloned().ok_or_else(|| StoreError::Internal("a new write session has no base".into()))?;
    let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let (batch_tx, mut batch_rx) = mpsc::channel::<TableBatch>(1);
    // Set by the reader when the body failed: the parser must not take the
    // end of its chunks for the end of the body.
    let failed = Arc::new(AtomicBool::new(false));

    let parser = {
        let (schema, base, failed) = (base.schema.graph.clone(), base.clone(), failed.clone());
        tokio::task::spawn_blocking(move || parse(&schema, &base, chunk_rx, batch_tx, &failed, limits.max_body_bytes))
    };
    let reader = async move {
        let mut stream = body.into_data_stream();
        let mut total: u64 = 0;
        let result = loop {
            let Some(chunk) = stream.next().await else { break Ok(()) };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => break Err(IngestError::Body(e.to_string())),
            };
            total = total.saturating_add(chunk.len() as u64);
            if total > limits.max_ingest_bytes {
                break Err(IngestError::TooLarge(limits.ingest_too_large()));
            }
            if chunk_tx.send(chunk).await.is_err() {
                // The parser stopped; its result says why.
                break Ok(());
            }
        };
        if result.is_err() {
            failed.store(true, Ordering::Release);
        }
        result
    };
    let writer = async {
        while let Some(job) = batch_rx.recv().await {
            let rows = job.rows();
            session.write(job).await?;
            tracing::debug!(rows, "ingest batch written");
        }
        Ok::<(), StoreError>(())
    };
    let (read, written) = tokio::join!(reader, writer);
    let parsed = parser.await.map_err(|e| StoreError::Internal(format!("the ingest parser failed: {e}")));

    // The first cause wins: the body (its size, the client), then a bad
    // line, then storage. `abort` is a no-op after a failed write, which
    // already rolled back.
    let outcome = match (read, parsed, written) {
        (Err(e), _, _) => Err(e),
        (Ok(()), Ok(Err(Stop::Line(e))), _) => Err(IngestError::Line(e)),
        (Ok(()), _, Err(e)) | (Ok(()), Ok(Err(Stop::Store(e))), Ok(())) | (Ok(()), Err(e), Ok(())) => Err(IngestError::Store(e)),
        (Ok(()), Ok(Err(Stop::Cancelled)), Ok(())) => Err(IngestError::Store(StoreError::Internal("the ingest stopped without a cause".into()))),
        (Ok(()), Ok(Ok(p)), Ok(())) => Ok(p),
    };
    let parsed = match outcome {
        Ok(p) => p,
        Err(e) => {
            session.abort().await;
            return Err(e);
        }
    };
    if parsed.lines == 0 {
        // Nothing to write: no commit; the answer names the head as it is.
        session.abort().await;
        return Ok(Summary { commit_id: base.commit.commit_id.clone(), lines: 0, nodes: 0, edges: 0 });
    }
    let snap = session.commit(parsed.data, author).await?;
    Ok(Summary { commit_id: snap.commit.commit_id.clone(), lines: parsed.lines, nodes: parsed.nodes, edges: parsed.edges })
}

/// Every node and edge an earlier batch of this ingest wrote, per table: a
/// key touched again must first be deleted from its table.
#[derive(Default)]
struct Written {
    nodes: BTreeMap<String, HashSet<Key>>,
    edges: BTreeMap<String, HashSet<(Key, Key)>>,
}

/// The parser stage (blocking thread): lines in, table batches out.
fn parse(schema: &GraphSchema, base: &Snapshot, mut chunks: mpsc::Receiver<Bytes>, batches: mpsc::Sender<TableBatch>, failed: &AtomicBool, max_line: usize) -> Result<Parsed, Stop> {
    let mut w = Working::new(schema, base.data.clone());
    let mut lines = Lines::new(max_line);
    let mut written = Written::default();
    // Node and edge lines: in all, and since the last flush.
    let (mut count, mut pending) = (0u64, 0usize);
    let mut on_line = |w: &mut Working<'_>, pending: &mut usize, n: u64, l: &[u8]| -> Result<(), Stop> {
        if line::apply(w, n, l)? != Kind::Blank {
            count += 1;
            *pending += 1;
        }
        Ok(())
    };
    while let Some(chunk) = chunks.blocking_recv() {
        lines.feed(&chunk, |n, l| on_line(&mut w, &mut pending, n, l))?;
        if pending >= BATCH_ROWS {
            flush(schema, &base.data, &mut w, &mut written, &batches)?;
            pending = 0;
        }
    }
    if failed.load(Ordering::Acquire) {
        return Err(Stop::Cancelled);
    }
    lines.finish(|n, l| on_line(&mut w, &mut pending, n, l))?;
    drop(on_line);
    flush(schema, &base.data, &mut w, &mut written, &batches)?;
    let nodes = written.nodes.values().map(|s| s.len() as u64).sum();
    let edges = written.edges.values().map(|s| s.len() as u64).sum();
    Ok(Parsed { data: w.into_data(), lines: count, nodes, edges })
}

/// Sends one batch per table for what the lines since the last flush
/// touched: their rows as they are now, replacing the rows the base or an
/// earlier batch holds for the same keys.
fn flush(schema: &GraphSchema, base: &GraphData, w: &mut Working<'_>, written: &mut Written, batches: &mpsc::Sender<TableBatch>) -> Result<(), Stop> {
    let (nodes, edges) = w.take_touched();
    let internal = |m: String| Stop::Store(StoreError::Internal(m));
    let mut jobs = Vec::new();
    for (ty, keys) in nodes {
        let t = schema.node(&ty).ok_or_else(|| internal(format!("unknown node type {ty}")))?;
        let table = w.data().nodes.get(&ty).ok_or_else(|| internal(format!("no data for {ty}")))?;
        let in_base = base.nodes.get(&ty);
        let before = written.nodes.entry(ty).or_default();
        let remove: Vec<&Key> = keys.iter().filter(|k| before.contains(*k) || in_base.is_some_and(|b| b.rows.contains_key(*k))).collect();
        jobs.push(TableBatch::nodes(t, table, remove, &keys).map_err(Stop::Store)?);
        before.extend(keys);
    }
    for (ty, pairs) in edges {
        let t = schema.edge(&ty).ok_or_else(|| internal(format!("unknown edge type {ty}")))?;
        let table = w.data().edges.get(&ty).ok_or_else(|| internal(format!("no data for {ty}")))?;
        let in_base = base.edges.get(&ty);
        let before = written.edges.entry(ty).or_default();
        let remove: Vec<&(Key, Key)> = pairs.iter().filter(|p| before.contains(*p) || in_base.is_some_and(|b| b.rows.contains_key(*p))).collect();
        jobs.push(TableBatch::edges(t, table, remove, &pairs).map_err(Stop::Store)?);
        before.extend(pairs);
    }
    for job in jobs {
        batches.blocking_send(job).map_err(|_| Stop::Cancelled)?;
    }
    Ok(())
}
