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
use crate::drain::{Drain, DrainingShutdown};
use crate::proxy::Gateway;

/// Starts one supervision task per graph, inside Pingora's runtime (so no
/// thread is created before Pingora may fork).
struct SupervisorService {
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for SupervisorService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for entry in self.state.registry.list() {
            tokio::spawn(self.state.supervisor.clone().supervise(entry, None));
        }
        // SIGHUP reloads the policies, like POST /policies/reload.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
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

pub fn run(config: Loaded, insecure_no_auth: bool) -> Result<(), StartupError> {
    let bind = config.config.server.bind.clone();
    let grace = config.config.server.shutdown_grace_s;
    let state = Arc::new(AppState::build(config, insecure_no_auth)?);
    state.prepare_runtime_dir()?;
    if let Some(f) = &state.config.config.server.decision_log {
        let p = state.config.resolve(&f.file);
        crate::audit::log_to_file(&p).map_err(|e| StartupError::Other(format!("decision log {}: {e}", p.display())))?;
    }
    let drain = Arc::new(Drain::default());
    // Draining happens before Pingora's own shutdown starts (see drain.rs).
    let conf = ServerConf {
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: state.runtime_dir.join("gateway.pid").display().to_string(),
        upgrade_sock: state.runtime_dir.join("upgrade.sock").display().to_string(),
        threads: state.config.config.server.threads.max(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    // HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on the same port.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    let mut proxy = pingora::proxy::ProxyServiceBuilder::new(&server.configuration, Gateway { state: state.clone(), drain: drain.clone() })
        .server_options(options)
        .build();
    proxy.add_tcp(&bind);
    server.add_service(proxy);
    server.add_service(background_service("supervisor", SupervisorService { state: state.clone() }));
    tracing::info!(%bind, graphs = state.registry.list().len(), "omnigraph-gateway listening");
    println!("omnigraph-gateway listening on http://{bind}");
    server.run(RunArgs { shutdown_signal: Box::new(DrainingShutdown { drain, grace: std::time::Duration::from_secs(grace) }) });
    tracing::info!("requests drained; stopping workers");
    state.supervisor.stop_all_blocking(&state.registry.list());
    Ok(())
}
