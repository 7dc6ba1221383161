//! One `omnigraph-worker` process per graph: spawned on a Unix socket in the
//! runtime dir, restarted with exponential backoff when it dies, and never
//! left behind.
//!
//! Each worker is spawned from its own long-lived thread that then blocks in
//! `wait()`: `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
//! exits (FACTS.md), so the thread must outlive the child. Each worker runs in
//! its own process group, so a stop reaches anything it started too.
//!
//! Each worker also runs under the resource limits of `limits:`
//! ([`WorkerRlimits`]), set between fork and exec: a worker that runs out of
//! memory or descriptors fails alone and is restarted, and the gateway and
//! the other graphs' workers never share its fate.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnigraph_contract::headers::{LOG_BARE_ENV, WORKER_KEY_ENV};
use tokio::sync::{oneshot, Semaphore};

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::registry::{GraphEntry, Status};

/// `sun_path` holds 107 bytes plus the NUL.
pub const MAX_SOCKET_PATH: usize = 107;
const BACKOFF_START: Duration = Duration::from_millis(100);
/// A worker that stayed up this long starts the next backoff from the beginning.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Supervisor {
    pub worker_bin: PathBuf,
    /// `limits:` as worker flags, passed to every worker.
    worker_args: Vec<String>,
    /// Set in every worker's environment (`server.object_store`), beside
    /// what the gateway's own environment passes on (credentials).
    worker_env: Vec<(&'static str, String)>,
    /// `limits.worker_memory_bytes` and `limits.worker_nofile`, set in each worker.
    rlimits: WorkerRlimits,
    shutting_down: AtomicBool,
    start_permits: Semaphore,
    metrics: Arc<Metrics>,
    /// How long a worker may take to say it listens (`OMNIGRAPH_WORKER_READY_TIMEOUT_MS`
    /// overrides [`READY_TIMEOUT`], for tests of a hung start).
    ready_timeout: Duration,
    /// `server.restart_backoff_max_ms`: the cap of the restart delay.
    backoff_max: Duration,
    /// `server.idle_stop_s`: a lazy graph's worker unused this long is stopped.
    idle_stop: Option<Duration>,
    /// `limits.max_lazy_workers`: room for lazy graphs' workers, and who holds it.
    lazy_room: Option<LazyRoom>,
    /// The shared catalog (`catalog.etcd`): set once it is connected.
    shared: std::sync::OnceLock<Arc<crate::etcd_catalog::EtcdCatalog>>,
    /// Workers listen on TCP at this address instead of a Unix socket.
    worker_host: Option<std::net::IpAddr>,
}

/// The bound on lazy graphs' running workers: one permit per running
/// worker, and the graphs holding them (where a start looks for one to stop).
struct LazyRoom {
    permits: Arc<Semaphore>,
    holders: Arc<std::sync::Mutex<Vec<Arc<GraphEntry>>>>,
}

impl LazyRoom {
    /// A free place for `entry`, or `None` after asking the least recently
    /// used running lazy worker with no request in flight to stop. Only a
    /// worker waiting in its run loop now hears it: no permit is left behind
    /// to stop a worker started later.
    fn try_take(&self, entry: &Arc<GraphEntry>) -> Option<LazySlot> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(self.hold(p, entry));
        }
        let victim = {
            let h = self.holders.lock().unwrap_or_else(|p| p.into_inner());
            h.iter().filter(|e| e.status() == Status::Up && e.in_flight() == 0).max_by_key(|e| e.idle_for()).cloned()
        };
        if let Some(v) = victim {
            v.evict.notify_waiters();
        }
        None
    }

    /// Records `entry` as holding `permit`.
    fn hold(&self, permit: tokio::sync::OwnedSemaphorePermit, entry: &Arc<GraphEntry>) -> LazySlot {
        self.holders.lock().unwrap_or_else(|p| p.into_inner()).push(entry.clone());
        LazySlot { _permit: permit, holders: self.holders.clone(), entry: entry.clone() }
    }
}

/// A lazy graph's place among `limits.max_lazy_workers`, held while its
/// worker runs (across restarts after a crash) and given back when the
/// worker is stopped as idle or the graph goes away.
struct LazySlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    holders: Arc<std::sync::Mutex<Vec<Arc<GraphEntry>>>>,
    entry: Arc<GraphEntry>,
}

impl Drop for LazySlot {
    fn drop(&mut self) {
        let mut h = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        h.retain(|e| !Arc::ptr_eq(e, &self.entry));
    }
}

/// How often a start waiting for room asks another lazy worker to stop.
const ROOM_RETRY: Duration = Duration::from_millis(100);

/// How a worker's life ended.
enum End {
    /// It exited by itself (or was killed): restarted with backoff.
    Exited(String),
    /// The supervisor stopped it after `server.idle_stop_s` without requests.
    Idled,
}

/// Why a worker did not become ready: the reason, and the worker's exit
/// code when it exited by itself (`omnigraph_contract::headers::EXIT_NOT_EMPTY`
/// says `--init` found the location not empty and wrote nothing).
#[derive(Debug, Clone)]
pub struct StartFailure {
    pub message: String,
    pub exit_code: Option<i32>,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for StartFailure {
    fn from(message: String) -> StartFailure {
        StartFailure { message, exit_code: None }
    }
}

impl From<&str> for StartFailure {
    fn from(message: &str) -> StartFailure {
        StartFailure { message: message.to_string(), exit_code: None }
    }
}

/// A started worker: its pid (also its process group) and its exit.
pub struct Running {
    pub pid: i32,
    /// The key it was started with.
    key: String,
    /// Where it listens when on TCP (`http://host:port`, as it announced).
    pub address: Option<String>,
    exited: oneshot::Receiver<String>,
}

/// The socket path for a graph, refusing one Linux cannot bind.
pub fn socket_path(runtime_dir: &Path, graph_id: &str) -> Result<PathBuf, String> {
    let p = runtime_dir.join(format!("{graph_id}.sock"));
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "socket path {} is {len} bytes, over Linux's limit of {MAX_SOCKET_PATH}; set server.runtime_dir to a shorter folder",
            p.display()
        ));
    }
    Ok(p)
}

/// True when a local graph URI holds nothing yet (missing or empty folder).
pub fn uri_is_empty(uri: &str) -> bool {
    let Some(p) = crate::config::local_path(uri) else { return false };
    let p = Path::new(p);
    match std::fs::read_dir(p) {
        Ok(mut it) => it.next().is_none(),
        Err(_) => !p.exists(),
    }
}

/// The kernel resource limits each worker process runs with
/// (`limits.worker_memory_bytes`, `limits.worker_nofile`; docs/reliability.md).
///
/// Memory is bounded with `RLIMIT_DATA`, not `RLIMIT_AS`: since Linux 4.7
/// `RLIMIT_DATA` counts the private writable memory a process maps (heap,
/// anonymous mappings, thread stacks), which is what grows with the work a
/// worker does, while `RLIMIT_AS` also counts address space only reserved
/// (`PROT_NONE`), such as glibc's 64 MiB per-thread malloc arenas: under a
/// 1 GiB `RLIMIT_AS` a worker died serving 64 concurrent reads with 182 MB
/// of data mapped, and the same work passes under a 1 GiB `RLIMIT_DATA`
/// (docs/reliability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerRlimits {
    /// `RLIMIT_DATA` in bytes; 0 leaves the gateway's own limit.
    pub data_bytes: u64,
    /// `RLIMIT_NOFILE`; 0 leaves the gateway's own limit.
    pub nofile: u64,
}

/// Which limit one [`Rlimit`] sets (matched inside `pre_exec`, so the
/// child only makes the `setrlimit` system call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RlimitKind {
    Data,
    Nofile,
}

/// One limit, worked out in the parent before the fork.
#[derive(Debug, Clone, Copy)]
struct Rlimit {
    kind: RlimitKind,
    value: u64,
}

impl Rlimit {
    /// Sets the limit, soft and hard, in the calling process. Only the
    /// `setrlimit` system call: safe between fork and exec.
    fn apply(&self) -> std::io::Result<()> {
        let lim = libc::rlimit { rlim_cur: self.value as libc::rlim_t, rlim_max: self.value as libc::rlim_t };
        // SAFETY: setrlimit reads the local struct; it is async-signal-safe.
        let rc = unsafe {
            match self.kind {
                RlimitKind::Data => libc::setrlimit(libc::RLIMIT_DATA, &lim),
                RlimitKind::Nofile => libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The calling process's hard limit of `kind` (`RLIM_INFINITY` if unknown).
#[allow(clippy::useless_conversion, reason = "rlim_t is u64 here, u32 on 32-bit targets")]
fn hard_limit(kind: RlimitKind) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the local struct.
    let rc = unsafe {
        match kind {
            RlimitKind::Data => libc::getrlimit(libc::RLIMIT_DATA, &mut lim),
            RlimitKind::Nofile => libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
        }
    };
    if rc != 0 {
        return u64::from(libc::RLIM_INFINITY);
    }
    u64::from(lim.rlim_max)
}

impl WorkerRlimits {
    pub fn from_limits(l: &Limits) -> WorkerRlimits {
        WorkerRlimits { data_bytes: l.worker_memory_bytes, nofile: l.worker_nofile }
    }

    /// The limits to set in a new worker, each at most the gateway's own
    /// hard limit (an unprivileged child cannot raise it, and asking would
    /// fail the spawn), as a fixed array so the child allocates nothing.
    fn plan(&self, hard: impl Fn(RlimitKind) -> u64) -> [Option<Rlimit>; 2] {
        let one = |kind, want: u64| {
            (want > 0).then(|| {
                let cap = hard(kind);
                if want > cap {
                    tracing::warn!(limit = ?kind, configured = want, hard = cap, "a worker limit is above the gateway's own hard limit; the worker gets the hard limit");
                }
                Rlimit { kind, value: want.min(cap) }
            })
        };
        [one(RlimitKind::Data, self.data_bytes), one(RlimitKind::Nofile, self.nofile)]
    }
}

fn random_key() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Supervisor {
    /// A supervisor whose workers get `limits` (the per-request ones as
    /// `serve` flags, the process ones as resource limits).
    pub fn new(worker_bin: PathBuf, start_concurrency: usize, backoff_max: Duration, limits: &Limits, metrics: Arc<Metrics>) -> Supervisor {
        let ready_timeout = std::env::var("OMNIGRAPH_WORKER_READY_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(READY_TIMEOUT, Duration::from_millis);
        Supervisor {
            worker_bin,
            worker_args: limits.worker().to_args(),
            worker_env: Vec::new(),
            rlimits: WorkerRlimits::from_limits(limits),
            shutting_down: AtomicBool::new(false),
            start_permits: Semaphore::new(start_concurrency.max(1)),
            metrics,
            ready_timeout,
            backoff_max: backoff_max.max(BACKOFF_START),
            idle_stop: None,
            lazy_room: None,
            shared: std::sync::OnceLock::new(),
            worker_host: None,
        }
    }

    /// Starts workers on TCP at `ip` (a port the kernel picks) instead of a
    /// Unix socket: `catalog.etcd.worker_host`, for gateways on several hosts.
    pub fn with_worker_host(mut self, ip: Option<std::net::IpAddr>) -> Supervisor {
        self.worker_host = ip;
        self
    }

    /// Makes every later worker start claim the graph in the shared catalog
    /// first (`catalog.etcd`): one worker per graph across all gateways.
    pub fn share(&self, catalog: Arc<crate::etcd_catalog::EtcdCatalog>) {
        let _ = self.shared.set(catalog);
    }

    /// The shared catalog, once connected.
    pub fn shared(&self) -> Option<&Arc<crate::etcd_catalog::EtcdCatalog>> {
        self.shared.get()
    }

    /// Sets `env` in every worker's environment (and every `storage` command's).
    pub fn with_env(mut self, env: Vec<(&'static str, String)>) -> Supervisor {
        self.worker_env = env;
        self
    }

    /// `server.object_store`'s variables, for a worker or a `storage` command.
    fn worker_env(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.worker_env.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// A `omnigraph-worker storage ...` command for `uri`, with the workers'
    /// environment: how the gateway looks at and purges object storage
    /// without linking an object-store client (DESIGN.md section 7).
    pub fn storage_command(&self, op: &str, uri: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.worker_bin);
        cmd.args(["storage", op, "--uri", uri]).envs(self.worker_env());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }

    /// Runs at most `n` lazy graphs' workers at once (`limits.max_lazy_workers`; zero: no bound).
    pub fn with_lazy_bound(mut self, n: usize) -> Supervisor {
        self.lazy_room = (n > 0).then(|| LazyRoom { permits: Arc::new(Semaphore::new(n)), holders: Arc::default() });
        self
    }

    /// Takes a place for `entry`'s worker among `limits.max_lazy_workers`:
    /// at once when there is room, else by asking the least recently used
    /// lazy worker with no request in flight to stop, again every
    /// [`ROOM_RETRY`] until one does or a place frees. `None` when lazy
    /// workers are not bounded, or the wait ended by shutdown or removal.
    async fn lazy_slot(&self, entry: &Arc<GraphEntry>, generation: u64) -> Option<LazySlot> {
        let room = self.lazy_room.as_ref()?;
        loop {
            if self.is_shutting_down() || entry.superseded(generation) {
                return None;
            }
            if let Some(slot) = room.try_take(entry) {
                return Some(slot);
            }
            if let Ok(Ok(p)) = tokio::time::timeout(ROOM_RETRY, room.permits.clone().acquire_owned()).await {
                return Some(room.hold(p, entry));
            }
        }
    }

    /// [`Supervisor::lazy_slot`] without waiting: a free place, or `None`
    /// after asking the least recently used idle lazy worker to stop.
    fn lazy_slot_now(&self, entry: &Arc<GraphEntry>) -> Option<LazySlot> {
        self.lazy_room.as_ref()?.try_take(entry)
    }

    /// Stops lazy graphs' workers after `idle` without requests (`server.idle_stop_s`; zero: never).
    pub fn with_idle_stop(mut self, idle: Duration) -> Supervisor {
        self.idle_stop = (!idle.is_zero()).then_some(idle);
        self
    }

    /// Waits for the worker to exit; for a lazy graph, also stops it once
    /// it has had no request for `server.idle_stop_s`.
    async fn run(&self, entry: &GraphEntry, running: Running) -> End {
        let mut exited = running.exited;
        if !entry.lazy {
            return End::Exited(exited.await.unwrap_or_else(|_| "unknown".into()));
        }
        // The newest use mark from other gateways already counted (shared catalog).
        let mut seen_mark = 0i64;
        // Checked a few times per idle period, at most once a second.
        let every = self.idle_stop.map(|idle| (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
        loop {
            let evicted = tokio::select! {
                how = &mut exited => return End::Exited(how.unwrap_or_else(|_| "unknown".into())),
                _ = entry.evict.notified() => true,
                _ = async { match every {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                } } => false,
            };
            // An eviction stops a worker with no request in flight, however recently used.
            let idle = if evicted { Duration::ZERO } else { self.idle_stop.unwrap_or(Duration::MAX) };
            if let (Some(shared), false) = (self.shared(), evicted) {
                // Requests through other gateways use this worker too: a newer
                // use mark from any of them counts as use here.
                if entry.idle_for() >= idle {
                    let marked = shared.used_revision(entry.id.as_str()).await;
                    if marked > seen_mark {
                        seen_mark = marked;
                        entry.touch();
                        continue;
                    }
                }
            }
            if !entry.try_idle(idle) {
                continue;
            }
            if evicted {
                tracing::info!(graph = %entry.id, pid = running.pid, "limits.max_lazy_workers reached: stopping this lazy worker to make room");
                self.metrics.lazy_evictions.inc();
            } else {
                tracing::info!(graph = %entry.id, pid = running.pid, idle_s = idle.as_secs_f64(), "no requests: stopping the idle worker");
                self.metrics.idle_stops.inc();
            }
            let pid = running.pid;
            let _ = tokio::task::spawn_blocking(move || stop_group_blocking(pid)).await;
            let _ = exited.await;
            return End::Idled;
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Supervises `entry` until shutdown or until the entry is stopped.
    /// `first` adopts a worker that is already running (`POST /graphs`).
    /// The task takes the entry's supervision generation now, when it is
    /// created: a failed `DELETE` bumps it before it creates the next task,
    /// so exactly one task ever starts workers for a graph.
    pub fn supervise(self: Arc<Self>, entry: Arc<GraphEntry>, first: Option<Running>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let generation = entry.supervision();
        self.supervise_as(entry, first, generation)
    }

    async fn supervise_as(self: Arc<Self>, entry: Arc<GraphEntry>, mut first: Option<Running>, generation: u64) {
        let gone = |entry: &GraphEntry| self.is_shutting_down() || entry.superseded(generation);
        let mut backoff = BACKOFF_START;
        // This graph's place among `limits.max_lazy_workers` while its worker runs.
        let mut slot: Option<LazySlot> = None;
        if entry.lazy && first.is_some() {
            // A worker `POST /graphs` already started: supervised from now,
            // never left waiting for room. It takes a place if one is free
            // (asking the least recently used worker to make one otherwise);
            // without one it counts again from its next start.
            slot = self.lazy_slot_now(&entry);
        }
        loop {
            if gone(&entry) {
                return;
            }
            if first.is_none() && (entry.status() == Status::Idle || entry.is_following()) {
                // A lazy graph starts on demand (a request Cedar allowed).
                entry.demanded().await;
                if gone(&entry) {
                    return;
                }
                entry.set_state_for(generation, |s| s.status = Status::Starting);
                if slot.is_none() {
                    slot = self.lazy_slot(&entry, generation).await;
                    if gone(&entry) {
                        return;
                    }
                }
                self.metrics.lazy_starts.inc();
            }
            if entry.lazy && slot.is_none() && first.is_none() {
                // A lazy worker restarting after a crash (or adopted without
                // room) counts again as soon as there is room.
                slot = self.lazy_slot_now(&entry);
            }
            let started = Instant::now();
            let result = match first.take() {
                Some(running) => Ok(running),
                None => {
                    let _permit = self.start_permits.acquire().await;
                    if gone(&entry) {
                        return;
                    }
                    match self.claim(&entry).await {
                        Ok(Some(key)) => match self.start_keyed(&entry, generation, false, key).await {
                            Ok(running) => self.announce(&entry, running).await,
                            failed => failed,
                        },
                        Ok(None) => {
                            // Another gateway's worker serves the graph: wait
                            // for demand again once it is no longer registered.
                            slot = None;
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(running) => {
                    if entry.is_following() && !gone(&entry) {
                        // Our lease was lost while it started: another gateway holds the graph.
                        let pid = running.pid;
                        let _ = tokio::task::spawn_blocking(move || stop_group_blocking(pid)).await;
                        slot = None;
                        continue;
                    }
                    if !entry.adopt_for(generation, running.pid) {
                        // Removed while this worker was starting: it must not outlive the graph.
                        tracing::info!(graph = %entry.id, pid = running.pid, "graph removed while its worker started; stopping the worker");
                        let pid = running.pid;
                        let _ = tokio::task::spawn_blocking(move || stop_group_blocking(pid)).await;
                        if let Some(shared) = self.shared() {
                            shared.release_worker(entry.id.as_str()).await;
                        }
                        return;
                    }
                    tracing::info!(graph = %entry.id, pid = running.pid, "worker is up");
                    let how = match self.run(&entry, running).await {
                        End::Exited(how) => how,
                        End::Idled => {
                            entry.set_state_for(generation, |s| {
                                s.status = Status::Idle;
                                s.pid = None;
                                s.key = None;
                            });
                            // Only now, with no pid left in the entry, may another gateway take it.
                            if let Some(shared) = self.shared() {
                                shared.release_worker(entry.id.as_str()).await;
                            }
                            slot = None;
                            backoff = BACKOFF_START;
                            continue;
                        }
                    };
                    if gone(&entry) {
                        return;
                    }
                    if entry.is_following() {
                        // Stopped because another gateway holds the graph now: follow it.
                        slot = None;
                        continue;
                    }
                    tracing::warn!(graph = %entry.id, exit = %how, "worker exited; restarting with backoff");
                    self.metrics.worker_restarts.with_label_values(&[entry.id.as_str()]).inc();
                    entry.set_state_for(generation, |s| {
                        s.status = Status::Down;
                        s.pid = None;
                        s.restarts += 1;
                        s.error = Some(format!("worker exited: {how}"));
                    });
                    backoff = Backoff::after_exit(backoff, started.elapsed());
                }
                Err(e) => {
                    if let Some(shared) = self.shared() {
                        // Never leave other gateways following a worker that is not there.
                        shared.release_worker(entry.id.as_str()).await;
                    }
                    if entry.is_following() {
                        // Another gateway's worker serves the graph meanwhile.
                        slot = None;
                        continue;
                    }
                    tracing::error!(graph = %entry.id, error = %e, retry_in = ?backoff, "worker failed to start");
                    entry.set_state_for(generation, |s| {
                        s.status = Status::Failed;
                        s.pid = None;
                        s.error = Some(e.message);
                    });
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = Backoff::next(backoff, self.backoff_max);
            if entry.lazy && entry.status() == Status::Failed {
                // Requests that waited have their answer (503); the next one
                // tries again, rather than a retry loop of the graph's own.
                entry.set_state_for(generation, |s| s.status = Status::Idle);
                slot = None;
            }
        }
    }

    /// The key to start this graph's worker with: a fresh one, or, with a
    /// shared catalog, the one this gateway registered it under; `None`
    /// when another gateway's worker is registered (the entry then follows it).
    async fn claim(&self, entry: &GraphEntry) -> Result<Option<String>, StartFailure> {
        let Some(shared) = self.shared() else { return Ok(Some(random_key())) };
        // On TCP the port is known once the worker listens: registered empty
        // now (others wait), with its address once it is up (`announce`).
        let address = if self.worker_host.is_some() { String::new() } else { entry.socket.display().to_string() };
        for _ in 0..3 {
            match shared.claim_worker(entry.id.as_str(), &address).await {
                Ok(crate::etcd_catalog::Claim::Ours(key)) => return Ok(Some(key)),
                Ok(crate::etcd_catalog::Claim::Theirs(reg, revision)) => {
                    // In revision order with the watch: a registration the
                    // watch has already seen go is not followed (claim again).
                    let mut own = None;
                    let applied = shared.observe(entry.id.as_str(), revision, Some(reg.clone()), |_| own = entry.follow(&reg.address, &reg.key));
                    if let Some(pid) = own {
                        let _ = tokio::task::spawn_blocking(move || stop_group_blocking(pid)).await;
                    }
                    if applied {
                        tracing::info!(graph = %entry.id, gateway = %reg.gateway, "another gateway runs this graph's worker; proxying to it");
                        return Ok(None);
                    }
                }
                Err(e) => return Err(format!("the shared catalog: {e}").into()),
            }
        }
        Err("the graph's worker registration kept changing; retrying".to_string().into())
    }

    /// Publishes a TCP worker's address in its registration (a shared
    /// catalog); a worker whose registration is no longer ours is stopped.
    async fn announce(&self, entry: &GraphEntry, running: Running) -> Result<Running, StartFailure> {
        let (Some(shared), Some(address)) = (self.shared(), running.address.as_deref()) else { return Ok(running) };
        match shared.set_address(entry.id.as_str(), address, &running.key).await {
            Ok(()) => Ok(running),
            Err(e) => {
                let pid = running.pid;
                let _ = tokio::task::spawn_blocking(move || stop_group_blocking(pid)).await;
                Err(format!("could not register the worker's address: {e}").into())
            }
        }
    }

    /// Starts the worker of a graph `POST /graphs` is creating and waits
    /// until it is ready: on object storage the worker must create the graph
    /// (`--init`, refusing a prefix that filled up since the create checked
    /// it), never open what is there.
    pub async fn start_new(&self, entry: &GraphEntry) -> Result<Running, StartFailure> {
        self.start_with(entry, entry.supervision(), true).await
    }

    /// Starts the worker once (initialising an empty URI from the entry's
    /// schema) for the supervisor task of `generation`, and waits until it
    /// is ready.
    async fn start_with(&self, entry: &GraphEntry, generation: u64, new_graph: bool) -> Result<Running, StartFailure> {
        self.start_keyed(entry, generation, new_graph, random_key()).await
    }

    /// [`Supervisor::start_with`] with the worker key given.
    async fn start_keyed(&self, entry: &GraphEntry, generation: u64, new_graph: bool, key: String) -> Result<Running, StartFailure> {
        let on_object_store = crate::config::local_path(&entry.resolved_uri).is_none();
        let init_schema = if on_object_store {
            // The gateway cannot look at object storage: at a restart the
            // worker creates the graph only if the prefix is empty, and opens
            // it otherwise.
            entry.schema_file.clone()
        } else if uri_is_empty(&entry.resolved_uri) {
            match &entry.schema_file {
                Some(s) => {
                    tracing::info!(graph = %entry.id, uri = %entry.uri, schema = %s.display(), "the graph's URI is empty: initialising it from its schema");
                    Some(s.clone())
                }
                None => return Err(format!("the graph's URI {} is empty and the graph has no schema to initialise it with", entry.uri).into()),
            }
        } else {
            None
        };
        let mut cmd = Command::new(&self.worker_bin);
        cmd.args(["serve", "--graph-id", entry.id.as_str(), "--uri", &entry.resolved_uri]);
        match self.worker_host {
            // Reachable by the other gateways of a shared catalog (port chosen by the kernel).
            Some(ip) => cmd.arg("--listen").arg(std::net::SocketAddr::new(ip, 0).to_string()),
            None => cmd.arg("--socket").arg(&entry.socket),
        };
        cmd.args(&self.worker_args);
        if let Some(s) = &init_schema {
            cmd.arg(if on_object_store && !new_graph { "--init-if-empty" } else { "--init" }).arg("--schema").arg(s);
        }
        cmd.envs(self.worker_env());
        cmd.env(WORKER_KEY_ENV, &key).env(LOG_BARE_ENV, "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let parent = std::process::id() as i32;
        let rlimits = self.rlimits.plan(hard_limit);
        // SAFETY: only async-signal-safe libc calls between fork and exec
        // (prctl, getppid, _exit, setrlimit), and no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                for r in rlimits.iter().flatten() {
                    r.apply()?;
                }
                Ok(())
            });
        }
        let (spawned_tx, spawned_rx) = oneshot::channel::<i32>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(i32, String), StartFailure>>();
        let (exit_tx, exit_rx) = oneshot::channel::<String>();
        let graph = entry.id.to_string();
        std::thread::Builder::new()
            .name(format!("worker-{graph}"))
            .spawn(move || run_child(cmd, graph, spawned_tx, ready_tx, exit_tx))
            .map_err(|e| format!("cannot start a supervisor thread: {e}"))?;
        // The pid is known as soon as the process exists: recorded at once,
        // so a DELETE during the start stops this worker before it purges.
        let Ok(spawned) = spawned_rx.await else {
            return Err(match ready_rx.await {
                Ok(Err(e)) => e,
                _ => "the worker thread ended before the worker was ready".into(),
            });
        };
        if !entry.starting_for(generation, spawned) {
            let _ = tokio::task::spawn_blocking(move || stop_group_blocking(spawned)).await;
            return Err("the graph was removed while its worker started; the worker was stopped".into());
        }
        let pid = match tokio::time::timeout(self.ready_timeout, ready_rx).await {
            Ok(Ok(Ok(ready))) => ready,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err("the worker thread ended before the worker was ready".into()),
            Err(_) => {
                // Never retry while the slow one still runs: two workers would share the graph.
                let _ = tokio::task::spawn_blocking(move || stop_group_blocking(spawned)).await;
                return Err(format!("the worker was not ready within {:?}; it was stopped", self.ready_timeout).into());
            }
        };
        let (pid, announced) = pid;
        let address = announced.starts_with("http://").then_some(announced);
        entry.set_state_for(generation, |s| {
            s.key = Some(Arc::from(key.as_str()));
            s.address = address.as_deref().map(Arc::from);
            s.remote = false;
        });
        Ok(Running { pid, key, address, exited: exit_rx })
    }

    /// Stops every worker (gateway shutdown), after requests have drained.
    pub fn stop_all_blocking(&self, entries: &[Arc<GraphEntry>]) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let pids: Vec<i32> = entries.iter().filter_map(|e| e.state.load().pid).collect();
        stop_groups_blocking(&pids);
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

/// The restart delay: doubling from [`BACKOFF_START`] to a cap, and
/// back to the start after a worker that stayed up [`STABLE_AFTER`].
struct Backoff;

impl Backoff {
    fn next(current: Duration, max: Duration) -> Duration {
        (current * 2).min(max)
    }

    /// The delay before restarting a worker that ran for `ran` and exited.
    fn after_exit(current: Duration, ran: Duration) -> Duration {
        if ran > STABLE_AFTER {
            BACKOFF_START
        } else {
            current
        }
    }
}

/// Stops several workers' process groups: all are signalled first, so they
/// drain in parallel, then each is waited for (SIGKILL past the timeout).
pub fn stop_groups_blocking(pids: &[i32]) {
    for pid in pids {
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::killpg(*pid, libc::SIGTERM);
        }
    }
    for pid in pids {
        stop_group_blocking(*pid);
    }
}

/// Stops a worker's process group from a blocking context: SIGTERM, then SIGKILL.
pub fn stop_group_blocking(pid: i32) {
    unsafe {
        libc::killpg(pid, libc::SIGTERM);
    }
    let end = Instant::now() + STOP_TIMEOUT;
    while alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
}

fn alive(pid: i32) -> bool {
    // kill(pid, 0) succeeds while the process (or a zombie not yet reaped) exists;
    // the supervisor thread reaps it promptly.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Runs on the worker's own thread: spawn, forward output into our log,
/// report readiness (the worker's "listening on" line) and exit.
fn run_child(mut cmd: Command, graph: String, spawned: oneshot::Sender<i32>, ready: oneshot::Sender<Result<(i32, String), StartFailure>>, exited: oneshot::Sender<String>) {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot run {:?}: {e}", cmd.get_program()).into()));
            return;
        }
    };
    let pid = child.id() as i32;
    let _ = spawned.send(pid);
    let stderr_tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<String>::new()));
    if let Some(err) = child.stderr.take() {
        let (graph, tail) = (graph.clone(), stderr_tail.clone());
        let _ = std::thread::Builder::new().name(format!("worker-{graph}-err")).spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                tracing::info!(target: "omnigraph::worker", graph = %graph, "{line}");
                if let Ok(mut t) = tail.lock() {
                    if t.len() >= 5 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
    }
    let mut ready = Some(ready);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some((_, announced)) = line.split_once("listening on ") {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok((pid, announced.trim().to_string())));
                }
            }
            tracing::info!(target: "omnigraph::worker", graph = %graph, "{line}");
        }
    }
    let waited = child.wait();
    let exit_code = waited.as_ref().ok().and_then(std::process::ExitStatus::code);
    let status = waited.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
    if let Some(r) = ready.take() {
        // Give the stderr thread a moment to collect the reason.
        std::thread::sleep(Duration::from_millis(50));
        let tail = stderr_tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | ")).unwrap_or_default();
        let _ = r.send(Err(StartFailure { message: format!("the worker exited before it was ready ({status}): {tail}"), exit_code }));
    }
    let _ = exited.send(status);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_stable_run() {
        let mut d = BACKOFF_START;
        let mut seen = vec![d];
        for _ in 0..12 {
            d = Backoff::next(d, Duration::from_secs(30));
            seen.push(d);
        }
        assert_eq!(&seen[..4], &[Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)]);
        assert_eq!(*seen.last().unwrap(), Duration::from_secs(30), "capped at 30 s");
        assert_eq!(Backoff::next(Duration::from_millis(800), Duration::from_secs(1)), Duration::from_secs(1), "the configured cap");
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(Backoff::after_exit(Duration::from_secs(30), STABLE_AFTER + Duration::from_secs(1)), BACKOFF_START, "a stable worker starts over");
        assert_eq!(Backoff::after_exit(Duration::from_secs(4), Duration::from_secs(1)), Duration::from_secs(4), "a crash loop keeps backing off");
    }

    #[test]
    fn worker_rlimits_are_clamped_to_the_hard_limit_and_zero_is_off() {
        let hard = |k: RlimitKind| if k == RlimitKind::Nofile { 1024 } else { libc::RLIM_INFINITY };
        let plan = WorkerRlimits { data_bytes: 0, nofile: 4096 }.plan(hard);
        assert!(plan[0].is_none(), "0 leaves the memory limit alone");
        let nofile = plan[1].expect("a nofile limit");
        assert_eq!((nofile.kind, nofile.value), (RlimitKind::Nofile, 1024), "never above the hard limit, or the spawn would fail");
        let plan = WorkerRlimits { data_bytes: 1 << 30, nofile: 0 }.plan(hard);
        let data = plan[0].expect("a data limit");
        assert_eq!((data.kind, data.value), (RlimitKind::Data, 1 << 30));
        assert!(plan[1].is_none());
        let l = Limits { worker_memory_bytes: 5, worker_nofile: 77, ..Limits::default() };
        assert_eq!(WorkerRlimits::from_limits(&l), WorkerRlimits { data_bytes: 5, nofile: 77 });
    }

    #[test]
    fn a_spawned_child_runs_under_the_limits() {
        let hard_nofile = hard_limit(RlimitKind::Nofile);
        let want = WorkerRlimits { data_bytes: 1 << 30, nofile: 100.min(hard_nofile) };
        let plan = want.plan(hard_limit);
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/limits");
        // SAFETY: as in Supervisor::start, only setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for r in plan.iter().flatten() {
                    r.apply()?;
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("run cat");
        let text = String::from_utf8_lossy(&out.stdout);
        let row = |name: &str| text.lines().find(|l| l.starts_with(name)).map(|l| l.split_whitespace().collect::<Vec<_>>()).unwrap_or_default();
        let expect = |i: usize| plan[i].map(|r| r.value.to_string()).unwrap_or_default();
        let (data, nofile) = (expect(0), expect(1));
        assert_eq!(row("Max data size")[3..5], [data.as_str(), data.as_str()], "soft and hard: {text}");
        assert_eq!(row("Max open files")[3..5], [nofile.as_str(), nofile.as_str()], "soft and hard: {text}");
    }

    #[test]
    fn socket_paths_past_the_kernel_limit_are_refused() {
        assert!(socket_path(Path::new("/run/og"), "alpha").is_ok());
        let deep = PathBuf::from(format!("/{}", "d".repeat(100)));
        let e = socket_path(&deep, "alpha").unwrap_err();
        assert!(e.contains("107") && e.contains("runtime_dir"), "{e}");
    }
}
