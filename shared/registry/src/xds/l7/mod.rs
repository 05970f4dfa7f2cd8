//! Gateway connected mode: the snapshot of one Gateway ↔ `ringmesh.l7.v1.Proxy`
//! (type URL `type.googleapis.com/ringmesh.l7.v1.Proxy`, resource name `NS/NAME`).
//!
//! The controller translates each Gateway exactly as a standalone
//! `gateway --config .. --gateway NS/NAME` would (`translate` with
//! `TranslateOptions { gateway: Some(..) }`) and sends the result
//! ([`proxy_of`]): listeners with their route tables already in precedence
//! order, rules, backends with endpoints and DestinationRule policy, local
//! rate limits, and HTTPS certificates inline (a connected gateway has no
//! other Secret source). The gateway rebuilds the same snapshot
//! ([`snapshot_of`]); no routing decision is recomputed on its side, so both
//! modes route identically. Waypoints the same way ([`waypoint_proxy_of`],
//! kind WAYPOINT): one HBONE listener per bound Service port, decoded into
//! `Snapshot::services`.

mod decode;
mod decode_parts;
mod encode;
mod policy;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod waypoint_tests;

pub use decode::snapshot_of;
pub use encode::{proxy_of, waypoint_proxy_of};

use mesh_api::ringmesh::l7::v1::Proxy;

use crate::snapshot::ObjectRef;

/// The xDS resource name of a Gateway's Proxy: `namespace/name`.
pub fn resource_name(gateway: &ObjectRef) -> String {
    format!("{}/{}", gateway.namespace, gateway.name)
}

/// `Proxy` as the `Any` the controller publishes.
pub fn to_any(proxy: &Proxy) -> mesh_api::prost_types::Any {
    mesh_api::to_any(mesh_api::type_url::L7_PROXY, proxy)
}

/// Decodes a published resource (Err names what is wrong, for a NACK).
pub fn decode(name: &str, any: &mesh_api::prost_types::Any) -> Result<Proxy, String> {
    mesh_api::from_any(mesh_api::type_url::L7_PROXY, any).map_err(|e| format!("{name}: {e}"))
}
