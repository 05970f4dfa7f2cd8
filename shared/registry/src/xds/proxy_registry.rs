//! The workload registry of a connected L7 proxy (gateway or waypoint): the same wildcard
//! `istio.workload.Address` and `istio.security.Authorization` a ztunnel subscribes to,
//! without netns paths (such a proxy captures nothing).

use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::Address;
use mesh_api::prost_types::Any;
use mesh_api::type_url;

use super::{decode_all, LocalNetns};
use crate::workloads::WorkloadRegistry;

/// Builds the registry from the held resources (name, payload) of both types; `Err` names
/// what cannot be used (the caller NACKs and keeps its last registry).
pub fn proxy_registry<'a>(
    addresses: impl IntoIterator<Item = (&'a String, &'a Any)>,
    authorizations: impl IntoIterator<Item = (&'a String, &'a Any)>,
    trust_domain: &str,
) -> Result<WorkloadRegistry, String> {
    let addresses: Vec<Address> = decode_all(type_url::ADDRESS, addresses)?;
    let authorizations: Vec<Authorization> = decode_all(type_url::AUTHORIZATION, authorizations)?;
    WorkloadRegistry::from_xds(
        &addresses,
        &authorizations,
        trust_domain,
        &LocalNetns::new(),
    )
}
