//! `omnigraph-gateway serve`: build the state, start Pingora with the proxy
//! and the worker supervisor, and on shutdown stop every worker after the
//! requests in flight have drained.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::app::{AppState, StartupError};
use crate::config::Loaded;
use crate::drain::DrainingShutdown;
use crate::header_clock::HeaderClock;
use crate::proxy::Gateway;

/// Starts one supervision task per graph, inside Pingora's runtime (so no
/// thread is created before Pingora may fork).
struct SupervisorService {
    state: Arc<AppState>,
    /// The configured listen address; its port may be 0.
    bind: String,
    /// The TLS certificate, re-read on SIGHUP.
    certs: Option<Arc<crate::tls::CertStore>>,
}

/// The address of this process's listening TCP socket that matches `want`
/// (the same IP, and the same port unless `want`'s is 0): how the gateway
/// learns the port the kernel chose for `:0`, since Pingora binds the socket
/// itself. Found by asking each open descriptor, as `ss -l` would.
fn bound_addr(want: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    for e in fds.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let mut listening: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt/getsockname only read the descriptor and write into our buffers.
        let ok = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN, (&mut listening as *mut libc::c_int).cast(), &mut len) } == 0;
        if !ok || listening != 1 {
            continue;
        }
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut slen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if unsafe { libc::getsockname(fd, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut slen) } != 0 {
            continue;
        }
        let addr = match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a: libc::sockaddr_in = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
                std::net::SocketAddr::from((std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port)))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a: libc::sockaddr_in6 = unsafe { std::ptr::read((&storage as *const libc::sockaddr_storage).cast()) };
                std::net::SocketAddr::from((std::net::Ipv6Addr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port)))
            }
            _ => continue,
        };
        if addr.ip() == want.ip() && (want.port() == 0 || addr.port() == want.port()) {
            return Some(addr);
        }
    }
    None
}

/// Prints the address the gateway actually listens on, once Pingora has
/// bound it: tests and scripts start the gateway on port 0 and read it here.
async fn announce(bind: &str, scheme: &str) {
    let Ok(want) = bind.parse::<std::net::SocketAddr>() else {
        println!("omnigraph-gateway listening on {scheme}://{bind}");
        return;
    };
    for _ in 0..500 {
        if let Some(addr) = bound_addr(want) {
            tracing::info!(%addr, "omnigraph-gateway listening");
            println!("omnigraph-gateway listening on {scheme}://{addr}");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::error!(%bind, "the listening socket did not appear; is the address in use?");
}

#[async_trait]
impl BackgroundService for SupervisorService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let bind = self.bind.clone();
        let scheme = if self.certs.is_some() { "https" } else { "http" };
        tokio::spawn(async move { announce(&bind, scheme).await });
        for entry in self.state.registry.list() {
            tokio::spawn(self.state.supervisor.clone().supervise(entry, None));
        }
        if let Some(c) = &self.state.config.config.catalog {
            share_catalog(&self.state, &c.etcd).await;
        }
        // SIGHUP reloads the policies, like POST /policies/reload.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    if let Some(c) = self.certs.clone() {
                        let result = match tokio::task::spawn_blocking(move || c.reload()).await {
                            Ok(Ok(())) => {
                                tracing::info!("SIGHUP: TLS certificate reloaded; new connections use it");
                                "ok"
                            }
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the old one stays in use");
                                "failed"
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "SIGHUP: the certificate reload task failed");
                                "failed"
                            }
                        };
                        self.state.metrics.tls_reloads.with_label_values(&[result]).inc();
                    }
                    let st = self.state.clone();
                    match tokio::task::spawn_blocking(move || st.reload_policies()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!("SIGHUP: policies not reloaded; the old ones stay in force:\n{}", e.rendered),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: the policy reload task failed; the old policies stay in force"),
                    }
                }
            }
        }
        self.state.supervisor.begin_shutdown();
    }
}

/// Connects to the shared catalog (retrying until etcd answers: `/readyz`
/// says `starting` meanwhile), then serves its graphs: a watch feeds
/// `catalog_sync`, and the lease that holds this gateway's worker
/// registrations is kept alive.
async fn share_catalog(state: &Arc<AppState>, section: &crate::config::EtcdSection) {
    let shared = loop {
        match crate::etcd_catalog::EtcdCatalog::connect(section).await {
            Ok(c) => break Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, endpoints = ?section.endpoints, "cannot reach the shared catalog; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(gateway = %shared.gateway(), prefix = %section.prefix, "connected to the shared catalog");
    state.supervisor.share(shared.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(crate::catalog::Catalog::watch(shared.clone(), tx));
    tokio::spawn(crate::catalog_sync::run(state.clone(), shared.clone(), rx));
    let st = state.clone();
    tokio::spawn(shared.keep_alive(Arc::new(move || {
        // Our registrations are gone: our workers may no longer be their graphs' only ones.
        let running: Vec<i32> = st.registry.list().iter().filter_map(|e| e.state.load().pid).collect();
        crate::supervisor::stop_groups_blocking(&running);
    })));
}

/// Lifts the soft limit on open descriptors to the hard one, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: every client connection is a
/// descriptor, and a default soft limit of 1024 would let a thousand idle
/// clients shut everyone else out long before memory runs short.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let soft = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::debug!(from = soft, to = lim.rlim_max, "raised the open-file limit");
        }
    }
}

pub fn run(config: Loaded, insecure_no_auth: bool) -> Result<(), StartupError> {
    raise_nofile_limit();
    let bind = config.config.server.bind.clone();
    let grace = config.config.server.shutdown_grace_s;
    let state = Arc::new(AppState::build(config, insecure_no_auth)?);
    state.prepare_runtime_dir()?;
    if let Some(f) = &state.config.config.server.decision_log {
        let p = state.config.resolve(&f.file);
        let rotation = crate::audit::Rotation { max_bytes: f.max_bytes.max(1), keep: f.keep };
        crate::audit::log_to_file(&p, rotation).map_err(|e| StartupError::Other(format!("decision log {}: {e}", p.display())))?;
    }
    let drain = state.drain.clone();
    // Draining happens before Pingora's own shutdown starts (see drain.rs).
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: state.runtime_dir.join("gateway.pid").display().to_string(),
        upgrade_sock: state.runtime_dir.join("upgrade.sock").display().to_string(),
        threads: state.config.config.server.threads.max(1),
        // A request to another gateway's worker that refuses the connection
        // is tried again until `server.start_wait_ms` (proxy.rs); this only caps the count.
        max_retries: 64,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    // HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on the same port.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    let mut proxy = pingora::proxy::HttpProxy::new(Gateway { state: state.clone(), drain: drain.clone() }, server.configuration.clone());
    proxy.server_options = Some(options);
    proxy.handle_init_modules();
    // Every client connection gets a whole-header deadline (header_clock.rs).
    let clocked = HeaderClock {
        inner: Arc::new(proxy),
        timeout: std::time::Duration::from_millis(state.config.config.server.header_timeout_ms.max(1)),
        timeouts: state.metrics.header_timeouts.clone(),
    };
    let mut proxy = pingora::services::listening::Service::new("Pingora HTTP Proxy Service".to_string(), clocked);
    let certs = match &state.config.config.server.tls {
        Some(t) => {
            let (cert, key) = (state.config.resolve(&t.cert), state.config.resolve(&t.key));
            let store = crate::tls::CertStore::load(&cert.display().to_string(), &key.display().to_string()).map_err(|e| StartupError::Other(format!("server.tls: {e}")))?;
            let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "").map_err(|e| StartupError::Other(format!("server.tls: {e}")))?;
            settings.set_cert_resolver(store.clone());
            settings.enable_h2();
            proxy.add_tls_with_settings(&bind, None, settings);
            Some(store)
        }
        None => {
            proxy.add_tcp(&bind);
            None
        }
    };
    server.add_service(proxy);
    server.add_service(background_service("supervisor", SupervisorService { state: state.clone(), bind: bind.clone(), certs }));
    tracing::info!(%bind, graphs = state.registry.list().len(), "omnigraph-gateway starting");
    server.run(RunArgs { shutdown_signal: Box::new(DrainingShutdown { drain, grace: std::time::Duration::from_secs(grace) }) });
    tracing::info!("requests drained; stopping workers");
    crate::audit::flush();
    state.supervisor.stop_all_blocking(&state.registry.list());
    if let (Some(c), Some(shared)) = (&state.config.config.catalog, state.supervisor.shared()) {
        // Our registrations go now, not after the lease's TTL.
        crate::etcd_catalog::revoke_blocking(&c.etcd, shared.lease());
    }
    Ok(())
}
