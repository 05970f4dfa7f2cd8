//! Kubernetes Services → `istio.workload.Service`.

use std::net::IpAddr;

use mesh_api::istio::workload::{
    gateway_address, GatewayAddress, NamespacedHostname, NetworkAddress, Port, Service,
};
use mesh_config::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_config::Resources;

use super::{ip_bytes, HBONE_PORT};
use crate::workloads::WorkloadRegistry;

/// Label on a Service (or its Namespace) naming the waypoint that serves it.
pub const WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
use crate::workloads::waypoints::USE_WAYPOINT_NAMESPACE_LABEL as WAYPOINT_NAMESPACE_LABEL;

/// `NAME.NS.svc.cluster.local`.
pub fn service_hostname(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}

/// One Service per Kubernetes Service with a cluster IP.
pub(super) fn services(resources: &Resources, registry: &WorkloadRegistry) -> Vec<Service> {
    let mut out = Vec::new();
    for ((namespace, name), service) in &resources.services {
        let spec = &service.spec;
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                let service_port = u32::try_from(port.port).ok()?;
                let target_port = match &port.target_port {
                    Some(IntOrString::Int(p)) => u32::try_from(*p).unwrap_or(0),
                    None => service_port,
                    // A named port resolves per endpoint (the workload's `services` map).
                    Some(IntOrString::String(_)) => 0,
                };
                Some(Port {
                    service_port,
                    target_port: if target_port == 0 {
                        target_from_registry(registry, vip, service_port).unwrap_or(0)
                    } else {
                        target_port
                    },
                })
            })
            .collect();
        // The Service's own label wins over its namespace's; `none` opts out.
        // The waypoint's namespace comes from the same object's
        // `istio.io/use-waypoint-namespace`, else the Service's.
        let ns_labels = resources.namespace_labels(namespace);
        let from = if service.meta.labels.contains_key(WAYPOINT_LABEL) {
            &service.meta.labels
        } else {
            &ns_labels
        };
        let waypoint = from
            .get(WAYPOINT_LABEL)
            .filter(|w| *w != "none" && !w.is_empty())
            .map(|waypoint| {
                let waypoint_ns = from
                    .get(WAYPOINT_NAMESPACE_LABEL)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(namespace);
                (waypoint_ns.clone(), service_hostname(waypoint_ns, waypoint))
            })
            .map(|(waypoint_ns, hostname)| GatewayAddress {
                destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                    namespace: waypoint_ns,
                    hostname,
                })),
                hbone_mtls_port: HBONE_PORT,
            });
        out.push(Service {
            name: name.clone(),
            namespace: namespace.clone(),
            hostname: service_hostname(namespace, name),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: ip_bytes(vip),
            }],
            ports,
            waypoint,
            ..Default::default()
        });
    }
    out
}

/// For a named (or absent) targetPort: the port the registry resolved for the
/// Service's endpoints, when they all agree.
fn target_from_registry(registry: &WorkloadRegistry, vip: IpAddr, port: u32) -> Option<u32> {
    let port = u16::try_from(port).ok()?;
    let service = registry.service(std::net::SocketAddr::new(vip, port))?;
    let first = service.endpoints.first()?.port();
    service
        .endpoints
        .iter()
        .all(|e| e.port() == first)
        .then_some(u32::from(first))
}
