//! Delta ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`)
//! for ringmesh: the controller's [`server::XdsServer`] and the data plane's
//! [`client::XdsClient`]. Resources travel as `google.protobuf.Any`; which messages they hold
//! (Istio's `Address`/`Authorization`, our `ringmesh.l7.v1.Proxy`) is the callers' business.

pub mod client;
pub mod server;
mod version;

pub use client::{
    ztunnel_node_id, ClientConfig, ClientStats, Delta, ResourceSet, Subscription, XdsClient,
};
pub use server::{
    ConnectionInfo, NackReport, ServerConfig, ServerStats, StatsSnapshot, UpdateBatch, XdsServer,
    NACK_HISTORY,
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
