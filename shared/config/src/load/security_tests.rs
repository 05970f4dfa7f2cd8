//! Pod, AuthorizationPolicy and PeerAuthentication loading.

use crate::*;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: apps
  labels: {app: a}
  annotations:
    ringmesh.io/netns: /run/netns/pod-a
spec:
  nodeName: node1
  serviceAccountName: sa-a
  containers: [{name: app, image: x}]
status:
  podIP: 10.0.0.2
"#;

#[test]
fn pod_keeps_annotations_spec_and_status() {
    let loaded = load_str("pods.yaml", POD);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let pod = &loaded.resources.pods[&("apps".to_string(), "a".to_string())].spec;
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[NETNS_ANNOTATION], "/run/netns/pod-a");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node1"));
    assert_eq!(spec.service_account_name.as_deref(), Some("sa-a"));
    assert_eq!(
        pod.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.0.0.2")
    );
}

#[test]
fn pod_with_bad_ip_names_the_field() {
    let loaded = load_str("pods.yaml", &POD.replace("10.0.0.2", "ten"));
    assert!(loaded.resources.pods.is_empty());
    let e = &loaded.errors[0];
    assert_eq!(e.object.as_deref(), Some("Pod apps/a"));
    assert_eq!(e.field.as_deref(), Some("status.podIP"));
}

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-a, namespace: apps}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/apps/sa/sa-a"]
        ipBlocks: ["10.0.0.0/24"]
    to:
    - operation: {ports: ["8080"]}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: apps}
spec:
  mtls: {mode: STRICT}
"#;

#[test]
fn authorization_policy_and_peer_authentication_load() {
    let loaded = load_str("policy.yaml", POLICY);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let key = ("apps".to_string(), "deny-a".to_string());
    let policy = &loaded.resources.authorization_policies[&key].spec;
    assert_eq!(policy.action, AuthorizationAction::Deny);
    assert_eq!(policy.selector.as_ref().unwrap().match_labels["app"], "b");
    let source = &policy.rules[0].from[0].source;
    assert_eq!(source.principals, ["cluster.local/ns/apps/sa/sa-a"]);
    assert_eq!(policy.rules[0].to[0].operation.ports, ["8080"]);
    let pa = &loaded.resources.peer_authentications[&("apps".to_string(), "strict".to_string())];
    assert_eq!(pa.spec.mtls.as_ref().unwrap().mode, MtlsMode::Strict);
}

#[test]
fn bad_l7_policy_addresses_are_named() {
    let policy = |rule: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: w, namespace: apps}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: echo}}]\n  rules: [{rule}]\n")
    };
    let cases = [
        (
            "{from: [{source: {remoteIpBlocks: [10.0.0.0/40]}}]}",
            "spec.rules[0].from[0].source.remoteIpBlocks[0]",
        ),
        (
            "{when: [{key: remote.ip, values: [10.0.0.1], notValues: [nope]}]}",
            "spec.rules[0].when[0].notValues[0]",
        ),
    ];
    for (rule, field) in cases {
        let loaded = load_str("policy.yaml", &policy(rule));
        assert!(loaded.resources.authorization_policies.is_empty(), "{rule}");
        assert_eq!(
            loaded.errors[0].field.as_deref(),
            Some(field),
            "{:?}",
            loaded.errors
        );
    }
    let ok = load_str(
        "policy.yaml",
        &policy("{when: [{key: \"request.headers[x]\", values: [y]}]}"),
    );
    assert!(ok.errors.is_empty(), "{:?}", ok.errors);
    let spec = &ok
        .resources
        .authorization_policies
        .values()
        .next()
        .unwrap()
        .spec;
    assert_eq!(spec.targets().next().unwrap().kind, "Service");
}

#[test]
fn bad_policy_fields_are_named() {
    let cases = [
        (
            "\"8080\"",
            "\"http\"",
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            "10.0.0.0/24",
            "10.0.0.0/99",
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        ("DENY", "MAYBE", "spec.action"),
    ];
    for (from, to, field) in cases {
        let loaded = load_str("policy.yaml", &POLICY.replace(from, to));
        assert!(loaded.resources.authorization_policies.is_empty(), "{to}");
        let e = &loaded.errors[0];
        assert_eq!(e.object.as_deref(), Some("AuthorizationPolicy apps/deny-a"));
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        // The PeerAuthentication in the same file still loads.
        assert_eq!(loaded.resources.peer_authentications.len(), 1);
    }
}
