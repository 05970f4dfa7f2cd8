//! The workload registry ztunnel serves from: workloads by IP, services by
//! VIP:port with their ready endpoints, and the L4 authorization state.
//!
//! Built from `Resources` (Pods, Services, EndpointSlices,
//! AuthorizationPolicy, PeerAuthentication). Immutable once built; a new
//! config makes a new registry (published through `arc-swap` by the caller).

pub mod authz;
pub mod waypoints;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use mesh_config::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_config::{Resources, NETNS_ANNOTATION};
use serde::Serialize;

pub use authz::{AuthzDecision, ConnectionAttrs, Policies};
pub use waypoints::{Waypoint, WaypointBinding, Waypoints};

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One pod (Istio's `Workload`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Workload {
    /// `namespace/name` (the Pod has no uid in a YAML file).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// `spiffe://TD/ns/NS/sa/SA`.
    pub identity: String,
    pub node: String,
    pub ip: IpAddr,
    /// Set when the pod is captured (annotation `ringmesh.io/netns`).
    pub netns: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    pub fn is_captured(&self) -> bool {
        self.netns.is_some()
    }
}

/// One port of a Service VIP.
#[derive(Debug, Clone, Serialize)]
pub struct MeshService {
    pub namespace: String,
    pub name: String,
    pub vip: SocketAddr,
    /// Ready endpoints: `endpointIP:targetPort`.
    pub endpoints: Vec<SocketAddr>,
}

/// Everything ztunnel looks up per connection.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WorkloadRegistry {
    pub trust_domain: String,
    pub workloads: HashMap<IpAddr, Arc<Workload>>,
    pub services: HashMap<SocketAddr, Arc<MeshService>>,
    pub policies: Policies,
    /// Waypoints and the Services bound to them.
    pub waypoints: Waypoints,
}

impl WorkloadRegistry {
    pub fn build(resources: &Resources, trust_domain: &str) -> Self {
        let mut workloads = HashMap::new();
        for pod in resources.pods.values() {
            if let Some(workload) = workload_of(&pod.spec, &pod.meta, trust_domain) {
                workloads.insert(workload.ip, Arc::new(workload));
            }
        }
        let services = services_of(resources, &workloads);
        let waypoints = Waypoints::build(resources, &workloads, trust_domain);
        Self {
            trust_domain: trust_domain.to_string(),
            workloads,
            services,
            policies: Policies::build(resources),
            waypoints,
        }
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&ip)
    }

    pub fn service(&self, vip: SocketAddr) -> Option<&Arc<MeshService>> {
        self.services.get(&vip)
    }

    /// The waypoint binding of a Service, if it (or its namespace) opted in.
    pub fn waypoint_of(&self, service: &MeshService) -> Option<&WaypointBinding> {
        self.waypoints
            .for_service(&service.namespace, &service.name)
    }

    /// Captured pods on `node`, sorted by uid.
    pub fn captured_on_node(&self, node: &str) -> Vec<Arc<Workload>> {
        let mut list: Vec<_> = self
            .workloads
            .values()
            .filter(|w| w.node == node && w.is_captured())
            .cloned()
            .collect();
        list.sort_by(|a, b| a.uid.cmp(&b.uid));
        list
    }
}

/// `spiffe://TD/ns/NS/sa/SA`.
pub fn spiffe_identity(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

fn workload_of(
    pod: &mesh_config::Pod,
    meta: &mesh_config::Meta,
    trust_domain: &str,
) -> Option<Workload> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let netns = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETNS_ANNOTATION))
        .map(PathBuf::from);
    Some(Workload {
        uid: format!("{}/{}", meta.namespace, meta.name),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        identity: spiffe_identity(trust_domain, &meta.namespace, &service_account),
        service_account,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ip,
        netns,
        labels: meta.labels.clone(),
    })
}

/// Services by VIP:port. Endpoints come from EndpointSlices labelled
/// `kubernetes.io/service-name` (ready ones, port matched by name); a
/// Service without slices uses the pods its selector picks and a numeric
/// (or named-in-pod-less setups: the Service port) targetPort.
fn services_of(
    resources: &Resources,
    workloads: &HashMap<IpAddr, Arc<Workload>>,
) -> HashMap<SocketAddr, Arc<MeshService>> {
    let mut out = HashMap::new();
    for ((namespace, name), service) in &resources.services {
        let spec = &service.spec;
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let slices: Vec<_> = resources
            .endpoint_slices
            .values()
            .filter(|s| {
                s.meta.namespace == *namespace
                    && s.meta.labels.get(SERVICE_NAME_LABEL) == Some(name)
            })
            .collect();
        for port in spec.ports.iter().flatten() {
            let Ok(service_port) = u16::try_from(port.port) else {
                continue;
            };
            let mut endpoints = Vec::new();
            if !slices.is_empty() {
                for slice in &slices {
                    let slice = &slice.spec;
                    let target = slice.ports.iter().flatten().find(|p| {
                        p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or("")
                    });
                    let Some(target) = target
                        .and_then(|p| p.port)
                        .and_then(|p| u16::try_from(p).ok())
                    else {
                        continue;
                    };
                    for ep in &slice.endpoints {
                        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                        if !ready {
                            continue;
                        }
                        for address in &ep.addresses {
                            if let Ok(ip) = address.parse::<IpAddr>() {
                                endpoints.push(SocketAddr::new(ip, target));
                            }
                        }
                    }
                }
            } else if let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
                let target = match &port.target_port {
                    Some(IntOrString::Int(p)) => u16::try_from(*p).unwrap_or(service_port),
                    _ => service_port,
                };
                let mut selected: Vec<_> = workloads
                    .values()
                    .filter(|w| {
                        w.namespace == *namespace
                            && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                    })
                    .map(|w| SocketAddr::new(w.ip, target))
                    .collect();
                selected.sort();
                endpoints = selected;
            }
            let vip = SocketAddr::new(vip, service_port);
            out.insert(
                vip,
                Arc::new(MeshService {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    vip,
                    endpoints,
                }),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
