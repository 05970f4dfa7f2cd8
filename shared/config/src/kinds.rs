//! The resource kinds ringmesh understands and how they are stored.
//!
//! Gateway API kinds use the `gateway-api` crate's experimental-channel spec
//! types (a superset of the standard channel: HTTPRoute `retry`, `timeouts`,
//! the CORS filter). Kubernetes core kinds use k8s-openapi. Istio's
//! ServiceEntry has small serde structs of our own (only what we use).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use gateway_api::experimental::gatewayclasses::GatewayClassSpec;
pub use gateway_api::experimental::gateways::GatewaySpec;
pub use gateway_api::experimental::httproutes::HttpRouteSpec;
pub use gateway_api::experimental::referencegrants::ReferenceGrantSpec;
pub use k8s_openapi::api::core::v1::{Pod, Secret, ServiceSpec};

pub use crate::security::*;
pub use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Metadata common to every object, already defaulted.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// `default` when the document omits it; empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// metadata.generation, 0 when absent.
    pub generation: i64,
    /// metadata.creationTimestamp as nanoseconds since the Unix epoch, when present.
    pub created_nanos: Option<i128>,
    /// File the object came from, and its document index in that file.
    pub file: PathBuf,
    pub document: usize,
}

impl Meta {
    /// Gateway API tie-break key: oldest first, then `namespace/name`.
    /// Objects without a creationTimestamp compare equal on age (and sort
    /// before those that have one), so they fall back to the name order.
    pub fn age_key(&self) -> (Option<i128>, &str, &str) {
        (self.created_nanos, &self.namespace, &self.name)
    }
}

/// One loaded object: defaulted metadata plus the kind's payload.
#[derive(Debug, Clone)]
pub struct Object<T> {
    pub meta: Meta,
    pub spec: T,
}

/// `(namespace, name)`; namespace is empty for cluster-scoped kinds.
pub type Key = (String, String);

/// Every resource loaded from the config path, per kind, keyed by
/// `(namespace, name)` (sorted, so iteration is deterministic).
#[derive(Debug, Default, Clone)]
pub struct Resources {
    /// Cluster-scoped: key namespace is "".
    pub gateway_classes: BTreeMap<Key, Object<GatewayClassSpec>>,
    pub gateways: BTreeMap<Key, Object<GatewaySpec>>,
    pub http_routes: BTreeMap<Key, Object<HttpRouteSpec>>,
    pub grpc_routes: BTreeMap<Key, Object<crate::GrpcRouteSpec>>,
    pub reference_grants: BTreeMap<Key, Object<ReferenceGrantSpec>>,
    /// TLSRoute (v1alpha2, v1alpha3, v1) and TCPRoute (v1alpha2).
    pub tls_routes: BTreeMap<Key, Object<crate::TlsRouteSpec>>,
    pub tcp_routes: BTreeMap<Key, Object<crate::TcpRouteSpec>>,
    /// Cluster-scoped: key namespace is "". Labels are in `meta.labels`.
    pub namespaces: BTreeMap<Key, Object<()>>,
    pub services: BTreeMap<Key, Object<ServiceSpec>>,
    /// The whole EndpointSlice (it has no `spec`).
    pub endpoint_slices: BTreeMap<Key, Object<EndpointSlice>>,
    pub secrets: BTreeMap<Key, Object<Secret>>,
    pub service_entries: BTreeMap<Key, Object<ServiceEntrySpec>>,
    /// The whole Pod (metadata with annotations, spec, status).
    pub pods: BTreeMap<Key, Object<Pod>>,
    pub authorization_policies: BTreeMap<Key, Object<AuthorizationPolicySpec>>,
    pub peer_authentications: BTreeMap<Key, Object<PeerAuthenticationSpec>>,
    /// Istio DestinationRule (networking.istio.io v1/v1beta1/v1alpha3).
    pub destination_rules: BTreeMap<Key, Object<crate::DestinationRuleSpec>>,
    /// policy.ringmesh.io/v1alpha1 LocalRateLimitPolicy.
    pub local_rate_limits: BTreeMap<Key, Object<crate::LocalRateLimitPolicySpec>>,
    /// Istio VirtualService (networking.istio.io v1/v1beta1/v1alpha3).
    pub virtual_services: BTreeMap<Key, Object<crate::VirtualServiceSpec>>,
}

impl Resources {
    /// Number of objects of all kinds.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.reference_grants.len()
            + self.tls_routes.len()
            + self.tcp_routes.len()
            + self.namespaces.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.service_entries.len()
            + self.pods.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
            + self.destination_rules.len()
            + self.local_rate_limits.len()
            + self.virtual_services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Labels of a namespace, always including the implicit
    /// `kubernetes.io/metadata.name: <ns>` (also when no Namespace object exists).
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(&(String::new(), namespace.to_string()))
            .map(|n| n.meta.labels.clone())
            .unwrap_or_default();
        labels.insert(
            "kubernetes.io/metadata.name".to_string(),
            namespace.to_string(),
        );
        labels
    }
}

/// Istio `ServiceEntry` spec (networking.istio.io v1/v1beta1/v1alpha3):
/// the fields ringmesh uses. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<Resolution>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntryPort {
    pub number: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// An endpoint of a ServiceEntry (Istio's WorkloadEntry shape).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    #[serde(default)]
    pub address: String,
    /// Port name → endpoint port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub weight: Option<u32>,
}
