//! The data-plane side: one Delta ADS stream, resources kept in a local map, a callback that
//! turns the full current set into the caller's snapshot (published with arc-swap), ACK/NACK,
//! and reconnection with backoff that resumes from `initial_resource_versions`.
//!
//! While the controller is unreachable nothing is cleared: the last accepted resources stay,
//! and the caller's last snapshot keeps serving.

use crate::VersionedResource;
use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_api::google::rpc::Status as RpcStatus;
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Every resource the client holds: type URL -> name -> resource.
pub type ResourceSet = HashMap<String, BTreeMap<String, VersionedResource>>;

/// What one response changed, handed to the callback together with the full set.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    pub type_url: String,
    pub updated: Vec<(String, VersionedResource)>,
    /// Names that were held and are now gone.
    pub removed: Vec<String>,
}

/// A type URL to subscribe to; no names means all of them (wildcard).
#[derive(Clone, Debug)]
pub struct Subscription {
    pub type_url: String,
    pub names: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// gRPC endpoint, e.g. `http://127.0.0.1:15010`.
    pub address: String,
    /// Istio style for ztunnel: `ztunnel~IP~POD.NS~NS.svc.cluster.local`.
    pub node_id: String,
    pub node_metadata: Option<prost_types::Struct>,
    pub subscriptions: Vec<Subscription>,
    /// TLS for `https://` addresses (server CA, optional client identity, expected name).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// The client certificate presented over TLS, read at every (re)connect so a renewed
    /// certificate is used from the next stream on (the controller requires one for
    /// resources tied to the caller's identity).
    pub client_identity: Option<ClientIdentity>,
    pub connect_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientConfig {
    pub fn new(address: impl Into<String>, node_id: impl Into<String>) -> Self {
        ClientConfig {
            address: address.into(),
            node_id: node_id.into(),
            node_metadata: None,
            subscriptions: Vec::new(),
            tls: None,
            client_identity: None,
            connect_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
        }
    }

    /// Subscribes to every resource of `type_url`.
    pub fn wildcard(mut self, type_url: &str) -> Self {
        self.subscriptions.push(Subscription {
            type_url: type_url.to_string(),
            names: Vec::new(),
        });
        self
    }

    /// Subscribes to the named resources of `type_url`.
    pub fn named(mut self, type_url: &str, names: impl IntoIterator<Item = String>) -> Self {
        self.subscriptions.push(Subscription {
            type_url: type_url.to_string(),
            names: names.into_iter().collect(),
        });
        self
    }
}

/// A client certificate (chain and key, PEM) shared with whatever renews it.
#[derive(Clone, Default)]
pub struct ClientIdentity(Arc<Mutex<Option<tonic::transport::Identity>>>);

impl ClientIdentity {
    /// Replaces the certificate; streams opened from now on present the new one.
    pub fn set(&self, chain_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) {
        let identity = tonic::transport::Identity::from_pem(chain_pem, key_pem);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity);
    }

    /// A certificate from the controller's CA.
    pub fn set_issued(&self, issued: &crate::IssuedCert) {
        self.set(&issued.chain_pem, &issued.key_pem);
    }

    fn current(&self) -> Option<tonic::transport::Identity> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.current().is_some();
        f.debug_struct("ClientIdentity").field("set", &set).finish()
    }
}

/// Istio's node id for a ztunnel: `ztunnel~IP~POD.NS~NS.svc.cluster.local`.
pub fn ztunnel_node_id(ip: std::net::IpAddr, pod: &str, namespace: &str) -> String {
    format!("ztunnel~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
}

/// What the client has done, for admin pages and tests.
#[derive(Debug, Default)]
pub struct ClientStats {
    connected: AtomicBool,
    connects: AtomicU64,
    responses: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientStats {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Streams opened (the first connect plus every reconnect).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
    pub fn responses(&self) -> u64 {
        self.responses.load(Ordering::Relaxed)
    }
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }
    /// The last connection error or rejected push.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
}

pub struct XdsClient {
    config: ClientConfig,
    resources: ResourceSet,
    stats: Arc<ClientStats>,
    changes_tx: mpsc::UnboundedSender<SubscriptionChange>,
    changes_rx: Option<mpsc::UnboundedReceiver<SubscriptionChange>>,
}

enum SubscriptionChange {
    Subscribe(String, Vec<String>),
    Unsubscribe(String, Vec<String>),
}

/// Changes a running client's subscriptions (on-demand resources). Changes made while the
/// client is disconnected take effect on the next stream.
#[derive(Clone)]
pub struct SubscriptionHandle {
    tx: mpsc::UnboundedSender<SubscriptionChange>,
}

impl SubscriptionHandle {
    /// Subscribes to `names` of `type_url`; no names means all of them (wildcard).
    /// Returns false if the client has stopped.
    pub fn subscribe(&self, type_url: &str, names: Vec<String>) -> bool {
        self.tx
            .send(SubscriptionChange::Subscribe(type_url.to_string(), names))
            .is_ok()
    }

    /// Drops `names` of `type_url`; the client forgets them (the callback sees them removed).
    pub fn unsubscribe(&self, type_url: &str, names: Vec<String>) -> bool {
        self.tx
            .send(SubscriptionChange::Unsubscribe(type_url.to_string(), names))
            .is_ok()
    }
}

/// google.rpc.Code INVALID_ARGUMENT, what a proxy reports for config it cannot use.
const INVALID_ARGUMENT: i32 = 3;

impl XdsClient {
    pub fn new(config: ClientConfig) -> Self {
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        XdsClient {
            config,
            resources: ResourceSet::new(),
            stats: Arc::new(ClientStats::default()),
            changes_tx,
            changes_rx: Some(changes_rx),
        }
    }

    pub fn subscriptions(&self) -> SubscriptionHandle {
        SubscriptionHandle {
            tx: self.changes_tx.clone(),
        }
    }

    pub fn stats(&self) -> Arc<ClientStats> {
        self.stats.clone()
    }

    /// Runs forever (abort the task to stop). `on_update` gets each response's delta and the
    /// full resource set after applying it; returning `Err` rejects the response (NACK) and
    /// the set goes back to what it was, so the last good versions stay in force.
    pub async fn run<F>(mut self, mut on_update: F)
    where
        F: FnMut(&Delta, &ResourceSet) -> Result<(), String>,
    {
        let mut backoff = self.config.initial_backoff;
        let Some(mut changes) = self.changes_rx.take() else {
            return;
        };
        loop {
            let mut got_response = false;
            let outcome = self
                .session(&mut on_update, &mut changes, &mut got_response)
                .await;
            self.stats.connected.store(false, Ordering::Relaxed);
            match outcome {
                Ok(()) => {
                    tracing::info!(address = %self.config.address, "xDS stream closed by the server")
                }
                Err(error) => {
                    tracing::warn!(address = %self.config.address, %error, "xDS stream failed");
                    self.stats.set_error(error);
                }
            }
            if got_response {
                backoff = self.config.initial_backoff;
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    async fn session<F>(
        &mut self,
        on_update: &mut F,
        changes: &mut mpsc::UnboundedReceiver<SubscriptionChange>,
        got_response: &mut bool,
    ) -> Result<(), String>
    where
        F: FnMut(&Delta, &ResourceSet) -> Result<(), String>,
    {
        // Changes made while disconnected shape this stream's initial requests.
        while let Ok(change) = changes.try_recv() {
            self.change_subscription(change, on_update);
        }
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.config.address.clone())
            .map_err(|e| format!("bad xDS address {:?}: {e}", self.config.address))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.config.tls {
            let mut tls = tls.clone();
            if let Some(identity) = self
                .config
                .client_identity
                .as_ref()
                .and_then(|c| c.current())
            {
                tls = tls.identity(identity);
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("xDS TLS config: {e}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect {}: {e}", self.config.address))?;
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(64 << 20);

        let (tx, rx) = mpsc::channel(16);
        for (index, subscription) in self.config.subscriptions.iter().enumerate() {
            let held = self.resources.get(&subscription.type_url);
            let request = DeltaDiscoveryRequest {
                // The node goes on the first request of a stream only.
                node: (index == 0).then(|| Node {
                    id: self.config.node_id.clone(),
                    metadata: self.config.node_metadata.clone(),
                    ..Default::default()
                }),
                type_url: subscription.type_url.clone(),
                resource_names_subscribe: subscription.names.clone(),
                initial_resource_versions: held
                    .map(|r| {
                        r.iter()
                            .map(|(n, v)| (n.clone(), v.version.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
                ..Default::default()
            };
            tx.send(request)
                .await
                .map_err(|_| "request channel closed".to_string())?;
        }
        let mut responses = grpc
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("open stream: {s}"))?
            .into_inner();
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);

        loop {
            let request = tokio::select! {
                message = responses.message() => {
                    let Some(response) = message.map_err(|s| format!("stream: {s}"))? else {
                        return Ok(());
                    };
                    *got_response = true;
                    self.stats.responses.fetch_add(1, Ordering::Relaxed);
                    self.apply(response, on_update)
                }
                Some(change) = changes.recv() => self.change_subscription(change, on_update),
            };
            tx.send(request)
                .await
                .map_err(|_| "request channel closed".to_string())?;
        }
    }

    /// Records a subscription change and returns the request that tells the server.
    fn change_subscription<F>(
        &mut self,
        change: SubscriptionChange,
        on_update: &mut F,
    ) -> DeltaDiscoveryRequest
    where
        F: FnMut(&Delta, &ResourceSet) -> Result<(), String>,
    {
        match change {
            SubscriptionChange::Subscribe(type_url, names) => {
                let existing = self
                    .config
                    .subscriptions
                    .iter_mut()
                    .find(|s| s.type_url == type_url);
                let subscribe = match existing {
                    // A first request naming nothing is a wildcard subscription.
                    None => {
                        self.config.subscriptions.push(Subscription {
                            type_url: type_url.clone(),
                            names: names.clone(),
                        });
                        names
                    }
                    Some(existing) if names.is_empty() => {
                        existing.names.clear();
                        vec!["*".to_string()]
                    }
                    Some(existing) => {
                        // An empty list is already a wildcard: it stays one.
                        if !existing.names.is_empty() {
                            for name in &names {
                                if !existing.names.contains(name) {
                                    existing.names.push(name.clone());
                                }
                            }
                        }
                        names
                    }
                };
                DeltaDiscoveryRequest {
                    type_url,
                    resource_names_subscribe: subscribe,
                    ..Default::default()
                }
            }
            SubscriptionChange::Unsubscribe(type_url, names) => {
                if let Some(existing) = self
                    .config
                    .subscriptions
                    .iter_mut()
                    .find(|s| s.type_url == type_url)
                {
                    let was_named = !existing.names.is_empty();
                    existing.names.retain(|n| !names.contains(n));
                    if was_named && existing.names.is_empty() {
                        // No names left; an empty list would mean wildcard on reconnect.
                        self.config.subscriptions.retain(|s| s.type_url != type_url);
                    }
                }
                let mut delta = Delta {
                    type_url: type_url.clone(),
                    updated: Vec::new(),
                    removed: Vec::new(),
                };
                if let Some(held) = self.resources.get_mut(&type_url) {
                    for name in &names {
                        if held.remove(name).is_some() {
                            delta.removed.push(name.clone());
                        }
                    }
                }
                if !delta.removed.is_empty() {
                    if let Err(error) = on_update(&delta, &self.resources) {
                        tracing::warn!(%type_url, %error, "callback failed on unsubscribe");
                    }
                }
                DeltaDiscoveryRequest {
                    type_url,
                    resource_names_unsubscribe: names,
                    ..Default::default()
                }
            }
        }
    }

    /// Applies one response; returns the ACK or NACK to send.
    fn apply<F>(
        &mut self,
        response: DeltaDiscoveryResponse,
        on_update: &mut F,
    ) -> DeltaDiscoveryRequest
    where
        F: FnMut(&Delta, &ResourceSet) -> Result<(), String>,
    {
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        let result = self.try_apply(response, on_update);
        let error_detail = match result {
            Ok(()) => {
                self.stats.acks.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(message) => {
                tracing::warn!(%type_url, %nonce, error = %message, "rejecting xDS push");
                self.stats.nacks.fetch_add(1, Ordering::Relaxed);
                self.stats.set_error(message.clone());
                Some(RpcStatus {
                    code: INVALID_ARGUMENT,
                    message,
                    details: Vec::new(),
                })
            }
        };
        DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail,
            ..Default::default()
        }
    }

    fn try_apply<F>(
        &mut self,
        response: DeltaDiscoveryResponse,
        on_update: &mut F,
    ) -> Result<(), String>
    where
        F: FnMut(&Delta, &ResourceSet) -> Result<(), String>,
    {
        let type_url = response.type_url;
        let mut delta = Delta {
            type_url: type_url.clone(),
            updated: Vec::with_capacity(response.resources.len()),
            removed: Vec::new(),
        };
        for resource in response.resources {
            let Some(any) = resource.resource else {
                return Err(format!("resource {:?} has no payload", resource.name));
            };
            if any.type_url != type_url {
                return Err(format!(
                    "resource {:?} is a {:?} in a {:?} response",
                    resource.name, any.type_url, type_url
                ));
            }
            delta.updated.push((
                resource.name,
                VersionedResource {
                    version: resource.version,
                    resource: any,
                },
            ));
        }
        // Apply, remembering what to restore if the callback rejects the result.
        let held = self.resources.entry(type_url.clone()).or_default();
        let mut undo: Vec<(String, Option<VersionedResource>)> = Vec::new();
        for (name, resource) in &delta.updated {
            undo.push((name.clone(), held.insert(name.clone(), resource.clone())));
        }
        for name in response.removed_resources {
            if let Some(old) = held.remove(&name) {
                undo.push((name.clone(), Some(old)));
                delta.removed.push(name);
            }
        }
        if let Err(error) = on_update(&delta, &self.resources) {
            let held = self.resources.entry(type_url).or_default();
            for (name, old) in undo.into_iter().rev() {
                match old {
                    Some(old) => held.insert(name, old),
                    None => held.remove(&name),
                };
            }
            return Err(error);
        }
        Ok(())
    }
}

/// A delay between half and all of `base`, so proxies that lost the controller together do
/// not all come back in the same instant.
fn jittered(base: Duration) -> Duration {
    let millis = base.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}
