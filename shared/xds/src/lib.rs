//! Delta ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`)
//! for ringmesh: the controller's [`XdsServer`] and the data plane's [`XdsClient`].
//! Resources travel as `google.protobuf.Any`; which messages they hold (Istio's
//! `istio.workload.Address` / `istio.security.Authorization`, our `ringmesh.l7.v1.Proxy`; see
//! `mesh_api::type_url`) is the callers' business.
//!
//! Controller side:
//! ```ignore
//! let xds = XdsServer::new(ServerConfig::default());
//! // After each translation: publish the full set per type; only real changes are pushed.
//! xds.update(|batch| {
//!     batch.replace_type(mesh_api::type_url::ADDRESS, addresses);       // (name, Any) pairs
//!     batch.replace_type(mesh_api::type_url::AUTHORIZATION, policies);
//! });
//! tokio::spawn(xds.clone().serve(listener_15010, shutdown));           // or serve_tls on 15012
//! // Status: xds.nacks(), xds.denials(), xds.connections(), xds.stats(), xds.node_stats(node_id).
//! // Per listener, who may receive what: xds.with_authorizer(Arc::new(MyAuthorizer)).service()
//! ```
//!
//! Data-plane side (on the control thread's tokio runtime):
//! ```ignore
//! let config = ClientConfig::new("http://controller:15010", ztunnel_node_id(ip, pod, ns))
//!     .wildcard(mesh_api::type_url::ADDRESS)
//!     .wildcard(mesh_api::type_url::AUTHORIZATION);
//! let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
//! let publish = snapshot.clone();
//! tokio::spawn(XdsClient::new(config).run(move |_delta, all| {
//!     let next = Snapshot::build(all)?;   // Err(reason) => NACK, previous versions kept
//!     publish.store(Arc::new(next));
//!     Ok(())
//! }));
//! ```

pub mod ca_client;
pub mod client;
pub mod connected;
pub mod server;
mod version;

pub use ca_client::{CaClient, CaClientConfig, IssuedCert};
pub use client::{
    ztunnel_node_id, ClientConfig, ClientIdentity, ClientStats, Delta, ResourceSet, Subscription,
    SubscriptionHandle, XdsClient,
};
pub use server::{
    Authorizer, Caller, ConnectionInfo, DenialReport, NackReport, ServerConfig, ServerStats,
    StatsSnapshot, UpdateBatch, XdsServer, NACK_HISTORY,
};
/// TLS settings for [`XdsServer::serve_tls`] and [`ClientConfig::tls`].
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
pub use version::content_version;

/// One resource as stored and sent: its version and payload.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionedResource {
    pub version: String,
    pub resource: prost_types::Any,
}
