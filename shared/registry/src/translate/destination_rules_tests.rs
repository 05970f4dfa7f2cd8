use std::path::Path;

use mesh_balance::{HashKey, LbAlgorithm};

use super::super::backends::{BackendRef, BackendResolver};
use crate::snapshot::Cluster;

const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{port: 9080, name: http}, {port: 9090, name: admin}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-1
  namespace: shop
  labels: {kubernetes.io/service-name: reviews}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 8081}]
endpoints:
- addresses: [10.0.0.1]
  targetRef: {kind: Pod, name: reviews-v1}
- addresses: [10.0.0.2]
  targetRef: {kind: Pod, name: reviews-v2-a}
- addresses: [10.0.0.3]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-a, namespace: shop, labels: {app: reviews, version: v2}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-b, namespace: shop, labels: {app: reviews, version: v2}}
status: {podIP: 10.0.0.3}
"#;

const RULE: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: X-User
        maglev: {}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 5, maxRequestsPerConnection: 1}
    outlierDetection:
      consecutiveGatewayErrors: 2
      interval: 1s
      baseEjectionTime: 15s
      maxEjectionPercent: 50
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool:
        tcp: {maxConnections: 1}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
"#;

fn resolve(yaml: &str, port: i32) -> std::sync::Arc<Cluster> {
    let loaded = mesh_config::load_strs(&[(Path::new("t.yaml"), yaml)]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut r = BackendResolver::new(&loaded.resources);
    r.resolve(
        "shop",
        BackendRef {
            group: None,
            kind: None,
            name: "reviews",
            namespace: None,
            port: Some(port),
        },
    )
    .unwrap()
}

#[test]
fn a_rule_on_the_short_host_sets_the_clusters_policy() {
    let c = resolve(&format!("{BASE}{RULE}"), 9080);
    let p = &c.policy;
    assert_eq!(p.rule.as_ref().unwrap().to_string(), "shop/reviews");
    let lb = p.load_balancer.as_ref().unwrap();
    assert_eq!(lb.algorithm, LbAlgorithm::Maglev { table_size: 65537 });
    assert_eq!(lb.hash_key, Some(HashKey::Header("x-user".into())));
    let pool = p.connection_pool.as_ref().unwrap();
    assert_eq!(pool.max_connections, 10);
    assert_eq!(pool.max_pending_requests, 5);
    assert_eq!(pool.max_requests, u32::MAX, "unset: Istio's 2^32-1");
    assert_eq!(pool.max_requests_per_connection, 1);
    assert_eq!(
        pool.connect_timeout,
        Some(std::time::Duration::from_secs(2))
    );
    let o = p.outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx, Some(5), "Istio's default");
    assert_eq!(o.consecutive_gateway_errors, Some(2));
    assert_eq!(o.interval, std::time::Duration::from_secs(1));
    assert_eq!(o.base_ejection_time, std::time::Duration::from_secs(15));
    assert_eq!(o.max_ejection_percent, 50);
    assert_eq!(p.tls.as_ref().unwrap().mode, "ISTIO_MUTUAL");
}

#[test]
fn port_level_settings_win_for_their_port() {
    let c = resolve(&format!("{BASE}{RULE}"), 9090);
    let p = &c.policy;
    assert_eq!(
        p.load_balancer.as_ref().unwrap().algorithm,
        LbAlgorithm::RoundRobin
    );
    assert_eq!(p.connection_pool.as_ref().unwrap().max_connections, 1);
    // Fields the port does not set come from the rule.
    assert!(p.outlier_detection.is_some());
    assert_eq!(c.endpoints.len(), 3);
    assert!(c.endpoints.iter().all(|e| e.port() == 8081));
}

#[test]
fn subsets_are_clusters_of_the_pods_with_their_labels() {
    let c = resolve(&format!("{BASE}{RULE}"), 9080);
    let v1 = &c.policy.subsets["v1"];
    let v2 = &c.policy.subsets["v2"];
    assert_eq!(v1.name, "shop/reviews:9080|v1");
    let ips = |c: &Cluster| {
        c.endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ips(v1), ["10.0.0.1:8080"]);
    // One pod by targetRef, one by its podIP.
    assert_eq!(ips(v2), ["10.0.0.2:8080", "10.0.0.3:8080"]);
    // The subset's own policy overrides the rule's load balancer only.
    assert_eq!(
        v2.policy.load_balancer.as_ref().unwrap().algorithm,
        LbAlgorithm::Random
    );
    assert_eq!(
        v2.policy.connection_pool.as_ref().unwrap().max_connections,
        10
    );
    assert!(matches!(
        v1.policy.load_balancer.as_ref().unwrap().algorithm,
        LbAlgorithm::Maglev { .. }
    ));
}

#[test]
fn hosts_resolve_like_istio() {
    // No rule: the default policy.
    let c = resolve(BASE, 9080);
    assert!(c.policy.rule.is_none() && c.policy.load_balancer.is_none());
    // A short name in another namespace means another Service.
    let other = RULE.replace("namespace: shop}", "namespace: other}");
    assert!(resolve(&format!("{BASE}{other}"), 9080)
        .policy
        .rule
        .is_none());
    // The FQDN from any namespace matches.
    let fqdn = other.replace("host: reviews", "host: reviews.shop.svc.cluster.local");
    assert!(resolve(&format!("{BASE}{fqdn}"), 9080)
        .policy
        .rule
        .is_some());
    let wildcard = other.replace("host: reviews", "host: \"*.shop.svc.cluster.local\"");
    assert!(resolve(&format!("{BASE}{wildcard}"), 9080)
        .policy
        .rule
        .is_some());
    // A rule without loadBalancer means Istio's default, LEAST_REQUEST.
    let plain = "\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec: {host: reviews}\n";
    let c = resolve(&format!("{BASE}{plain}"), 9080);
    assert_eq!(
        c.policy.load_balancer.as_ref().unwrap().algorithm,
        LbAlgorithm::LeastRequest
    );
    assert!(c.policy.connection_pool.is_none() && c.policy.outlier_detection.is_none());
}

#[test]
fn zero_error_counts_turn_outlier_detection_off() {
    let rule = RULE.replace(
        "consecutiveGatewayErrors: 2",
        "consecutiveGatewayErrors: 0\n      consecutive5xxErrors: 0",
    );
    let c = resolve(&format!("{BASE}{rule}"), 9080);
    assert!(c.policy.outlier_detection.is_none());
}
