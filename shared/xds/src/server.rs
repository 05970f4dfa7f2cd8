//! The controller side: a resource store per type URL and a Delta ADS service that pushes
//! each connection only what changed since what that connection already has.
//!
//! Every connection remembers, per type URL, the version of each resource it has sent (or
//! that the client declared in `initial_resource_versions`). A push is the difference between
//! the store and that memory: new/changed resources plus `removed_resources`. A NACKed
//! version stays remembered as sent, so it is not pushed again until the resource changes.
//!
//! Publications also append the changed names to a bounded change log, so a connection that
//! is up to date looks only at what changed since its last push (cost independent of the
//! store's size); one that fell behind the log compares the whole store instead.

use crate::{content_version, VersionedResource};
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh_api::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type TypeStore = BTreeMap<String, Arc<VersionedResource>>;
type Store = HashMap<String, Arc<TypeStore>>;
type ResponseSender = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;
/// type URL -> names changed since some generation.
type ChangedNames = HashMap<String, HashSet<String>>;

/// The published store, its generation and the names each generation changed.
struct Published {
    resources: Arc<Store>,
    generation: u64,
    /// (generation, type URL, name), oldest first.
    log: std::collections::VecDeque<(u64, String, String)>,
    /// Every change after this generation is in `log`.
    log_floor: u64,
}

impl Published {
    /// Names changed after generation `since`, or None if the log no longer reaches back.
    fn changed_since(&self, since: u64) -> Option<ChangedNames> {
        if since < self.log_floor {
            return None;
        }
        let mut changed = ChangedNames::new();
        let start = self.log.partition_point(|(g, _, _)| *g <= since);
        for (_, type_url, name) in self.log.range(start..) {
            changed
                .entry(type_url.clone())
                .or_default()
                .insert(name.clone());
        }
        Some(changed)
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Changes published within this window reach connections as one push.
    pub debounce: Duration,
    /// Changed names remembered for incremental pushes; a connection that falls further
    /// behind compares the whole store once instead.
    pub change_log_capacity: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            debounce: Duration::from_millis(100),
            change_log_capacity: 200_000,
        }
    }
}

/// Counters, in total and per node id. Tests and benchmarks assert on them (for example:
/// a reconnect after a controller restart sends only the changed resources).
#[derive(Default, Debug)]
pub struct ServerStats {
    responses: AtomicU64,
    resources_sent: AtomicU64,
    removed_sent: AtomicU64,
    bytes_sent: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    denials: AtomicU64,
    connections_accepted: AtomicU64,
    connections_active: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// DeltaDiscoveryResponse messages sent.
    pub responses: u64,
    /// Resources (added or updated) carried by those messages.
    pub resources_sent: u64,
    /// Names carried in `removed_resources`.
    pub removed_sent: u64,
    /// Encoded size of the responses (protobuf bytes, before gRPC framing).
    pub bytes_sent: u64,
    pub acks: u64,
    pub nacks: u64,
    /// Resources withheld by the [`Authorizer`] (once per stream, name and version).
    pub denials: u64,
    pub connections_accepted: u64,
    pub connections_active: u64,
}

/// NACK reports kept (a misbehaving fleet must not grow the controller's memory).
pub const NACK_HISTORY: usize = 1024;

/// One open stream, for the controller's status page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionInfo {
    pub node_id: String,
    /// Subscribed type URLs with whether the subscription is a wildcard.
    pub subscriptions: Vec<(String, bool)>,
    /// Resources this stream holds, per type URL.
    pub resources_held: Vec<(String, usize)>,
}

/// A client rejected a push: what, from whom, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct NackReport {
    pub node_id: String,
    pub type_url: String,
    pub nonce: String,
    pub message: String,
    /// The resources (name, version) the rejected response carried.
    pub resources: Vec<(String, String)>,
}

struct Inner {
    config: ServerConfig,
    store: Mutex<Published>,
    generation: watch::Sender<u64>,
    closing: watch::Sender<bool>,
    stats: ServerStats,
    per_node: Mutex<HashMap<String, StatsSnapshot>>,
    nacks: Mutex<std::collections::VecDeque<NackReport>>,
    denials: Mutex<std::collections::VecDeque<DenialReport>>,
    connections: Mutex<BTreeMap<u64, ConnectionInfo>>,
    next_connection_id: AtomicU64,
}

/// The Delta ADS server. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
    /// Decides what the streams served through this handle may receive (None: everything).
    authorizer: Option<Arc<dyn Authorizer>>,
}

/// Who opened a stream, as the transport and the request metadata tell it.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The client's certificate chain (leaf first) when it presented one over TLS; the TLS
    /// layer has verified it against the configured client CA.
    pub peer_certificates: Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    /// The token of an `authorization: Bearer` header, if any.
    pub bearer_token: Option<String>,
}

/// Which resources a stream may receive. Consulted for every resource before it is sent,
/// so a decision can depend on the content (for example: a resource holding private keys).
pub trait Authorizer: Send + Sync + 'static {
    /// `Err(reason)` withholds the resource: the stream neither gets it nor learns it
    /// exists (a held copy is removed), and the denial is counted and reported.
    fn authorize(
        &self,
        caller: &Caller,
        type_url: &str,
        name: &str,
        resource: &VersionedResource,
    ) -> Result<(), String>;
}

/// A resource withheld from a stream by the [`Authorizer`].
#[derive(Clone, Debug, PartialEq)]
pub struct DenialReport {
    pub node_id: String,
    pub type_url: String,
    pub name: String,
    pub reason: String,
}

/// Changes applied together and published as one generation.
pub struct UpdateBatch<'a> {
    store: &'a mut Store,
    changed: Vec<(String, String)>,
}

impl UpdateBatch<'_> {
    /// Adds or replaces a resource; returns whether its content changed.
    pub fn set(
        &mut self,
        type_url: &str,
        name: impl Into<String>,
        resource: prost_types::Any,
    ) -> bool {
        let version = content_version(&resource);
        let name = name.into();
        let resources = self.store.entry(type_url.to_string()).or_default();
        if resources.get(&name).is_some_and(|r| r.version == version) {
            return false;
        }
        Arc::make_mut(resources).insert(
            name.clone(),
            Arc::new(VersionedResource { version, resource }),
        );
        self.changed.push((type_url.to_string(), name));
        true
    }

    /// Removes a resource; returns whether it existed.
    pub fn remove(&mut self, type_url: &str, name: &str) -> bool {
        let Some(resources) = self.store.get_mut(type_url) else {
            return false;
        };
        if !resources.contains_key(name) {
            return false;
        }
        Arc::make_mut(resources).remove(name);
        self.changed.push((type_url.to_string(), name.to_string()));
        true
    }

    /// Makes `resources` the whole set for `type_url`: sets each, removes every other name.
    /// This is how a controller publishes a fresh translation; unchanged ones cost nothing.
    pub fn replace_type(
        &mut self,
        type_url: &str,
        resources: impl IntoIterator<Item = (String, prost_types::Any)>,
    ) {
        let mut keep = HashSet::new();
        for (name, resource) in resources {
            keep.insert(name.clone());
            self.set(type_url, name, resource);
        }
        let stale: Vec<String> = self
            .store
            .get(type_url)
            .map(|r| r.keys().filter(|n| !keep.contains(*n)).cloned().collect())
            .unwrap_or_default();
        for name in stale {
            self.remove(type_url, &name);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl XdsServer {
    pub fn new(config: ServerConfig) -> Self {
        XdsServer {
            inner: Arc::new(Inner {
                config,
                store: Mutex::new(Published {
                    resources: Arc::new(Store::new()),
                    generation: 0,
                    log: Default::default(),
                    log_floor: 0,
                }),
                generation: watch::Sender::new(0),
                closing: watch::Sender::new(false),
                stats: ServerStats::default(),
                per_node: Mutex::new(HashMap::new()),
                nacks: Mutex::new(Default::default()),
                denials: Mutex::new(Default::default()),
                connections: Mutex::new(BTreeMap::new()),
                next_connection_id: AtomicU64::new(1),
            }),
            authorizer: None,
        }
    }

    /// A handle on the same store whose streams get only what `authorizer` allows (mount
    /// one per listener: plaintext and TLS callers can be held to different rules).
    pub fn with_authorizer(&self, authorizer: Arc<dyn Authorizer>) -> Self {
        XdsServer {
            inner: self.inner.clone(),
            authorizer: Some(authorizer),
        }
    }

    /// The most recent denials (up to [`NACK_HISTORY`]), oldest first.
    pub fn denials(&self) -> Vec<DenialReport> {
        lock(&self.inner.denials).iter().cloned().collect()
    }

    /// Applies a batch of changes and, if anything changed, publishes them (debounced).
    pub fn update<R>(&self, apply: impl FnOnce(&mut UpdateBatch<'_>) -> R) -> R {
        let mut published = lock(&self.inner.store);
        let mut store: Store = (*published.resources).clone();
        let mut batch = UpdateBatch {
            store: &mut store,
            changed: Vec::new(),
        };
        let result = apply(&mut batch);
        if !batch.changed.is_empty() {
            let generation = published.generation + 1;
            let changed = std::mem::take(&mut batch.changed);
            published.resources = Arc::new(store);
            published.generation = generation;
            for (type_url, name) in changed {
                published.log.push_back((generation, type_url, name));
            }
            while published.log.len() > self.inner.config.change_log_capacity {
                if let Some((dropped, _, _)) = published.log.pop_front() {
                    published.log_floor = published.log_floor.max(dropped);
                }
            }
            drop(published);
            self.inner.generation.send_replace(generation);
        }
        result
    }

    pub fn set(&self, type_url: &str, name: impl Into<String>, resource: prost_types::Any) -> bool {
        self.update(|b| b.set(type_url, name, resource))
    }

    pub fn remove(&self, type_url: &str, name: &str) -> bool {
        self.update(|b| b.remove(type_url, name))
    }

    /// The stored resource, if any.
    pub fn get(&self, type_url: &str, name: &str) -> Option<VersionedResource> {
        let store = lock(&self.inner.store).resources.clone();
        store.get(type_url)?.get(name).map(|r| (**r).clone())
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        StatsSnapshot {
            responses: s.responses.load(Ordering::Relaxed),
            resources_sent: s.resources_sent.load(Ordering::Relaxed),
            removed_sent: s.removed_sent.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            acks: s.acks.load(Ordering::Relaxed),
            nacks: s.nacks.load(Ordering::Relaxed),
            denials: s.denials.load(Ordering::Relaxed),
            connections_accepted: s.connections_accepted.load(Ordering::Relaxed),
            connections_active: s.connections_active.load(Ordering::Relaxed),
        }
    }

    /// Counters of the connections that announced this node id (summed over reconnects).
    pub fn node_stats(&self, node_id: &str) -> Option<StatsSnapshot> {
        lock(&self.inner.per_node).get(node_id).copied()
    }

    /// The most recent NACKs (up to [`NACK_HISTORY`]), oldest first.
    pub fn nacks(&self) -> Vec<NackReport> {
        lock(&self.inner.nacks).iter().cloned().collect()
    }

    /// The open streams: who is connected and what each subscribed to.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        lock(&self.inner.connections).values().cloned().collect()
    }

    /// The tonic service, to mount next to others (the CA) on one server.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// Ends every open stream with UNAVAILABLE so clients reconnect elsewhere or later.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Serves plaintext gRPC on `listener` until `shutdown` completes, then closes the
    /// streams (long-lived ADS streams would otherwise hold a graceful shutdown forever).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        self.serve_with(tonic::transport::Server::builder(), listener, shutdown)
            .await
    }

    /// Like [`serve`](Self::serve) over TLS (Istio's 15012). Give the config a client CA
    /// to require client certificates.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: tonic::transport::ServerTlsConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let builder = tonic::transport::Server::builder().tls_config(tls)?;
        self.serve_with(builder, listener, shutdown).await
    }

    async fn serve_with(
        self,
        builder: tonic::transport::Server,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let closer = self.clone();
        // Small pushes must not wait on Nagle + delayed ACKs.
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        builder
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                closer.close_streams();
            })
            .await
    }

    fn count_send(&self, node_id: &str, resources: u64, removed: u64, bytes: u64) {
        let s = &self.inner.stats;
        s.responses.fetch_add(1, Ordering::Relaxed);
        s.resources_sent.fetch_add(resources, Ordering::Relaxed);
        s.removed_sent.fetch_add(removed, Ordering::Relaxed);
        s.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        let mut per_node = lock(&self.inner.per_node);
        let n = per_node.entry(node_id.to_string()).or_default();
        n.responses += 1;
        n.resources_sent += resources;
        n.removed_sent += removed;
        n.bytes_sent += bytes;
    }

    fn record_denial(&self, report: DenialReport) {
        tracing::warn!(
            node = %report.node_id, type_url = %report.type_url, name = %report.name,
            reason = %report.reason, "xDS resource withheld from the caller"
        );
        self.inner.stats.denials.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.per_node)
            .entry(report.node_id.clone())
            .or_default()
            .denials += 1;
        let mut denials = lock(&self.inner.denials);
        if denials.len() >= NACK_HISTORY {
            denials.pop_front();
        }
        denials.push_back(report);
    }

    fn count_reply(&self, node_id: &str, nack: bool) {
        let counter = if nack {
            &self.inner.stats.nacks
        } else {
            &self.inner.stats.acks
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut per_node = lock(&self.inner.per_node);
        let n = per_node.entry(node_id.to_string()).or_default();
        if nack {
            n.nacks += 1;
        } else {
            n.acks += 1;
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let stats = &self.inner.stats;
        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        let server = self.clone();
        let caller = Caller {
            peer_certificates: request.peer_certs(),
            bearer_token: request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        let requests = request.into_inner();
        let id = self
            .inner
            .next_connection_id
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.connections).insert(id, ConnectionInfo::default());
        tokio::spawn(async move {
            Connection::new(server.clone(), tx, id, caller)
                .run(requests)
                .await;
            lock(&server.inner.connections).remove(&id);
            server
                .inner
                .stats
                .connections_active
                .fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What one connection subscribed to for one type URL and what it has been sent.
#[derive(Default)]
struct TypeWatch {
    wildcard: bool,
    names: HashSet<String>,
    /// name -> version the client has (sent by us, or declared on reconnect).
    sent: HashMap<String, String>,
    /// name -> version withheld by the authorizer (reported once per version).
    denied: HashMap<String, String>,
}

impl TypeWatch {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

struct Connection {
    id: u64,
    server: XdsServer,
    tx: ResponseSender,
    node_id: String,
    watches: BTreeMap<String, TypeWatch>,
    /// nonce -> (type URL, resources it carried), until ACKed or NACKed.
    inflight: HashMap<String, (String, Vec<(String, String)>)>,
    next_nonce: u64,
    /// Store generation this connection's watches were last brought up to.
    synced: u64,
    caller: Caller,
}

impl Connection {
    fn new(server: XdsServer, tx: ResponseSender, id: u64, caller: Caller) -> Self {
        Connection {
            id,
            server,
            tx,
            node_id: String::new(),
            watches: BTreeMap::new(),
            inflight: HashMap::new(),
            next_nonce: 0,
            synced: 0,
            caller,
        }
    }

    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        let inner = self.server.inner.clone();
        let mut generation = inner.generation.subscribe();
        self.synced = *generation.borrow_and_update();
        let mut closing = inner.closing.subscribe();
        if *closing.borrow_and_update() {
            let _ = self
                .tx
                .send(Err(Status::unavailable("xDS server is shutting down")))
                .await;
            return;
        }
        let mut push_at: Option<Instant> = None;
        loop {
            tokio::select! {
                request = requests.message() => match request {
                    Ok(Some(request)) => match self.handle_request(request) {
                        Ok(Some(type_url)) => {
                            let store = lock(&inner.store).resources.clone();
                            if !self.push(&type_url, &store, None).await {
                                return;
                            }
                            self.publish_info();
                        }
                        Ok(None) => self.publish_info(),
                        Err(status) => {
                            let _ = self.tx.send(Err(status)).await;
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(node = %self.node_id, %status, "xDS stream ended");
                        return;
                    }
                },
                changed = generation.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    generation.borrow_and_update();
                    push_at.get_or_insert(Instant::now() + inner.config.debounce);
                }
                _ = tokio::time::sleep_until(push_at.unwrap_or_else(Instant::now)), if push_at.is_some() => {
                    push_at = None;
                    if !self.push_published().await {
                        return;
                    }
                    self.publish_info();
                }
                _ = closing.changed() => {
                    let _ = self.tx.send(Err(Status::unavailable("xDS server is shutting down"))).await;
                    return;
                }
            }
        }
    }

    /// Refreshes this stream's entry in [`XdsServer::connections`].
    fn publish_info(&self) {
        let info = ConnectionInfo {
            node_id: self.node_id.clone(),
            subscriptions: self
                .watches
                .iter()
                .map(|(t, w)| (t.clone(), w.wildcard))
                .collect(),
            resources_held: self
                .watches
                .iter()
                .map(|(t, w)| (t.clone(), w.sent.len()))
                .collect(),
        };
        if let Some(entry) = lock(&self.server.inner.connections).get_mut(&self.id) {
            *entry = info;
        }
    }

    /// Applies a request; returns the type URL to push now if its subscription changed.
    fn handle_request(&mut self, request: DeltaDiscoveryRequest) -> Result<Option<String>, Status> {
        if self.node_id.is_empty() {
            if let Some(node) = &request.node {
                self.node_id = node.id.clone();
            }
        }
        if request.type_url.is_empty() {
            return Err(Status::invalid_argument(
                "DeltaDiscoveryRequest without type_url",
            ));
        }
        if !request.response_nonce.is_empty() {
            // An unknown nonce is a reply to a response of an older stream state: ignore it.
            if let Some((type_url, resources)) = self.inflight.remove(&request.response_nonce) {
                match &request.error_detail {
                    Some(error) => {
                        tracing::warn!(
                            node = %self.node_id, %type_url, nonce = %request.response_nonce,
                            error = %error.message, "xDS push rejected (NACK)"
                        );
                        self.server.count_reply(&self.node_id, true);
                        let mut nacks = lock(&self.server.inner.nacks);
                        if nacks.len() >= NACK_HISTORY {
                            nacks.pop_front();
                        }
                        nacks.push_back(NackReport {
                            node_id: self.node_id.clone(),
                            type_url,
                            nonce: request.response_nonce.clone(),
                            message: error.message.clone(),
                            resources,
                        });
                    }
                    None => self.server.count_reply(&self.node_id, false),
                }
            }
        }
        let first = !self.watches.contains_key(&request.type_url);
        let watch = self.watches.entry(request.type_url.clone()).or_default();
        let mut changed = first;
        if first {
            // Legacy wildcard: a first request that names nothing subscribes to everything.
            watch.wildcard = request.resource_names_subscribe.is_empty();
            watch.sent = request.initial_resource_versions.into_iter().collect();
        }
        for name in request.resource_names_subscribe {
            changed = true;
            if name == "*" {
                watch.wildcard = true;
            } else {
                watch.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            changed = true;
            if name == "*" {
                watch.wildcard = false;
            } else {
                watch.names.remove(&name);
            }
        }
        Ok(changed.then_some(request.type_url))
    }

    /// Brings every watch up to the published store, looking only at names changed since
    /// the last sync when the change log reaches back that far.
    async fn push_published(&mut self) -> bool {
        let (store, generation, changed) = {
            let published = lock(&self.server.inner.store);
            (
                published.resources.clone(),
                published.generation,
                published.changed_since(self.synced),
            )
        };
        let types: Vec<String> = self.watches.keys().cloned().collect();
        for type_url in types {
            let candidates = match &changed {
                Some(changed) => match changed.get(&type_url) {
                    Some(names) => Some(names),
                    None => continue,
                },
                None => None,
            };
            if !self.push(&type_url, &store, candidates).await {
                return false;
            }
        }
        self.synced = generation;
        true
    }

    /// Sends what `store` has for `type_url` that this connection lacks, looking at
    /// `candidates` only if given (else the whole type); false if the stream is gone.
    async fn push(
        &mut self,
        type_url: &str,
        store: &Store,
        candidates: Option<&HashSet<String>>,
    ) -> bool {
        let empty = TypeStore::new();
        let resources = store.get(type_url).map(|r| r.as_ref()).unwrap_or(&empty);
        let (server, caller, node_id) = (&self.server, &self.caller, &self.node_id);
        let Some(watch) = self.watches.get_mut(type_url) else {
            return true;
        };
        // Whether the caller may have this resource; a denial is reported once per version.
        let permitted = |name: &str,
                         resource: &VersionedResource,
                         denied: &mut HashMap<String, String>|
         -> bool {
            let Some(authorizer) = &server.authorizer else {
                return true;
            };
            match authorizer.authorize(caller, type_url, name, resource) {
                Ok(()) => {
                    denied.remove(name);
                    true
                }
                Err(reason) => {
                    if denied.get(name) != Some(&resource.version) {
                        denied.insert(name.to_string(), resource.version.clone());
                        server.record_denial(DenialReport {
                            node_id: node_id.clone(),
                            type_url: type_url.to_string(),
                            name: name.to_string(),
                            reason,
                        });
                    }
                    false
                }
            }
        };
        let mut updated = Vec::new();
        let mut removed = Vec::new();
        match candidates {
            Some(names) => {
                let wanted: Vec<&String> = names.iter().filter(|n| watch.wants(n)).collect();
                for name in wanted {
                    let resource = resources.get(name);
                    let allowed = resource.map(|r| permitted(name, r, &mut watch.denied));
                    match (resource, allowed) {
                        (Some(r), Some(true)) if watch.sent.get(name) != Some(&r.version) => {
                            updated.push((name.clone(), r.clone()))
                        }
                        (Some(_), Some(true)) => {}
                        // Gone, or no longer allowed: a held copy is removed.
                        _ if watch.sent.contains_key(name) => removed.push(name.clone()),
                        _ => {}
                    }
                }
                // Deterministic order on the wire, as in the full comparison.
                updated.sort_by(|a, b| a.0.cmp(&b.0));
                removed.sort();
            }
            None => {
                // Forget what the client no longer wants: it drops those itself.
                watch
                    .sent
                    .retain(|name, _| watch.wildcard || watch.names.contains(name));
                let names: Vec<&String> = if watch.wildcard {
                    resources.keys().collect()
                } else {
                    let mut names: Vec<&String> = watch
                        .names
                        .iter()
                        .filter(|n| resources.contains_key(*n))
                        .collect();
                    names.sort();
                    names
                };
                let mut withheld = HashSet::new();
                for name in names {
                    let resource = &resources[name];
                    if !permitted(name, resource, &mut watch.denied) {
                        withheld.insert(name);
                    } else if watch.sent.get(name) != Some(&resource.version) {
                        updated.push((name.clone(), resource.clone()));
                    }
                }
                removed = watch
                    .sent
                    .keys()
                    .filter(|name| {
                        (!resources.contains_key(*name) || withheld.contains(name))
                            && watch.wants(name)
                    })
                    .cloned()
                    .collect();
                removed.sort();
            }
        }
        if updated.is_empty() && removed.is_empty() {
            return true;
        }
        for name in &removed {
            watch.sent.remove(name);
        }
        let mut carried = Vec::with_capacity(updated.len());
        let mut response_resources = Vec::with_capacity(updated.len());
        for (name, resource) in updated {
            watch.sent.insert(name.clone(), resource.version.clone());
            carried.push((name.clone(), resource.version.clone()));
            response_resources.push(Resource {
                version: resource.version.clone(),
                resource: Some(resource.resource.clone()),
                name,
                aliases: Vec::new(),
                ttl: None,
            });
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let response = DeltaDiscoveryResponse {
            system_version_info: String::new(),
            resources: response_resources,
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            removed_resources: removed,
            control_plane: None,
        };
        self.server.count_send(
            &self.node_id,
            response.resources.len() as u64,
            response.removed_resources.len() as u64,
            response.encoded_len() as u64,
        );
        self.inflight.insert(nonce, (type_url.to_string(), carried));
        self.tx.send(Ok(response)).await.is_ok()
    }
}
