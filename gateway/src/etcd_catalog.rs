//! The shared catalog on etcd v3 (`catalog: {etcd: {endpoints, prefix}}`).
//!
//! Keys under the prefix `P`:
//! - `P catalog/graphs/<id>`: a [`CatalogEntry`] (JSON), no lease: the graph.
//! - `P catalog/reservations/<id>`: a create in flight, under the creating
//!   gateway's lease, so a gateway that dies mid-create frees the id.
//! - `P workers/<id>`: the graph's running worker ([`Registration`]), under
//!   the lease of the gateway that runs it. At most one exists per graph, so
//!   at most one worker per graph runs in the whole deployment; when that
//!   gateway dies its lease expires, the key goes, and the next gateway that
//!   gets a request for the graph starts a worker and registers it.
//!
//! Every decision that must be unique is one etcd transaction: a reservation
//! succeeds only when the id is absent and nothing under `P catalog/` changed
//! since the caller read it (so the storage-overlap check ran on the state
//! the transaction commits against); a registration only when no other
//! exists. Everything else every gateway learns by watching the prefix.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use omnigraph_contract::GraphId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::catalog::{Catalog, CatalogEntry, CatalogError, CatalogEvent, Registration};
use crate::config::{uris_overlap, EtcdSection};

/// How long a reservation keeps retrying while other creates win the race.
const RESERVE_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct ReservationValue {
    canonical_uri: String,
    gateway: String,
}

/// Whose worker a graph gets (not `Debug`: it holds a worker key).
pub enum Claim {
    /// This gateway registered a worker with this key: start it.
    Ours(String),
    /// Another gateway's worker is registered (as of this revision): proxy to it.
    Theirs(Registration, i64),
}

pub struct EtcdCatalog {
    client: Client,
    prefix: String,
    /// This gateway process, as registrations name it.
    gateway: String,
    ttl: i64,
    lease: AtomicI64,
    /// The newest registration seen per graph, with its revision, so a
    /// stale read never overrides a newer event (see [`EtcdCatalog::observe`]).
    workers: DashMap<String, (i64, Option<Registration>)>,
}

fn unavailable(e: etcd_client::Error) -> CatalogError {
    CatalogError::Unavailable(format!("the catalog (etcd) did not answer: {e}"))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl EtcdCatalog {
    /// Connects and takes this gateway's lease.
    pub async fn connect(section: &EtcdSection) -> Result<EtcdCatalog, CatalogError> {
        // HTTP/2 pings: a silently dropped connection fails its streams
        // (the lease keep-alive, the watch) instead of hanging them.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let mut client = Client::connect(&section.endpoints, Some(options)).await.map_err(unavailable)?;
        let ttl = section.lease_ttl_s as i64;
        let lease = client.lease_grant(ttl, None).await.map_err(unavailable)?.id();
        Ok(EtcdCatalog {
            client,
            prefix: section.prefix.clone(),
            gateway: random_hex(8),
            ttl,
            lease: AtomicI64::new(lease),
            workers: DashMap::new(),
        })
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    fn catalog_prefix(&self) -> String {
        format!("{}catalog/", self.prefix)
    }

    fn graph_key(&self, id: &str) -> String {
        format!("{}catalog/graphs/{id}", self.prefix)
    }

    fn reservation_key(&self, id: &str) -> String {
        format!("{}catalog/reservations/{id}", self.prefix)
    }

    fn worker_key(&self, id: &str) -> String {
        format!("{}workers/{id}", self.prefix)
    }

    /// Keeps the lease alive until the process ends. When it is lost anyway
    /// (etcd unreachable, or it says the lease is gone), every registration
    /// made under it is gone or about to be, and another gateway may run
    /// those graphs' workers: `on_lost` stops ours, then a new lease is taken
    /// for the next claims. The gateway's own deadline runs from when a
    /// renewal was *sent*, and it gives up at three quarters of the TTL, so
    /// it stops its workers before etcd can hand their graphs to anyone else.
    pub async fn keep_alive(self: Arc<Self>, on_lost: Arc<dyn Fn() + Send + Sync>) {
        let ttl = Duration::from_secs(self.ttl as u64);
        let every = (ttl / 4).max(Duration::from_millis(250));
        let give_up = ttl * 3 / 4;
        let mut client = self.client.clone();
        let mut stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
        let mut confirmed = Instant::now();
        loop {
            let lease = self.lease();
            let sent = Instant::now();
            let renewed = async {
                if stream.is_none() {
                    stream = Some(client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?);
                }
                let (keeper, answers) = stream.as_mut().ok_or_else(|| "no keep-alive stream".to_string())?;
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match answers.message().await.map_err(|e| e.to_string())? {
                    Some(r) => Ok::<i64, String>(r.ttl()),
                    None => Err("the keep-alive stream ended".into()),
                }
            };
            let lost = match tokio::time::timeout(every, renewed).await {
                Ok(Ok(ttl_left)) if ttl_left > 0 => {
                    confirmed = sent;
                    false
                }
                // etcd answered: the lease is gone.
                Ok(Ok(_)) => true,
                Ok(Err(e)) if e.contains("not found") => true,
                Ok(Err(e)) => {
                    tracing::warn!(lease, error = %e, "etcd lease keep-alive failed; retrying");
                    stream = None;
                    confirmed.elapsed() >= give_up
                }
                Err(_) => {
                    stream = None;
                    confirmed.elapsed() >= give_up
                }
            };
            if !lost {
                tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
                continue;
            }
            tracing::error!(lease, "the gateway's etcd lease is lost: stopping the workers it registered; another gateway may take their graphs over");
            // Blocking (it waits for the workers to exit), and finished before
            // the lease is revoked: no other gateway may start one meanwhile.
            let stop = on_lost.clone();
            let _ = tokio::task::spawn_blocking(move || stop()).await;
            stream = None;
            let _ = client.lease_revoke(lease).await;
            loop {
                match client.lease_grant(self.ttl, None).await {
                    Ok(r) => {
                        self.lease.store(r.id(), Ordering::SeqCst);
                        confirmed = Instant::now();
                        tracing::info!(lease = r.id(), "took a new etcd lease");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd unreachable; retrying the lease");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Ends the lease now (a clean shutdown): this gateway's registrations
    /// go at once instead of after the TTL.
    pub async fn revoke(&self) {
        let _ = self.client.clone().lease_revoke(self.lease()).await;
    }

    /// Applies a registration seen at `revision` unless a newer one was
    /// seen already; `apply` runs with the graph's slot locked, so two
    /// observers (the watch and a claim) apply their views in revision order.
    /// Whether it was applied.
    pub fn observe(&self, id: &str, revision: i64, registration: Option<Registration>, apply: impl FnOnce(Option<&Registration>)) -> bool {
        let mut slot = self.workers.entry(id.to_string()).or_insert((0, None));
        if revision < slot.0 {
            return false;
        }
        *slot = (revision, registration);
        apply(slot.1.as_ref());
        true
    }

    /// Forgets what was seen of a removed graph's registrations.
    pub fn forget(&self, id: &str) {
        self.workers.remove(id);
    }

    /// Registers a worker for graph `id` at `address`, unless another
    /// gateway's worker is registered or the graph is no longer in the
    /// catalog (`NotFound`: a delete this gateway has not seen yet). A
    /// registration of this gateway's own (a worker that crashed and
    /// restarts) is kept, with its key.
    pub async fn claim_worker(&self, id: &str, address: &str) -> Result<Claim, CatalogError> {
        let key = self.worker_key(id);
        let graph = self.graph_key(id);
        let gone = || CatalogError::NotFound(format!("graph {id:?} is no longer in the catalog"));
        let lease = self.lease();
        let mine = Registration { gateway: self.gateway.clone(), address: address.to_string(), key: random_hex(32) };
        let value = serde_json::to_vec(&mine).map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0), Compare::version(graph.as_str(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(key.as_str(), value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key.as_str(), None), TxnOp::get(graph.as_str(), Some(GetOptions::new().with_count_only()))]);
        let resp = client.txn(txn).await.map_err(unavailable)?;
        if resp.succeeded() {
            return Ok(Claim::Ours(mine.key));
        }
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (registered, graph_count) = (gets.next(), gets.next().map_or(0, |g| g.count()));
        if graph_count == 0 {
            return Err(gone());
        }
        let Some(kv) = registered.and_then(|g| g.kvs().first().cloned()) else {
            return Err(CatalogError::Unavailable("the worker registration vanished while being read; retry".into()));
        };
        let registered: Registration = serde_json::from_slice(kv.value()).map_err(|e| CatalogError::Unavailable(format!("a worker registration does not parse: {e}")))?;
        if kv.lease() == lease {
            // Ours (a worker that crashed and restarts): the same key, so the
            // other gateways' requests are accepted by the new worker at once.
            // A TCP worker's old port is withdrawn until the new one is known.
            if registered.address != address {
                let reg = Registration { gateway: self.gateway.clone(), address: address.to_string(), key: registered.key.clone() };
                let value = serde_json::to_vec(&reg).map_err(|e| CatalogError::Unavailable(e.to_string()))?;
                let txn = Txn::new()
                    .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::put(key.as_str(), value, Some(PutOptions::new().with_lease(lease)))]);
                if !client.txn(txn).await.map_err(unavailable)?.succeeded() {
                    return Err(CatalogError::Unavailable("the worker registration changed while being renewed; retry".into()));
                }
            }
            return Ok(Claim::Ours(registered.key));
        }
        Ok(Claim::Theirs(registered, kv.mod_revision()))
    }

    /// Completes this gateway's registration of graph `id`'s worker with the
    /// address it listens on (a TCP worker's port is known only once it runs).
    pub async fn set_address(&self, id: &str, address: &str, key: &str) -> Result<(), CatalogError> {
        let wkey = self.worker_key(id);
        let lease = self.lease();
        let reg = Registration { gateway: self.gateway.clone(), address: address.to_string(), key: key.to_string() };
        let value = serde_json::to_vec(&reg).map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::lease(wkey.as_str(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(wkey.as_str(), value, Some(PutOptions::new().with_lease(lease)))]);
        if self.client.clone().txn(txn).await.map_err(unavailable)?.succeeded() {
            Ok(())
        } else {
            Err(CatalogError::Unavailable("this gateway no longer holds the worker's registration (its lease expired)".into()))
        }
    }

    /// Removes this gateway's registration of graph `id`'s worker, if it
    /// holds it. Retried (other gateways follow it until it goes) until it
    /// succeeds or the lease it was made under is gone anyway.
    pub async fn release_worker(&self, id: &str) {
        let key = self.worker_key(id);
        let lease = self.lease();
        let mut pause = Duration::from_millis(100);
        loop {
            let txn = Txn::new().when([Compare::lease(key.as_str(), CompareOp::Equal, lease)]).and_then([TxnOp::delete(key.as_str(), None)]);
            match self.client.clone().txn(txn).await {
                Ok(_) => return,
                Err(e) if self.lease() == lease => {
                    tracing::warn!(graph = %id, error = %e, "could not remove the worker's registration; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(_) => return,
            }
        }
    }

    /// Records that this gateway used graph `id` through another gateway's
    /// worker (`P used/<id>`, under this gateway's lease), so that gateway
    /// does not stop the worker as idle.
    pub async fn mark_used(&self, id: &str) {
        let key = format!("{}used/{id}", self.prefix);
        let _ = self.client.clone().put(key, self.gateway.as_bytes(), Some(PutOptions::new().with_lease(self.lease()))).await;
    }

    /// The revision of the newest use mark of graph `id` (0: none).
    pub async fn used_revision(&self, id: &str) -> i64 {
        let key = format!("{}used/{id}", self.prefix);
        match self.client.clone().get(key, None).await {
            Ok(r) => r.kvs().first().map_or(0, |kv| kv.mod_revision()),
            Err(_) => 0,
        }
    }

    /// Graph `id`'s catalog entry as etcd holds it now.
    pub async fn entry(&self, id: &str) -> Result<Option<CatalogEntry>, CatalogError> {
        let resp = self.client.clone().get(self.graph_key(id), None).await.map_err(unavailable)?;
        match resp.kvs().first() {
            Some(kv) => serde_json::from_slice(kv.value()).map(Some).map_err(|e| CatalogError::Unavailable(format!("the catalog entry of {id:?} does not parse: {e}"))),
            None => Ok(None),
        }
    }

    /// Waits until no worker is registered for graph `id` (its gateway
    /// stopped it, or its lease expired), at most `wait`.
    pub async fn wait_unregistered(&self, id: &str, wait: Duration) -> bool {
        let key = self.worker_key(id);
        let end = Instant::now() + wait;
        let mut client = self.client.clone();
        while Instant::now() < end {
            if let Ok(r) = client.get(key.as_str(), Some(GetOptions::new().with_count_only())).await {
                if r.count() == 0 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The whole state under the prefix, as one event, and its revision.
    async fn snapshot(&self) -> Result<(CatalogEvent, i64), CatalogError> {
        let resp = self.client.clone().get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(unavailable)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let (mut graphs, mut workers) = (Vec::new(), Vec::new());
        for kv in resp.kvs() {
            match self.parse(kv.key(), kv.value(), kv.mod_revision(), EventType::Put) {
                Some(CatalogEvent::Published { id, entry }) => graphs.push((id, entry)),
                Some(CatalogEvent::Worker { id, revision, registration: Some(r) }) => workers.push((id, revision, r)),
                _ => {}
            }
        }
        Ok((CatalogEvent::Snapshot { graphs, workers, revision }, revision))
    }

    /// One key change as an event; `None` for keys that are not events
    /// (reservations) or do not parse (logged).
    fn parse(&self, key: &[u8], value: &[u8], revision: i64, kind: EventType) -> Option<CatalogEvent> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix(self.prefix.as_str())?;
        if let Some(id) = key.strip_prefix("catalog/graphs/") {
            return match kind {
                EventType::Delete => Some(CatalogEvent::Removed { id: id.to_string() }),
                EventType::Put => match serde_json::from_slice::<CatalogEntry>(value) {
                    Ok(entry) => Some(CatalogEvent::Published { id: id.to_string(), entry }),
                    Err(e) => {
                        tracing::error!(graph = %id, error = %e, "a catalog entry in etcd does not parse; ignoring it");
                        None
                    }
                },
            };
        }
        let id = key.strip_prefix("workers/")?;
        let registration = match kind {
            EventType::Delete => None,
            EventType::Put => Some(serde_json::from_slice::<Registration>(value).map_err(|e| tracing::error!(graph = %id, error = %e, "a worker registration does not parse")).ok()?),
        };
        Some(CatalogEvent::Worker { id: id.to_string(), revision, registration })
    }

    /// [`Catalog::watch`]. When the watch breaks (etcd restarted, history
    /// compacted), a new snapshot is sent before the changes after it, so
    /// the receiver always converges on etcd's state.
    async fn stream(self: Arc<Self>, tx: mpsc::Sender<CatalogEvent>) {
        loop {
            let (snapshot, revision) = match self.snapshot().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "catalog snapshot failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if tx.send(snapshot).await.is_err() {
                return;
            }
            let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            let mut client = self.client.clone();
            let (_watcher, mut stream) = match client.watch(self.prefix.as_str(), Some(options)).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "catalog watch failed; starting over");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            tracing::warn!(reason = resp.cancel_reason(), "catalog watch cancelled; resynchronising");
                            break;
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            if let Some(e) = self.parse(kv.key(), kv.value(), kv.mod_revision(), ev.event_type()) {
                                if tx.send(e).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    _ => {
                        tracing::warn!("catalog watch ended; resynchronising");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[async_trait]
impl Catalog for EtcdCatalog {
    async fn list(&self) -> Result<Vec<(String, CatalogEntry)>, CatalogError> {
        match self.snapshot().await?.0 {
            CatalogEvent::Snapshot { graphs, .. } => Ok(graphs),
            _ => Ok(Vec::new()),
        }
    }

    async fn reserve(&self, id: &GraphId, canonical_uri: &str) -> Result<(), CatalogError> {
        let (prefix, graph, reservation) = (self.catalog_prefix(), self.graph_key(id.as_str()), self.reservation_key(id.as_str()));
        let (graphs, reservations) = (format!("{prefix}graphs/"), format!("{prefix}reservations/"));
        let value = serde_json::to_vec(&ReservationValue { canonical_uri: canonical_uri.to_string(), gateway: self.gateway.clone() })
            .map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        let mut client = self.client.clone();
        let end = Instant::now() + RESERVE_PATIENCE;
        let mut pause = Duration::from_millis(2);
        loop {
            let resp = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(unavailable)?;
            let revision = resp.header().map_or(0, |h| h.revision());
            for kv in resp.kvs() {
                let key = kv.key_str().unwrap_or_default();
                let (other, uri) = if let Some(other) = key.strip_prefix(graphs.as_str()) {
                    (other, serde_json::from_slice::<CatalogEntry>(kv.value()).map(|e| e.canonical_uri).unwrap_or_default())
                } else if let Some(other) = key.strip_prefix(reservations.as_str()) {
                    (other, serde_json::from_slice::<ReservationValue>(kv.value()).map(|r| r.canonical_uri).unwrap_or_default())
                } else {
                    continue;
                };
                if other == id.as_str() {
                    return Err(CatalogError::Conflict(format!("graph {:?} already exists", id.as_str())));
                }
                if !uri.is_empty() && uris_overlap(&uri, canonical_uri) {
                    return Err(CatalogError::Overlap);
                }
            }
            // Nothing under catalog/ changed since the read: the checks above hold.
            let txn = Txn::new()
                .when([Compare::mod_revision(prefix.as_str(), CompareOp::Less, revision + 1).with_prefix(), Compare::version(graph.as_str(), CompareOp::Equal, 0), Compare::version(reservation.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(reservation.as_str(), value.clone(), Some(PutOptions::new().with_lease(self.lease())))]);
            if client.txn(txn).await.map_err(unavailable)?.succeeded() {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(CatalogError::Unavailable("the catalog is too busy to reserve the graph; retry".into()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn release(&self, id: &GraphId) {
        let key = self.reservation_key(id.as_str());
        let txn = Txn::new().when([Compare::lease(key.as_str(), CompareOp::Equal, self.lease())]).and_then([TxnOp::delete(key.as_str(), None)]);
        let _ = self.client.clone().txn(txn).await;
    }

    async fn publish(&self, id: &GraphId, entry: &CatalogEntry, worker: Option<&Registration>) -> Result<(), CatalogError> {
        let (graph, reservation) = (self.graph_key(id.as_str()), self.reservation_key(id.as_str()));
        let lease = self.lease();
        let value = serde_json::to_vec(entry).map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        let mut ops = vec![TxnOp::put(graph.as_str(), value, None), TxnOp::delete(reservation.as_str(), None)];
        if let Some(w) = worker {
            let reg = serde_json::to_vec(w).map_err(|e| CatalogError::Unavailable(e.to_string()))?;
            ops.push(TxnOp::put(self.worker_key(id.as_str()), reg, Some(PutOptions::new().with_lease(lease))));
        }
        let txn = Txn::new()
            .when([Compare::lease(reservation.as_str(), CompareOp::Equal, lease), Compare::version(graph.as_str(), CompareOp::Equal, 0)])
            .and_then(ops);
        match self.client.clone().txn(txn).await {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => Err(CatalogError::Unavailable("the reservation was lost (this gateway's etcd lease expired during the create); retry".into())),
            Err(e) => {
                // The transaction may have committed with its answer lost: the
                // caller's undo would then delete a published graph's data.
                match self.entry(id.as_str()).await {
                    Ok(Some(found)) if found == *entry => Ok(()),
                    _ => Err(unavailable(e)),
                }
            }
        }
    }

    async fn remove(&self, id: &GraphId, canonical_uri: &str, during: Box<dyn FnOnce() + Send>) -> Result<(), CatalogError> {
        let (graph, reservation) = (self.graph_key(id.as_str()), self.reservation_key(id.as_str()));
        // The graph becomes a reservation of this gateway's: no create on any
        // gateway takes the id or the storage until the caller's purge (if
        // any) is over and it calls `release`.
        let hold = serde_json::to_vec(&ReservationValue { canonical_uri: canonical_uri.to_string(), gateway: self.gateway.clone() })
            .map_err(|e| CatalogError::Unavailable(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::version(graph.as_str(), CompareOp::Greater, 0)])
            .and_then([
                TxnOp::delete(graph.as_str(), None),
                TxnOp::delete(format!("{}used/{id}", self.prefix), None),
                TxnOp::put(reservation.as_str(), hold, Some(PutOptions::new().with_lease(self.lease()))),
            ]);
        if !self.client.clone().txn(txn).await.map_err(unavailable)?.succeeded() {
            return Err(CatalogError::NotFound(format!("graph {:?} does not exist", id.as_str())));
        }
        // `during` stops a worker: blocking work, off the async threads.
        let _ = tokio::task::spawn_blocking(during).await;
        self.release_worker(id.as_str()).await;
        Ok(())
    }

    async fn watch(self: Arc<Self>, events: mpsc::Sender<CatalogEvent>) {
        self.stream(events).await
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// Revokes a lease from outside the runtime that made it (a clean shutdown,
/// after Pingora's runtimes have ended): a short-lived client of its own.
pub fn revoke_blocking(section: &EtcdSection, lease: i64) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    rt.block_on(async {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(2));
        if let Ok(mut c) = Client::connect(&section.endpoints, Some(options)).await {
            let _ = c.lease_revoke(lease).await;
        }
    });
}

/// The catalog's graphs, for a command run outside the gateway
/// (`graphs orphans`): a short-lived client, and its lease revoked at once.
pub fn list_blocking(section: &EtcdSection) -> Result<std::collections::BTreeMap<String, crate::config::GraphSection>, CatalogError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CatalogError::Unavailable(e.to_string()))?;
    rt.block_on(async {
        let catalog = EtcdCatalog::connect(section).await?;
        let listed = catalog.list().await;
        catalog.revoke().await;
        Ok(listed?.into_iter().map(|(id, e)| (id, e.section)).collect())
    })
}
