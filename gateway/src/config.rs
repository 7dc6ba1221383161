//! `omnigraph.yaml`: the one file that shows the whole pipeline, from the
//! listener through authentication (`auth`) and authorization (`policy`) to
//! the graphs. Relative paths resolve against the file's own folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use omnigraph_contract::limits::WorkerLimits;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerSection,
    #[serde(default, skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub graphs: BTreeMap<String, GraphSection>,
    /// `catalog: {etcd: ...}`: graphs live in etcd, shared by every gateway
    /// naming the same prefix, instead of in `graphs:` (catalog.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogSection>,
}

/// `catalog:`: where the registry of graphs lives when it is not this file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogSection {
    pub etcd: EtcdSection,
}

/// `catalog.etcd`: an etcd v3 cluster shared by every gateway of one deployment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// `http://host:port` client URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// The key prefix every gateway of the deployment shares (`/omnigraph/`).
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Seconds a gateway's lease outlives it: how long the graphs whose
    /// workers a dead gateway ran stay unreachable before another takes them over.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// The IP address this gateway's workers listen on, over TCP, for
    /// gateways on other hosts to reach them (this host's private address).
    /// Absent: Unix sockets, for gateways sharing one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_host: Option<std::net::IpAddr>,
}

fn default_etcd_prefix() -> String {
    "/omnigraph/".to_string()
}

fn default_lease_ttl_s() -> u64 {
    10
}

impl EtcdSection {
    /// Checks the section when the gateway starts.
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("catalog.etcd.endpoints is empty".into());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            // Not echoed: a malformed endpoint may still hold a credential.
            let url = url::Url::parse(e).map_err(|err| format!("catalog.etcd.endpoints[{i}] is not a URL: {err}"))?;
            // TLS to etcd is not built (docs/scale-out.md): plain http on a private network.
            if url.scheme() != "http" || url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
                return Err("catalog.etcd.endpoints: each must be http://host:port (on a private network), without credentials".into());
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 || self.prefix.contains("//") {
            return Err(format!("catalog.etcd.prefix {:?} must start and end with '/', like /omnigraph/", self.prefix));
        }
        if !(2..=300).contains(&self.lease_ttl_s) {
            return Err("catalog.etcd.lease_ttl_s must be between 2 and 300".into());
        }
        if self.worker_host.is_some_and(|ip| ip.is_unspecified() || ip.is_multicast()) {
            return Err("catalog.etcd.worker_host must be one address of this host that the other gateways can reach, not 0.0.0.0".into());
        }
        Ok(())
    }
}

/// Bounds on what one request may cost (DESIGN.md section 2, `limits:`).
/// Every one has a default; a request past one gets 400, 413 or 429, never a
/// hang. The worker-side limits are passed to each worker as flags.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Graphs one gateway serves, counting creates in flight.
    pub max_graphs: usize,
    /// Workers of lazy graphs running at once (0: no bound). Starting one
    /// more first stops the least recently used lazy worker that has no
    /// request in flight; with none to stop, the start waits for room.
    pub max_lazy_workers: usize,
    /// `POST /graphs` requests being worked on at once; more wait their turn.
    pub max_creates_in_flight: usize,
    /// `POST /graphs` requests that may wait for a turn; more get 429.
    pub max_creates_queued: usize,
    /// Bytes in one request body (`POST /graphs` has its own 1 MiB cap).
    pub max_body_bytes: u64,
    /// Bytes in one `/ingest` body, which is streamed (not `max_body_bytes`).
    pub max_ingest_bytes: u64,
    /// Ops in one `/change` batch.
    pub max_change_ops: u64,
    /// Steps in one read's `traverse`.
    pub max_traverse_steps: u64,
    /// Values in one `in` filter.
    pub max_in_list: u64,
    /// Nodes one read may visit before it answers 400.
    pub max_visited: u64,
    /// Milliseconds one read may run before it answers 400.
    pub read_timeout_ms: u64,
    /// Maintenance keeps the table versions of each branch's newest this
    /// many commits, so `?commit=` still reads them (docs/worker.md).
    pub retain_commits: u64,
    /// ... and of every commit younger than this many days (0: none by age).
    pub retain_days: u64,
    /// Seconds between each worker's background maintenance runs (0: off).
    pub maintenance_interval_s: u64,
    /// A background maintenance run after this many commits (0: off).
    pub maintenance_after_commits: u64,
    /// Requests one actor may have in flight at once; more wait (0: no limit).
    pub per_actor_inflight: usize,
    /// Requests one actor may start per second; more wait (0: no limit).
    pub per_actor_rps: u64,
    /// Milliseconds a request past either per-actor limit waits for its
    /// turn before it gets 429 (0: refused at once; at most 60000).
    #[serde(deserialize_with = "per_actor_queue_ms")]
    pub per_actor_queue_ms: u64,
    /// Requests of one actor that may wait for a turn at once, per limit;
    /// more get 429 at once.
    pub per_actor_queue: usize,
    /// Bytes of private writable memory (`RLIMIT_DATA`: heap, anonymous
    /// mappings, thread stacks) each worker process may map; past it an
    /// allocation fails, the worker aborts and is restarted (0: no limit).
    #[serde(deserialize_with = "worker_memory_bytes")]
    pub worker_memory_bytes: u64,
    /// Open descriptors (`RLIMIT_NOFILE`) each worker process may hold (0:
    /// the gateway's own limit).
    #[serde(deserialize_with = "worker_nofile")]
    pub worker_nofile: u64,
}

/// The smallest `limits.worker_memory_bytes` accepted: below it no worker
/// could even start or serve (an idle debug worker maps 20 to 30 MiB of
/// data, and each thread's stack counts; docs/reliability.md).
pub const MIN_WORKER_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest `limits.worker_nofile` accepted: a worker needs a few dozen
/// descriptors for its socket, its logs and its datasets' files.
pub const MIN_WORKER_NOFILE: u64 = 64;

/// A limit that is 0 (off) or at least `min`; anything between could only
/// leave a worker that never starts, so it is refused when the config loads.
fn zero_or_at_least<'de, D: serde::Deserializer<'de>>(d: D, key: &str, min: u64) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v != 0 && v < min {
        return Err(serde::de::Error::custom(format!("limits.{key} is {v}; it must be 0 (no limit) or at least {min}")));
    }
    Ok(v)
}

/// The longest `limits.per_actor_queue_ms`: a request should not wait for a
/// turn longer than a client or a graceful shutdown would wait for it.
pub const MAX_PER_ACTOR_QUEUE_MS: u64 = 60_000;

fn per_actor_queue_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v > MAX_PER_ACTOR_QUEUE_MS {
        return Err(serde::de::Error::custom(format!("limits.per_actor_queue_ms is {v}; it must be at most {MAX_PER_ACTOR_QUEUE_MS}")));
    }
    Ok(v)
}

fn worker_memory_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    zero_or_at_least(d, "worker_memory_bytes", MIN_WORKER_MEMORY_BYTES)
}

fn worker_nofile<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    zero_or_at_least(d, "worker_nofile", MIN_WORKER_NOFILE)
}

impl Default for Limits {
    fn default() -> Limits {
        let w = WorkerLimits::DEFAULT;
        Limits {
            max_graphs: 1000,
            max_lazy_workers: 0,
            max_creates_in_flight: 4,
            max_creates_queued: 64,
            max_body_bytes: w.max_body_bytes,
            max_ingest_bytes: w.max_ingest_bytes,
            max_change_ops: w.max_change_ops,
            max_traverse_steps: w.max_traverse_steps,
            max_in_list: w.max_in_list,
            max_visited: w.max_visited,
            read_timeout_ms: w.read_timeout_ms,
            retain_commits: w.retain_commits,
            retain_days: w.retain_days,
            maintenance_interval_s: w.maintenance_interval_s,
            maintenance_after_commits: w.maintenance_after_commits,
            per_actor_inflight: 256,
            per_actor_rps: 0,
            per_actor_queue_ms: 1000,
            per_actor_queue: 1024,
            worker_memory_bytes: 0,
            worker_nofile: 4096,
        }
    }
}

impl Limits {
    fn is_default(&self) -> bool {
        *self == Limits::default()
    }

    /// The limits each worker enforces, handed over as `serve` flags.
    pub fn worker(&self) -> WorkerLimits {
        WorkerLimits {
            max_body_bytes: self.max_body_bytes,
            max_ingest_bytes: self.max_ingest_bytes,
            max_change_ops: self.max_change_ops,
            max_traverse_steps: self.max_traverse_steps,
            max_in_list: self.max_in_list,
            max_visited: self.max_visited,
            read_timeout_ms: self.read_timeout_ms,
            retain_commits: self.retain_commits,
            retain_days: self.retain_days,
            maintenance_interval_s: self.maintenance_interval_s,
            maintenance_after_commits: self.maintenance_after_commits,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub bind: String,
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: String,
    /// Every local graph URI must lie inside this folder (`data/` beside the config).
    #[serde(default = "default_data_root")]
    pub data_root: String,
    /// `POST /graphs` may name policy files only inside this folder, and
    /// writes a graph's policy source here (`policies/` beside the config).
    #[serde(default = "default_policy_dir")]
    pub policy_dir: String,
    pub policy: FileRef,
    /// The Cedar schema; the built-in `policies/omnigraph.cedarschema` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cedar_schema: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_bin: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub metrics_public: bool,
    /// Seconds SIGTERM waits for requests in flight.
    #[serde(default = "default_grace_s")]
    pub shutdown_grace_s: u64,
    /// How many workers start at once at boot.
    #[serde(default = "default_start_concurrency")]
    pub start_concurrency: usize,
    /// The longest wait before restarting a worker that keeps dying (the
    /// wait doubles from 100 ms per crash, and starts over after a worker
    /// stayed up 10 s).
    #[serde(default = "default_restart_backoff_max_ms")]
    pub restart_backoff_max_ms: u64,
    /// Pingora worker threads for the proxy. One gives the lowest latency on a
    /// small machine (measured: docs/benchmarks.md); raise it for throughput.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Milliseconds a client has to send a whole request header, counted
    /// from the accept or from its first byte after the previous answer
    /// (the slowloris defence, header_clock.rs).
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Serve the client port over TLS (tls.rs); plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    /// A candidate policy set decided beside the live one (shadow.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSection>,
    /// A 403 names the policies that decided it (the forbids that matched,
    /// or none when no permit applied). Off by default: policy ids can tell
    /// a caller how the rules are written.
    #[serde(default, skip_serializing_if = "is_false")]
    pub explain_denials: bool,
    /// Where the decision log goes; stdout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_log: Option<DecisionLog>,
    /// When a graph without its own `start:` starts its worker: at boot
    /// (`eager`, the default) or on its first allowed request (`lazy`).
    #[serde(default, skip_serializing_if = "StartMode::is_eager")]
    pub default_start: StartMode,
    /// Seconds without a request after which a lazy graph's worker is
    /// stopped (its status becomes `idle`; the next request starts it
    /// again). 0, the default: never.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_stop_s: u64,
    /// Milliseconds a request to an idle lazy graph waits for its worker
    /// before it gets 503 with `Retry-After`.
    #[serde(default = "default_start_wait_ms", skip_serializing_if = "is_default_start_wait")]
    pub start_wait_ms: u64,
    /// `server.object_store`: how workers reach S3-compatible storage for
    /// `s3://` graph URIs, and where `POST /graphs` may put graphs there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreSection>,
}

/// `server.object_store`. Credentials never go in this file: workers take
/// them from the gateway's environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the usual AWS chain).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreSection {
    /// The S3 endpoint (`https://...`; AWS's own when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allows an `http://` endpoint (a loopback test server).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_http: bool,
    /// The `s3://bucket/prefix` URIs under which `POST /graphs` may create
    /// graphs (and `DELETE ?purge=true` may delete them): the object-store
    /// counterpart of `server.data_root`. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<String>,
}

impl ObjectStoreSection {
    /// The environment every worker gets, in Lance's `AWS_*` names.
    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(e) = &self.endpoint {
            env.push(("AWS_ENDPOINT", e.clone()));
        }
        if let Some(r) = &self.region {
            env.push(("AWS_REGION", r.clone()));
        }
        if self.allow_http {
            env.push(("AWS_ALLOW_HTTP", "true".to_string()));
        }
        env
    }

    /// Checks the section when the gateway starts: a usable endpoint and
    /// roots that parse.
    pub fn check(&self) -> Result<Vec<omnigraph_contract::object_uri::ObjectUri>, String> {
        if let Some(e) = &self.endpoint {
            let url = url::Url::parse(e).map_err(|err| format!("server.object_store.endpoint is not a URL: {err}"))?;
            if !url.username().is_empty() || url.password().is_some() {
                // Not echoed: it holds a secret.
                return Err("server.object_store.endpoint holds credentials; credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never the config file".into());
            }
            match url.scheme() {
                "https" => {}
                "http" if self.allow_http => {}
                "http" => return Err("server.object_store.endpoint is plain http; set allow_http: true to allow it (loopback tests only)".into()),
                other => return Err(format!("server.object_store.endpoint: scheme {other:?} is not http or https")),
            }
        }
        self.roots.iter().map(|r| omnigraph_contract::object_uri::ObjectUri::parse(r).map_err(|e| format!("server.object_store.roots: {e}"))).collect()
    }
}

/// When a graph's worker starts (`graphs.<id>.start`, `server.default_start`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// At gateway start, and kept running.
    #[default]
    Eager,
    /// On the first request Cedar allows; stopped again after
    /// `server.idle_stop_s` without requests.
    Lazy,
}

impl StartMode {
    fn is_eager(&self) -> bool {
        *self == StartMode::Eager
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_start_wait_ms() -> u64 {
    30_000
}

fn is_default_start_wait(n: &u64) -> bool {
    *n == default_start_wait_ms()
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_runtime_dir() -> String {
    ".omnigraph/run".into()
}

fn default_data_root() -> String {
    "data".into()
}

fn default_policy_dir() -> String {
    "policies".into()
}

fn default_grace_s() -> u64 {
    10
}

fn default_restart_backoff_max_ms() -> u64 {
    30_000
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

fn default_threads() -> usize {
    1
}

fn default_start_concurrency() -> usize {
    4
}

/// `server.tls`: PEM files, re-read on `SIGHUP`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate chain.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// `server.shadow`: the folder of the candidate policy files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    pub dir: String,
}

/// `server.decision_log`: the audit trail's file and how it is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DecisionLog {
    pub file: String,
    /// Past this size the file is rotated to `FILE.1`.
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` .. `FILE.<keep>`).
    #[serde(default = "default_log_keep")]
    pub keep: usize,
    /// Refuse requests (500 `internal`) while decisions cannot be logged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
}

fn default_log_max_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_log_keep() -> usize {
    10
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub file: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_tokens: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtIssuer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub jwks: JwksSource,
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    #[serde(default)]
    pub claims: ClaimMap,
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwksSource {
    /// A JWKS file (relative to the config's folder), or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// a JWKS URL (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// At most one reload of the keys per this many seconds, on an unknown `kid`.
    #[serde(default = "default_refresh")]
    pub refresh_s: u64,
}

fn default_refresh() -> u64 {
    300
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimMap {
    #[serde(default = "claim_sub")]
    pub actor: String,
    #[serde(default = "claim_tid")]
    pub tenant: String,
    #[serde(default = "claim_groups")]
    pub groups: String,
    #[serde(default = "claim_scope")]
    pub scopes: String,
}

fn claim_sub() -> String {
    "sub".into()
}
fn claim_tid() -> String {
    "tid".into()
}
fn claim_groups() -> String {
    "groups".into()
}
fn claim_scope() -> String {
    "scope".into()
}

impl Default for ClaimMap {
    fn default() -> Self {
        ClaimMap { actor: claim_sub(), tenant: claim_tid(), groups: claim_groups(), scopes: claim_scope() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GraphSection {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protected_branches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<FileRef>,
    /// Used to initialise the graph when its URI is empty at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<FileRef>,
    /// `eager` or `lazy`; `server.default_start` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartMode>,
}

/// A loaded config: the parsed file plus where it lives.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub config: Config,
    /// The exact bytes read, for drift detection.
    pub bytes: Vec<u8>,
}

impl Loaded {
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let path = absolute(path)?;
        let bytes = std::fs::read(&path).map_err(|e| ConfigError::Read { path: path.display().to_string(), source: e })?;
        let config = parse(&path, &bytes)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        Ok(Loaded { path, dir, config, bytes })
    }

    /// A path from the config, resolved against the config's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve_in(&self.dir, p)
    }
}

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
    serde_yaml_ng::from_slice(bytes).map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.to_string() })
}

pub fn resolve_in(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ConfigError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| ConfigError::Read { path: ".".into(), source: e })?;
    Ok(cwd.join(p))
}

pub use omnigraph_contract::paths::local_path;

/// A graph URI as a comparable key: local paths resolved as the kernel
/// would (symlinks and `..` in order, through the deepest existing ancestor,
/// see `containment::resolve_physical`), so every spelling of one folder
/// collides and the key is the folder the worker will open; URLs as given
/// minus a trailing slash.
pub fn canonical_uri(dir: &Path, uri: &str) -> String {
    let Some(local) = local_path(uri) else {
        return match omnigraph_contract::object_uri::ObjectUri::parse(uri) {
            Ok(u) => u.to_string(),
            // Refused at start (`AppState::graph_entry`); a key that never collides wrongly meanwhile.
            Err(_) => uri.trim_end_matches('/').to_string(),
        };
    };
    // Never fold `..` as text first: after a symlink it climbs from where
    // the link points, not from the link.
    let joined = resolve_in(dir, local);
    let p = crate::containment::resolve_physical(&joined).unwrap_or_else(|_| normalize(&joined));
    crate::containment::uri_key(&p)
}

/// How a resolved local folder is written into `omnigraph.yaml`: relative to
/// the config's own (resolved) folder when it lies under the same root, so
/// the file stays portable, and never in a spelling (a `/proc/<pid>` link, a
/// `..` after a symlink) that could resolve elsewhere on the next start.
pub fn stored_uri(config_dir: &Path, resolved: &Path) -> String {
    let base = crate::containment::resolve_physical(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
    let (b, r): (Vec<_>, Vec<_>) = (base.components().collect(), resolved.components().collect());
    let common = b.iter().zip(&r).take_while(|(x, y)| x == y).count();
    if common <= 1 {
        return resolved.display().to_string();
    }
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &r[common..] {
        rel.push(c.as_os_str());
    }
    rel.display().to_string()
}

/// True when two canonical URIs equal, contain or lie inside one another:
/// component-wise for local paths, at `/` boundaries for URLs.
pub fn uris_overlap(a: &str, b: &str) -> bool {
    match (a.starts_with('/'), b.starts_with('/')) {
        (true, true) => crate::containment::overlaps(Path::new(a), Path::new(b)),
        (false, false) => {
            let under = |x: &str, y: &str| x.strip_prefix(y).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            under(a, b) || under(b, a)
        }
        _ => false,
    }
}

/// Resolves `.` and `..` lexically (the path need not exist).
pub use omnigraph_contract::paths::normalize_lexically as normalize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etcd_catalog_section_is_checked() {
        let ok = EtcdSection { endpoints: vec!["http://127.0.0.1:2379".into()], prefix: "/omnigraph/".into(), lease_ttl_s: 10, worker_host: None };
        assert_eq!(ok.check(), Ok(()));
        let with = |f: &dyn Fn(&mut EtcdSection)| {
            let mut s = ok.clone();
            f(&mut s);
            s.check()
        };
        assert!(with(&|s| s.endpoints.clear()).is_err());
        assert!(with(&|s| s.endpoints = vec!["127.0.0.1:2379".into()]).is_err(), "a bare host:port is not a URL");
        assert!(with(&|s| s.endpoints = vec!["unix:///x".into()]).is_err());
        assert!(with(&|s| s.endpoints = vec!["https://etcd:2379".into()]).is_err(), "TLS to etcd is not built: refused, not retried forever");
        let creds = with(&|s| s.endpoints = vec!["http://root:hunter2@127.0.0.1:2379".into()]).unwrap_err();
        assert!(!creds.contains("hunter2"), "a credential is never echoed: {creds}");
        for p in ["omnigraph/", "/omnigraph", "/", "/a//b/"] {
            assert!(with(&|s| s.prefix = p.into()).is_err(), "prefix {p:?}");
        }
        assert!(with(&|s| s.lease_ttl_s = 1).is_err());
        assert!(with(&|s| s.lease_ttl_s = 301).is_err());
        assert!(with(&|s| s.worker_host = Some("0.0.0.0".parse().unwrap())).is_err());
        assert_eq!(with(&|s| s.worker_host = Some("10.0.0.5".parse().unwrap())), Ok(()));
        let cfg: Config = serde_yaml_ng::from_str("server: { bind: 127.0.0.1:1, policy: { file: p.cedar } }\ncatalog: { etcd: { endpoints: [\"http://127.0.0.1:2379\"] } }\n").unwrap();
        let etcd = cfg.catalog.unwrap().etcd;
        assert_eq!((etcd.prefix.as_str(), etcd.lease_ttl_s), ("/omnigraph/", 10), "the defaults");
    }

    #[test]
    fn parses_the_design_example() {
        let y = r#"
server:
  bind: 127.0.0.1:8080
  runtime_dir: .omnigraph/run
  policy: { file: policies/server.cedar }
auth:
  static_tokens: { file: config/tokens.yaml }
  jwt:
    - issuer: https://idp.example.com
      audiences: [omnigraph]
      algorithms: [RS256, ES256]
      jwks: { file: config/jwks.json }
      leeway_s: 30
      claims: { actor: sub, tenant: tid, groups: groups, scopes: scope }
graphs:
  alpha:
    uri: data/alpha
    tenant: acme
    protected_branches: [main]
    policy: { file: policies/alpha.cedar }
"#;
        let c = parse(Path::new("x.yaml"), y.as_bytes()).unwrap();
        assert_eq!(c.graphs["alpha"].tenant.as_deref(), Some("acme"));
        assert_eq!(c.auth.jwt[0].claims.tenant, "tid");
        assert_eq!(c.server.shutdown_grace_s, 10);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = parse(Path::new("x.yaml"), b"server: {bind: a, policy: {file: p}, bnid: 3}\n").unwrap_err();
        assert!(e.to_string().contains("bnid"), "{e}");
    }

    #[test]
    fn worker_process_limits_default_and_bounds() {
        let base = "server: {bind: a, policy: {file: p}}\n";
        let c = parse(Path::new("x.yaml"), base.as_bytes()).unwrap();
        assert_eq!((c.limits.worker_memory_bytes, c.limits.worker_nofile), (0, 4096), "memory off, 4096 descriptors");
        let c = parse(Path::new("x.yaml"), format!("{base}limits: {{worker_memory_bytes: 1073741824, worker_nofile: 0}}\n").as_bytes()).unwrap();
        assert_eq!((c.limits.worker_memory_bytes, c.limits.worker_nofile), (1 << 30, 0));
        for bad in ["worker_memory_bytes: 1000", "worker_nofile: 3"] {
            let e = parse(Path::new("x.yaml"), format!("{base}limits: {{{bad}}}\n").as_bytes()).unwrap_err().to_string();
            assert!(e.contains(bad.split(':').next().unwrap()) && e.contains("at least"), "{bad}: {e}");
        }
    }

    #[test]
    fn uri_spellings_collide() {
        let d = Path::new("/srv/og");
        assert_eq!(canonical_uri(d, "data/a"), canonical_uri(d, "./data/x/../a/"));
        assert_eq!(canonical_uri(d, "data/a"), canonical_uri(d, "/srv/og/data/a"));
        assert_eq!(canonical_uri(d, "s3://b/a/"), "s3://b/a");
    }

    #[test]
    fn stored_uris_are_relative_to_the_config_when_they_can_be() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(root.join("cfg")).unwrap();
        assert_eq!(stored_uri(&root.join("cfg"), &root.join("cfg/data/a")), "data/a");
        assert_eq!(stored_uri(&root.join("cfg"), &root.join("data/a")), "../data/a");
        assert_eq!(stored_uri(&root.join("cfg"), Path::new("/x/y")), "/x/y");
    }

    #[test]
    fn dots_after_a_link_climb_from_its_target() {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(root.join("data/deep/er")).unwrap();
        std::os::unix::fs::symlink(root.join("data/deep/er"), root.join("data/l")).unwrap();
        // The kernel: data/l/.. is data/deep; folding as text would say data.
        assert_eq!(canonical_uri(&root, "data/l/../x"), root.join("data/deep/x").display().to_string());
    }

    #[test]
    fn nested_uris_overlap() {
        assert!(uris_overlap("/d/a", "/d/a/b") && uris_overlap("/d/a", "/d/a"));
        assert!(!uris_overlap("/d/a", "/d/ab"));
        assert!(uris_overlap("s3://b/a", "s3://b/a/x") && !uris_overlap("s3://b/a", "s3://b/ab"));
        assert!(!uris_overlap("/d/a", "s3://d/a"));
    }
}
