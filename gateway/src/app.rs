//! The gateway's shared state, built once from `omnigraph.yaml` at start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::Policy;
use omnigraph_contract::{AuthSource, BranchName, GraphId, ResolvedActor};

use crate::authn::jwt::KeySource;
use crate::authn::{Authenticator, JwtVerifier, StaticTokens};
use crate::authz::{ActionSets, Engine, BUILTIN_SCHEMA};
use crate::config::{GraphSection, Loaded};
use crate::containment::Fences;
use crate::config_store::ConfigStore;
use crate::metrics::Metrics;
use crate::registry::{GraphEntry, Registry};
use crate::supervisor::{socket_path, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Policy(#[from] crate::authz::PolicyError),
    #[error("{0}")]
    Auth(String),
    #[error("graph {0:?}: {1}")]
    Graph(String, String),
    #[error("{0}")]
    Other(String),
}

/// A graph's policy sets from the server's policies (`server`, compiled as
/// `server_sets`) and its own: the server's compiled sets themselves, shared,
/// when it has none, so thousands of graphs hold one copy.
fn compose_sets(engine: &Engine, server: &[Policy], server_sets: &Arc<ActionSets>, own: &[Policy]) -> Result<Arc<ActionSets>, crate::authz::PolicyError> {
    if own.is_empty() {
        return Ok(server_sets.clone());
    }
    Ok(Arc::new(engine.slice(server.iter().chain(own))?))
}

pub struct AppState {
    pub config: Loaded,
    /// The only writer of the config file at run time.
    pub config_store: Arc<ConfigStore>,
    pub engine: Engine,
    pub server_policies: ArcSwap<Vec<Policy>>,
    /// Server policies alone, sliced by action: decides server actions.
    pub server_sets: ArcSwap<ActionSets>,
    pub authn: Authenticator,
    /// `--insecure-no-auth`: every request is the actor `anonymous`.
    pub insecure: Option<Arc<ResolvedActor>>,
    pub registry: Registry,
    pub supervisor: Arc<Supervisor>,
    pub metrics: Arc<Metrics>,
    /// Requests in flight, and whether SIGTERM is draining them.
    pub drain: Arc<crate::drain::Drain>,
    pub runtime_dir: PathBuf,
    /// The resolved folders and file a graph's storage must respect.
    pub fences: Fences,
    /// `POST /graphs` requests being worked on (`limits.max_creates_in_flight`);
    /// at most `limits.max_creates_queued` wait for a turn, more get 429.
    pub creates: tokio::sync::Semaphore,
    pub creates_waiting: std::sync::atomic::AtomicUsize,
    /// Held by a policy reload for its whole run and by a create while it
    /// publishes, so a new graph never keeps policies a reload replaced.
    reload_lock: std::sync::Mutex<()>,
    /// Per-actor limits on requests in flight and per second.
    pub fairness: crate::fairness::Fairness,
    /// The candidate policy set, when `server.shadow` names one.
    pub shadow: arc_swap::ArcSwapOption<crate::shadow::Shadow>,
    /// The config file as the catalog (when `catalog:` names no shared one).
    yaml_catalog: Arc<crate::catalog::YamlCatalog>,
    /// False until a shared catalog's first snapshot is applied (`/readyz`
    /// says `starting` meanwhile); always true with the file.
    pub catalog_synced: std::sync::atomic::AtomicBool,
}

/// The worker binary: `OMNIGRAPH_WORKER_BIN`, else `server.worker_bin`, else
/// the `omnigraph-worker` next to this executable.
fn worker_bin(cfg: &Loaded) -> Result<PathBuf, StartupError> {
    if let Some(p) = std::env::var_os("OMNIGRAPH_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = &cfg.config.server.worker_bin {
        return Ok(cfg.resolve(p));
    }
    let exe = std::env::current_exe().map_err(|e| StartupError::Other(format!("cannot find my own executable: {e}")))?;
    Ok(exe.with_file_name("omnigraph-worker"))
}

pub fn load_engine(cfg: &Loaded) -> Result<Engine, StartupError> {
    match &cfg.config.server.cedar_schema {
        Some(f) => {
            let p = cfg.resolve(&f.file);
            let src = std::fs::read_to_string(&p).map_err(|e| StartupError::Other(format!("cannot read {}: {e}", p.display())))?;
            Ok(Engine::new(&f.file, &src)?)
        }
        None => Ok(Engine::new("omnigraph.cedarschema", BUILTIN_SCHEMA)?),
    }
}

pub fn load_authn(cfg: &Loaded) -> Result<Authenticator, StartupError> {
    let statics = match &cfg.config.auth.static_tokens {
        Some(f) => StaticTokens::load(&cfg.resolve(&f.file)).map_err(|e| StartupError::Auth(e.to_string()))?,
        None => StaticTokens::default(),
    };
    let mut jwts = Vec::new();
    for j in &cfg.config.auth.jwt {
        let source = match (&j.jwks.file, &j.jwks.url) {
            (Some(f), None) => KeySource::File(cfg.resolve(f)),
            (None, Some(u)) if crate::authn::jwt::jwks_url_allowed(u) => KeySource::Url(u.clone()),
            (None, Some(u)) => {
                return Err(StartupError::Auth(format!("issuer {}: jwks url {u:?} must be https (plain http only to a loopback address)", j.issuer)))
            }
            _ => return Err(StartupError::Auth(format!("issuer {}: jwks needs exactly one of file or url", j.issuer))),
        };
        jwts.push(JwtVerifier::new(j, source).map_err(|e| StartupError::Auth(e.to_string()))?);
    }
    Ok(Authenticator::new(statics, jwts))
}

/// Loads and validates every policy file the config names: the server file
/// and one per graph. Returns the server policies and each graph's.
pub fn load_policies(engine: &Engine, cfg: &Loaded) -> Result<(Vec<Policy>, Vec<(String, Vec<Policy>)>), StartupError> {
    let server = engine.parse_path(&cfg.resolve(&cfg.config.server.policy.file))?;
    engine.slice(&server)?;
    let mut graphs = Vec::new();
    for (id, g) in &cfg.config.graphs {
        let own = match &g.policy {
            Some(f) => engine.parse_path(&cfg.resolve(&f.file))?,
            None => Vec::new(),
        };
        engine.slice(server.iter().chain(&own))?;
        graphs.push((id.clone(), own));
    }
    Ok((server, graphs))
}

impl AppState {
    pub fn build(config: Loaded, insecure_no_auth: bool) -> Result<AppState, StartupError> {
        let engine = load_engine(&config)?;
        let authn = load_authn(&config)?;
        let insecure = if authn.is_configured() {
            None
        } else if insecure_no_auth {
            tracing::warn!("!!! --insecure-no-auth: no authentication is configured; every request runs as the actor \"anonymous\" (Cedar still decides) !!!");
            Some(Arc::new(ResolvedActor { actor_id: Arc::from("anonymous"), tenant_id: None, groups: Vec::new(), scopes: Vec::new(), source: AuthSource::Static }))
        } else {
            return Err(StartupError::Auth(
                "no authentication is configured (auth.static_tokens or auth.jwt); refusing to start. Pass --insecure-no-auth to run without it".into(),
            ));
        };
        let (server, graph_policies) = load_policies(&engine, &config)?;
        let server_sets = engine.slice(&server)?;
        let runtime_dir = config.resolve(&config.config.server.runtime_dir);
        let fences = Fences::resolve(
            &config.resolve(&config.config.server.data_root),
            &runtime_dir,
            &config.resolve(&config.config.server.policy_dir),
            &config.path,
        )
        .map_err(|e| StartupError::Other(e.to_string()))?;
        let object_store = config.config.server.object_store.clone().unwrap_or_default();
        let fences = fences.with_object_roots(object_store.check().map_err(StartupError::Other)?);
        if let Some(c) = &config.config.catalog {
            c.etcd.check().map_err(StartupError::Other)?;
            if !config.config.graphs.is_empty() {
                return Err(StartupError::Other(
                    "with catalog.etcd the graphs live in etcd, shared by every gateway: remove graphs: from the file (create them with POST /graphs)".into(),
                ));
            }
        }
        let limits = config.config.limits.clone();
        if config.config.graphs.len() > limits.max_graphs {
            return Err(StartupError::Other(format!("the config declares {} graphs, more than limits.max_graphs ({})", config.config.graphs.len(), limits.max_graphs)));
        }
        let metrics = Arc::new(Metrics::new().map_err(|e| StartupError::Other(format!("metrics: {e}")))?);
        let supervisor = Arc::new(Supervisor::new(
            worker_bin(&config)?,
            config.config.server.start_concurrency,
            std::time::Duration::from_millis(config.config.server.restart_backoff_max_ms),
            &limits,
            metrics.clone(),
        )
        .with_idle_stop(std::time::Duration::from_secs(config.config.server.idle_stop_s))
        .with_env(object_store.worker_env())
        .with_lazy_bound(limits.max_lazy_workers)
        .with_worker_host(config.config.catalog.as_ref().and_then(|c| c.etcd.worker_host)));
        let config_store = Arc::new(ConfigStore::new(&config.path, &config.bytes));
        let state = AppState {
            config_store: config_store.clone(),
            engine,
            server_policies: ArcSwap::from_pointee(server),
            server_sets: ArcSwap::from_pointee(server_sets),
            authn,
            insecure,
            registry: Registry::default(),
            supervisor,
            metrics,
            drain: Arc::default(),
            runtime_dir,
            fences,
            creates: tokio::sync::Semaphore::new(limits.max_creates_in_flight.max(1)),
            creates_waiting: std::sync::atomic::AtomicUsize::new(0),
            reload_lock: std::sync::Mutex::new(()),
            fairness: crate::fairness::Fairness::new(crate::fairness::FairnessLimits {
                inflight: limits.per_actor_inflight,
                rps: limits.per_actor_rps,
                queue: std::time::Duration::from_millis(limits.per_actor_queue_ms),
                max_waiting: limits.per_actor_queue,
            }),
            shadow: arc_swap::ArcSwapOption::empty(),
            yaml_catalog: Arc::new(crate::catalog::YamlCatalog { store: config_store, config_dir: config.dir.clone() }),
            catalog_synced: std::sync::atomic::AtomicBool::new(config.config.catalog.is_none()),
            config,
        };
        for (id, own) in graph_policies {
            let section = state.config.config.graphs.get(&id).cloned().ok_or_else(|| StartupError::Graph(id.clone(), "vanished".into()))?;
            let entry = state.graph_entry(&id, &section, &own)?;
            if crate::config::local_path(&entry.uri).is_some() {
                state.fences.check_graph_dir(std::path::Path::new(&entry.canonical_uri), &entry.uri).map_err(|e| StartupError::Graph(id.clone(), e.to_string()))?;
            }
            if let Some(other) = state.registry.overlapping(&entry.canonical_uri) {
                return Err(StartupError::Graph(
                    id,
                    format!("its URI {} overlaps the storage of {other} (the same folder, or one inside the other); two graphs never share storage", entry.canonical_uri),
                ));
            }
            state.registry.insert(Arc::new(entry));
        }
        let shadow = state.compile_shadow(&state.server_policies.load())?;
        state.shadow.store(shadow.map(Arc::new));
        Ok(state)
    }

    /// The catalog `POST /graphs` and `DELETE /graphs/{id}` write: the
    /// shared one when `catalog:` names it (an error until it is connected,
    /// never the file instead), else the config file.
    pub fn catalog(&self) -> Result<Arc<dyn crate::catalog::Catalog>, crate::catalog::CatalogError> {
        if self.config.config.catalog.is_none() {
            return Ok(self.yaml_catalog.clone());
        }
        match self.supervisor.shared() {
            Some(shared) => Ok(shared.clone()),
            None => Err(crate::catalog::CatalogError::Unavailable("the shared catalog (etcd) is not connected yet; retry shortly".into())),
        }
    }

    /// Whether graphs live in a catalog shared with other gateways.
    pub fn is_shared(&self) -> bool {
        self.config.config.catalog.is_some()
    }

    /// The shadow set over the live server policies `live_server` and the
    /// graphs' live policy files, when `server.shadow` is configured.
    fn compile_shadow(&self, live_server: &[Policy]) -> Result<Option<crate::shadow::Shadow>, crate::authz::PolicyError> {
        let Some(sec) = &self.config.config.server.shadow else { return Ok(None) };
        let graphs = self.graph_policy_files();
        let ids: Vec<String> = graphs.iter().map(|(id, _)| id.clone()).collect();
        let files = crate::shadow::files(&self.config.resolve(&sec.dir), &ids)?;
        crate::shadow::compile(&self.engine, &files, live_server, &graphs).map(Some)
    }

    fn graph_policy_files(&self) -> Vec<(String, Option<PathBuf>)> {
        self.registry.list().iter().map(|e| (e.id.to_string(), e.policy_file.clone())).collect()
    }

    /// `POST /policies/promote`: the shadow set becomes the live one, only
    /// if it validates. Its files are written over the live files, then the
    /// whole set is reloaded as by a reload, under the same lock.
    pub fn promote_shadow(&self) -> Result<serde_json::Value, crate::authz::PolicyError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sec) = &self.config.config.server.shadow else {
            return Err(crate::authz::PolicyError::plain("no shadow set is configured (server.shadow)".into()));
        };
        let graphs = self.graph_policy_files();
        let ids: Vec<String> = graphs.iter().map(|(id, _)| id.clone()).collect();
        let files = crate::shadow::files(&self.config.resolve(&sec.dir), &ids)?;
        // Validate the whole candidate before any live file is touched.
        crate::shadow::compile(&self.engine, &files, &self.server_policies.load(), &graphs)?;
        let written = crate::shadow::promote_files(&files, &self.config.resolve(&self.config.config.server.policy.file), &graphs)?;
        let mut v = self.reload_locked()?;
        v["status"] = serde_json::json!("promoted");
        v["files_promoted"] = serde_json::json!(written);
        Ok(v)
    }

    /// A graph's policy sets: the server's policies and its own, sliced.
    /// A graph with no policies of its own shares the server's compiled sets
    /// instead of a copy: a gateway declaring thousands of graphs compiles
    /// and holds them once (docs/benchmarks.md, "Lazy graphs").
    fn graph_sets(&self, own: &[Policy]) -> Result<Arc<ActionSets>, crate::authz::PolicyError> {
        compose_sets(&self.engine, &self.server_policies.load(), &self.server_sets.load_full(), own)
    }

    /// Builds a registry entry for a graph section (its policies already parsed).
    pub fn graph_entry(&self, id: &str, g: &GraphSection, own: &[Policy]) -> Result<GraphEntry, StartupError> {
        let gid = GraphId::parse(id).map_err(|e| StartupError::Graph(id.into(), e.to_string()))?;
        let protected = g
            .protected_branches
            .iter()
            .map(|b| BranchName::parse(b).map_err(|e| StartupError::Graph(id.into(), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let sets = self.graph_sets(own)?;
        let socket = socket_path(&crate::config::normalize(&self.runtime_dir), id).map_err(|e| StartupError::Graph(id.into(), e))?;
        let canonical_uri = crate::config::canonical_uri(&self.config.dir, &g.uri);
        // A local graph is opened at the folder its rules were checked
        // against (links and `..` resolved), never at a lexical spelling
        // that could point elsewhere.
        if crate::config::local_path(&g.uri).is_none() {
            // One strict spelling of an object-store URI, or the gateway does not start.
            omnigraph_contract::object_uri::ObjectUri::parse(&g.uri).map_err(|e| StartupError::Graph(id.into(), e.to_string()))?;
        }
        let resolved_uri = canonical_uri.clone();
        Ok(GraphEntry::new(
            gid,
            g.uri.clone(),
            resolved_uri,
            canonical_uri,
            g.tenant.clone(),
            protected,
            g.policy.as_ref().map(|f| self.config.resolve(&f.file)),
            g.schema.as_ref().map(|f| self.config.resolve(&f.file)),
            socket,
            sets,
        ))
        .map(|e| if g.start.unwrap_or(self.config.config.server.default_start) == crate::config::StartMode::Lazy { e.lazy() } else { e })
    }

    /// Re-reads and re-validates every policy file (the server's and each
    /// graph's) and swaps them in only when all of them validate; otherwise
    /// the old policies stay and the first error is returned.
    pub fn reload_policies(&self) -> Result<serde_json::Value, crate::authz::PolicyError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked()
    }

    /// [`AppState::reload_policies`] with the reload lock already held.
    fn reload_locked(&self) -> Result<serde_json::Value, crate::authz::PolicyError> {
        let server = self.engine.parse_path(&self.config.resolve(&self.config.config.server.policy.file))?;
        let server_sets = Arc::new(self.engine.slice(&server)?);
        let mut graph_sets = Vec::new();
        for entry in self.registry.list() {
            let own = match (&entry.policy_file, &entry.policy_source) {
                (Some(p), _) => self.engine.parse_path(p)?,
                (None, Some(src)) => self.engine.parse_file(&format!("{}.cedar", entry.id), src)?,
                (None, None) => Vec::new(),
            };
            let sets = compose_sets(&self.engine, &server, &server_sets, &own)?;
            graph_sets.push((entry, own.len(), sets));
        }
        // The shadow set is checked with the new live policies before anything is swapped in.
        let shadow = self.compile_shadow(&server)?;
        let mut counts = serde_json::Map::new();
        for (entry, n, sets) in graph_sets {
            counts.insert(entry.id.to_string(), serde_json::json!(n));
            entry.policies.store(sets);
        }
        let n = server.len();
        self.server_policies.store(Arc::new(server));
        self.server_sets.store(server_sets);
        self.shadow.store(shadow.map(Arc::new));
        tracing::info!(server_policies = n, graphs = counts.len(), "policies reloaded");
        Ok(serde_json::json!({"status": "reloaded", "server_policies": n, "graph_policies": counts}))
    }

    /// Publishes a graph made at run time. Its policy sets are rebuilt from
    /// the server policies in force now, under the reload lock: a reload that
    /// ran while the graph was being created is not lost on it. Blocking.
    pub fn publish(&self, entry: Arc<GraphEntry>, own: &[Policy]) {
        let _no_reload = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.graph_sets(own) {
            Ok(sets) => entry.policies.store(sets),
            // Only a reload that now clashes with this graph's policies (a
            // duplicate @id) gets here; the next reload reports it, as it
            // would for any graph.
            Err(e) => tracing::error!(graph = %entry.id, error = %e.rendered, "the new graph's policies do not compose with the reloaded server policies; keeping those it was validated with"),
        }
        self.registry.insert(entry);
        // The new graph joins the shadow set too (its live policies, or its shadow file).
        if self.config.config.server.shadow.is_some() {
            match self.compile_shadow(&self.server_policies.load()) {
                Ok(s) => self.shadow.store(s.map(Arc::new)),
                Err(e) => tracing::error!(error = %e.rendered, "the shadow set does not compile with the new graph; the previous shadow set stays"),
            }
        }
    }

    /// Creates the runtime dir with mode 0700 (sockets live there).
    pub fn prepare_runtime_dir(&self) -> Result<(), StartupError> {
        use std::os::unix::fs::PermissionsExt;
        let d: &Path = &self.runtime_dir;
        std::fs::create_dir_all(d).map_err(|e| StartupError::Other(format!("cannot create runtime dir {}: {e}", d.display())))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StartupError::Other(format!("cannot set mode 0700 on {}: {e}", d.display())))?;
        Ok(())
    }
}
