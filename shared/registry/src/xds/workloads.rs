//! Pods → `istio.workload.Workload`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use mesh_api::istio::workload::{Port, PortList, TunnelProtocol, Workload, WorkloadType};
use mesh_config::Resources;

use super::{ip_bytes, service_hostname, DEFAULT_CLUSTER_ID};
use crate::workloads::authz::ROOT_NAMESPACE;
use crate::workloads::WorkloadRegistry;

/// Istio's workload uid: `Kubernetes//Pod/NS/NAME`.
pub fn workload_uid(namespace: &str, name: &str) -> String {
    format!("{DEFAULT_CLUSTER_ID}//Pod/{namespace}/{name}")
}

/// One Workload per Pod with an IP, sorted by uid.
pub(super) fn workloads(resources: &Resources, registry: &WorkloadRegistry) -> Vec<Workload> {
    let services_of = services_by_endpoint_ip(registry);
    let mut out: Vec<Workload> = registry
        .workloads
        .values()
        .map(|w| {
            let services = services_of.get(&w.ip).cloned().unwrap_or_default();
            let services = services
                .into_iter()
                .map(|(k, mut ports)| {
                    ports.sort_by_key(|p| (p.service_port, p.target_port));
                    ports.dedup();
                    (k, PortList { ports })
                })
                .collect();
            Workload {
                uid: workload_uid(&w.namespace, &w.name),
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                addresses: vec![ip_bytes(w.ip)],
                tunnel_protocol: if w.is_captured() {
                    TunnelProtocol::Hbone as i32
                } else {
                    TunnelProtocol::None as i32
                },
                trust_domain: registry.trust_domain.clone(),
                service_account: w.service_account.clone(),
                node: w.node.clone(),
                workload_type: WorkloadType::Pod as i32,
                workload_name: w.name.clone(),
                canonical_name: w
                    .labels
                    .get("app.kubernetes.io/name")
                    .or_else(|| w.labels.get("app"))
                    .cloned()
                    .unwrap_or_else(|| w.name.clone()),
                canonical_revision: w
                    .labels
                    .get("app.kubernetes.io/version")
                    .or_else(|| w.labels.get("version"))
                    .cloned()
                    .unwrap_or_else(|| "latest".to_string()),
                cluster_id: DEFAULT_CLUSTER_ID.to_string(),
                services,
                authorization_policies: {
                    let mut names = selecting_policies(resources, w);
                    if super::peer_authentication::is_strict(registry, w) {
                        names.push(super::static_strict_policy_name());
                        names.sort();
                    }
                    names
                },
                ..Default::default()
            }
        })
        .collect();
    out.sort_by(|a, b| a.uid.cmp(&b.uid));
    out
}

/// Each endpoint address's Services (`NS/HOSTNAME`) and their ports, built in one pass over
/// the Services: looking them up per pod by scanning every Service made translation
/// quadratic in the cluster size (bench controller-scale).
fn services_by_endpoint_ip(
    registry: &WorkloadRegistry,
) -> HashMap<IpAddr, BTreeMap<String, Vec<Port>>> {
    let mut by_ip: HashMap<IpAddr, BTreeMap<String, Vec<Port>>> = HashMap::new();
    for service in registry.services.values() {
        let key = format!(
            "{}/{}",
            service.namespace,
            service_hostname(&service.namespace, &service.name)
        );
        for endpoint in &service.endpoints {
            by_ip
                .entry(endpoint.ip())
                .or_default()
                .entry(key.clone())
                .or_default()
                .push(Port {
                    service_port: u32::from(service.vip.port()),
                    target_port: u32::from(endpoint.port()),
                });
        }
    }
    by_ip
}

/// Istio lists on each workload the WORKLOAD_SELECTOR policies that select it
/// (namespace- and mesh-scoped ones apply by their scope alone).
fn selecting_policies(resources: &Resources, w: &crate::workloads::Workload) -> Vec<String> {
    resources
        .authorization_policies
        .values()
        .filter(|p| p.meta.namespace == w.namespace || p.meta.namespace == ROOT_NAMESPACE)
        .filter(|p| {
            p.spec.selector.as_ref().is_some_and(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| w.labels.get(k) == Some(v))
            })
        })
        .map(|p| format!("{}/{}", p.meta.namespace, p.meta.name))
        .collect()
}
