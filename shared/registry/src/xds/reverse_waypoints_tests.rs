//! Waypoint bindings through the wire: config → `XdsResources` (encoded as
//! the controller sends them) → `from_xds` gives the same binding, Service by
//! Service, as the standalone translation of the same config.

use std::net::IpAddr;

use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::Address;
use mesh_api::type_url;

use super::*;
use crate::workloads::{WaypointBinding, DEFAULT_TRUST_DOMAIN};

/// A waypoint deployed as Istio deploys one (Gateway, pod labelled with its
/// name, a Service of the same name selecting it), bound by namespace, by a
/// Service from another namespace, and by name to one that does not exist.
const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: apps
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: node2, serviceAccountName: waypoint-sa, containers: []}
status: {podIP: 10.0.0.50}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: apps, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIP: 10.96.0.50
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: apps, labels: {app: b}, annotations: {ringmesh.io/netns: /x/b}}
spec: {nodeName: node2, containers: []}
status: {podIP: 10.0.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: by-namespace, namespace: apps}
spec: {clusterIP: 10.96.0.1, selector: {app: b}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: opted-out, namespace: apps, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.2, selector: {app: b}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: missing, namespace: apps, labels: {istio.io/use-waypoint: nope}}
spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata:
  name: bound
  namespace: default
  labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: apps}
spec: {clusterIP: 10.96.0.4, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
"#;

fn both(config: &str) -> (WorkloadRegistry, WorkloadRegistry) {
    let loaded = mesh_config::load_str("w.yaml", config);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let standalone = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
    let xds = XdsResources::build(&loaded.resources, &standalone);
    let anys = xds.address_anys();
    let addresses: Vec<Address> =
        decode_all(type_url::ADDRESS, anys.iter().map(|(n, a)| (n, a))).unwrap();
    let no_policies: Vec<Authorization> = Vec::new();
    let connected = WorkloadRegistry::from_xds(
        &addresses,
        &no_policies,
        DEFAULT_TRUST_DOMAIN,
        &LocalNetns::new(),
    )
    .unwrap();
    (standalone, connected)
}

fn binding(r: &WorkloadRegistry, vip: &str) -> Option<WaypointBinding> {
    let service = r.service(vip.parse().unwrap()).expect("service");
    r.waypoint_of(service).cloned()
}

/// Every Service of the config has the same binding in both modes.
fn assert_same_bindings(standalone: &WorkloadRegistry, connected: &WorkloadRegistry) {
    assert_eq!(standalone.services.len(), connected.services.len());
    for (vip, service) in &standalone.services {
        assert_eq!(
            connected.waypoint_of(&connected.services[vip]),
            standalone.waypoint_of(service),
            "Service {}/{} ({vip})",
            service.namespace,
            service.name
        );
    }
}

#[test]
fn connected_bindings_match_standalone() {
    let (standalone, connected) = both(CONFIG);
    assert_same_bindings(&standalone, &connected);
    // And what they are.
    for vip in ["10.96.0.1:80", "10.96.0.4:80"] {
        match binding(&connected, vip) {
            Some(WaypointBinding::Bound(w)) => {
                assert_eq!(w.key(), "apps/waypoint", "{vip}");
                assert_eq!(w.addresses, vec!["10.0.0.50".parse::<IpAddr>().unwrap()]);
                assert_eq!(w.identity, "spiffe://cluster.local/ns/apps/sa/waypoint-sa");
            }
            other => panic!("{vip} (namespace label / cross-namespace): {other:?}"),
        }
    }
    assert_eq!(binding(&connected, "10.96.0.2:80"), None, "none opts out");
    assert_eq!(binding(&connected, "10.96.0.5:80"), None, "unbound");
    assert_eq!(
        binding(&connected, "10.96.0.3:80"),
        Some(WaypointBinding::Missing {
            namespace: "apps".into(),
            name: "nope".into()
        }),
        "a hostname that resolves to nothing fails closed"
    );
    // The waypoint's own traffic is recognised, so it is never looped back.
    assert_eq!(
        connected
            .waypoints
            .at("10.0.0.50".parse().unwrap())
            .map(|w| w.key()),
        Some("apps/waypoint".to_string())
    );
}

#[test]
fn a_waypoint_without_pods_is_missing_in_both_modes() {
    let (standalone, connected) = both(&CONFIG.replace("status: {podIP: 10.0.0.50}", "status: {}"));
    assert_same_bindings(&standalone, &connected);
    assert_eq!(
        binding(&connected, "10.96.0.1:80"),
        Some(WaypointBinding::Missing {
            namespace: "apps".into(),
            name: "waypoint".into()
        })
    );
}

#[test]
fn a_gateway_address_without_destination_is_rejected() {
    use mesh_api::istio::workload::{address, GatewayAddress, Service};
    let service = Address {
        r#type: Some(address::Type::Service(Service {
            name: "s".into(),
            namespace: "apps".into(),
            hostname: "s.apps.svc.cluster.local".into(),
            waypoint: Some(GatewayAddress {
                destination: None,
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        })),
    };
    let err = WorkloadRegistry::from_xds([&service], [], DEFAULT_TRUST_DOMAIN, &LocalNetns::new())
        .unwrap_err();
    assert!(
        err.contains("apps/s.apps.svc.cluster.local") && err.contains("no destination"),
        "{err}"
    );
}
