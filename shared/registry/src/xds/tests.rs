//! Golden expectations on the translated (and re-decoded) xDS resources.

use mesh_api::istio::security::{string_match::MatchType, Action, Scope};
use mesh_api::istio::workload::{address, gateway_address, Port, TunnelProtocol};
use mesh_api::prost::Message;

use super::*;
use crate::workloads::DEFAULT_TRUST_DOMAIN;

const CONFIG: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: apps
  labels: {app: a}
  annotations: {ringmesh.io/netns: /run/netns/a}
spec: {nodeName: node1, serviceAccountName: sa-a, containers: []}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: apps, labels: {app: b}}
spec: {nodeName: node2, containers: []}
status: {podIP: "fd00::3"}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: apps}
spec: {nodeName: node2, containers: []}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: apps, labels: {istio.io/use-waypoint: wp}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}, {name: grpc, port: 9000}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: apps}
spec:
  selector: {matchLabels: {app: a}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/apps/sa/b", "*"], notNamespaces: ["bad*"]}
    - source: {ipBlocks: ["10.1.0.0/16"], notIpBlocks: ["10.1.2.3"]}
    to:
    - operation: {ports: ["8080"], notPorts: ["9"]}
  - to:
    - operation: {methods: [GET]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/x"], ports: ["22"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: apps}
spec: {action: AUDIT}
"#;

fn build() -> XdsResources {
    let loaded = mesh_config::load_str("t.yaml", CONFIG);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let registry = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
    XdsResources::build(&loaded.resources, &registry)
}

/// Encodes then decodes, so the expectations hold for what goes on the wire.
fn decoded_address(xds: &XdsResources, name: &str) -> address::Type {
    let any = xds
        .address_anys()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no address {name}"))
        .1;
    assert_eq!(any.type_url, "type.googleapis.com/istio.workload.Address");
    let decoded = Address::decode(any.value.as_slice()).unwrap();
    decoded.r#type.unwrap()
}

#[test]
fn names_follow_istio() {
    let xds = build();
    let names: Vec<_> = xds.addresses.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Kubernetes//Pod/apps/a",
            "Kubernetes//Pod/apps/b",
            "apps/b.apps.svc.cluster.local"
        ]
    );
    let names: Vec<_> = xds.authorizations.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["apps/allow-a", "istio-system/deny-all"]);
}

#[test]
fn captured_workload() {
    let address::Type::Workload(w) = decoded_address(&build(), "Kubernetes//Pod/apps/a") else {
        panic!("not a workload");
    };
    assert_eq!(w.uid, "Kubernetes//Pod/apps/a");
    assert_eq!((w.name.as_str(), w.namespace.as_str()), ("a", "apps"));
    assert_eq!(w.addresses, vec![vec![10, 0, 0, 2]]);
    assert_eq!(w.service_account, "sa-a");
    assert_eq!(w.node, "node1");
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone as i32);
    assert!(w.services.is_empty());
    assert_eq!(w.authorization_policies, ["apps/allow-a"]);
}

#[test]
fn uncaptured_ipv6_workload_with_services() {
    let address::Type::Workload(w) = decoded_address(&build(), "Kubernetes//Pod/apps/b") else {
        panic!("not a workload");
    };
    let mut v6 = vec![0xfd, 0];
    v6.extend([0; 13]);
    v6.push(3);
    assert_eq!(w.addresses, vec![v6]);
    assert_eq!(w.service_account, "default");
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32);
    // An IPv4 VIP selects an IPv6 pod in the registry only by labels; the
    // workload lists each port's service→target mapping.
    let ports = &w.services["apps/b.apps.svc.cluster.local"].ports;
    assert_eq!(
        ports,
        &[
            Port {
                service_port: 80,
                target_port: 8080
            },
            Port {
                service_port: 9000,
                target_port: 9000
            }
        ]
    );
}

#[test]
fn service_with_waypoint() {
    let address::Type::Service(s) = decoded_address(&build(), "apps/b.apps.svc.cluster.local")
    else {
        panic!("not a service");
    };
    assert_eq!(s.name, "b");
    assert_eq!(s.hostname, "b.apps.svc.cluster.local");
    assert_eq!(s.addresses.len(), 1);
    assert_eq!(s.addresses[0].network, "");
    assert_eq!(s.addresses[0].address, vec![10, 96, 0, 10]);
    assert_eq!(
        s.ports,
        [
            Port {
                service_port: 80,
                target_port: 8080
            },
            Port {
                service_port: 9000,
                target_port: 9000
            }
        ]
    );
    let waypoint = s.waypoint.expect("waypoint");
    assert_eq!(waypoint.hbone_mtls_port, 15008);
    let Some(gateway_address::Destination::Hostname(h)) = waypoint.destination else {
        panic!("waypoint by hostname");
    };
    assert_eq!(
        (h.namespace.as_str(), h.hostname.as_str()),
        ("apps", "wp.apps.svc.cluster.local")
    );
}

#[test]
fn allow_policy_groups() {
    let xds = build();
    let any = &xds.authorization_anys()[0].1;
    assert_eq!(
        any.type_url,
        "type.googleapis.com/istio.security.Authorization"
    );
    let p = Authorization::decode(any.value.as_slice()).unwrap();
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("apps", "allow-a"));
    assert_eq!(p.scope, Scope::WorkloadSelector as i32);
    assert_eq!(p.action, Action::Allow as i32);
    // The L7-only second rule can never match at L4: dropped.
    assert_eq!(p.groups.len(), 1);
    let rules = &p.groups[0].rules;
    assert_eq!(rules.len(), 2, "from and to");
    let from = &rules[0].matches;
    assert_eq!(from.len(), 2);
    let kinds: Vec<_> = from[0]
        .principals
        .iter()
        .map(|m| m.match_type.clone().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            MatchType::Exact("cluster.local/ns/apps/sa/b".into()),
            MatchType::Presence(())
        ]
    );
    assert_eq!(
        from[0].not_namespaces[0].match_type,
        Some(MatchType::Prefix("bad".into()))
    );
    assert_eq!(from[1].source_ips[0].address, vec![10, 1, 0, 0]);
    assert_eq!(from[1].source_ips[0].length, 16);
    assert_eq!(from[1].not_source_ips[0].length, 32);
    let to = &rules[1].matches;
    assert_eq!(to[0].destination_ports, [8080]);
    assert_eq!(to[0].not_destination_ports, [9]);
}

#[test]
fn deny_policy_keeps_l4_part() {
    let xds = build();
    let p = &xds.authorizations[1].1;
    assert_eq!(p.scope, Scope::Global as i32);
    assert_eq!(p.action, Action::Deny as i32);
    assert_eq!(p.groups[0].rules[0].matches[0].destination_ports, [22]);
}

#[test]
fn waypoint_policies_and_l7_conditions_stay_out_of_ztunnel() {
    let loaded = mesh_config::load_str(
        "p.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-service, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: b}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: with-when, namespace: apps}
spec:
  rules:
  - when: [{key: "request.headers[x-a]", values: [y]}]
  - from: [{source: {namespaces: [apps]}}]
"#,
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let by_name = |name: &str| {
        let policy = loaded
            .resources
            .authorization_policies
            .values()
            .find(|p| p.meta.name == name)
            .unwrap();
        authorization_of(policy)
    };
    assert!(by_name("on-service").is_none(), "the waypoint enforces it");
    let with_when = by_name("with-when").unwrap();
    assert_eq!(with_when.groups.len(), 1, "the L7 ALLOW rule is dropped");
}
