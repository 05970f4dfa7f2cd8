//! Registry → Istio's ztunnel xDS types (`istio.workload.Address`,
//! `istio.security.Authorization`), as istiod writes them, so Istio's own
//! ztunnel can be programmed by our controller.
//!
//! Resource names (DESIGN.md, "Wire contracts"): Workload `uid`
//! (`Kubernetes//Pod/NS/NAME`, Istio's `cluster//Pod/ns/name` with the default
//! cluster id), Service `NS/HOSTNAME`, Authorization `NS/NAME`.

mod authorization;
pub mod l7;
mod peer_authentication;
mod proxy_registry;
mod reverse;
mod reverse_waypoints;
mod services;
mod workloads;

use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::{address, Address};
use mesh_api::type_url;
use mesh_config::Resources;

use crate::workloads::WorkloadRegistry;

pub use authorization::authorization_of;
pub use peer_authentication::{static_strict_policy_name, STATIC_STRICT_POLICY};
pub use proxy_registry::proxy_registry;
pub use reverse::{decode_all, LocalNetns, POLICY_MARKER_LABEL_PREFIX};
pub use services::{service_hostname, WAYPOINT_LABEL};
pub use workloads::workload_uid;

/// Istio's default cluster id (the first part of a workload uid).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Port a waypoint accepts HBONE on.
pub const HBONE_PORT: u32 = 15008;

/// Everything the controller publishes for ztunnels, keyed by resource name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct XdsResources {
    /// Workloads and Services (`istio.workload.Address`), sorted by name.
    pub addresses: Vec<(String, Address)>,
    /// `istio.security.Authorization`, sorted by name.
    pub authorizations: Vec<(String, Authorization)>,
}

impl XdsResources {
    /// Translates loaded config (and the registry built from it).
    pub fn build(resources: &Resources, registry: &WorkloadRegistry) -> Self {
        let mut addresses: Vec<(String, Address)> = Vec::new();
        for workload in workloads::workloads(resources, registry) {
            addresses.push((
                workload.uid.clone(),
                Address {
                    r#type: Some(address::Type::Workload(workload)),
                },
            ));
        }
        for service in services::services(resources, registry) {
            addresses.push((
                format!("{}/{}", service.namespace, service.hostname),
                Address {
                    r#type: Some(address::Type::Service(service)),
                },
            ));
        }
        addresses.sort_by(|a, b| a.0.cmp(&b.0));
        let mut authorizations: Vec<(String, Authorization)> = resources
            .authorization_policies
            .values()
            .filter_map(authorization_of)
            .chain(peer_authentication::static_strict_policy(resources))
            .map(|p| (mesh_api::authorization_resource_name(&p), p))
            .collect();
        authorizations.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            addresses,
            authorizations,
        }
    }

    /// `(name, Any)` pairs for `XdsServer`'s `replace_type(type_url::ADDRESS, ..)`.
    pub fn address_anys(&self) -> Vec<(String, mesh_api::prost_types::Any)> {
        self.addresses
            .iter()
            .map(|(name, a)| (name.clone(), mesh_api::to_any(type_url::ADDRESS, a)))
            .collect()
    }

    /// `(name, Any)` pairs for `replace_type(type_url::AUTHORIZATION, ..)`.
    pub fn authorization_anys(&self) -> Vec<(String, mesh_api::prost_types::Any)> {
        self.authorizations
            .iter()
            .map(|(name, a)| (name.clone(), mesh_api::to_any(type_url::AUTHORIZATION, a)))
            .collect()
    }
}

/// An IP as Istio sends it: 4 bytes for IPv4, 16 for IPv6.
pub fn ip_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod peer_authentication_tests;
#[cfg(test)]
mod reverse_tests;
#[cfg(test)]
mod reverse_waypoints_tests;
#[cfg(test)]
mod tests;
