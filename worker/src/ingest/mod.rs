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
use crate::contract::{EdgeType, GraphSchema, NodeType};
use crate::limits::{LimitExceeded, Limits};
use crate::store::state::{Adjacency, GraphData, Key, KeyHasher, Props, Touches};
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
    let (batch_tx, mut batch_rx) = mpsc::channel::<Pending>(1);
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
        while let Some(pending) = batch_rx.recv().await {
            let job = tokio::task::spawn_blocking(move || pending.build()).await.map_err(|e| StoreError::Internal(format!("build an ingest batch: {e}")))??;
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
        return Ok(Summary { commit_id: base.commit.commit_id.to_string(), lines: 0, nodes: 0, edges: 0 });
    }
    let snap = session.commit(parsed.data, author).await?;
    Ok(Summary { commit_id: snap.commit.commit_id.to_string(), lines: parsed.lines, nodes: parsed.nodes, edges: parsed.edges })
}

/// How many distinct nodes and edges the ingest wrote. A row touched by
/// one batch that did not exist before it is new; one that did existed in
/// the base (counted once, with the set of such keys) or was written by an
/// earlier batch (already counted). Only base rows are remembered, so a
/// fresh graph's ingest keeps no set of what it wrote.
#[derive(Default)]
struct Written {
    nodes: u64,
    edges: u64,
    base_nodes: BTreeMap<String, HashSet<Key, KeyHasher>>,
    base_edges: BTreeMap<String, HashSet<(Key, Key), KeyHasher>>,
}

/// The edges linked since the last flush, per edge type, for the indexer.
type Linked = BTreeMap<String, Vec<(Key, Key)>>;

/// Flushes whose edges may wait for the indexer.
const LINKED_IN_FLIGHT: usize = 2;

/// The parser stage (blocking thread): lines in, table batches out. The
/// edges' adjacency is built beside it by [`index`], on a thread of its
/// own, from the edges each flush linked: it was a third of the parser's
/// time when each link updated it.
fn parse(schema: &GraphSchema, base: &Snapshot, chunks: mpsc::Receiver<Bytes>, batches: mpsc::Sender<Pending>, failed: &AtomicBool, max_line: usize) -> Result<Parsed, Stop> {
    let mut data = base.data.clone();
    let adjacency: BTreeMap<String, Adjacency> = data.edges.iter_mut().map(|(ty, t)| (ty.clone(), t.take_adjacency())).collect();
    let (linked_tx, linked_rx) = std::sync::mpsc::sync_channel::<Linked>(LINKED_IN_FLIGHT);
    let indexer = std::thread::Builder::new()
        .name("ingest-index".into())
        .spawn(move || index(adjacency, linked_rx))
        .map_err(|e| Stop::Store(StoreError::Internal(format!("start the ingest indexer: {e}"))))?;
    let mut w = Working::deferring_adjacency(schema, data);
    let read = read_lines(&mut w, schema, &base.data, chunks, &batches, &linked_tx, failed, max_line);
    drop(linked_tx);
    let built = indexer.join().map_err(|_| Stop::Store(StoreError::Internal("the ingest indexer failed".into())))?;
    let (lines, written) = read?;
    let mut data = w.into_data();
    for (ty, a) in built {
        if let Some(t) = data.edges.get_mut(&ty) {
            t.put_adjacency(a);
        }
    }
    let nodes = written.nodes + written.base_nodes.values().map(|s| s.len() as u64).sum::<u64>();
    let edges = written.edges + written.base_edges.values().map(|s| s.len() as u64).sum::<u64>();
    Ok(Parsed { data, lines, nodes, edges })
}

/// The indexer stage: adds each flush's edges to the adjacency of their
/// table, until the parser hangs up; returns the adjacency of every table.
fn index(mut adjacency: BTreeMap<String, Adjacency>, linked: std::sync::mpsc::Receiver<Linked>) -> BTreeMap<String, Adjacency> {
    while let Ok(batch) = linked.recv() {
        for (ty, mut pairs) in batch {
            adjacency.entry(ty).or_default().add(&mut pairs);
        }
    }
    adjacency
}

/// Reads every line into `w`, flushing a batch every [`BATCH_ROWS`] lines;
/// returns the lines read and what was written.
fn read_lines(
    w: &mut Working<'_>,
    schema: &GraphSchema,
    base: &GraphData,
    mut chunks: mpsc::Receiver<Bytes>,
    batches: &mpsc::Sender<Pending>,
    linked: &std::sync::mpsc::SyncSender<Linked>,
    failed: &AtomicBool,
    max_line: usize,
) -> Result<(u64, Written), Stop> {
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
        lines.feed(&chunk, |n, l| on_line(w, &mut pending, n, l))?;
        if pending >= BATCH_ROWS {
            flush(schema, base, w, &mut written, batches, linked)?;
            pending = 0;
        }
    }
    if failed.load(Ordering::Acquire) {
        return Err(Stop::Cancelled);
    }
    lines.finish(|n, l| on_line(w, &mut pending, n, l))?;
    drop(on_line);
    flush(schema, base, w, &mut written, batches, linked)?;
    Ok((count, written))
}

/// One table's share of a flush, built into a [`TableBatch`] (Arrow
/// columns, edge ids) off the parser thread: the rows travel as the
/// properties the touches recorded, shared, never looked up again.
enum Pending {
    Nodes { t: NodeType, remove: Vec<Key>, rows: Vec<(Key, Props)> },
    Edges { t: EdgeType, remove: Vec<(Key, Key)>, rows: Vec<((Key, Key), Props)> },
}

impl Pending {
    fn build(self) -> Result<TableBatch, StoreError> {
        match self {
            Pending::Nodes { t, remove, rows } => TableBatch::node_rows(&t, &remove, &rows.iter().map(|(_, p)| p).collect::<Vec<_>>()),
            Pending::Edges { t, remove, rows } => TableBatch::edge_rows(&t, &remove, &rows.iter().map(|((f, to), p)| (f, to, p)).collect::<Vec<_>>()),
        }
    }
}

/// Splits one table's touches into the rows to remove (those that existed
/// before: in the base, or written by an earlier batch) and the rows to
/// write, and counts them into `new` (rows that did not exist) or
/// `from_base` (base rows written, counted once however often).
fn split<K: Clone + std::hash::Hash + Eq>(touches: Touches<K>, in_base: impl Fn(&K) -> bool, from_base: &mut HashSet<K, KeyHasher>, new: &mut u64) -> (Vec<K>, Vec<(K, Props)>) {
    let (mut remove, mut rows) = (Vec::new(), Vec::with_capacity(touches.len()));
    for (k, touch) in touches {
        if let Some(row) = touch.row {
            rows.push((k.clone(), row));
        }
        if !touch.existed {
            *new += 1;
        } else {
            if in_base(&k) {
                from_base.insert(k.clone());
            }
            remove.push(k);
        }
    }
    (remove, rows)
}

/// Sends one job per table for what the lines since the last flush
/// touched: their rows as they are now, replacing the rows that existed
/// before for the same keys.
fn flush(
    schema: &GraphSchema,
    base: &GraphData,
    w: &mut Working<'_>,
    written: &mut Written,
    batches: &mpsc::Sender<Pending>,
    linked: &std::sync::mpsc::SyncSender<Linked>,
) -> Result<(), Stop> {
    linked.send(w.take_linked()).map_err(|_| Stop::Store(StoreError::Internal("the ingest indexer stopped".into())))?;
    let (nodes, edges) = w.take_touched();
    let internal = |m: String| Stop::Store(StoreError::Internal(m));
    let mut jobs = Vec::new();
    for (ty, keys) in nodes {
        let t = schema.node(&ty).ok_or_else(|| internal(format!("unknown node type {ty}")))?;
        let in_base = base.nodes.get(&ty);
        let from_base = written.base_nodes.entry(ty).or_default();
        let (remove, rows) = split(keys, |k| in_base.is_some_and(|b| b.rows.contains_key(k)), from_base, &mut written.nodes);
        jobs.push(Pending::Nodes { t: t.clone(), remove, rows });
    }
    for (ty, pairs) in edges {
        let t = schema.edge(&ty).ok_or_else(|| internal(format!("unknown edge type {ty}")))?;
        let in_base = base.edges.get(&ty);
        let from_base = written.base_edges.entry(ty).or_default();
        let (remove, rows) = split(pairs, |p| in_base.is_some_and(|b| b.rows.contains_key(p)), from_base, &mut written.edges);
        jobs.push(Pending::Edges { t: t.clone(), remove, rows });
    }
    for job in jobs {
        batches.blocking_send(job).map_err(|_| Stop::Cancelled)?;
    }
    Ok(())
}
