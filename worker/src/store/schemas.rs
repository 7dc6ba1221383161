//! The graph's schemas, one per version: every commit is read with the
//! schema it was written under, so `GET /schema?commit=OLD` and a read at an
//! old commit see the types and properties of their time.
//!
//! Where they are stored:
//!
//! - the schema the graph was created with is `_schema.pg` (it never
//!   changes afterwards), and a commit row whose `schema_id` is null (every
//!   commit before the first schema apply, and every commit of a graph
//!   written before schemas were versioned) is read with it;
//! - a schema apply commit carries its new `.pg` text in its own row
//!   (`schema`), and its `schema_id` is its own commit id; every later commit
//!   built on it repeats that `schema_id`. The text is therefore published
//!   by the same row that publishes the change, atomically, and it is never
//!   stored twice.

use std::collections::HashMap;
use std::sync::Arc;

use super::StoreError;
use crate::contract::GraphSchema;

/// One version of the schema: its text and what it parses to.
#[derive(Debug)]
pub struct SchemaVersion {
    /// The commit that introduced it; `None` for the one in `_schema.pg`.
    pub id: Option<Arc<str>>,
    /// The `.pg` text, exactly as it was given.
    pub source: Arc<str>,
    pub graph: Arc<GraphSchema>,
}

impl SchemaVersion {
    pub fn parse(id: Option<Arc<str>>, source: &str) -> Result<SchemaVersion, StoreError> {
        let graph = GraphSchema::parse(source).map_err(|e| StoreError::Corrupt(format!("stored schema {}: {e}", id.as_deref().unwrap_or("_schema.pg"))))?;
        Ok(SchemaVersion { id, source: Arc::from(source), graph: Arc::new(graph) })
    }
}

/// Every schema version of the graph, by id.
#[derive(Debug, Clone)]
pub struct Schemas {
    genesis: Arc<SchemaVersion>,
    by_id: HashMap<Arc<str>, Arc<SchemaVersion>>,
}

impl Schemas {
    pub fn new(genesis: SchemaVersion) -> Schemas {
        Schemas { genesis: Arc::new(genesis), by_id: HashMap::new() }
    }

    pub fn insert(&mut self, v: Arc<SchemaVersion>) {
        if let Some(id) = v.id.clone() {
            self.by_id.insert(id, v);
        }
    }

    /// The schema a commit with `schema_id` is read with.
    pub fn get(&self, schema_id: Option<&str>) -> Result<Arc<SchemaVersion>, StoreError> {
        match schema_id {
            None => Ok(self.genesis.clone()),
            Some(id) => self.by_id.get(id).cloned().ok_or_else(|| StoreError::Corrupt(format!("no commit in the log carries schema {id}"))),
        }
    }
}
