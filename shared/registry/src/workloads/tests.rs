use std::net::{IpAddr, SocketAddr};

use mesh_config::{load_str, MtlsMode};

use super::*;

const BASE: &str = r#"
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
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: apps}
spec:
  clusterIP: 10.96.0.10
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: sliced, namespace: apps}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sliced-1, namespace: apps, labels: {kubernetes.io/service-name: sliced}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
- addresses: [10.0.0.3]
- addresses: [10.0.0.9]
  conditions: {ready: false}
"#;

fn registry(extra: &str) -> WorkloadRegistry {
    let loaded = load_str("t.yaml", &format!("{BASE}\n---\n{extra}"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn workloads_and_services() {
    let r = registry("");
    let a = r.workload(ip("10.0.0.2")).unwrap();
    assert_eq!(a.identity, "spiffe://cluster.local/ns/apps/sa/sa-a");
    assert_eq!(
        a.netns.as_deref(),
        Some(std::path::Path::new("/run/netns/a"))
    );
    let b = r.workload(ip("10.0.0.3")).unwrap();
    assert_eq!(b.identity, "spiffe://cluster.local/ns/apps/sa/default");
    assert!(!b.is_captured());
    assert_eq!(r.captured_on_node("node1").len(), 1);
    assert!(r.captured_on_node("node2").is_empty());
    let by_selector = r.service("10.96.0.10:80".parse().unwrap()).unwrap();
    assert_eq!(
        by_selector.endpoints,
        ["10.0.0.3:8080".parse::<SocketAddr>().unwrap()]
    );
    let by_slice = r.service("10.96.0.11:80".parse().unwrap()).unwrap();
    assert_eq!(
        by_slice.endpoints,
        ["10.0.0.3:9090".parse::<SocketAddr>().unwrap()]
    );
    assert!(r.service("10.96.0.10:81".parse().unwrap()).is_none());
}

fn policy(name: &str, namespace: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n---\n"
    )
}

#[test]
fn policy_table() {
    const A: &str = "spiffe://cluster.local/ns/apps/sa/sa-a";
    const OTHER: &str = "spiffe://cluster.local/ns/other/sa/x";
    let deny_a_on_b = policy(
        "deny-a",
        "apps",
        "  selector: {matchLabels: {app: b}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/apps/sa/sa-a]}}]}]",
    );
    let allow_ns_apps = policy(
        "allow-apps",
        "apps",
        "  action: ALLOW\n  rules: [{from: [{source: {namespaces: [apps]}}]}]",
    );
    let allow_port = policy(
        "allow-port",
        "apps",
        "  rules: [{to: [{operation: {ports: [\"8080\"]}}]}]",
    );
    let allow_ip = policy(
        "allow-ip",
        "apps",
        "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/30], notPrincipals: [\"*/sa/bad\"]}}]}]",
    );
    let allow_nothing = policy("allow-nothing", "apps", "  action: ALLOW");
    let root_deny = policy(
        "root",
        "istio-system",
        "  action: DENY\n  rules: [{from: [{source: {principals: [\"cluster.local/ns/other/*\"]}}]}]",
    );
    let l7_allow = policy(
        "l7",
        "apps",
        "  rules: [{to: [{operation: {methods: [GET]}}]}]",
    );
    let other_ns = policy("other-ns", "elsewhere", "  action: ALLOW");
    // L7 authz: a policy attached with targetRefs is the waypoint's.
    let waypoint_deny = policy(
        "waypoint-deny",
        "apps",
        "  targetRefs: [{kind: Service, group: \"\", name: b}]\n  action: DENY\n  rules: [{}]",
    );
    let when_allow = policy(
        "when",
        "apps",
        "  rules: [{when: [{key: \"request.headers[x-a]\", values: [y]}]}]",
    );
    let when_deny = policy(
        "when-deny",
        "apps",
        "  action: DENY\n  rules: [{when: [{key: \"request.headers[x-a]\", values: [y]}]}]",
    );
    // (name, policies, source ip, identity, port, allowed)
    type Case<'a> = (&'a str, String, &'a str, Option<&'a str>, u16, bool);
    let cases: Vec<Case> = vec![
        (
            "no policy allows",
            String::new(),
            "10.0.0.2",
            Some(A),
            8080,
            true,
        ),
        (
            "plaintext, no policy",
            String::new(),
            "1.2.3.4",
            None,
            8080,
            true,
        ),
        (
            "deny by principal",
            deny_a_on_b.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            false,
        ),
        (
            "deny does not match other principal",
            deny_a_on_b.clone(),
            "10.0.0.2",
            Some(OTHER),
            8080,
            true,
        ),
        (
            "deny wins over allow",
            format!("{deny_a_on_b}{allow_ns_apps}"),
            "10.0.0.2",
            Some(A),
            8080,
            false,
        ),
        (
            "allow by namespace",
            allow_ns_apps.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            true,
        ),
        (
            "allow by namespace: other ns refused",
            allow_ns_apps.clone(),
            "10.0.0.2",
            Some(OTHER),
            8080,
            false,
        ),
        (
            "allow by namespace: plaintext refused",
            allow_ns_apps.clone(),
            "10.0.0.2",
            None,
            8080,
            false,
        ),
        (
            "allow port",
            allow_port.clone(),
            "10.0.0.2",
            None,
            8080,
            true,
        ),
        (
            "allow port: other port refused",
            allow_port.clone(),
            "10.0.0.2",
            None,
            9090,
            false,
        ),
        (
            "allow ip block",
            allow_ip.clone(),
            "10.0.0.3",
            Some(A),
            1,
            true,
        ),
        (
            "allow ip block: outside",
            allow_ip.clone(),
            "10.0.0.4",
            Some(A),
            1,
            false,
        ),
        (
            "allow ip block: suffix notPrincipal",
            allow_ip.clone(),
            "10.0.0.3",
            Some("spiffe://cluster.local/ns/apps/sa/bad"),
            1,
            false,
        ),
        (
            "allow with no rules denies all",
            allow_nothing.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            false,
        ),
        (
            "either allow policy suffices",
            format!("{allow_nothing}{allow_port}"),
            "10.0.0.2",
            Some(A),
            8080,
            true,
        ),
        (
            "root namespace deny applies",
            root_deny.clone(),
            "10.0.0.2",
            Some(OTHER),
            8080,
            false,
        ),
        (
            "root namespace deny prefix",
            root_deny.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            true,
        ),
        (
            "L7-only allow never matches at L4",
            l7_allow.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            false,
        ),
        (
            "targetRefs policy is left to the waypoint",
            waypoint_deny.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            true,
        ),
        (
            "allow with an L7 condition never matches at L4",
            when_allow.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            false,
        ),
        (
            "deny with an L7 condition denies on its L4 part",
            when_deny.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            false,
        ),
        (
            "policy of another namespace does not apply",
            other_ns.clone(),
            "10.0.0.2",
            Some(A),
            8080,
            true,
        ),
    ];
    for (name, policies, source, identity, port, allowed) in cases {
        let r = registry(&policies);
        let b = r.workload(ip("10.0.0.3")).unwrap();
        let decision = r.policies.authorize(
            b,
            &ConnectionAttrs {
                source_ip: ip(source),
                source_identity: identity,
                destination_port: port,
            },
        );
        assert_eq!(
            decision == AuthzDecision::Allow,
            allowed,
            "{name}: {decision:?}"
        );
    }
}

#[test]
fn peer_authentication_levels() {
    let pa = |name: &str, ns: &str, selector: &str, mode: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  mtls: {{mode: {mode}}}\n---\n")
    };
    let r = registry("");
    let mode = |r: &WorkloadRegistry| r.policies.mtls_mode(r.workload(ip("10.0.0.3")).unwrap());
    assert_eq!(mode(&r), MtlsMode::Permissive);
    let r = registry(&pa("root", "istio-system", "", "STRICT"));
    assert_eq!(mode(&r), MtlsMode::Strict);
    let r = registry(&format!(
        "{}{}",
        pa("root", "istio-system", "", "STRICT"),
        pa("ns", "apps", "", "PERMISSIVE")
    ));
    assert_eq!(mode(&r), MtlsMode::Permissive);
    let r = registry(&format!(
        "{}{}",
        pa("ns", "apps", "", "PERMISSIVE"),
        pa(
            "b",
            "apps",
            "  selector: {matchLabels: {app: b}}\n",
            "STRICT"
        )
    ));
    assert_eq!(mode(&r), MtlsMode::Strict);
    let a = r.workload(ip("10.0.0.2")).unwrap();
    assert_eq!(r.policies.mtls_mode(a), MtlsMode::Permissive);
}

#[test]
fn wildcards() {
    assert!(authz::wildcard_match("*", "x"));
    assert!(!authz::wildcard_match("*", ""));
    assert!(authz::wildcard_match(
        "cluster.local/*",
        "cluster.local/ns/a/sa/b"
    ));
    assert!(authz::wildcard_match("*/sa/b", "cluster.local/ns/a/sa/b"));
    assert!(!authz::wildcard_match("*/sa/b", "cluster.local/ns/a/sa/c"));
}
