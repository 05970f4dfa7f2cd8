//! PeerAuthentication STRICT over xDS, as istiod sends it: the static
//! `istio-system/istio_converted_static_strict` DENY policy (golden fields),
//! listed only by workloads whose effective mode is STRICT; decoded by a
//! connected ztunnel it refuses a connection without a peer identity
//! (plaintext) and admits an mTLS one, as the standalone ztunnel decides.

use mesh_api::istio::security::{string_match, Action, Authorization, Scope};
use mesh_api::istio::workload::{address, Address};
use mesh_api::type_url;

use super::*;
use crate::workloads::{AuthzDecision, ConnectionAttrs, DEFAULT_TRUST_DOMAIN};
use mesh_config::MtlsMode;

const CONFIG: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: apps, labels: {app: a}}
spec: {nodeName: node1, serviceAccountName: sa-a, containers: []}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: open, namespace: apps, labels: {app: open}}
spec: {nodeName: node1, containers: []}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: legacy, labels: {app: c}}
spec: {nodeName: node2, containers: []}
status: {podIP: 10.0.2.2}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: apps}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: open-is-permissive, namespace: apps}
spec:
  selector: {matchLabels: {app: open}}
  mtls: {mode: PERMISSIVE}
"#;

fn published() -> (WorkloadRegistry, XdsResources) {
    let loaded = mesh_config::load_str("t.yaml", CONFIG);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let registry = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
    let xds = XdsResources::build(&loaded.resources, &registry);
    (registry, xds)
}

fn policies_of(xds: &XdsResources, uid: &str) -> Vec<String> {
    xds.addresses
        .iter()
        .find_map(|(name, a)| match &a.r#type {
            Some(address::Type::Workload(w)) if name == uid => {
                Some(w.authorization_policies.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no workload {uid}"))
}

#[test]
fn the_static_strict_policy_is_istiods() {
    let (_, xds) = published();
    let (name, policy) = xds
        .authorizations
        .iter()
        .find(|(n, _)| n == "istio-system/istio_converted_static_strict")
        .expect("published");
    assert_eq!(name, &static_strict_policy_name());
    assert_eq!(policy.name, STATIC_STRICT_POLICY);
    assert_eq!(policy.namespace, "istio-system");
    assert_eq!(policy.scope, Scope::WorkloadSelector as i32);
    assert_eq!(policy.action, Action::Deny as i32);
    let [group] = policy.groups.as_slice() else {
        panic!("one group: {policy:?}")
    };
    let [rules] = group.rules.as_slice() else {
        panic!("one rules: {group:?}")
    };
    let [only] = rules.matches.as_slice() else {
        panic!("one match: {rules:?}")
    };
    assert_eq!(only.not_principals.len(), 1);
    assert_eq!(
        only.not_principals[0].match_type,
        Some(string_match::MatchType::Presence(()))
    );
    assert!(only.principals.is_empty() && only.destination_ports.is_empty());
}

#[test]
fn only_strict_workloads_list_it() {
    let (_, xds) = published();
    let strict = static_strict_policy_name();
    assert_eq!(
        policies_of(&xds, "Kubernetes//Pod/apps/a"),
        std::slice::from_ref(&strict)
    );
    assert!(!policies_of(&xds, "Kubernetes//Pod/apps/open").contains(&strict));
    assert!(!policies_of(&xds, "Kubernetes//Pod/legacy/c").contains(&strict));
}

#[test]
fn without_any_peer_authentication_nothing_is_sent() {
    let loaded = mesh_config::load_str(
        "t.yaml",
        CONFIG.split("---\napiVersion: security").next().unwrap(),
    );
    let registry = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
    let xds = XdsResources::build(&loaded.resources, &registry);
    assert!(xds.authorizations.is_empty(), "{:?}", xds.authorizations);
}

#[test]
fn a_connected_ztunnel_refuses_plaintext_where_standalone_does() {
    let (direct, xds) = published();
    let addresses: Vec<Address> = xds.addresses.iter().map(|(_, a)| a.clone()).collect();
    let authorizations: Vec<Authorization> = decode_all(
        type_url::AUTHORIZATION,
        xds.authorization_anys().iter().map(|(n, a)| (n, a)),
    )
    .unwrap();
    let connected = WorkloadRegistry::from_xds(
        &addresses,
        &authorizations,
        DEFAULT_TRUST_DOMAIN,
        &LocalNetns::new(),
    )
    .unwrap();
    for (target, strict) in [("10.0.1.2", true), ("10.0.1.3", false), ("10.0.2.2", false)] {
        let ip = target.parse().unwrap();
        assert_eq!(
            direct.policies.mtls_mode(&direct.workloads[&ip]) == MtlsMode::Strict,
            strict,
            "{target}"
        );
        let workload = &connected.workloads[&ip];
        let plaintext = ConnectionAttrs {
            source_ip: "10.0.9.9".parse().unwrap(),
            source_identity: None,
            destination_port: 8080,
        };
        let mtls = ConnectionAttrs {
            source_identity: Some("spiffe://cluster.local/ns/apps/sa/sa-a"),
            ..plaintext
        };
        match connected.policies.authorize(workload, &plaintext) {
            AuthzDecision::Deny(reason) => {
                assert!(strict, "{target}: {reason}");
                assert!(reason.contains("istio_converted_static_strict"), "{reason}");
            }
            AuthzDecision::Allow => assert!(!strict, "{target} admitted plaintext"),
        }
        assert!(
            matches!(
                connected.policies.authorize(workload, &mtls),
                AuthzDecision::Allow
            ),
            "{target} refused mTLS"
        );
    }
}
