//! backendRefs → clusters (endpoints resolved), with ReferenceGrant checks.
//!
//! Supported targets:
//! - core `Service` (the default kind): port = the Service port; endpoints from
//!   EndpointSlices labelled `kubernetes.io/service-name` in the same namespace.
//! - Istio `ServiceEntry` by name (`group: networking.istio.io, kind: ServiceEntry`)
//!   or by host (`group: networking.istio.io, kind: Hostname`, Istio's way);
//!   endpoints from its STATIC `endpoints`.
//!
//! Clusters are cached per target, so many rules pointing at one Service share
//! one `Arc<Cluster>`. A Service whose ingress goes through its waypoint
//! (`mesh_ingress`) gets its VIP as the only endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_config::{EndpointSlice, Object, Resolution, Resources, ServiceEntrySpec, ServiceSpec};

use crate::snapshot::{Cluster, ObjectRef, UpstreamProtocol};

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const ISTIO_GROUP: &str = "networking.istio.io";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A reference, with the defaults of BackendObjectReference not yet applied.
#[derive(Debug, Clone, Copy)]
pub struct BackendRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// Why a reference did not resolve; `reason()` is the spec's ResolvedRefs reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefProblem {
    NotFound(String),
    NotPermitted(String),
    InvalidKind(String),
}

impl RefProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            RefProblem::NotFound(_) => "BackendNotFound",
            RefProblem::NotPermitted(_) => "RefNotPermitted",
            RefProblem::InvalidKind(_) => "InvalidKind",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            RefProblem::NotFound(m) | RefProblem::NotPermitted(m) | RefProblem::InvalidKind(m) => m,
        }
    }
}

#[path = "mesh_ingress.rs"]
pub mod mesh_ingress;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClusterKey {
    Service(String, String, u16),
    ServiceEntry(String, String, u16),
}

pub struct BackendResolver<'a> {
    resources: &'a Resources,
    /// (namespace, service name) → its EndpointSlices.
    slices: HashMap<(&'a str, &'a str), Vec<&'a Object<EndpointSlice>>>,
    clusters: HashMap<ClusterKey, Arc<Cluster>>,
    /// DestinationRules: each new cluster gets its host's traffic policy.
    rules: super::destination_rules::DestinationRules<'a>,
    /// LocalRateLimitPolicies by the HTTPRoute they target.
    pub rate_limits: super::rate_limits::RateLimits<'a>,
    /// The gateway's resolver: Services with `istio.io/ingress-use-waypoint`
    /// are reached through their waypoint (`mesh_ingress`). The waypoint's
    /// own resolver leaves them alone (it is the waypoint).
    ingress_via_waypoints: bool,
}

impl<'a> BackendResolver<'a> {
    pub fn new(resources: &'a Resources) -> Self {
        let mut slices: HashMap<(&str, &str), Vec<&Object<EndpointSlice>>> = HashMap::new();
        for slice in resources.endpoint_slices.values() {
            if let Some(svc) = slice.meta.labels.get(SERVICE_NAME_LABEL) {
                slices
                    .entry((slice.meta.namespace.as_str(), svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        BackendResolver {
            resources,
            slices,
            clusters: HashMap::new(),
            rules: super::destination_rules::DestinationRules::new(resources),
            rate_limits: super::rate_limits::RateLimits::new(resources),
            ingress_via_waypoints: false,
        }
    }

    /// The gateway's resolver (see `ingress_via_waypoints`).
    pub fn for_ingress(resources: &'a Resources) -> Self {
        Self {
            ingress_via_waypoints: true,
            ..Self::new(resources)
        }
    }

    /// Problems found while building clusters (DestinationRule `tls`
    /// settings that cannot be applied), sorted, each once.
    pub fn config_errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .clusters
            .values()
            .flat_map(|c| std::iter::once(c).chain(c.policy.subsets.values()))
            .filter_map(|c| c.policy.tls.as_ref()?.error.clone())
            .collect();
        errors.sort();
        errors.dedup();
        errors
    }

    /// Resolves a backendRef of an HTTPRoute in `route_namespace`.
    pub fn resolve(
        &mut self,
        route_namespace: &str,
        r: BackendRef<'_>,
    ) -> Result<Arc<Cluster>, RefProblem> {
        let group = r.group.unwrap_or("");
        let kind = r.kind.unwrap_or("Service");
        let namespace = r.namespace.unwrap_or(route_namespace);
        match (group, kind) {
            ("", "Service") => {
                self.check_grant(route_namespace, namespace, "", "Service", r.name)?;
                self.service(namespace, r.name, r.port)
            }
            (ISTIO_GROUP, "ServiceEntry") => {
                self.check_grant(
                    route_namespace,
                    namespace,
                    ISTIO_GROUP,
                    "ServiceEntry",
                    r.name,
                )?;
                let se = self
                    .resources
                    .service_entries
                    .get(&(namespace.to_string(), r.name.to_string()))
                    .ok_or_else(|| {
                        RefProblem::NotFound(format!(
                            "ServiceEntry {namespace}/{}  not found",
                            r.name
                        ))
                    })?;
                self.service_entry(se, r.port)
            }
            (ISTIO_GROUP, "Hostname") => {
                // Istio: the name is a ServiceEntry host. Prefer the given (or the
                // route's) namespace, then any namespace (ServiceEntries are exported
                // everywhere by default).
                let host = r.name.to_ascii_lowercase();
                let entries = &self.resources.service_entries;
                let has_host = |o: &&Object<ServiceEntrySpec>| {
                    o.spec.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))
                };
                let se = entries
                    .values()
                    .filter(|o| o.meta.namespace == namespace)
                    .find(has_host)
                    .or_else(|| entries.values().find(has_host))
                    .ok_or_else(|| {
                        RefProblem::NotFound(format!("no ServiceEntry has host {host}"))
                    })?;
                self.service_entry(se, r.port)
            }
            _ => Err(RefProblem::InvalidKind(format!(
                "unsupported backend kind {}{kind}",
                if group.is_empty() {
                    String::new()
                } else {
                    format!("{group}/")
                }
            ))),
        }
    }

    /// Cross-namespace references need a ReferenceGrant in the target namespace
    /// from HTTPRoutes of the route's namespace.
    fn check_grant(
        &self,
        from_ns: &str,
        to_ns: &str,
        group: &str,
        kind: &str,
        name: &str,
    ) -> Result<(), RefProblem> {
        if from_ns == to_ns {
            return Ok(());
        }
        let allowed = self
            .resources
            .reference_grants
            .values()
            .filter(|g| g.meta.namespace == to_ns)
            .any(|g| {
                g.spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP && f.kind == "HTTPRoute" && f.namespace == from_ns
                }) && g.spec.to.iter().any(|t| {
                    t.group == group
                        && t.kind == kind
                        && t.name.as_deref().is_none_or(|n| n.is_empty() || n == name)
                })
            });
        if allowed {
            Ok(())
        } else {
            Err(RefProblem::NotPermitted(format!(
                "reference to {kind} {to_ns}/{name} from namespace {from_ns} is not permitted by any ReferenceGrant"
            )))
        }
    }

    fn service(
        &mut self,
        namespace: &str,
        name: &str,
        port: Option<i32>,
    ) -> Result<Arc<Cluster>, RefProblem> {
        let svc = self
            .resources
            .services
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or_else(|| RefProblem::NotFound(format!("Service {namespace}/{name} not found")))?;
        let port = port.and_then(|p| u16::try_from(p).ok()).ok_or_else(|| {
            RefProblem::NotFound(format!(
                "backendRef to Service {namespace}/{name} needs a port"
            ))
        })?;
        let key = ClusterKey::Service(namespace.to_string(), name.to_string(), port);
        if let Some(c) = self.clusters.get(&key) {
            return Ok(c.clone());
        }
        let svc_port = svc
            .spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.port == i32::from(port))
            .ok_or_else(|| {
                RefProblem::NotFound(format!("Service {namespace}/{name} has no port {port}"))
            })?;
        // Ingress through the Service's waypoint: its VIP stands for the pods.
        let via_waypoint = self
            .ingress_via_waypoints
            .then(|| mesh_ingress::waypoint_vip(self.resources, svc, port))
            .flatten();
        let endpoints = match via_waypoint {
            Some(vip) => vec![vip],
            None => self.service_endpoints(namespace, name, &svc.spec, svc_port),
        };
        let mut cluster = Cluster {
            name: format!("{namespace}/{name}:{port}"),
            service: ObjectRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            port,
            endpoints,
            protocol: UpstreamProtocol::from_app_protocol(svc_port.app_protocol.as_deref()),
            policy: Default::default(),
        };
        cluster.policy = self.rules.service_policy(namespace, name, &cluster);
        let cluster = Arc::new(cluster);
        self.clusters.insert(key, cluster.clone());
        Ok(cluster)
    }

    fn service_endpoints(
        &self,
        namespace: &str,
        name: &str,
        spec: &ServiceSpec,
        svc_port: &mesh_config::k8s_openapi::api::core::v1::ServicePort,
    ) -> Vec<SocketAddr> {
        use mesh_config::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        if spec.type_.as_deref() == Some("ExternalName") {
            return Vec::new();
        }
        let port_name = svc_port.name.as_deref().unwrap_or("");
        // Fallback for slices that list no ports: the numeric targetPort, else the port.
        let fallback_port = match &svc_port.target_port {
            Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
            _ => u16::try_from(svc_port.port).ok(),
        };
        let mut out = Vec::new();
        for slice in self.slices.get(&(namespace, name)).into_iter().flatten() {
            let ports = slice.spec.ports.as_deref().unwrap_or(&[]);
            let port = if ports.is_empty() {
                fallback_port
            } else {
                ports
                    .iter()
                    .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                    .or_else(|| (port_name.is_empty() && ports.len() == 1).then(|| &ports[0]))
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
            };
            let Some(port) = port else { continue };
            for ep in &slice.spec.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for addr in &ep.addresses {
                    if let Ok(ip) = addr.parse::<IpAddr>() {
                        out.push(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn service_entry(
        &mut self,
        se: &Object<ServiceEntrySpec>,
        port: Option<i32>,
    ) -> Result<Arc<Cluster>, RefProblem> {
        let (namespace, name) = (&se.meta.namespace, &se.meta.name);
        let port = port.and_then(|p| u16::try_from(p).ok()).ok_or_else(|| {
            RefProblem::NotFound(format!(
                "backendRef to ServiceEntry {namespace}/{name} needs a port"
            ))
        })?;
        let key = ClusterKey::ServiceEntry(namespace.clone(), name.clone(), port);
        if let Some(c) = self.clusters.get(&key) {
            return Ok(c.clone());
        }
        let se_port = se
            .spec
            .ports
            .iter()
            .find(|p| p.number == port)
            .ok_or_else(|| {
                RefProblem::NotFound(format!(
                    "ServiceEntry {namespace}/{name} has no port {port}"
                ))
            })?;
        let mut endpoints = Vec::new();
        // Only STATIC resolution carries addresses we can use without DNS.
        if se.spec.resolution == Some(Resolution::Static) {
            for ep in &se.spec.endpoints {
                let Ok(ip) = ep.address.parse::<IpAddr>() else {
                    continue;
                };
                let ep_port = ep
                    .ports
                    .get(&se_port.name)
                    .copied()
                    .or(se_port.target_port)
                    .unwrap_or(se_port.number);
                endpoints.push(SocketAddr::new(ip, ep_port));
            }
        }
        endpoints.sort();
        endpoints.dedup();
        let host = se
            .spec
            .hosts
            .first()
            .cloned()
            .unwrap_or_else(|| name.clone());
        let mut cluster = Cluster {
            name: format!("{namespace}/{host}:{port}"),
            service: ObjectRef {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            port,
            endpoints,
            protocol: UpstreamProtocol::from_app_protocol(se_port.protocol.as_deref()),
            policy: Default::default(),
        };
        cluster.policy = self
            .rules
            .service_entry_policy(namespace, &se.spec.hosts, &cluster);
        let cluster = Arc::new(cluster);
        self.clusters.insert(key, cluster.clone());
        Ok(cluster)
    }
}
