//! Ingress into the mesh, the translation side: a Service labelled
//! `istio.io/ingress-use-waypoint: "true"` (or in a Namespace so labelled)
//! that uses a waypoint (`istio.io/use-waypoint`, see
//! `workloads::waypoints`) is reached through that waypoint. Its cluster
//! then has one endpoint, the Service's `clusterIP:port`; the gateway's
//! upstream connector sends that address over HBONE to the waypoint with
//! the VIP as `:authority`, as ztunnel does, and the waypoint picks the pod.
//! Reaching the endpoints of other mesh Services over HBONE needs nothing
//! here: the connector knows mesh workloads by IP.

use std::net::{IpAddr, SocketAddr};

use mesh_config::{Object, Resources, ServiceSpec};

use crate::workloads::waypoints::{NO_WAYPOINT, USE_WAYPOINT_LABEL};

pub const INGRESS_USE_WAYPOINT_LABEL: &str = "istio.io/ingress-use-waypoint";

/// The VIP:port that stands for all of the Service's endpoints when its
/// ingress traffic goes through its waypoint; None otherwise (no label, no
/// waypoint, or no clusterIP).
pub fn waypoint_vip(
    resources: &Resources,
    service: &Object<ServiceSpec>,
    port: u16,
) -> Option<SocketAddr> {
    let namespace = &service.meta.namespace;
    let ns_labels = resources.namespace_labels(namespace);
    let own = &service.meta.labels;
    let ingress = own
        .get(INGRESS_USE_WAYPOINT_LABEL)
        .or_else(|| ns_labels.get(INGRESS_USE_WAYPOINT_LABEL));
    if ingress.map(String::as_str) != Some("true") {
        return None;
    }
    // The Service's own use-waypoint label wins over its namespace's.
    let waypoint = own
        .get(USE_WAYPOINT_LABEL)
        .or_else(|| ns_labels.get(USE_WAYPOINT_LABEL))?;
    if waypoint.is_empty() || waypoint == NO_WAYPOINT {
        return None;
    }
    let vip: IpAddr = service.spec.cluster_ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(vip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> Resources {
        let loaded = mesh_config::load_str("test.yaml", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.resources
    }

    fn vip_of(r: &Resources, name: &str) -> Option<SocketAddr> {
        let svc = &r.services[&("apps".to_string(), name.to_string())];
        waypoint_vip(r, svc, 80)
    }

    #[test]
    fn only_labelled_services_with_a_waypoint_go_through_it() {
        let r = resources(
            r#"
apiVersion: v1
kind: Service
metadata: {name: both, namespace: apps, labels: {istio.io/use-waypoint: wp, istio.io/ingress-use-waypoint: "true"}}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: no-ingress-label, namespace: apps, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: no-waypoint, namespace: apps, labels: {istio.io/ingress-use-waypoint: "true"}}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: opted-out, namespace: apps, labels: {istio.io/use-waypoint: none, istio.io/ingress-use-waypoint: "true"}}
spec: {clusterIP: 10.96.0.13, ports: [{port: 80}]}
"#,
        );
        assert_eq!(vip_of(&r, "both"), Some("10.96.0.10:80".parse().unwrap()));
        assert_eq!(vip_of(&r, "no-ingress-label"), None);
        assert_eq!(vip_of(&r, "no-waypoint"), None);
        assert_eq!(vip_of(&r, "opted-out"), None);
    }

    #[test]
    fn namespace_labels_count_too() {
        let r = resources(
            r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/use-waypoint: wp, istio.io/ingress-use-waypoint: "true"}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
"#,
        );
        assert_eq!(vip_of(&r, "echo"), Some("10.96.0.20:80".parse().unwrap()));
    }
}
