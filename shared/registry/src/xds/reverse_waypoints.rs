//! `istio.workload.Service.waypoint` → the registry's [`Waypoints`], for
//! connected ztunnels: the same bindings the standalone path builds from
//! Gateways and `istio.io/use-waypoint` labels, so the outbound path (HBONE
//! to the waypoint, or refusal when it is missing) is the same in both modes.
//!
//! Resolution follows Istio's ztunnel (`GatewayAddress`):
//! - `hostname` (`WP.NS.svc.cluster.local` in namespace NS): the Service with
//!   that namespaced hostname — the Service Istio deploys with every waypoint
//!   — and its healthy member workloads: their IPs are the waypoint's HBONE
//!   addresses, the first by uid gives its identity (as the standalone path
//!   takes its first pod's).
//! - `address`: a Service VIP resolves like a hostname; a workload IP is that
//!   workload alone.
//! - Anything that resolves to no workload is [`WaypointBinding::Missing`]:
//!   traffic to the bound Service is refused (fail closed), never sent around
//!   the waypoint.
//!
//! A Workload's own `waypoint` field is not decoded: the registry binds
//! waypoints per Service only, and the controller does not set it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use mesh_api::istio::workload::{gateway_address::Destination, GatewayAddress, PortList, Service};

use crate::workloads::{Waypoint, WaypointBinding, Waypoints, Workload};

/// Service key `NS/HOSTNAME` → its healthy members (workload ip, its ports).
pub(super) type Members<'a> = HashMap<&'a str, Vec<(IpAddr, &'a PortList)>>;

/// The bindings of every Service that names a waypoint.
pub(super) fn waypoints_of(
    services: &[&Service],
    members: &Members,
    workloads: &HashMap<IpAddr, Arc<Workload>>,
) -> Result<Waypoints, String> {
    let resolver = Resolver {
        services,
        members,
        workloads,
    };
    let mut out = Waypoints::default();
    for service in services {
        let Some(gateway) = &service.waypoint else {
            continue;
        };
        let binding = resolver.resolve(gateway).map_err(|e| {
            format!(
                "Service {}/{}: waypoint {e}",
                service.namespace, service.hostname
            )
        })?;
        if let WaypointBinding::Bound(waypoint) = &binding {
            for ip in &waypoint.addresses {
                out.addresses.insert(*ip, waypoint.clone());
            }
            out.waypoints.insert(waypoint.key(), waypoint.clone());
        }
        out.services
            .insert(format!("{}/{}", service.namespace, service.name), binding);
    }
    Ok(out)
}

struct Resolver<'a> {
    services: &'a [&'a Service],
    members: &'a Members<'a>,
    workloads: &'a HashMap<IpAddr, Arc<Workload>>,
}

impl Resolver<'_> {
    /// `Err` only for a GatewayAddress that is malformed (the push is NACKed).
    fn resolve(&self, gateway: &GatewayAddress) -> Result<WaypointBinding, String> {
        match &gateway.destination {
            Some(Destination::Hostname(h)) => {
                let service = self
                    .services
                    .iter()
                    .find(|s| s.namespace == h.namespace && s.hostname == h.hostname);
                Ok(match service {
                    Some(s) => self.by_service(s),
                    None => missing_hostname(&h.namespace, &h.hostname),
                })
            }
            Some(Destination::Address(a)) => {
                let ip = super::reverse::ip_of(&a.address).map_err(|e| format!("address {e}"))?;
                let vip = self
                    .services
                    .iter()
                    .find(|s| s.addresses.iter().any(|v| v.address == a.address));
                Ok(match (vip, self.workloads.get(&ip)) {
                    (Some(s), _) => self.by_service(s),
                    (None, Some(w)) => WaypointBinding::Bound(Arc::new(Waypoint {
                        namespace: w.namespace.clone(),
                        name: w.name.clone(),
                        addresses: vec![ip],
                        identity: w.identity.clone(),
                    })),
                    (None, None) => WaypointBinding::Missing {
                        namespace: String::new(),
                        name: ip.to_string(),
                    },
                })
            }
            None => Err("has no destination".into()),
        }
    }

    fn by_service(&self, service: &Service) -> WaypointBinding {
        let key = format!("{}/{}", service.namespace, service.hostname);
        let mut pods: Vec<&Arc<Workload>> = self
            .members
            .get(key.as_str())
            .into_iter()
            .flatten()
            .filter_map(|(ip, _)| self.workloads.get(ip))
            .collect();
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        let Some(first) = pods.first() else {
            return WaypointBinding::Missing {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
            };
        };
        let mut addresses: Vec<IpAddr> = pods.iter().map(|w| w.ip).collect();
        addresses.sort();
        addresses.dedup();
        WaypointBinding::Bound(Arc::new(Waypoint {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            addresses,
            identity: first.identity.clone(),
        }))
    }
}

/// `WP.NS.svc…` names waypoint NS/WP (the namespace field wins when set).
fn missing_hostname(namespace: &str, hostname: &str) -> WaypointBinding {
    let mut labels = hostname.split('.');
    let name = labels.next().unwrap_or_default().to_string();
    let namespace = if namespace.is_empty() {
        labels.next().unwrap_or_default().to_string()
    } else {
        namespace.to_string()
    };
    WaypointBinding::Missing { namespace, name }
}
