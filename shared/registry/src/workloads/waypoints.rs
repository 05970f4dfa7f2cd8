//! Waypoint bindings, the Istio ambient way.
//!
//! - A waypoint is a Gateway whose `gatewayClassName` is `istio-waypoint`
//!   (or our own `ringmesh-waypoint`).
//! - Its HBONE address: the IPs of its pods (Pods labelled
//!   `gateway.networking.k8s.io/gateway-name: NAME` in its namespace, as the
//!   deployment Istio generates for a waypoint is labelled), else the
//!   Gateway's `spec.addresses` (IP values).
//! - Its identity: the service account of its first pod, else Istio's
//!   convention for waypoint deployments (`sa/NAME`).
//! - A Service opts in with the label `istio.io/use-waypoint: NAME`, or its
//!   Namespace does; the Service's label wins, and `none` opts out. The
//!   waypoint lives in the Service's namespace unless the label
//!   `istio.io/use-waypoint-namespace` names another.
//! - A binding to a waypoint that does not exist (or has no address) is kept
//!   as [`WaypointBinding::Missing`]: traffic to that Service is refused
//!   (fail closed) rather than silently bypassing the waypoint's policy.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use mesh_config::Resources;
use serde::Serialize;

use super::{spiffe_identity, Workload};

pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Label on a waypoint's pods naming their Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Gateway classes that make a Gateway a waypoint.
pub const WAYPOINT_CLASSES: [&str; 2] = ["istio-waypoint", "ringmesh-waypoint"];
/// The label value that opts a Service out of its namespace's waypoint.
pub const NO_WAYPOINT: &str = "none";

/// One waypoint (a Gateway of a waypoint class).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    /// Where its HBONE listener (15008) is, sorted. Empty: not deployed.
    pub addresses: Vec<IpAddr>,
    /// `spiffe://TD/ns/NS/sa/SA`: what its certificate must prove.
    pub identity: String,
}

impl Waypoint {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a Service's label resolved to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum WaypointBinding {
    Bound(Arc<Waypoint>),
    /// The named waypoint does not exist or has no address: fail closed.
    Missing {
        namespace: String,
        name: String,
    },
}

/// Every waypoint and every Service bound to one.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Waypoints {
    /// By `namespace/name`.
    pub waypoints: BTreeMap<String, Arc<Waypoint>>,
    /// Service `namespace/name` → its binding; Services without one are absent.
    pub services: BTreeMap<String, WaypointBinding>,
    /// Every waypoint address (their own traffic is never sent back to them).
    #[serde(skip)]
    pub addresses: HashMap<IpAddr, Arc<Waypoint>>,
}

impl Waypoints {
    pub fn build(
        resources: &Resources,
        workloads: &HashMap<IpAddr, Arc<Workload>>,
        trust_domain: &str,
    ) -> Self {
        let mut out = Waypoints::default();
        for ((namespace, name), gateway) in &resources.gateways {
            if !WAYPOINT_CLASSES.contains(&gateway.spec.gateway_class_name.as_str()) {
                continue;
            }
            let mut pods: Vec<&Arc<Workload>> = workloads
                .values()
                .filter(|w| {
                    w.namespace == *namespace
                        && w.labels.get(GATEWAY_NAME_LABEL).map(String::as_str) == Some(name)
                })
                .collect();
            pods.sort_by(|a, b| a.uid.cmp(&b.uid));
            let mut addresses: Vec<IpAddr> = pods.iter().map(|w| w.ip).collect();
            if addresses.is_empty() {
                addresses = gateway
                    .spec
                    .addresses
                    .iter()
                    .flatten()
                    .filter_map(|a| a.value.as_deref()?.parse().ok())
                    .collect();
            }
            addresses.sort();
            addresses.dedup();
            let identity = pods.first().map_or_else(
                || spiffe_identity(trust_domain, namespace, name),
                |w| w.identity.clone(),
            );
            let waypoint = Arc::new(Waypoint {
                namespace: namespace.clone(),
                name: name.clone(),
                addresses,
                identity,
            });
            for ip in &waypoint.addresses {
                out.addresses.insert(*ip, waypoint.clone());
            }
            out.waypoints.insert(waypoint.key(), waypoint);
        }
        for ((namespace, name), service) in &resources.services {
            let labels = &service.meta.labels;
            let ns_labels = resources.namespace_labels(namespace);
            // The Service's own label wins over its namespace's (also its `none`).
            let (waypoint, from) = match labels.get(USE_WAYPOINT_LABEL) {
                Some(w) => (w.as_str(), labels),
                None => match ns_labels.get(USE_WAYPOINT_LABEL) {
                    Some(w) => (w.as_str(), &ns_labels),
                    None => continue,
                },
            };
            if waypoint.is_empty() || waypoint == NO_WAYPOINT {
                continue;
            }
            let waypoint_ns = from
                .get(USE_WAYPOINT_NAMESPACE_LABEL)
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            let key = format!("{waypoint_ns}/{waypoint}");
            let binding = match out.waypoints.get(&key) {
                Some(w) if !w.addresses.is_empty() => WaypointBinding::Bound(w.clone()),
                _ => WaypointBinding::Missing {
                    namespace: waypoint_ns.clone(),
                    name: waypoint.to_string(),
                },
            };
            out.services.insert(format!("{namespace}/{name}"), binding);
        }
        out
    }

    /// The binding of Service `namespace/name`, if it opted in.
    pub fn for_service(&self, namespace: &str, name: &str) -> Option<&WaypointBinding> {
        if self.services.is_empty() {
            return None;
        }
        self.services.get(&format!("{namespace}/{name}"))
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<Waypoint>> {
        self.waypoints.get(&format!("{namespace}/{name}"))
    }

    /// The waypoint listening on `ip`, if any.
    pub fn at(&self, ip: IpAddr) -> Option<&Arc<Waypoint>> {
        self.addresses.get(&ip)
    }
}

#[cfg(test)]
mod tests {
    use mesh_config::load_str;

    use super::*;
    use crate::workloads::{WorkloadRegistry, DEFAULT_TRUST_DOMAIN};

    const CONFIG: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: fixed, namespace: other}
spec:
  gatewayClassName: ringmesh-waypoint
  addresses: [{type: IPAddress, value: 10.0.9.9}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: apps}
spec:
  gatewayClassName: ringmesh
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: apps
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: node1, serviceAccountName: waypoint-sa, containers: []}
status: {podIP: 10.0.0.50}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Service
metadata: {name: by-namespace, namespace: apps}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: opted-out, namespace: apps, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: missing, namespace: apps, labels: {istio.io/use-waypoint: nope}}
spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: cross
  namespace: apps
  labels: {istio.io/use-waypoint: fixed, istio.io/use-waypoint-namespace: other}
spec: {clusterIP: 10.96.0.4, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
"#;

    fn registry() -> WorkloadRegistry {
        let loaded = load_str("w.yaml", CONFIG);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN)
    }

    fn binding(r: &WorkloadRegistry, vip: &str) -> Option<WaypointBinding> {
        let service = r.service(vip.parse().unwrap()).expect("service");
        r.waypoint_of(service).cloned()
    }

    #[test]
    fn waypoint_classes_pods_and_addresses() {
        let r = registry();
        let w = r.waypoints.get("apps", "waypoint").expect("waypoint");
        assert_eq!(w.addresses, vec!["10.0.0.50".parse::<IpAddr>().unwrap()]);
        assert_eq!(w.identity, "spiffe://cluster.local/ns/apps/sa/waypoint-sa");
        let fixed = r.waypoints.get("other", "fixed").expect("fixed");
        assert_eq!(fixed.addresses, vec!["10.0.9.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(fixed.identity, "spiffe://cluster.local/ns/other/sa/fixed");
        assert!(
            r.waypoints.get("apps", "ingress").is_none(),
            "not a waypoint class"
        );
        assert_eq!(
            r.waypoints
                .at("10.0.0.50".parse().unwrap())
                .map(|w| w.key()),
            Some("apps/waypoint".to_string())
        );
    }

    #[test]
    fn service_label_wins_over_namespace_and_none_opts_out() {
        let r = registry();
        match binding(&r, "10.96.0.1:80") {
            Some(WaypointBinding::Bound(w)) => assert_eq!(w.key(), "apps/waypoint"),
            other => panic!("namespace label: {other:?}"),
        }
        assert_eq!(binding(&r, "10.96.0.2:80"), None, "none opts out");
        assert_eq!(
            binding(&r, "10.96.0.3:80"),
            Some(WaypointBinding::Missing {
                namespace: "apps".into(),
                name: "nope".into()
            })
        );
        match binding(&r, "10.96.0.4:80") {
            Some(WaypointBinding::Bound(w)) => assert_eq!(w.key(), "other/fixed"),
            other => panic!("cross-namespace: {other:?}"),
        }
        assert_eq!(binding(&r, "10.96.0.5:80"), None, "no label anywhere");
    }

    #[test]
    fn a_waypoint_without_address_is_missing() {
        let text = CONFIG.replace("status: {podIP: 10.0.0.50}", "status: {}");
        let loaded = load_str("w.yaml", &text);
        let r = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
        assert!(matches!(
            binding(&r, "10.96.0.1:80"),
            Some(WaypointBinding::Missing { .. })
        ));
    }
}
