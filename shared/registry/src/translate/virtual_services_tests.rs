use std::time::Duration;

use mesh_config::load_str;

use crate::snapshot::{
    AbortStatus, BackendTarget, Filter, PathMatch, RouteTable, Snapshot, StringMatch,
};
use crate::status::RouteStatus;
use crate::workloads::{WorkloadRegistry, DEFAULT_TRUST_DOMAIN};
use crate::{translate, translate_waypoint, ObjectRef, TranslateOptions};

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ringmesh}
spec: {controllerName: ringmesh.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: ringmesh
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{value: 10.0.0.50}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.1, ports: [{port: 9080, name: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: shop, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], targetRef: {kind: Pod, name: reviews-v1}}
- {addresses: [10.0.0.2], targetRef: {kind: Pod, name: reviews-v2}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {version: v1}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: shop, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

const VS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews, reviews.example.com]
  gateways: [mesh, edge]
  http:
  - match:
    - uri: {prefix: /api}
      headers: {x-user: {prefix: jas}}
      queryParams: {debug: {exact: "1"}}
    - uri: {exact: /exact}
      method: {exact: post}
      authority: {prefix: reviews.example.com}
    route:
    - destination: {host: reviews, subset: v2}
      weight: 75
    - destination: {host: reviews.shop.svc.cluster.local, subset: v1, port: {number: 9080}}
      weight: 25
      headers: {request: {set: {x-subset: v1}}}
    timeout: 3s
    retries: {attempts: 2, perTryTimeout: 250ms, retryOn: "gateway-error,unavailable,409"}
    fault:
      delay: {fixedDelay: 50ms, percent: 10}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 12.5}}
    mirror: {host: reviews, subset: v1}
    mirrorPercentage: {value: 20}
    headers:
      request: {add: {x-from: vs}, remove: [X-Drop]}
      response: {set: {x-served: vs}}
  - match: [{uri: {prefix: /old/}, ignoreUriCase: true}, {uri: {prefix: /v1/}}]
    rewrite: {uri: /new/, authority: reviews.internal}
    corsPolicy: {allowOrigins: [{exact: "https://a.test"}], allowMethods: [GET], maxAge: 24h}
    route: [{destination: {host: reviews}}]
  - match: [{withoutHeaders: {x-test: {exact: "1"}}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews, subset: v9}}]
"#;

fn load(yaml: &str) -> mesh_config::Loaded {
    let loaded = load_str("vs.yaml", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded
}

fn gateway_snapshot(yaml: &str) -> Snapshot {
    translate(&load(yaml).resources, &TranslateOptions::default())
}

fn waypoint_snapshot(yaml: &str) -> Snapshot {
    let loaded = load(yaml);
    let registry = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
    let key = ObjectRef {
        namespace: "shop".into(),
        name: "waypoint".into(),
    };
    translate_waypoint(&loaded.resources, &registry.waypoints, &key)
}

fn gateway_table(s: &Snapshot, host: &str) -> std::sync::Arc<RouteTable> {
    let listener = s.ports[&8080].listeners.select(host).unwrap();
    listener.routes.select(host).unwrap().clone()
}

fn vs_status<'a>(s: &'a Snapshot, name: &str) -> &'a RouteStatus {
    s.status
        .routes
        .iter()
        .find(|r| r.kind == "VirtualService" && r.route.name == name)
        .unwrap_or_else(|| panic!("no status for {name}: {:?}", s.status.routes))
}

fn condition<'a>(r: &'a RouteStatus, type_: &str) -> &'a crate::status::Condition {
    r.parents[0]
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_}: {r:?}"))
}

#[test]
fn http_routes_become_rules_in_order_with_weighted_subsets() {
    let s = gateway_snapshot(&format!("{BASE}{VS}"));
    let table = gateway_table(&s, "reviews.example.com");
    // 2 matches + 2 (rewrite: one rule per match) + the catch-all; the
    // withoutHeaders route is dropped, never widened.
    assert_eq!(table.entries.len(), 5, "{:?}", table.entries);
    let first = &table.entries[0];
    assert!(matches!(&first.matcher.path, PathMatch::StringPrefix(p) if p == "/api"));
    assert!(first.matcher.path.matches("/apix"), "a string prefix");
    let StringMatch::Regex(re) = &first.matcher.headers[0].value else {
        panic!("a header prefix is a regex");
    };
    assert!(re.is_match("jason") && !re.is_match("xjason"));
    assert_eq!(first.matcher.query_params[0].name, "debug");
    assert_eq!(table.entries[1].matcher.method.as_deref(), Some("POST"));
    assert_eq!(table.entries[1].matcher.headers[0].name, ":authority");

    let rule = &first.rule;
    let names: Vec<(String, u32)> = rule
        .backends
        .iter()
        .map(|b| match &b.target {
            BackendTarget::Cluster(c) => (c.name.clone(), b.weight),
            BackendTarget::Invalid { reason } => (reason.clone(), b.weight),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("shop/reviews:9080|v2".to_string(), 75),
            ("shop/reviews:9080|v1".to_string(), 25)
        ]
    );
    let BackendTarget::Cluster(v2) = &rule.backends[0].target else {
        unreachable!()
    };
    assert_eq!(v2.endpoints, vec!["10.0.0.2:8080".parse().unwrap()]);
    assert!(matches!(
        rule.backends[1].filters[0],
        Filter::RequestHeaders(_)
    ));
    assert_eq!(rule.timeouts.request, Some(Duration::from_secs(3)));
    assert_eq!(
        rule.timeouts.backend_request,
        Some(Duration::from_millis(250))
    );
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.codes, vec![409, 502, 503, 504]);
    assert_eq!(retry.grpc_codes, vec![14]);
    assert!(retry.on_connect_failure && retry.on_reset);
}

#[test]
fn fault_mirror_headers_and_rewrites_become_filters() {
    let s = gateway_snapshot(&format!("{BASE}{VS}"));
    let table = gateway_table(&s, "reviews.example.com");
    let filters = &table.entries[0].rule.filters;
    let Filter::RequestHeaders(req) = &filters[0] else {
        panic!("{filters:?}")
    };
    assert_eq!(req.add, vec![("x-from".to_string(), "vs".to_string())]);
    assert_eq!(req.remove, vec!["x-drop".to_string()]);
    assert!(matches!(filters[1], Filter::ResponseHeaders(_)));
    let Filter::Mirror(m) = &filters[2] else {
        panic!("{filters:?}")
    };
    assert_eq!(
        (m.target.name.as_str(), m.percent),
        ("shop/reviews:9080|v1", 20.0)
    );
    let Filter::Fault(f) = &filters[3] else {
        panic!("{filters:?}")
    };
    let delay = f.delay.as_ref().unwrap();
    assert_eq!(
        (delay.duration, delay.percent),
        (Duration::from_millis(50), 10.0)
    );
    let abort = f.abort.as_ref().unwrap();
    assert_eq!((abort.status, abort.percent), (AbortStatus::Grpc(14), 12.5));

    // ignoreUriCase prefix: a case-insensitive regex; the rewrite then replaces the path.
    let ignore_case = &table.entries[2];
    assert!(ignore_case.matcher.path.matches("/OLD/x"));
    let plain_prefix = &table.entries[3];
    let Filter::Cors(cors) = &plain_prefix.rule.filters[0] else {
        panic!("{:?}", plain_prefix.rule.filters)
    };
    assert_eq!(cors.allow_origins, vec!["https://a.test".to_string()]);
    assert_eq!(cors.max_age_seconds, Some(86400));
    let Filter::UrlRewrite(rw) = &plain_prefix.rule.filters[1] else {
        panic!()
    };
    assert_eq!(rw.hostname.as_deref(), Some("reviews.internal"));
    assert!(matches!(
        rw.path,
        Some(crate::snapshot::PathModifier::ReplacePrefixMatch(ref p)) if p == "/new/"
    ));
    // The catch-all route names an undefined subset: an invalid backend, reported.
    let last = &table.entries[4];
    assert!(matches!(last.matcher.path, PathMatch::StringPrefix(ref p) if p == "/"));
    assert!(matches!(
        last.rule.backends[0].target,
        BackendTarget::Invalid { .. }
    ));
    let status = vs_status(&s, "reviews");
    assert_eq!(status.parents[0].parent_ref.name, "edge");
    assert_eq!(condition(status, "Accepted").status, "True");
    let refs = condition(status, "ResolvedRefs");
    assert_eq!(refs.status, "False");
    assert!(refs.message.contains("v9"), "{refs:?}");
    let partly = condition(status, "PartiallyInvalid");
    assert!(partly.message.contains("withoutHeaders"), "{partly:?}");
}

#[test]
fn a_waypoint_serves_mesh_virtual_services_for_its_services() {
    let s = waypoint_snapshot(&format!("{BASE}{VS}"));
    let route = s.services.get("10.96.0.1:9080".parse().unwrap()).unwrap();
    assert!(route.from_routes);
    assert_eq!(route.table.entries.len(), 5);
    let status = vs_status(&s, "reviews");
    assert_eq!(status.parents[0].parent_ref.name, "waypoint");
    assert_eq!(condition(status, "Accepted").status, "True");

    // Bound only to the gateway: the waypoint keeps its default route.
    let s = waypoint_snapshot(&format!("{BASE}{}", VS.replace("[mesh, edge]", "[edge]")));
    let route = s.services.get("10.96.0.1:9080".parse().unwrap()).unwrap();
    assert!(!route.from_routes);
}

const HTTP_ROUTES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-edge, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [reviews.example.com]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-mesh, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
"#;

#[test]
fn an_httproute_for_the_same_host_wins_and_the_virtual_service_is_told() {
    let s = gateway_snapshot(&format!("{BASE}{VS}{HTTP_ROUTES}"));
    let table = gateway_table(&s, "reviews.example.com");
    assert_eq!(table.entries.len(), 1);
    assert_eq!(table.entries[0].rule.route.name, "reviews-edge");
    // Its other host (`reviews`, exact on this listener) still serves.
    let status = vs_status(&s, "reviews");
    let overridden = condition(status, "Overridden");
    assert_eq!(
        (overridden.status.as_str(), overridden.reason.as_str()),
        ("True", "OverriddenByHTTPRoute")
    );
    assert!(
        overridden.message.contains("HTTPRoute shop/reviews-edge"),
        "{overridden:?}"
    );
    // The HTTPRoute itself is unaffected.
    let http = s
        .status
        .routes
        .iter()
        .find(|r| r.kind == "HTTPRoute" && r.route.name == "reviews-edge")
        .unwrap();
    assert_eq!(http.parents[0].conditions[0].status, "True");

    // In the waypoint, the GAMMA HTTPRoute wins the Service port.
    let s = waypoint_snapshot(&format!("{BASE}{VS}{HTTP_ROUTES}"));
    let route = s.services.get("10.96.0.1:9080".parse().unwrap()).unwrap();
    assert_eq!(route.table.entries[0].rule.route.name, "reviews-mesh");
    let accepted = condition(vs_status(&s, "reviews"), "Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("False", "OverriddenByHTTPRoute")
    );
    assert!(accepted.message.contains("HTTPRoute shop/reviews-mesh"));
}

#[test]
fn other_hosts_of_an_overridden_virtual_service_keep_serving() {
    let yaml = format!(
        "{BASE}{}{HTTP_ROUTES}",
        VS.replace(
            "[reviews, reviews.example.com]",
            "[reviews.example.com, other.example.com]"
        )
    );
    let s = gateway_snapshot(&yaml);
    let table = gateway_table(&s, "other.example.com");
    assert_eq!(table.entries[0].rule.route.name, "reviews");
    let status = vs_status(&s, "reviews");
    assert_eq!(condition(status, "Accepted").status, "True");
    let overridden = condition(status, "Overridden");
    assert_eq!(overridden.reason, "OverriddenByHTTPRoute");
    assert!(overridden.message.contains("reviews.example.com"));
}

#[test]
fn retries_default_to_istios_conditions_and_zero_attempts_disable_them() {
    let vs = |retries: &str| {
        format!(
            "{BASE}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: r, namespace: shop}}
spec:
  hosts: [r.example.com]
  gateways: [shop/edge]
  http: [{{route: [{{destination: {{host: reviews}}}}], retries: {retries}}}]
"
        )
    };
    let s = gateway_snapshot(&vs("{attempts: 3}"));
    let rule = &gateway_table(&s, "r.example.com").entries[0].rule;
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.codes, vec![503]);
    assert_eq!(retry.grpc_codes, vec![1, 14]);
    assert!(retry.on_connect_failure && !retry.on_reset);
    let s = gateway_snapshot(&vs("{attempts: 0}"));
    assert!(gateway_table(&s, "r.example.com").entries[0]
        .rule
        .retry
        .is_none());
    let s = gateway_snapshot(&vs("{retryOn: 5xx}"));
    let retry = gateway_table(&s, "r.example.com").entries[0]
        .rule
        .retry
        .clone()
        .unwrap();
    assert_eq!((retry.attempts, retry.codes.len()), (2, 100));
}

#[test]
fn the_controller_reports_mesh_virtual_services_per_waypoint() {
    let statuses = |yaml: &str| {
        let loaded = load(yaml);
        let registry = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
        crate::translate::mesh_virtual_service_statuses(&loaded.resources, &registry.waypoints)
    };
    let s = statuses(&format!("{BASE}{VS}"));
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].parents[0].parent_ref.name, "waypoint");
    assert_eq!(s[0].parents[0].conditions[0].status, "True");
    let s = statuses(&format!("{BASE}{VS}{HTTP_ROUTES}"));
    let accepted = &s[0].parents[0].conditions[0];
    assert_eq!(accepted.reason, "OverriddenByHTTPRoute");
    assert!(accepted.message.contains("HTTPRoute shop/reviews-mesh"));
    assert!(statuses(&format!("{BASE}{}", VS.replace("[mesh, edge]", "[edge]"))).is_empty());
}

#[test]
fn match_ports_gateways_and_listener_namespaces_are_respected() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: scoped, namespace: shop}
spec:
  hosts: [reviews, s.example.com]
  gateways: [mesh, edge]
  http:
  - match: [{uri: {prefix: /other-port}, port: 9999}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /mesh-only}, gateways: [mesh]}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"#;
    let s = gateway_snapshot(&format!("{BASE}{vs}"));
    let table = gateway_table(&s, "s.example.com");
    assert_eq!(
        table.entries.len(),
        1,
        "only the catch-all applies on :8080 of edge"
    );
    let s = waypoint_snapshot(&format!("{BASE}{vs}"));
    let route = s.services.get("10.96.0.1:9080".parse().unwrap()).unwrap();
    assert_eq!(
        route.table.entries.len(),
        2,
        "the mesh-only route applies in the waypoint"
    );

    // A VirtualService from a namespace the listener does not admit.
    let other = vs
        .replace("namespace: shop}", "namespace: elsewhere}")
        .replace("[mesh, edge]", "[shop/edge]");
    let s = gateway_snapshot(&format!("{BASE}{other}"));
    assert!(s.ports[&8080]
        .listeners
        .select("s.example.com")
        .unwrap()
        .routes
        .select("s.example.com")
        .is_none());
    let accepted = condition(vs_status(&s, "scoped"), "Accepted");
    assert_eq!(accepted.reason, "NotAllowedByListeners");
}
