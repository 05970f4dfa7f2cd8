//! Round trip: YAML → registry → xDS (encoded) → registry gives the same
//! workloads, service endpoints and authorization decisions; resources the
//! ztunnel cannot use are rejected with their name.

use std::net::{IpAddr, SocketAddr};

use mesh_api::istio::security::{Address as Cidr, Authorization, Group, Match, Rules};
use mesh_api::istio::workload::Address;
use mesh_api::type_url;

use super::*;
use crate::workloads::{AuthzDecision, ConnectionAttrs, DEFAULT_TRUST_DOMAIN};

const CONFIG: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: apps
  labels: {app: a}
  annotations: {ringmesh.io/netns: /controller/view/a}
spec: {nodeName: node1, serviceAccountName: sa-a, containers: []}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: b
  namespace: apps
  labels: {app: b}
  annotations: {ringmesh.io/netns: /controller/view/b}
spec: {nodeName: node2, serviceAccountName: sa-b, containers: []}
status: {podIP: 10.0.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b2, namespace: apps, labels: {app: b}}
spec: {nodeName: node2, containers: []}
status: {podIP: "fd00::3"}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: apps}
spec:
  clusterIP: 10.96.0.10
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}, {name: grpc, port: 9000}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: apps}
spec:
  selector: {matchLabels: {app: b}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/apps/sa/sa-a"], notNamespaces: ["bad*"]}
    - source: {ipBlocks: ["10.9.0.0/16"], notIpBlocks: ["10.9.2.3"]}
    to:
    - operation: {ports: ["8080"], notPorts: ["9"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-22, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {ports: ["22"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-c, namespace: apps}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: ["*/sa/c"]}
"#;

fn standalone() -> WorkloadRegistry {
    let loaded = mesh_config::load_str("t.yaml", CONFIG);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN)
}

/// Through the wire: encode as the controller does, decode as the ztunnel does.
fn connected(local: &LocalNetns) -> Result<WorkloadRegistry, String> {
    let loaded = mesh_config::load_str("t.yaml", CONFIG);
    let registry = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
    let xds = XdsResources::build(&loaded.resources, &registry);
    let addresses = xds.address_anys();
    let authorizations = xds.authorization_anys();
    let addresses: Vec<Address> =
        decode_all(type_url::ADDRESS, addresses.iter().map(|(n, a)| (n, a)))?;
    let authorizations: Vec<Authorization> = decode_all(
        type_url::AUTHORIZATION,
        authorizations.iter().map(|(n, a)| (n, a)),
    )?;
    WorkloadRegistry::from_xds(&addresses, &authorizations, DEFAULT_TRUST_DOMAIN, local)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn workloads_and_services_survive_the_round_trip() {
    let local = LocalNetns::from([(("apps".to_string(), "a".to_string()), "/run/netns/a".into())]);
    let direct = standalone();
    let decoded = connected(&local).unwrap();
    assert_eq!(decoded.workloads.len(), direct.workloads.len());
    for (ip, want) in &direct.workloads {
        let got = &decoded.workloads[ip];
        assert_eq!(
            (&got.uid, &got.identity, &got.node, got.is_captured()),
            (&want.uid, &want.identity, &want.node, want.is_captured()),
        );
    }
    // The node-local path comes from the ztunnel's own list, never the controller's.
    assert_eq!(
        decoded.workloads[&ip("10.0.1.2")].netns.as_deref(),
        Some(std::path::Path::new("/run/netns/a"))
    );
    assert_eq!(decoded.captured_on_node("node1").len(), 1);
    assert_eq!(decoded.workloads[&ip("fd00::3")].netns, None);
    let mut vips: Vec<_> = direct.services.keys().collect();
    vips.sort();
    let mut decoded_vips: Vec<_> = decoded.services.keys().collect();
    decoded_vips.sort();
    assert_eq!(vips, decoded_vips);
    for (vip, want) in &direct.services {
        let mut want_endpoints = want.endpoints.clone();
        want_endpoints.sort();
        assert_eq!(decoded.services[vip].endpoints, want_endpoints, "{vip}");
    }
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    assert_eq!(
        decoded.services[&vip].endpoints,
        [
            "10.0.2.2:8080".parse().unwrap(),
            "[fd00::3]:8080".parse().unwrap()
        ] as [SocketAddr; 2]
    );
}

#[test]
fn authorization_decisions_survive_the_round_trip() {
    let direct = standalone();
    let decoded = connected(&LocalNetns::new()).unwrap();
    let peers = [
        (Some("spiffe://cluster.local/ns/apps/sa/sa-a"), "10.0.1.2"),
        (Some("spiffe://cluster.local/ns/bad1/sa/sa-a"), "10.0.1.2"),
        (Some("spiffe://cluster.local/ns/apps/sa/c"), "10.0.1.9"),
        (Some("spiffe://cluster.local/ns/other/sa/x"), "10.9.2.3"),
        (Some("spiffe://cluster.local/ns/other/sa/x"), "10.9.2.4"),
        (None, "10.9.0.1"),
        (None, "192.168.1.1"),
    ];
    let mut decisions = 0;
    for target in ["10.0.1.2", "10.0.2.2", "fd00::3"] {
        let (want_w, got_w) = (
            &direct.workloads[&ip(target)],
            &decoded.workloads[&ip(target)],
        );
        for (identity, source) in peers {
            for port in [8080, 9, 22, 9000] {
                let conn = ConnectionAttrs {
                    source_ip: ip(source),
                    source_identity: identity,
                    destination_port: port,
                };
                let want = direct.policies.authorize(want_w, &conn);
                let got = decoded.policies.authorize(got_w, &conn);
                assert_eq!(
                    matches!(want, AuthzDecision::Allow),
                    matches!(got, AuthzDecision::Allow),
                    "{target}:{port} from {identity:?}@{source}: standalone {want:?}, connected {got:?}"
                );
                decisions += usize::from(matches!(want, AuthzDecision::Deny(_)));
            }
        }
    }
    // The table exercises both outcomes (and every policy).
    assert!(decisions > 10, "{decisions} denials");
}

fn policy(groups: Vec<Group>) -> Authorization {
    Authorization {
        name: "p".into(),
        namespace: "apps".into(),
        groups,
        ..Default::default()
    }
}

#[test]
fn unusable_resources_are_rejected_by_name() {
    let workload_with = |bytes: Vec<u8>| Address {
        r#type: Some(mesh_api::istio::workload::address::Type::Workload(
            mesh_api::istio::workload::Workload {
                uid: "Kubernetes//Pod/apps/x".into(),
                name: "x".into(),
                namespace: "apps".into(),
                addresses: vec![bytes],
                ..Default::default()
            },
        )),
    };
    let err = WorkloadRegistry::from_xds(
        &[workload_with(vec![10, 0, 0])],
        &[],
        DEFAULT_TRUST_DOMAIN,
        &LocalNetns::new(),
    )
    .unwrap_err();
    assert!(
        err.contains("Kubernetes//Pod/apps/x") && err.contains("3 bytes"),
        "{err}"
    );
    assert!(WorkloadRegistry::from_xds(
        &[workload_with(vec![10, 0, 0, 1])],
        &[],
        DEFAULT_TRUST_DOMAIN,
        &LocalNetns::new()
    )
    .is_ok());

    let destination_ip = policy(vec![Group {
        rules: vec![Rules {
            matches: vec![Match {
                destination_ips: vec![Cidr {
                    address: vec![10, 0, 0, 1],
                    length: 32,
                }],
                ..Default::default()
            }],
        }],
    }]);
    let mixed = policy(vec![Group {
        rules: vec![Rules {
            matches: vec![Match {
                destination_ports: vec![80],
                principals: vec![mesh_api::istio::security::StringMatch {
                    match_type: Some(mesh_api::istio::security::string_match::MatchType::Exact(
                        "x".into(),
                    )),
                }],
                ..Default::default()
            }],
        }],
    }]);
    let bad_action = Authorization {
        action: 7,
        ..policy(vec![])
    };
    for (bad, why) in [
        (destination_ip, "destination IP"),
        (mixed, "mixes"),
        (bad_action, "unknown action"),
    ] {
        let err = WorkloadRegistry::from_xds(&[], &[bad], DEFAULT_TRUST_DOMAIN, &LocalNetns::new())
            .unwrap_err();
        assert!(
            err.contains("Authorization apps/p") && err.contains(why),
            "{err}"
        );
    }
    let wrong_type = [(
        "x".to_string(),
        mesh_api::to_any(type_url::AUTHORIZATION, &policy(vec![])),
    )];
    let err = decode_all::<Address>(type_url::ADDRESS, wrong_type.iter().map(|(n, a)| (n, a)))
        .unwrap_err();
    assert!(err.contains("\"x\""), "{err}");
}
