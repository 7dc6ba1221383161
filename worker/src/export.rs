//! `/export`: every node, then every edge, of one commit as NDJSON, in the
//! line format `/ingest` reads, so export → ingest into an empty graph with
//! the same schema → export gives the same bytes.
//!
//! The order is fixed: node types by name, nodes by key; then edge types by
//! name, edges by `from`, then `to` (byte order of the UTF-8 strings). A
//! line's `props` lists the properties that are set, by name; the `@key`
//! property is left out (it is `key`), and so is an unset optional one
//! (never written as `null`), which ingest reads back as unset.
//!
//! Lines are written from the commit's in-memory snapshot on a blocking
//! thread into chunks of about [`CHUNK_BYTES`], with at most a few chunks
//! queued for the client: memory is one chunk per queued slot and the sorted
//! keys of one table, whatever the graph's size.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::contract::{GraphSchema, Property};
use crate::store::state::{Key, Props};
use crate::store::Snapshot;

/// Bytes written before a chunk is handed to the client.
pub const CHUNK_BYTES: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// The export of `snap` as a streamed body.
pub fn body(schema: Arc<GraphSchema>, snap: Arc<Snapshot>) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut out = Chunks { buf: Vec::with_capacity(CHUNK_BYTES + 4096), tx: Some(tx) };
        if write_all(&schema, &snap, &mut out).is_ok() {
            out.flush();
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    Body::from_stream(stream)
}

/// The client went away; stop writing.
#[derive(Debug)]
struct Gone;

/// Lines gathered into chunks and sent as they fill (kept whole without a sender).
struct Chunks {
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Bytes>>,
}

impl Chunks {
    fn end_line(&mut self) -> Result<(), Gone> {
        self.buf.push(b'\n');
        if let (true, Some(tx)) = (self.buf.len() >= CHUNK_BYTES, &self.tx) {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + 4096));
            tx.blocking_send(Bytes::from(full)).map_err(|_| Gone)?;
        }
        Ok(())
    }

    fn flush(&mut self) {
        if let (false, Some(tx)) = (self.buf.is_empty(), &self.tx) {
            let _ = tx.blocking_send(Bytes::from(std::mem::take(&mut self.buf)));
        }
    }
}

/// Writes `snap` as NDJSON lines into `out`.
fn write_all(schema: &GraphSchema, snap: &Snapshot, out: &mut Chunks) -> Result<(), Gone> {
    let mut nodes: Vec<_> = schema.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for t in nodes {
        let Some(table) = snap.data.nodes.get(&t.name) else { continue };
        let props = sorted_props(&t.props);
        let mut keys: Vec<&Key> = table.rows.keys().collect();
        keys.sort_unstable();
        for key in keys {
            let Some(row) = table.rows.get(key) else { continue };
            let b = &mut out.buf;
            b.extend_from_slice(b"{\"type\":");
            string(b, &t.name);
            b.extend_from_slice(b",\"key\":");
            string(b, key);
            props_field(b, &props, row);
            out.end_line()?;
        }
    }
    let mut edges: Vec<_> = schema.edges.iter().collect();
    edges.sort_by(|a, b| a.name.cmp(&b.name));
    for t in edges {
        let Some(table) = snap.data.edges.get(&t.name) else { continue };
        let props = sorted_props(&t.props);
        let mut froms: Vec<&Key> = table.out.keys().collect();
        froms.sort_unstable();
        for from in froms {
            // A KeySet iterates in key order.
            for to in table.out.get(from).into_iter().flat_map(|s| s.iter()) {
                let Some(row) = table.rows.get(&(from.clone(), to.clone())) else { continue };
                let b = &mut out.buf;
                b.extend_from_slice(b"{\"edge\":");
                string(b, &t.name);
                b.extend_from_slice(b",\"from\":");
                string(b, from);
                b.extend_from_slice(b",\"to\":");
                string(b, to);
                props_field(b, &props, row);
                out.end_line()?;
            }
        }
    }
    Ok(())
}

/// The non-key properties of a type, sorted by name: the order of `props`.
fn sorted_props(props: &[Property]) -> Vec<&str> {
    let mut names: Vec<&str> = props.iter().filter(|p| !p.key).map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names
}

/// `,"props":{…}}`: the set properties among `names`, in that order.
fn props_field(b: &mut Vec<u8>, names: &[&str], row: &Props) {
    b.extend_from_slice(b",\"props\":{");
    let mut first = true;
    for name in names {
        let Some(v) = row.get(*name).filter(|v| !v.is_null()) else { continue };
        if !first {
            b.push(b',');
        }
        first = false;
        string(b, name);
        b.push(b':');
        value(b, v);
    }
    b.extend_from_slice(b"}}");
}

fn string(b: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *b, s);
}

/// A property value: a scalar or a list of scalars (the schema has no
/// objects), so serde_json's output is already canonical.
fn value(b: &mut Vec<u8>, v: &Value) {
    let _ = serde_json::to_writer(&mut *b, v);
}

/// The whole export of `snap` in memory: for tests and small graphs only.
pub fn to_bytes(schema: &GraphSchema, snap: &Snapshot) -> Vec<u8> {
    let mut out = Chunks { buf: Vec::new(), tx: None };
    let _ = write_all(schema, snap, &mut out);
    out.buf
}
