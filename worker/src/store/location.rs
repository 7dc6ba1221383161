//! Where a graph lives, and how each of its Lance datasets is opened.
//!
//! A graph URI is a local path (relative paths resolve against the current
//! directory) or an object-store URL.
//!
//! Durability on a local path. Lance 14 writes a local table's data,
//! deletion and transaction files itself, renamed into place without
//! fsync, and only its manifests through the object store (which
//! [`FsyncLocalStore`] makes fsync). So nothing a change wrote is known to
//! be on disk until the commit row that publishes it, and that row's
//! append first calls [`Location::sync_tables`] (`syncfs` on the graph's
//! file system). The two logs, `_commits` and `_branches`, are opened
//! through Lance's `file-object-store` scheme instead
//! ([`Location::table_uri`]): every file of theirs goes through the
//! fsyncing object store, so a log's manifest never reaches the disk before
//! its row. They are small and read whole at start, so the slower path
//! costs nothing that matters.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lance::dataset::builder::DatasetBuilder;
use lance::dataset::{Dataset, WriteMode, WriteParams};
use lance::io::{ObjectStoreParams, ObjectStoreRegistry, WrappingObjectStore};
use lance::session::Session;
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore as OsObjectStore;

use super::writer_fence::WriterFence;
use super::StoreError;
use crate::contract::object_uri::ObjectUri;
use crate::contract::paths::normalize_lexically;

/// The file that holds the graph's `.pg` schema source, next to the datasets.
pub const SCHEMA_FILE: &str = "_schema.pg";
/// The commit log dataset.
pub const COMMITS_TABLE: &str = "_commits";

/// The budget of Lance's index cache for one graph (every table shares it).
pub const INDEX_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// The budget of Lance's metadata cache for one graph: manifests, fragment
/// metadata and deletion vectors of the versions read.
pub const METADATA_CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Location {
    /// The URI the user gave, for messages.
    pub display: String,
    /// Absolute path when the graph is on the local file system.
    pub local: Option<PathBuf>,
    root: String,
    /// One Lance session for every dataset of the graph, opened or written,
    /// with bounded caches. Without it each open makes its own session with
    /// Lance's defaults (a 6 GiB index cache and a 1 GiB metadata cache),
    /// and a worker that commits for hours fills them with the deletion
    /// vectors and manifests of versions it never reads again: the soak saw
    /// a worker holding 4,000 nodes grow past 1 GiB (docs/reliability.md).
    session: Arc<Session>,
    /// The two logs' own session, with a small metadata cache. A log is read
    /// whole once, when the graph opens, and then only appended to, so what
    /// that read caches (every log file's metadata) would never be read
    /// again; in the graph's session it held about 15 MiB of a 20,000-commit
    /// worker's 33 MiB of heap for its whole life (docs/reliability.md).
    log_session: Arc<Session>,
    /// This worker's writer claim on object storage, shared by every clone
    /// (`writer_fence`); empty on a local path.
    writer: Arc<std::sync::OnceLock<WriterFence>>,
}

fn bounded_session() -> Arc<Session> {
    Arc::new(Session::new(INDEX_CACHE_BYTES, METADATA_CACHE_BYTES, Arc::new(ObjectStoreRegistry::default())))
}

fn log_session() -> Arc<Session> {
    Arc::new(Session::new(0, LOG_METADATA_CACHE_BYTES, Arc::new(ObjectStoreRegistry::default())))
}

/// The logs' metadata cache: their latest manifest and a few files' metadata.
pub const LOG_METADATA_CACHE_BYTES: usize = 2 * 1024 * 1024;

impl Location {
    pub fn parse(uri: &str) -> Result<Location, StoreError> {
        if uri.trim().is_empty() {
            return Err(StoreError::BadUri("the graph URI is empty".into()));
        }
        match crate::contract::paths::local_path(uri) {
            Some(p) => Self::local(uri, Path::new(p)),
            None => {
                // One strict spelling (see `object_uri`): the objects a graph
                // owns, and a purge deletes, are never in doubt.
                let parsed = ObjectUri::parse(uri).map_err(|e| StoreError::BadUri(e.to_string()))?;
                if !cfg!(feature = "s3") {
                    return Err(StoreError::BadUri(format!("{uri}: this worker was built without the `s3` feature")));
                }
                Ok(Location { display: uri.to_string(), local: None, root: parsed.to_string(), session: bounded_session(), log_session: log_session(), writer: Arc::default() })
            }
        }
    }

    fn local(display: &str, path: &Path) -> Result<Location, StoreError> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| StoreError::Io(format!("current dir: {e}")))?.join(path)
        };
        let abs = normalize_lexically(&abs);
        let root = abs.to_str().ok_or_else(|| StoreError::BadUri(format!("{display}: path is not UTF-8")))?.to_string();
        Ok(Location { display: display.to_string(), local: Some(abs), root, session: bounded_session(), log_session: log_session(), writer: Arc::default() })
    }

    /// The URI Lance opens `table` at: the graph's root and the table's
    /// folder; a log on a local path takes the `file-object-store` scheme
    /// (the same files, written through the fsyncing object store; see the
    /// module's comment).
    pub fn table_uri(&self, table: &str) -> String {
        if self.local.is_some() && LOG_TABLES.contains(&table) {
            return format!("file-object-store://{}/{}.lance", self.root, table);
        }
        format!("{}/{}.lance", self.root, table)
    }

    /// Makes every file written so far on the graph's local file system
    /// durable (`syncfs`), before a log row publishes them. One call covers
    /// every table a commit wrote, whatever their number; it also flushes
    /// other writers' dirty pages on that file system. No-op for an
    /// object-store URI, whose writes are durable when they return.
    pub async fn sync_tables(&self) -> Result<(), StoreError> {
        let Some(dir) = self.local.clone() else { return Ok(()) };
        tokio::task::spawn_blocking(move || sync_file_system(&dir).map_err(|e| StoreError::Io(format!("sync {}: {e}", dir.display()))))
            .await
            .map_err(|e| StoreError::Internal(format!("sync task: {e}")))?
    }

    fn store_params(&self) -> ObjectStoreParams {
        let mut params = ObjectStoreParams::default();
        if self.local.is_some() {
            params.object_store_wrapper = Some(Arc::new(FsyncLocalStore));
        }
        params
    }

    pub fn write_params(&self, mode: WriteMode) -> WriteParams {
        WriteParams { mode, store_params: Some(self.store_params()), session: Some(self.session.clone()), ..WriteParams::default() }
    }

    /// [`Location::write_params`] for a log table (its own small session).
    pub fn log_write_params(&self, mode: WriteMode) -> WriteParams {
        WriteParams { session: Some(self.log_session.clone()), ..self.write_params(mode) }
    }

    /// The session `table` is opened with: the logs' for a log, the graph's otherwise.
    fn session_for(&self, table: &str) -> Arc<Session> {
        if LOG_TABLES.contains(&table) {
            self.log_session.clone()
        } else {
            self.session.clone()
        }
    }

    pub async fn open(&self, table: &str, version: Option<u64>) -> Result<Dataset, StoreError> {
        self.open_on(table, None, version).await
    }

    /// Opens `table` on `lineage` (a Lance branch; `None` is Lance's main),
    /// at `version` or at the lineage's latest version.
    pub async fn open_on(&self, table: &str, lineage: Option<&str>, version: Option<u64>) -> Result<Dataset, StoreError> {
        let mut b = DatasetBuilder::from_uri(self.table_uri(table)).with_store_params(self.store_params()).with_session(self.session_for(table));
        match (lineage, version) {
            (Some(l), v) => b = b.with_branch(l, v),
            (None, Some(v)) => b = b.with_version(v),
            (None, None) => {}
        }
        b.load().await.map_err(|e| StoreError::lance(format!("open {table}{}", lineage.map(|l| format!(" on {l}")).unwrap_or_default()), e))
    }

    /// The object-store parameters every dataset of this graph is opened and
    /// written with (fsync on for local paths).
    pub fn params(&self) -> ObjectStoreParams {
        self.store_params()
    }

    /// The graph's root on its object store, for what Lance does not own
    /// (`_schema.pg`, listing, purge). Local paths have their own code.
    async fn object_root(&self) -> Result<(Arc<lance::io::ObjectStore>, ObjectPath), StoreError> {
        lance::io::ObjectStore::from_uri_and_params(self.session.store_registry(), &self.root, &self.store_params())
            .await
            .map_err(|e| StoreError::lance(format!("open the object store of {}", self.display), e))
    }

    /// Claims the graph's writer epoch on object storage (`writer_fence`);
    /// nothing on a local path.
    pub async fn claim_writer(&self, who: &str) -> Result<(), StoreError> {
        if self.local.is_some() || self.writer.get().is_some() {
            return Ok(());
        }
        let (store, root) = self.object_root().await?;
        let fence = WriterFence::claim(store, &root, who).await?;
        let _ = self.writer.set(fence);
        Ok(())
    }

    /// Refuses a write once a newer worker claimed the graph. Every write
    /// checks under the writer lock, and every log row right before it is
    /// appended.
    pub async fn check_writer(&self) -> Result<(), StoreError> {
        match self.writer.get() {
            Some(f) => f.check().await,
            None => Ok(()),
        }
    }

    pub fn fence(&self) -> Option<&WriterFence> {
        self.writer.get()
    }

    /// After one Lance write on `table` that started at version `before`:
    /// refuses a result more than one version on, which means another
    /// process committed to the table in between and Lance rebased this
    /// write over it (appends and deletes never conflict in Lance), so the
    /// result would hold rows no commit of this graph wrote. Object storage
    /// only, where a replaced worker may still be finishing a write; on a
    /// local path this worker is the table's only writer.
    pub fn check_own_version(&self, table: &str, before: u64, after: u64) -> Result<(), StoreError> {
        if self.writer.get().is_some() && after > before + 1 {
            tracing::error!(table, before, after, "a table moved by more than this write: another writer committed to it meanwhile");
            return Err(StoreError::ForeignWrite(table.to_string()));
        }
        Ok(())
    }

    /// True when `table`'s dataset holds at least one committed version: a
    /// failure to open it is then a real error, never a reason to create it
    /// again.
    pub async fn has_versions(&self, table: &str) -> Result<bool, StoreError> {
        if let Some(d) = &self.local {
            return Ok(std::fs::read_dir(d.join(format!("{table}.lance")).join("_versions")).is_ok_and(|mut it| it.next().is_some()));
        }
        let (store, root) = self.object_root().await?;
        self.any_object(&store, root.clone().join(format!("{table}.lance")).join("_versions")).await
    }

    /// True when the location holds nothing: a missing or empty directory,
    /// or a prefix with no object under it.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        match &self.local {
            Some(p) => match std::fs::read_dir(p) {
                Ok(mut it) => Ok(it.next().is_none()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
                Err(e) => Err(StoreError::Io(format!("{}: {e}", p.display()))),
            },
            None => {
                let (store, root) = self.object_root().await?;
                Ok(!self.any_object(&store, root).await?)
            }
        }
    }

    /// True when at least one object lies under `prefix` (a whole path
    /// segment: `b/a` never matches `b/ab/...`).
    async fn any_object(&self, store: &lance::io::ObjectStore, prefix: ObjectPath) -> Result<bool, StoreError> {
        use futures::StreamExt;
        match store.list(Some(prefix)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(StoreError::lance(format!("list {}", self.display), e)),
        }
    }

    /// True when a graph lives here (its commit log has a version).
    pub async fn holds_graph(&self) -> Result<bool, StoreError> {
        match &self.local {
            Some(dir) => Ok(dir.join(format!("{COMMITS_TABLE}.lance")).exists()),
            None => self.has_versions(COMMITS_TABLE).await,
        }
    }

    /// Reads the graph's `.pg` schema source (`_schema.pg`).
    pub async fn read_schema(&self) -> Result<String, StoreError> {
        let corrupt = |e: String| StoreError::Corrupt(format!("read {SCHEMA_FILE}: {e}"));
        if let Some(dir) = &self.local {
            return std::fs::read_to_string(dir.join(SCHEMA_FILE)).map_err(|e| corrupt(e.to_string()));
        }
        let (store, root) = self.object_root().await?;
        let bytes = store.read_one_all(&root.clone().join(SCHEMA_FILE)).await.map_err(|e| corrupt(e.to_string()))?;
        String::from_utf8(bytes.to_vec()).map_err(|e| corrupt(e.to_string()))
    }

    /// Creates the graph's root and writes its `.pg` schema source: atomically
    /// and durably on a local path; one PUT (atomic on S3) otherwise.
    pub async fn write_schema(&self, source: &str) -> Result<(), StoreError> {
        if let Some(dir) = &self.local {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
            return omnigraph_durable::write_atomically(&dir.join(SCHEMA_FILE), source.as_bytes()).map_err(|e| StoreError::Io(format!("write schema: {e}")));
        }
        let (store, root) = self.object_root().await?;
        store.put(&root.clone().join(SCHEMA_FILE), source.as_bytes()).await.map_err(|e| StoreError::lance("write schema", e))?;
        Ok(())
    }

    /// Deletes every object of the graph: exactly the objects under its
    /// prefix (`s3://b/a` removes `b/a/...`, never `b/ab/...`). Object
    /// stores only; a local folder is removed by the gateway, which checks
    /// it against its fences first. Returns how many objects were deleted.
    pub async fn purge_objects(&self) -> Result<u64, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        if self.local.is_some() {
            return Err(StoreError::BadUri(format!("{}: purge of a local path is the gateway's job", self.display)));
        }
        let (store, root) = self.object_root().await?;
        // As Lance's own `remove_dir_all`, counting: the listing streams into
        // the store's batched delete (S3 `DeleteObjects`, up to 1,000 keys a
        // request), so a graph of any size costs bounded memory.
        let listed = store.inner.list(Some(&root)).map(|m| m.map(|meta| meta.location)).boxed();
        store
            .inner
            .delete_stream(listed)
            .try_fold(0u64, |n, _| async move { Ok(n + 1) })
            .await
            .map_err(|e| StoreError::Io(format!("purge {}: {e}", self.display)))
    }
}

/// The append-only logs: opened through the object-store path (see [`Location::table_uri`]).
const LOG_TABLES: [&str; 2] = [COMMITS_TABLE, super::branches::REFS_TABLE];

/// `syncfs` on the file system that holds `dir`.
fn sync_file_system(dir: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(dir)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is an open descriptor for the call's whole duration.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    f.sync_all()
}

/// Swaps Lance's local object store for one that fsyncs every written file
/// and its directory. Lance builds its local store from `LocalFileSystem::new()`
/// (rooted at `/`), so returning the same store with fsync on keeps every path
/// meaning the same thing.
#[derive(Debug)]
struct FsyncLocalStore;

impl WrappingObjectStore for FsyncLocalStore {
    fn wrap(&self, _store_prefix: &str, _original: Arc<dyn OsObjectStore>) -> Arc<dyn OsObjectStore> {
        Arc::new(LocalFileSystem::new().with_fsync(true))
    }

    fn wrap_paginated(&self, _store_prefix: &str, _original: Arc<dyn PaginatedListStore>) -> Option<Arc<dyn PaginatedListStore>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_table_that_moved_by_more_than_its_own_write_is_a_foreign_write_on_object_storage() {
        let local = Location::parse("/tmp/og-location-test").unwrap();
        // A local graph has one writer: never checked.
        local.check_own_version("Person", 5, 7).unwrap();
        let remote = Location::parse("s3://bkt/graphs/g").unwrap();
        let store = Arc::new(lance::io::ObjectStore::memory());
        let fence = WriterFence::claim(store, &ObjectPath::from("graphs/g"), "t").await.unwrap();
        remote.writer.set(fence).unwrap();
        remote.check_own_version("Person", 5, 6).unwrap();
        remote.check_own_version("Person", 5, 5).unwrap();
        assert!(matches!(remote.check_own_version("Person", 5, 7), Err(StoreError::ForeignWrite(t)) if t == "Person"));
    }
}
