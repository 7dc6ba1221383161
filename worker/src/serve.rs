//! Binding the listener (loopback TCP or a Unix socket) and serving until
//! SIGTERM or SIGINT, draining requests in flight.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::contract::headers::WORKER_KEY_ENV;
use crate::http::{router, AppState};
use crate::limits::Limits;
use crate::store::{Store, StoreError};

/// `sun_path` is 108 bytes on Linux, one of them the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone)]
pub enum Bind {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("socket path {path} is {len} bytes; Linux allows at most {MAX_SOCKET_PATH}. Use a shorter --socket path")]
    SocketPathTooLong { path: String, len: usize },
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("{WORKER_KEY_ENV} is set but empty; unset it to run without a key")]
    EmptyKey,
}

pub struct Options {
    pub graph_id: String,
    pub uri: String,
    pub bind: Bind,
    /// `Some(schema source)` creates the graph (the URI must be empty).
    pub init_schema: Option<String>,
    /// With `init_schema`: create only when the URI is empty, open otherwise
    /// (how the gateway starts a graph on object storage, where it cannot
    /// look at the location itself).
    pub init_if_empty: bool,
    /// The per-request limits (the gateway passes its `limits:` block).
    pub limits: Limits,
}

/// Reads the worker key from the environment and removes it, so child
/// processes and `/proc/<pid>/environ` readers after start-up do not see it.
///
/// Fails closed: a key that is set but empty is an error rather than "no
/// key", because a keyless worker trusts every caller.
pub fn take_worker_key() -> Result<Option<Arc<[u8]>>, ServeError> {
    use std::os::unix::ffi::OsStrExt;
    let Some(key) = std::env::var_os(WORKER_KEY_ENV) else { return Ok(None) };
    std::env::remove_var(WORKER_KEY_ENV);
    if key.is_empty() {
        return Err(ServeError::EmptyKey);
    }
    Ok(Some(Arc::from(key.as_bytes())))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining and stopping"),
        _ = int.recv() => tracing::info!("SIGINT: draining and stopping"),
    }
}

fn check_socket_path(p: &Path) -> Result<(), ServeError> {
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ServeError::SocketPathTooLong { path: p.display().to_string(), len });
    }
    Ok(())
}

/// Opens (or creates) the graph, binds, prints the bound address on stdout
/// and serves until a shutdown signal.
pub async fn run(opts: Options, worker_key: Option<Arc<[u8]>>) -> Result<(), ServeError> {
    if let Bind::Unix(p) = &opts.bind {
        check_socket_path(p)?;
    }
    let init = match &opts.init_schema {
        Some(_) if opts.init_if_empty => Store::location_is_empty(&opts.uri).await?,
        Some(_) => true,
        None => false,
    };
    let store = match opts.init_schema.as_deref().filter(|_| init) {
        Some(src) => {
            let s = Store::init(&opts.graph_id, &opts.uri, src, crate::contract::headers::LOCAL_ACTOR).await?;
            tracing::info!(graph = %opts.graph_id, uri = %opts.uri, "initialised a new graph");
            s
        }
        None => Store::open(&opts.graph_id, &opts.uri).await?,
    };
    // Opening read and parsed the whole history; keep only what it kept.
    crate::memory::return_free_heap();
    if worker_key.is_none() {
        tracing::info!("no {WORKER_KEY_ENV}: every request is served, and every commit is recorded as actor \"local\"");
    }
    tracing::info!(limits = ?opts.limits, "limits");
    let store = Arc::new(store);
    crate::maintenance::spawn(store.clone(), opts.limits);
    let stop = {
        let store = store.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = store.fenced() => tracing::warn!("another worker took this graph over: draining and stopping"),
            }
        }
    };
    let app = router(AppState { store, worker_key, limits: opts.limits });
    match opts.bind {
        Bind::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| ServeError::Bind(addr.to_string(), e))?;
            let local = listener.local_addr().map_err(|e| ServeError::Bind(addr.to_string(), e))?;
            if !local.ip().is_loopback() {
                tracing::warn!(%local, "listening on a non-loopback address: the worker has no authentication of its own");
            }
            announce(&format!("http://{local}"));
            axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(ServeError::Serve)
        }
        Bind::Unix(path) => {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ServeError::Bind(path.display().to_string(), e)),
            }
            let listener = tokio::net::UnixListener::bind(&path).map_err(|e| ServeError::Bind(path.display().to_string(), e))?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| ServeError::Bind(path.display().to_string(), e))?;
            }
            announce(&format!("unix:{}", path.display()));
            let result = axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(ServeError::Serve);
            let _ = std::fs::remove_file(&path);
            result
        }
    }
}

fn announce(addr: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "omnigraph-worker listening on {addr}");
    let _ = out.flush();
}
