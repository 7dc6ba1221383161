//! Keeps this gateway's registry equal to the shared catalog: graphs any
//! gateway publishes are served here within one watch round trip, graphs
//! any gateway removes stop being served, and each graph's requests go to
//! the one worker registered for it, wherever it runs.

use std::collections::HashSet;
use std::sync::Arc;

use omnigraph_contract::GraphId;

use crate::app::AppState;
use crate::catalog::{CatalogEntry, CatalogEvent, Registration};
use crate::etcd_catalog::EtcdCatalog;
use crate::supervisor::stop_group_blocking;

/// Applies catalog events until the stream ends (the process stops).
/// The first event is a snapshot; once it is applied the gateway is ready.
pub async fn run(state: Arc<AppState>, catalog: Arc<EtcdCatalog>, mut events: tokio::sync::mpsc::Receiver<CatalogEvent>) {
    // Graphs published while a create of the same id was in flight here:
    // added once that create has ended (it lost the race), from etcd's
    // state then, in order with the events that follow.
    let mut deferred: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => return },
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)), if !deferred.is_empty() => {
                let ready: Vec<String> = deferred.iter().filter(|id| GraphId::parse(id).is_ok_and(|g| !state.registry.is_pending(&g))).cloned().collect();
                for id in ready {
                    deferred.remove(&id);
                    match catalog.entry(&id).await {
                        Ok(Some(entry)) => add(&state, &catalog, &id, entry, &mut deferred).await,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(graph = %id, error = %e, "could not read a catalog entry; retrying");
                            deferred.insert(id);
                        }
                    }
                }
                continue;
            }
        };
        match event {
            CatalogEvent::Snapshot { graphs, workers, revision } => {
                let present: HashSet<String> = graphs.iter().map(|(id, _)| id.clone()).collect();
                for (id, entry) in graphs {
                    add(&state, &catalog, &id, entry, &mut deferred).await;
                }
                for gone in state.registry.list().into_iter().filter(|e| !present.contains(e.id.as_str()) && !state.registry.is_pending(&e.id)) {
                    // A graph this gateway published after the snapshot was read is not gone.
                    if matches!(catalog.entry(gone.id.as_str()).await, Ok(None)) {
                        remove(&state, &catalog, &gone.id).await;
                    }
                }
                let registered: HashSet<String> = workers.iter().map(|(id, _, _)| id.clone()).collect();
                for (id, revision, registration) in workers {
                    worker(&state, &catalog, &id, revision, Some(registration)).await;
                }
                for e in state.registry.list().into_iter().filter(|e| e.is_following() && !registered.contains(e.id.as_str())) {
                    // Its registration went while the stream was down.
                    worker(&state, &catalog, e.id.as_str(), revision, None).await;
                }
                state.catalog_synced.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            CatalogEvent::Published { id, entry } => add(&state, &catalog, &id, entry, &mut deferred).await,
            CatalogEvent::Removed { id } => {
                if let Ok(gid) = GraphId::parse(&id) {
                    remove(&state, &catalog, &gid).await;
                }
            }
            CatalogEvent::Worker { id, revision, registration } => worker(&state, &catalog, &id, revision, registration).await,
        }
    }
}

/// Serves a graph another gateway published: lazily, with its policies
/// from the catalog, exactly as the publishing gateway decides them.
/// Whether the served graph `known` is the one the catalog entry describes.
fn describes(known: &crate::registry::GraphEntry, entry: &CatalogEntry) -> bool {
    known.uri == entry.section.uri
        && known.tenant == entry.section.tenant
        && known.policy_source.as_deref() == entry.policy_source.as_deref()
        && known.protected_branches.iter().map(|b| b.as_str()).eq(entry.section.protected_branches.iter().map(String::as_str))
}

async fn add(state: &Arc<AppState>, catalog: &Arc<EtcdCatalog>, id: &str, entry: CatalogEntry, deferred: &mut HashSet<String>) {
    let Ok(gid) = GraphId::parse(id) else {
        tracing::error!(graph = %id, "a catalog entry has an invalid graph id; ignoring it");
        return;
    };
    if let Some(known) = state.registry.get(&gid) {
        if describes(&known, &entry) {
            return;
        }
        // Deleted and created again while this gateway's watch was down:
        // the old graph (its storage, its policies) goes first.
        remove(state, catalog, &gid).await;
    }
    if state.registry.is_pending(&gid) {
        // Our own create (which publishes it itself), or one that lost the race.
        deferred.insert(id.to_string());
        return;
    }
    let st = state.clone();
    let id2 = id.to_string();
    let built = tokio::task::spawn_blocking(move || {
        let own = match &entry.policy_source {
            Some(src) => st.engine.parse_file(&format!("{id2}.cedar"), src).map_err(|e| e.without_source())?,
            None => Vec::new(),
        };
        let e = st.graph_entry(&id2, &entry.section, &own).map_err(|e| e.to_string())?.lazy().with_policy_source(entry.policy_source.clone());
        let e = Arc::new(e);
        st.publish(e.clone(), &own);
        Ok::<_, String>(e)
    })
    .await;
    match built {
        Ok(Ok(e)) => {
            tracing::info!(graph = %id, "graph published by the shared catalog");
            tokio::spawn(state.supervisor.clone().supervise(e, None));
        }
        Ok(Err(why)) => tracing::error!(graph = %id, error = %why, "a graph in the shared catalog cannot be served here (its policies or section do not load); it stays unreachable through this gateway"),
        Err(e) => tracing::error!(graph = %id, error = %e, "loading a catalog graph failed"),
    }
}

/// Stops serving a graph the catalog no longer has, and stops its worker
/// if it runs here.
async fn remove(state: &Arc<AppState>, catalog: &Arc<EtcdCatalog>, id: &GraphId) {
    let Some(entry) = state.registry.get(id) else { return };
    if let Some(pid) = entry.mark_removed() {
        let _ = tokio::task::spawn_blocking(move || stop_group_blocking(pid)).await;
    }
    state.registry.remove(id);
    catalog.release_worker(id.as_str()).await;
    catalog.forget(id.as_str());
    tracing::info!(graph = %id, "graph removed by the shared catalog");
}

/// Points a graph's requests at its registered worker: another gateway's
/// (follow it), this gateway's own (nothing to do), or none (idle: the
/// next request starts one, here or wherever it arrives first).
async fn worker(state: &Arc<AppState>, catalog: &Arc<EtcdCatalog>, id: &str, revision: i64, registration: Option<Registration>) {
    let Some(entry) = GraphId::parse(id).ok().and_then(|g| state.registry.get(&g)) else { return };
    let mut stop = None;
    catalog.observe(id, revision, registration, |current| match current {
        Some(r) if r.gateway != catalog.gateway() => stop = entry.follow(&r.address, &r.key),
        Some(_) => {}
        None => {
            // Our own registration never goes while our worker runs (an idle
            // stop clears the pid first): its lease expired, so the worker
            // may no longer be the graph's only one.
            let ws = entry.state.load();
            if !ws.remote && !entry.is_removed() {
                stop = ws.pid;
            }
            entry.unfollow();
        }
    });
    if let Some(pid) = stop {
        tracing::warn!(graph = %id, pid, "another gateway now holds this graph's worker registration: stopping ours");
        let _ = tokio::task::spawn_blocking(move || stop_group_blocking(pid)).await;
    }
}
