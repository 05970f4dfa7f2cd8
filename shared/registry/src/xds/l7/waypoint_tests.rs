//! A waypoint's snapshot (`translate_waypoint`) → Proxy of kind WAYPOINT →
//! bytes → snapshot: the same Service route tables (as JSON); a waypoint with
//! L7 authorization is refused rather than published without it; a waypoint
//! Proxy with a gateway listener is an error.

use mesh_api::prost::Message as _;
use mesh_api::ringmesh::l7::v1 as pb;

use super::*;
use crate::workloads::WorkloadRegistry;

const MESH: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: wp, namespace: apps, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: node2, serviceAccountName: waypoint, containers: []}
status: {podIP: 10.0.2.9}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9090}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: apps, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
endpoints: [{addresses: [10.0.1.3]}, {addresses: [10.0.2.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-two, namespace: apps}
spec: {clusterIP: 10.96.0.12, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-two-1, namespace: apps, labels: {kubernetes.io/service-name: echo-two}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.2.2]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /two}}, {headers: [{name: x-user, value: bob}]}]
    backendRefs: [{name: echo-two, port: 80, weight: 3}, {name: echo, port: 80, weight: 1}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-via-waypoint, value: "yes"}]}
    backendRefs: [{name: echo, port: 80}]
"#;

const L7_POLICY: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-get, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

fn waypoint() -> ObjectRef {
    ObjectRef {
        namespace: "apps".into(),
        name: "waypoint".into(),
    }
}

fn translated(yaml: &str) -> (mesh_config::Loaded, crate::Snapshot) {
    let loaded = mesh_config::load_str("mesh.yaml", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let registry = WorkloadRegistry::build(&loaded.resources, "cluster.local");
    let snapshot = crate::translate_waypoint(&loaded.resources, &registry.waypoints, &waypoint());
    (loaded, snapshot)
}

#[test]
fn a_waypoints_service_routes_survive_the_round_trip() {
    let (loaded, direct) = translated(MESH);
    assert_eq!(direct.services.by_vip.len(), 2, "two ports of echo");
    let proxy = waypoint_proxy_of(&direct, &waypoint(), &loaded.resources).unwrap();
    assert_eq!(proxy.kind(), pb::ProxyKind::Waypoint);
    assert!(proxy
        .listeners
        .iter()
        .all(|l| l.protocol() == pb::ListenerProtocol::Hbone && l.name == "apps/echo"));
    let bytes = to_any(&proxy);
    let decoded = decode("apps/waypoint", &bytes).unwrap();
    assert_eq!(decoded.encode_to_vec(), proxy.encode_to_vec());
    let via = snapshot_of(&decoded).unwrap();
    assert!(via.ports.is_empty(), "a waypoint has no gateway listeners");
    assert_eq!(
        serde_json::to_value(&via.services).unwrap(),
        serde_json::to_value(&direct.services).unwrap()
    );
    let vip = "10.96.0.10:9090".parse().unwrap();
    assert!(!via.services.get(vip).unwrap().from_routes, "default route");
    // Deterministic: the same input encodes to the same bytes.
    let again = waypoint_proxy_of(&direct, &waypoint(), &loaded.resources).unwrap();
    assert_eq!(again.encode_to_vec(), proxy.encode_to_vec());
}

#[test]
fn a_waypoint_with_l7_authorization_is_not_encoded_without_it() {
    let (loaded, direct) = translated(&format!("{MESH}{L7_POLICY}"));
    let err = waypoint_proxy_of(&direct, &waypoint(), &loaded.resources).unwrap_err();
    assert!(err.contains("AuthorizationPolic"), "{err}");
}

#[test]
fn a_waypoint_proxy_serves_only_service_ports() {
    let (loaded, direct) = translated(MESH);
    let mut proxy = waypoint_proxy_of(&direct, &waypoint(), &loaded.resources).unwrap();
    proxy.listeners[0].protocol = pb::ListenerProtocol::Http as i32;
    let err = snapshot_of(&proxy).unwrap_err();
    assert!(err.contains("only HBONE"), "{err}");
    let mut proxy = waypoint_proxy_of(&direct, &waypoint(), &loaded.resources).unwrap();
    proxy.listeners[0].hostname = "echo.apps".into();
    let err = snapshot_of(&proxy).unwrap_err();
    assert!(err.contains("is not a VIP"), "{err}");
}
