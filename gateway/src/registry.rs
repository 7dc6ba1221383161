//! The graphs the gateway serves: one entry per graph, read lock-free on
//! every request (`DashMap` of `Arc` entries, `ArcSwap` inside).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use omnigraph_contract::{BranchName, GraphId};
use serde::Serialize;

use crate::authz::ActionSets;
use crate::config::uris_overlap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Starting (or restarting) its worker.
    Starting,
    /// Its worker is serving.
    Up,
    /// Its worker crashed and is waiting for the next restart.
    Down,
    /// Its worker could not start; retried with backoff.
    Failed,
    /// Being removed.
    Stopping,
    /// A lazy graph without a worker: never started, or stopped after
    /// `server.idle_stop_s` without requests. Its next allowed request starts it.
    Idle,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Up => "up",
            Status::Down => "down",
            Status::Failed => "failed",
            Status::Stopping => "stopping",
            Status::Idle => "idle",
        }
    }
}

/// The live state of a graph's worker, swapped as a whole.
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub status: Status,
    /// The key this worker was started with (`OMNIGRAPH_WORKER_KEY`).
    pub key: Option<Arc<str>>,
    pub pid: Option<i32>,
    pub error: Option<String>,
    pub restarts: u64,
    /// Where requests go instead of the graph's own socket: another
    /// gateway's worker (a shared catalog), or this gateway's own worker on
    /// TCP (`catalog.etcd.worker_host`): `http://host:port` or a socket path.
    pub address: Option<Arc<str>>,
    /// The worker is another gateway's: this gateway proxies to it.
    pub remote: bool,
}

pub struct GraphEntry {
    pub id: GraphId,
    /// The URI as configured, shown to users.
    pub uri: String,
    /// The URI resolved against the config folder (absolute for local paths).
    pub resolved_uri: String,
    /// The URI as a comparable key (see `config::canonical_uri`).
    pub canonical_uri: String,
    pub tenant: Option<String>,
    pub protected_branches: Vec<BranchName>,
    pub policy_file: Option<PathBuf>,
    /// The graph's own policies as text, when a shared catalog holds them
    /// (instead of `policy_file`): what a reload parses again.
    pub policy_source: Option<Arc<str>>,
    pub schema_file: Option<PathBuf>,
    pub socket: PathBuf,
    /// Server policies ∪ this graph's policies, sliced by action.
    pub policies: ArcSwap<ActionSets>,
    pub state: ArcSwap<WorkerState>,
    /// Set once by `DELETE`; read by the supervisor before it adopts a worker.
    removed: std::sync::atomic::AtomicBool,
    /// Orders "adopt a started worker" against "remove the graph", so a
    /// worker that finishes starting during a `DELETE` is stopped, not orphaned.
    adoption: std::sync::Mutex<()>,
    /// Started on its first allowed request, stopped when idle (`start: lazy`).
    pub lazy: bool,
    /// Requests that want this idle graph's worker (one stored permit wakes its supervisor).
    demand: tokio::sync::Notify,
    /// Set by a request that found the graph idle, cleared when the graph
    /// goes idle: a `demand` permit left over from a burst of requests (or
    /// from a request that saw an idle stop being called off) wakes the
    /// supervisor, which starts a worker only when this is set.
    wanted: std::sync::atomic::AtomicBool,
    /// Every state change, for requests waiting for a lazy start.
    changed: tokio::sync::Notify,
    /// Requests proxied to the worker right now (see [`GraphEntry::enter`]).
    in_flight: AtomicUsize,
    /// When the last proxied request ended, ms since [`epoch`].
    last_used_ms: AtomicU64,
    /// When this gateway last told the shared catalog that it used the graph
    /// through another gateway's worker (see [`GraphEntry::due_use_mark`]).
    last_marked_ms: AtomicU64,
    /// Asks this lazy graph's supervisor to stop its worker now if no
    /// request is in flight (`limits.max_lazy_workers` makes room).
    pub evict: tokio::sync::Notify,
    /// Which supervisor task owns this entry: bumped when a failed `DELETE`
    /// hands the graph to a new one, so the old task (which may still be
    /// waiting for the stopped worker's exit) ends instead of restarting it
    /// beside the new task's worker.
    supervision: AtomicU64,
}

/// The origin of `last_used_ms`: the first time anyone asked.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// One request proxied to a graph's worker; counted in the graph's
/// in-flight requests until dropped, which also marks the graph used.
pub struct InUse {
    entry: Arc<GraphEntry>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.entry.last_used_ms.store(now_ms(), Ordering::Relaxed);
        self.entry.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The longest a request waits for a lazy start, whatever `server.start_wait_ms` says.
pub const MAX_START_WAIT: Duration = Duration::from_secs(600);

/// How waiting for a lazy graph's worker ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    Up,
    /// Not up within the wait, or its start failed: the caller answers 503.
    Unavailable,
}

impl GraphEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: GraphId,
        uri: String,
        resolved_uri: String,
        canonical_uri: String,
        tenant: Option<String>,
        protected_branches: Vec<BranchName>,
        policy_file: Option<PathBuf>,
        schema_file: Option<PathBuf>,
        socket: PathBuf,
        policies: Arc<ActionSets>,
    ) -> GraphEntry {
        GraphEntry {
            id,
            uri,
            resolved_uri,
            canonical_uri,
            tenant,
            protected_branches,
            policy_file,
            policy_source: None,
            schema_file,
            socket,
            policies: ArcSwap::from(policies),
            state: ArcSwap::from_pointee(WorkerState { status: Status::Starting, key: None, pid: None, error: None, restarts: 0, address: None, remote: false }),
            removed: std::sync::atomic::AtomicBool::new(false),
            adoption: std::sync::Mutex::new(()),
            lazy: false,
            demand: tokio::sync::Notify::new(),
            wanted: std::sync::atomic::AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            in_flight: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(now_ms()),
            last_marked_ms: AtomicU64::new(0),
            evict: tokio::sync::Notify::new(),
            supervision: AtomicU64::new(0),
        }
    }

    /// A lazy graph: idle until its first allowed request (`start: lazy`).
    pub fn lazy(mut self) -> GraphEntry {
        self.lazy = true;
        self.set_state(|s| s.status = Status::Idle);
        self
    }

    /// A graph whose policies a shared catalog holds as text.
    pub fn with_policy_source(mut self, source: Option<String>) -> GraphEntry {
        self.policy_source = source.map(Arc::from);
        self
    }

    /// Whether requests go to another gateway's worker (see [`GraphEntry::follow`]).
    pub fn is_following(&self) -> bool {
        self.state.load().remote
    }

    /// Sends this graph's requests to another gateway's registered worker
    /// (a shared catalog). Returns the pid of a worker of our own that is
    /// still running, which the caller must stop: the registration says it
    /// is no longer the graph's one writer (our lease expired meanwhile).
    pub fn follow(&self, address: &str, key: &str) -> Option<i32> {
        let _g = self.adoption.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_removed() {
            return None;
        }
        let own = self.state.load().pid;
        // An empty address: the other gateway claimed the graph and is
        // starting its worker (a TCP port is known only once it listens).
        let up = !address.is_empty();
        self.set_state(|s| {
            s.status = if up { Status::Up } else { Status::Starting };
            s.key = up.then(|| Arc::from(key));
            s.address = up.then(|| Arc::from(address));
            s.remote = true;
            s.pid = None;
            s.error = None;
        });
        own
    }

    /// Waits (at most `wait`) until requests would no longer go to the
    /// remote worker at `address` with `key`: its registration moved or went;
    /// `false` when it did not within `wait`.
    pub async fn moved_from(&self, address: &str, key: &str, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_START_WAIT);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let ws = self.state.load();
            if !ws.remote || ws.address.as_deref() != Some(address) || ws.key.as_deref() != Some(key) || self.is_removed() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Another gateway's worker is no longer registered: the graph is idle,
    /// and its next request starts (and registers) a worker here.
    pub fn unfollow(&self) {
        let _g = self.adoption.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_removed() || !self.state.load().remote {
            return;
        }
        self.wanted.store(false, Ordering::SeqCst);
        self.set_state(|s| {
            s.status = Status::Idle;
            s.key = None;
            s.address = None;
            s.remote = false;
        });
    }

    /// Counts a request in the graph's in-flight requests, if its worker is
    /// up; `None` otherwise. With [`GraphEntry::try_idle`] this is Dekker's
    /// protocol: the count is raised before the status is read here, and
    /// the status is set before the count is read there (each `SeqCst`), so
    /// either this request sees the graph idle or the supervisor sees the
    /// request, never neither.
    pub fn enter(self: &Arc<Self>) -> Option<InUse> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InUse { entry: self.clone() };
        std::sync::atomic::fence(Ordering::SeqCst);
        (self.state.load().status == Status::Up).then_some(guard)
    }

    /// Counts as use now (another gateway used the worker: see `catalog`).
    pub fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether a request through this gateway to another gateway's worker
    /// should be reported as use (at most once per `every`), so that the
    /// gateway running the worker does not stop it as idle. Claims the mark.
    pub fn due_use_mark(&self, every: Duration) -> bool {
        let now = now_ms();
        let last = self.last_marked_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every.as_millis() as u64 && self.last_marked_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Requests proxied to the worker right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How long since the last proxied request ended (or the worker was adopted).
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }

    /// Marks an up graph idle when it has had no request in flight for
    /// `idle`, so that new requests wait for a new worker instead of reaching
    /// this one; `false` (and the graph stays up) otherwise. How long it has
    /// been unused is read after the in-flight count, so a request that
    /// ended a moment ago counts as use.
    pub fn try_idle(&self, idle: Duration) -> bool {
        let _g = self.adoption.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_removed() || self.status() != Status::Up || self.in_flight() > 0 || self.idle_for() < idle {
            return false;
        }
        // Only requests that find the graph idle from here on count as demand.
        self.wanted.store(false, Ordering::SeqCst);
        self.set_state(|s| s.status = Status::Idle);
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.in_flight() > 0 {
            self.set_state(|s| s.status = Status::Up);
            return false;
        }
        true
    }

    /// Waits (at most `wait`) until a lazy graph's worker is up, asking its
    /// supervisor to start it when it is idle. A graph that is down or
    /// failed is not waited for: its supervisor's backoff decides when it
    /// comes back, and the caller answers 503 with `Retry-After` as for any graph.
    pub async fn wake(&self, wait: Duration) -> Wake {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_START_WAIT);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.status() {
                Status::Up => return Wake::Up,
                Status::Idle => {
                    self.wanted.store(true, Ordering::SeqCst);
                    self.demand.notify_one();
                }
                Status::Starting => {}
                Status::Down | Status::Failed | Status::Stopping => return Wake::Unavailable,
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Wake::Unavailable;
            }
        }
    }

    /// Waits until a request asks for this idle graph (or it is removed);
    /// a permit no request stands behind is skipped.
    pub async fn demanded(&self) {
        loop {
            self.demand.notified().await;
            if self.is_removed() || self.wanted.swap(false, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Records the pid of a worker that is starting, for the supervisor
    /// task of `generation`, so that a `DELETE` arriving before it is ready
    /// stops it (and a purge never races it); `false` when the graph was
    /// removed (or handed to a newer task) meanwhile: the caller stops it.
    pub fn starting_for(&self, generation: u64, pid: i32) -> bool {
        self.set_state_for(generation, |s| s.pid = Some(pid))
    }

    /// A supervisor's state change by the task of `generation`, unless the
    /// graph is being removed (its `stopping` status and the pid a `DELETE`
    /// stops are left alone) or a newer task owns the entry; whether it was made.
    pub fn set_state_for(&self, generation: u64, f: impl FnOnce(&mut WorkerState)) -> bool {
        let _g = self.adoption.lock().unwrap_or_else(|p| p.into_inner());
        if self.superseded(generation) {
            return false;
        }
        self.set_state(f);
        true
    }

    /// Marks the graph removed and returns the pid of its worker, if one is
    /// running; after this, no worker is ever adopted for it.
    pub fn mark_removed(&self) -> Option<i32> {
        let _g = self.adoption.lock().unwrap_or_else(|p| p.into_inner());
        self.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.set_state(|s| s.status = Status::Stopping);
        // An idle graph's supervisor waits for demand: wake it to end.
        self.demand.notify_one();
        self.state.load().pid
    }

    /// Undoes [`GraphEntry::mark_removed`] when the removal could not be completed.
    pub fn unmark_removed(&self) {
        let _g = self.adoption.lock().unwrap_or_else(|p| p.into_inner());
        // The supervisor task from before the removal is done with this
        // entry; the caller starts a new one (`Supervisor::supervise`).
        self.supervision.fetch_add(1, Ordering::SeqCst);
        self.removed.store(false, std::sync::atomic::Ordering::SeqCst);
        self.wanted.store(false, Ordering::SeqCst);
        let status = if self.lazy { Status::Idle } else { Status::Starting };
        self.set_state(|s| {
            s.status = status;
            s.pid = None;
            s.key = None;
        });
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The current supervision generation (see `supervision`).
    pub fn supervision(&self) -> u64 {
        self.supervision.load(Ordering::SeqCst)
    }

    /// True when the supervisor task of `generation` must end: the graph was
    /// removed, or handed to a newer task.
    pub fn superseded(&self, generation: u64) -> bool {
        self.is_removed() || self.supervision() != generation
    }

    /// Records a started worker as this graph's, unless the graph was removed
    /// meanwhile: then `false`, and the caller stops the worker.
    pub fn adopt(&self, pid: i32) -> bool {
        self.adopt_for(self.supervision(), pid)
    }

    /// [`GraphEntry::adopt`] by the supervisor task of `generation`: also
    /// `false` once a newer task owns the entry.
    pub fn adopt_for(&self, generation: u64, pid: i32) -> bool {
        let _g = self.adoption.lock().unwrap_or_else(|p| p.into_inner());
        if self.superseded(generation) {
            return false;
        }
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
        self.set_state(|s| {
            s.status = Status::Up;
            s.pid = Some(pid);
            s.error = None;
            s.remote = false;
        });
        true
    }

    pub fn status(&self) -> Status {
        self.state.load().status
    }

    pub fn is_protected(&self, branch: &BranchName) -> bool {
        self.protected_branches.iter().any(|b| b == branch)
    }

    pub fn set_state(&self, f: impl FnOnce(&mut WorkerState)) {
        let mut s = WorkerState::clone(&self.state.load());
        f(&mut s);
        self.state.store(Arc::new(s));
        self.changed.notify_waiters();
    }
}

#[derive(Default)]
pub struct Registry {
    graphs: DashMap<GraphId, Arc<GraphEntry>>,
    /// Graphs being created, not yet published.
    pending: std::sync::Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    ids: std::collections::HashSet<GraphId>,
    /// Canonical URIs, with a count so one reservation never frees another's.
    uris: Vec<String>,
}

/// A graph id and URI held for one `POST /graphs`; released on drop.
pub struct Reservation<'a> {
    registry: &'a Registry,
    id: GraphId,
    uri: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.registry.pending.lock() {
            p.ids.remove(&self.id);
            if let Some(i) = p.uris.iter().position(|u| *u == self.uri) {
                p.uris.swap_remove(i);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReserveError {
    Id,
    /// The URI equals, contains or lies inside this graph's (or a create's in flight).
    Uri(String),
    /// `limits.max_graphs` graphs exist or are being created.
    Full(usize),
}

impl Registry {
    pub fn get(&self, id: &GraphId) -> Option<Arc<GraphEntry>> {
        self.graphs.get(id).map(|e| e.value().clone())
    }

    pub fn insert(&self, entry: Arc<GraphEntry>) {
        self.graphs.insert(entry.id.clone(), entry);
    }

    pub fn remove(&self, id: &GraphId) -> Option<Arc<GraphEntry>> {
        self.graphs.remove(id).map(|(_, e)| e)
    }

    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.graphs.is_empty()
    }

    /// All entries, sorted by id.
    pub fn list(&self) -> Vec<Arc<GraphEntry>> {
        let mut v: Vec<_> = self.graphs.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Whether a create of `id` is in flight on this gateway.
    pub fn is_pending(&self, id: &GraphId) -> bool {
        self.pending.lock().map(|p| p.ids.contains(id)).unwrap_or(true)
    }

    /// The graph whose storage overlaps `canonical_uri`, published or being created.
    pub fn overlapping(&self, canonical_uri: &str) -> Option<String> {
        let published = self.graphs.iter().find(|e| uris_overlap(&e.canonical_uri, canonical_uri)).map(|e| e.id.to_string());
        published.or_else(|| {
            let p = self.pending.lock().ok()?;
            p.uris.iter().any(|u| uris_overlap(u, canonical_uri)).then(|| "a graph being created".to_string())
        })
    }

    /// Reserves `id` and `canonical_uri` against published graphs and other
    /// creations in flight: the id must be free, the URI must not equal,
    /// contain or lie inside any other graph's, and at most `max_graphs` may
    /// exist. Exactly one of many concurrent callers wins.
    pub fn reserve(&self, id: &GraphId, canonical_uri: &str, max_graphs: usize) -> Result<Reservation<'_>, ReserveError> {
        let mut pending = self.pending.lock().map_err(|_| ReserveError::Id)?;
        if self.graphs.contains_key(id) || pending.ids.contains(id) {
            return Err(ReserveError::Id);
        }
        if self.graphs.len() + pending.ids.len() >= max_graphs {
            return Err(ReserveError::Full(max_graphs));
        }
        if let Some(e) = self.graphs.iter().find(|e| uris_overlap(&e.canonical_uri, canonical_uri)) {
            return Err(ReserveError::Uri(format!("graph {:?}", e.id.as_str())));
        }
        if pending.uris.iter().any(|u| uris_overlap(u, canonical_uri)) {
            return Err(ReserveError::Uri("a graph being created".into()));
        }
        pending.ids.insert(id.clone());
        pending.uris.push(canonical_uri.to_string());
        Ok(Reservation { registry: self, id: id.clone(), uri: canonical_uri.to_string() })
    }

    /// Holds a published graph's id and URI as if it were being created, so
    /// that while a `DELETE` removes it (and purges its folder) no create can
    /// take the id or put a graph inside the folder. Released on drop.
    pub fn hold(&self, id: &GraphId, canonical_uri: &str) -> Reservation<'_> {
        if let Ok(mut p) = self.pending.lock() {
            p.ids.insert(id.clone());
            p.uris.push(canonical_uri.to_string());
        }
        Reservation { registry: self, id: id.clone(), uri: canonical_uri.to_string() }
    }

    /// Ready when every graph is up or has definitively failed.
    pub fn ready(&self) -> bool {
        // A lazy graph never holds readiness back: its starts follow requests, not boot.
        self.graphs.iter().all(|e| e.lazy || matches!(e.status(), Status::Up | Status::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> GraphId {
        GraphId::parse(s).unwrap()
    }

    #[test]
    fn reservations_refuse_duplicate_ids_and_nested_uris_until_released() {
        let r = Registry::default();
        let outer = r.reserve(&id("outer"), "/d/tenants", 10).unwrap();
        assert_eq!(r.reserve(&id("outer"), "/d/other", 10).err(), Some(ReserveError::Id));
        for nested in ["/d/tenants", "/d/tenants/acme", "/d"] {
            assert!(matches!(r.reserve(&id("inner"), nested, 10), Err(ReserveError::Uri(_))), "{nested}");
        }
        assert!(r.overlapping("/d/tenants/acme").is_some());
        let sibling = r.reserve(&id("sibling"), "/d/tenants2", 10).unwrap();
        drop(outer);
        assert!(r.overlapping("/d/tenants/acme").is_none());
        let inner = r.reserve(&id("inner"), "/d/tenants/acme", 10).unwrap();
        drop((sibling, inner));
        assert!(r.pending.lock().unwrap().uris.is_empty());
    }

    #[test]
    fn a_held_graph_blocks_nested_creates_until_released() {
        let r = Registry::default();
        let held = r.hold(&id("c0"), "/d/c0");
        assert!(matches!(r.reserve(&id("inner"), "/d/c0/inner", 10), Err(ReserveError::Uri(_))));
        assert_eq!(r.reserve(&id("c0"), "/d/elsewhere", 10).err(), Some(ReserveError::Id));
        drop(held);
        assert!(r.reserve(&id("inner"), "/d/c0/inner", 10).is_ok());
    }

    fn entry(name: &str) -> Arc<GraphEntry> {
        let sets = ActionSets::unsliced(std::iter::empty()).unwrap();
        let e = GraphEntry::new(id(name), "u".into(), "/u".into(), "/u".into(), None, vec![], None, None, "/s".into(), Arc::new(sets));
        Arc::new(e.lazy())
    }

    #[tokio::test]
    async fn following_another_gateways_worker() {
        let e = entry("g");
        // Registered but still starting (a TCP port not yet known): requests wait.
        assert_eq!(e.follow("", "k1"), None);
        assert_eq!((e.status(), e.is_following(), e.state.load().key.clone()), (Status::Starting, true, None));
        // Its address: requests go there, with its key.
        e.follow("http://10.0.0.7:4000", "k1");
        let ws = e.state.load_full();
        assert_eq!((ws.status, ws.address.as_deref(), ws.key.as_deref()), (Status::Up, Some("http://10.0.0.7:4000"), Some("k1")));
        // Not moved while the registration is the same; moved once the key (a restart) or address changes.
        assert!(!e.moved_from("http://10.0.0.7:4000", "k1", Duration::from_millis(30)).await);
        let waiting = {
            let e = e.clone();
            tokio::spawn(async move { e.moved_from("http://10.0.0.7:4000", "k1", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        e.follow("http://10.0.0.7:4001", "k1");
        assert!(waiting.await.unwrap(), "woken by the new registration");
        // The registration goes: the graph is idle, its next request starts a worker here.
        e.unfollow();
        let ws = e.state.load_full();
        assert_eq!((ws.status, ws.remote, ws.address.clone(), ws.key.clone()), (Status::Idle, false, None, None));
        // A worker of our own is never "unfollowed" away, and following reports it to be stopped.
        assert!(e.adopt(42));
        e.unfollow();
        assert_eq!(e.status(), Status::Up);
        assert_eq!(e.follow("/run/b/g.sock", "k2"), Some(42), "our own worker is no longer the graph's one writer");
        // A removed graph follows nothing.
        e.mark_removed();
        e.follow("/x", "k3");
        assert_eq!(e.status(), Status::Stopping);
    }

    #[test]
    fn after_a_failed_removal_only_the_new_supervision_may_adopt_or_change_state() {
        let e = entry("g");
        let old = e.supervision();
        assert!(!e.superseded(old));
        e.mark_removed();
        assert!(e.superseded(old) && !e.adopt_for(old, 1));
        e.unmark_removed();
        let new = e.supervision();
        assert_ne!(old, new);
        // The task from before the removal may still see its stopped worker
        // exit: it must neither restart (superseded) nor write the state.
        assert!(e.superseded(old));
        assert!(!e.adopt_for(old, 7));
        assert!(!e.set_state_for(old, |s| s.status = Status::Down));
        assert_eq!(e.status(), Status::Idle);
        assert!(e.adopt_for(new, 8));
        assert_eq!((e.status(), e.state.load().pid), (Status::Up, Some(8)));
    }

    #[test]
    fn a_request_in_flight_keeps_a_graph_from_going_idle_and_an_idle_graph_admits_none() {
        let e = entry("g");
        assert_eq!(e.status(), Status::Idle);
        assert!(e.enter().is_none(), "an idle graph has no worker to send to");
        assert_eq!(e.in_flight(), 0, "a refused request is not counted");
        assert!(e.adopt(42));
        let req = e.enter().expect("up");
        assert!(!e.try_idle(Duration::ZERO), "a request is in flight");
        assert_eq!(e.status(), Status::Up);
        drop(req);
        assert_eq!(e.in_flight(), 0);
        assert!(!e.try_idle(Duration::from_secs(60)), "a request ended a moment ago");
        assert_eq!(e.status(), Status::Up);
        assert!(e.try_idle(Duration::ZERO));
        assert_eq!(e.status(), Status::Idle);
        assert!(e.enter().is_none());
        assert!(!e.try_idle(Duration::ZERO), "already idle");
    }

    #[tokio::test]
    async fn a_request_to_an_idle_graph_asks_for_its_worker_and_waits_for_it() {
        let e = entry("g");
        let sup = e.clone();
        let supervisor = tokio::spawn(async move {
            sup.demanded().await;
            sup.set_state(|s| s.status = Status::Starting);
            tokio::task::yield_now().await;
            sup.adopt(7)
        });
        assert_eq!(e.wake(Duration::from_secs(10)).await, Wake::Up);
        assert!(supervisor.await.unwrap());
        assert_eq!(e.state.load().pid, Some(7));
    }

    #[tokio::test]
    async fn the_wait_for_a_lazy_start_is_bounded_and_a_failed_start_ends_it() {
        let e = entry("g");
        let t = std::time::Instant::now();
        assert_eq!(e.wake(Duration::from_millis(100)).await, Wake::Unavailable, "nobody started it");
        assert!(t.elapsed() >= Duration::from_millis(100));
        let sup = e.clone();
        tokio::spawn(async move {
            sup.demanded().await;
            sup.set_state(|s| s.status = Status::Failed);
        });
        assert_eq!(e.wake(Duration::from_secs(10)).await, Wake::Unavailable);
        assert_eq!(e.status(), Status::Failed);
    }

    #[tokio::test]
    async fn a_permit_no_request_stands_behind_starts_nothing() {
        let e = entry("g");
        let sup = e.clone();
        let supervisor = tokio::spawn(async move { sup.demanded().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A burst: the first request wakes the waiting supervisor, the second stores a permit.
        let _ = tokio::join!(e.wake(Duration::from_millis(100)), e.wake(Duration::from_millis(100)));
        tokio::time::timeout(Duration::from_secs(10), supervisor).await.expect("the first request wakes the supervisor").unwrap();
        // The second request's permit is still stored; the graph goes up and idle again.
        assert!(e.adopt(1));
        assert!(e.try_idle(Duration::ZERO));
        let spurious = tokio::time::timeout(Duration::from_millis(200), e.demanded()).await;
        assert!(spurious.is_err(), "a left-over permit woke the supervisor with no request waiting");
        // A real request still does.
        let r = e.clone();
        tokio::spawn(async move { r.wake(Duration::from_secs(10)).await });
        tokio::time::timeout(Duration::from_secs(10), e.demanded()).await.expect("a request wakes it");
    }

    #[test]
    fn a_worker_starting_for_a_removed_graph_is_refused_and_a_starting_pid_is_what_delete_stops() {
        let e = entry("g");
        let generation = e.supervision();
        assert!(e.starting_for(generation, 11));
        assert_eq!(e.mark_removed(), Some(11), "DELETE learns the pid of a worker that is not ready yet");
        assert!(!e.starting_for(generation, 12), "no worker starts for a removed graph");
        e.set_state_for(generation, |s| s.status = Status::Failed);
        assert_eq!(e.status(), Status::Stopping, "a supervisor does not overwrite a removal");
    }

    #[test]
    fn lazy_graphs_never_hold_readiness_back() {
        let r = Registry::default();
        let e = entry("g");
        e.set_state(|s| s.status = Status::Starting);
        r.insert(e);
        assert!(r.ready());
    }

    #[tokio::test]
    async fn removing_an_idle_graph_wakes_its_supervisor() {
        let e = entry("g");
        let sup = e.clone();
        let waiting = tokio::spawn(async move { sup.demanded().await });
        assert_eq!(e.mark_removed(), None);
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("woken").unwrap();
        assert!(e.is_removed());
    }

    #[test]
    fn max_graphs_counts_creates_in_flight() {
        let r = Registry::default();
        let _a = r.reserve(&id("a"), "/d/a", 2).unwrap();
        let _b = r.reserve(&id("b"), "/d/b", 2).unwrap();
        assert_eq!(r.reserve(&id("c"), "/d/c", 2).err(), Some(ReserveError::Full(2)));
    }
}
