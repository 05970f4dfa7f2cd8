//! Routing by destination Service (the waypoint's scope, GAMMA): a request
//! that arrived in an HBONE tunnel for `VIP:port` is routed with that
//! Service port's route table, whatever its Host says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::snapshot::{ObjectRef, RouteTable};

/// Route tables by Service `VIP:port`. Empty except in a waypoint's snapshot.
#[derive(Debug, Default, Serialize)]
pub struct ServiceRoutes {
    #[serde(serialize_with = "by_address")]
    pub by_vip: HashMap<SocketAddr, Arc<ServiceRoute>>,
}

impl ServiceRoutes {
    pub fn get(&self, vip: SocketAddr) -> Option<&Arc<ServiceRoute>> {
        self.by_vip.get(&vip)
    }

    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }
}

/// One Service port as a waypoint serves it.
#[derive(Debug, Serialize)]
pub struct ServiceRoute {
    pub service: ObjectRef,
    pub port: u16,
    /// HTTPRoutes whose parentRef is this Service (precedence order), or,
    /// without any, one catch-all entry to the Service's own endpoints.
    pub table: Arc<RouteTable>,
    /// Whether `table` came from HTTPRoutes (false: the default route).
    pub from_routes: bool,
    /// AuthorizationPolicies attached to this Service or to the waypoint
    /// (`targetRefs`), enforced per request; None when none is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<Arc<crate::L7Authz>>,
}

/// Sorted, string keys (JSON objects need them).
fn by_address<S: serde::Serializer>(
    map: &HashMap<SocketAddr, Arc<ServiceRoute>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let sorted: std::collections::BTreeMap<String, &Arc<ServiceRoute>> =
        map.iter().map(|(k, v)| (k.to_string(), v)).collect();
    serde::Serialize::serialize(&sorted, s)
}
