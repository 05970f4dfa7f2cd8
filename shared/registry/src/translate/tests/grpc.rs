//! GRPCRoute translation: method and header matches as the engine sees them (the
//! HTTP/2 `:path` and headers), precedence, filters, backends, status, and the
//! HTTPRoute/GRPCRoute conflict rule.

use super::fixtures::*;
use crate::snapshot::{BackendTarget, Filter};
use crate::Snapshot;

const SVC: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

fn grpc_route(ns: &str, name: &str, body: &str) -> String {
    format!("\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}")
}

fn http_route(ns: &str, name: &str, body: &str) -> String {
    format!("\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}")
}

fn base() -> String {
    let mut y = gateway("infra", "gw", &["{name: http, port: 80, protocol: HTTP}"]);
    y += &service("infra", "v1", 8080, 9001);
    y += &service("infra", "v2", 8080, 9002);
    y += &service("infra", "v3", 8080, 9003);
    y
}

/// A gRPC call as the engine sees it: POST `/<service>/<method>` with metadata headers.
fn call<'a>(host: &'a str, path: &'a str, headers: &[(&'a str, &'a str)]) -> Req<'a> {
    let mut r = req(host, path);
    r.method = "POST";
    r.headers = headers.to_vec();
    r
}

fn routed(snap: &Snapshot, path: &str, headers: &[(&str, &str)]) -> Option<Vec<String>> {
    pick(snap, &call("example.com", path, headers)).map(backends)
}

#[test]
fn exact_method_matches_route_by_service_and_method() {
    let mut y = base();
    y += &grpc_route(
        "infra",
        "exact",
        &format!(
            "  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{method: {{service: {SVC}, method: Echo}}}}]\n    backendRefs: [{{name: v1, port: 8080}}]\n  - matches: [{{method: {{service: {SVC}, method: EchoTwo}}}}]\n    backendRefs: [{{name: v2, port: 8080}}]\n"
        ),
    );
    let snap = snapshot(&y);
    assert_eq!(
        routed(&snap, &format!("/{SVC}/Echo"), &[]),
        Some(vec!["v1".into()])
    );
    assert_eq!(
        routed(&snap, &format!("/{SVC}/EchoTwo"), &[]),
        Some(vec!["v2".into()])
    );
    // No rule: the engine answers 404, which gRPC clients read as UNIMPLEMENTED.
    assert_eq!(routed(&snap, &format!("/{SVC}/EchoThree"), &[]), None);
    assert_eq!(routed(&snap, "/other.Service/Echo", &[]), None);
    let conds = route_conditions(&snap, "infra/exact", "infra/gw");
    assert_eq!(
        condition_of(&conds, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        condition_of(&conds, "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
    let status = snap
        .status
        .routes
        .iter()
        .find(|r| r.route.name == "exact")
        .unwrap();
    assert_eq!(status.kind, "GRPCRoute");
    assert_eq!(attached_routes(&snap, "infra/gw", "http"), 1);
}

#[test]
fn header_matches_follow_the_conformance_vector() {
    let mut y = base();
    y += &grpc_route(
        "infra",
        "headers",
        "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{headers: [{name: version, value: one}]}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}]}]\n    backendRefs: [{name: v2, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]\n    backendRefs: [{name: v2, port: 8080}]\n",
    );
    let snap = snapshot(&y);
    let echo = format!("/{SVC}/Echo");
    let v1 = Some(vec!["v1".to_string()]);
    let v2 = Some(vec!["v2".to_string()]);
    assert_eq!(routed(&snap, &echo, &[("Version", "one")]), v1);
    assert_eq!(routed(&snap, &echo, &[("Version", "two")]), v2);
    // Two header matches beat one.
    assert_eq!(
        routed(&snap, &echo, &[("Version", "two"), ("Color", "orange")]),
        v1
    );
    // Tie on the header count: the first rule in list order.
    assert_eq!(
        routed(&snap, &echo, &[("Version", "two"), ("Color", "blue")]),
        v2
    );
    assert_eq!(routed(&snap, &echo, &[("Color", "orange")]), None);
    assert_eq!(routed(&snap, &echo, &[("Some-Other-Header", "one")]), None);
    assert_eq!(routed(&snap, &echo, &[("Color", "green")]), v1);
    assert_eq!(routed(&snap, &echo, &[("Color", "yellow")]), v2);
    assert_eq!(routed(&snap, &echo, &[("Color", "purple")]), None);
}

#[test]
fn precedence_is_service_then_method_then_headers() {
    let mut y = base();
    // Written least specific first, so list order cannot explain the result.
    y += &grpc_route(
        "infra",
        "prec",
        &format!(
            "  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: v3, port: 8080}}]\n  - matches: [{{method: {{method: EchoTwo}}}}]\n    backendRefs: [{{name: v2, port: 8080}}]\n  - matches: [{{method: {{service: {SVC}}}}}]\n    backendRefs: [{{name: v1, port: 8080}}]\n  - matches: [{{method: {{service: {SVC}, method: Echo}}, headers: [{{name: x, value: y}}]}}]\n    backendRefs: [{{name: v3, port: 8080}}]\n  - matches: [{{method: {{service: {SVC}, method: Echo}}}}]\n    backendRefs: [{{name: v2, port: 8080}}]\n"
        ),
    );
    let snap = snapshot(&y);
    let echo = format!("/{SVC}/Echo");
    // Service and method, with a header match, beat service and method alone.
    assert_eq!(routed(&snap, &echo, &[("x", "y")]), Some(vec!["v3".into()]));
    assert_eq!(routed(&snap, &echo, &[]), Some(vec!["v2".into()]));
    // A matching service (more service characters) beats a method-only match.
    assert_eq!(
        routed(&snap, &format!("/{SVC}/EchoTwo"), &[]),
        Some(vec!["v1".into()])
    );
    // Method only: any service.
    assert_eq!(routed(&snap, "/a.B/EchoTwo", &[]), Some(vec!["v2".into()]));
    // Service-only is segment-wise: a longer service name is another service.
    assert_eq!(
        routed(&snap, &format!("/{SVC}x/Echo2"), &[]),
        Some(vec!["v3".into()])
    );
    // No matches: every request.
    assert_eq!(routed(&snap, "/a.B/Other", &[]), Some(vec!["v3".into()]));
}

#[test]
fn regular_expression_method_matches() {
    let mut y = base();
    y += &grpc_route(
        "infra",
        "regex",
        "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{method: {type: RegularExpression, service: 'pkg\\.v[0-9]+\\.Echo', method: 'Echo.*'}}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{method: {type: RegularExpression, method: 'Get.*'}}]\n    backendRefs: [{name: v2, port: 8080}]\n",
    );
    let snap = snapshot(&y);
    assert_eq!(
        routed(&snap, "/pkg.v2.Echo/EchoTwo", &[]),
        Some(vec!["v1".into()])
    );
    assert_eq!(routed(&snap, "/pkg.vx.Echo/EchoTwo", &[]), None);
    assert_eq!(
        routed(&snap, "/any.Svc/GetThing", &[]),
        Some(vec!["v2".into()])
    );
    // Each regex covers its whole segment: no match inside a longer name.
    assert_eq!(routed(&snap, "/pkg.v2.Echo/XEcho", &[]), None);
    assert_eq!(routed(&snap, "/x.pkg.v2.Echo/Echo", &[]), None);
}

#[test]
fn invalid_rules_and_missing_backends_in_status() {
    let mut y = base();
    y += &grpc_route(
        "infra",
        "bad",
        "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{method: {service: 'not/a service', method: Echo}}]\n    backendRefs: [{name: v1, port: 8080}]\n  - matches: [{method: {service: ok.Svc}}]\n    backendRefs: [{name: missing, port: 8080}]\n",
    );
    y += &grpc_route(
        "infra",
        "empty-method",
        "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{method: {type: Exact}}]\n    backendRefs: [{name: v1, port: 8080}]\n",
    );
    let snap = snapshot(&y);
    let conds = route_conditions(&snap, "infra/bad", "infra/gw");
    assert_eq!(
        condition_of(&conds, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        condition_of(&conds, "PartiallyInvalid"),
        ("True".into(), "UnsupportedValue".into())
    );
    assert_eq!(
        condition_of(&conds, "ResolvedRefs"),
        ("False".into(), "BackendNotFound".into())
    );
    let rule = pick(&snap, &call("example.com", "/ok.Svc/Echo", &[])).unwrap();
    assert!(matches!(
        rule.backends[0].target,
        BackendTarget::Invalid { .. }
    ));
    let conds = route_conditions(&snap, "infra/empty-method", "infra/gw");
    assert_eq!(
        condition_of(&conds, "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
}

#[test]
fn filters_mirror_and_weights_compile_like_httproute() {
    let mut y = base();
    y += &grpc_route(
        "infra",
        "filters",
        "  parentRefs: [{name: gw}]\n  rules:\n  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {set: [{name: x-set, value: a}], add: [{name: x-add, value: b}], remove: [x-gone]}\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {add: [{name: x-resp, value: c}]}\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: v3, port: 8080}}\n    backendRefs:\n    - {name: v1, port: 8080, weight: 3}\n    - name: v2\n      port: 8080\n      weight: 1\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {set: [{name: x-backend, value: v2}]}\n",
    );
    let snap = snapshot(&y);
    let rule = pick(&snap, &call("example.com", "/a.B/C", &[])).unwrap();
    assert_eq!(rule.total_weight, 4);
    assert_eq!(backends(rule), vec!["v1", "v2"]);
    assert_eq!(rule.backends[0].weight, 3);
    match &rule.filters[0] {
        Filter::RequestHeaders(m) => {
            assert_eq!(m.set, vec![("x-set".to_string(), "a".to_string())]);
            assert_eq!(m.add, vec![("x-add".to_string(), "b".to_string())]);
            assert_eq!(m.remove, vec!["x-gone".to_string()]);
        }
        other => panic!("expected request header modifier, got {other:?}"),
    }
    assert!(matches!(&rule.filters[1], Filter::ResponseHeaders(m) if m.add.len() == 1));
    assert!(matches!(&rule.filters[2], Filter::Mirror(m) if m.target.service.name == "v3"));
    assert!(matches!(
        &rule.backends[1].filters[0],
        Filter::RequestHeaders(_)
    ));
}

#[test]
fn listener_kinds_hostnames_and_namespaces() {
    let mut y = gateway(
        "infra",
        "gw",
        &[
            "{name: http-only, port: 80, protocol: HTTP, hostname: h.com, allowedRoutes: {kinds: [{kind: HTTPRoute}]}}",
            "{name: grpc-only, port: 80, protocol: HTTP, hostname: g.com, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}",
            "{name: default, port: 80, protocol: HTTP, hostname: '*.d.com'}",
        ],
    );
    y += &service("infra", "v1", 8080, 9001);
    y += &grpc_route(
        "infra",
        "r",
        "  parentRefs: [{name: gw}]\n  hostnames: [g.com, x.d.com, other.org]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n",
    );
    y += &grpc_route(
        "infra",
        "wrong-listener",
        "  parentRefs: [{name: gw, sectionName: http-only}]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n",
    );
    y += &grpc_route(
        "other",
        "foreign",
        "  parentRefs: [{name: gw, namespace: infra}]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n",
    );
    let snap = snapshot(&y);
    let gw = &snap.status.gateways[0];
    assert_eq!(
        gw.listeners[0].supported_kinds,
        vec!["gateway.networking.k8s.io/HTTPRoute"]
    );
    assert_eq!(
        gw.listeners[1].supported_kinds,
        vec!["gateway.networking.k8s.io/GRPCRoute"]
    );
    assert_eq!(
        gw.listeners[2].supported_kinds,
        vec![
            "gateway.networking.k8s.io/HTTPRoute",
            "gateway.networking.k8s.io/GRPCRoute"
        ]
    );
    assert_eq!(attached_routes(&snap, "infra/gw", "http-only"), 0);
    assert_eq!(attached_routes(&snap, "infra/gw", "grpc-only"), 1);
    assert_eq!(attached_routes(&snap, "infra/gw", "default"), 1);
    assert!(pick(&snap, &call("g.com", "/a.B/C", &[])).is_some());
    assert!(pick(&snap, &call("x.d.com", "/a.B/C", &[])).is_some());
    assert!(pick(&snap, &call("y.d.com", "/a.B/C", &[])).is_none());
    assert!(pick(&snap, &call("h.com", "/a.B/C", &[])).is_none());
    let conds = route_conditions(&snap, "infra/wrong-listener", "infra/gw");
    assert_eq!(
        condition_of(&conds, "Accepted"),
        ("False".into(), "NotAllowedByListeners".into())
    );
    let conds = route_conditions(&snap, "other/foreign", "infra/gw");
    assert_eq!(
        condition_of(&conds, "Accepted"),
        ("False".into(), "NotAllowedByListeners".into())
    );
}

fn aged(route: String, timestamp: &str) -> String {
    route.replacen(
        "metadata: {",
        &format!("metadata: {{creationTimestamp: '{timestamp}', "),
        1,
    )
}

#[test]
fn httproute_and_grpcroute_on_one_hostname_the_older_wins() {
    let mut y = base();
    // The GRPCRoute is older on a.com: the HTTPRoute loses there.
    y += &aged(
        grpc_route(
            "infra",
            "grpc-a",
            "  parentRefs: [{name: gw}]\n  hostnames: [a.com]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n",
        ),
        "2024-01-01T00:00:00Z",
    );
    y += &aged(
        http_route(
            "infra",
            "http-a",
            "  parentRefs: [{name: gw}]\n  hostnames: ['*.com']\n  rules: [{backendRefs: [{name: v2, port: 8080}]}]\n",
        ),
        "2024-02-01T00:00:00Z",
    );
    // The HTTPRoute is older on b.org: the GRPCRoute loses there.
    y += &aged(
        http_route(
            "infra",
            "http-b",
            "  parentRefs: [{name: gw}]\n  hostnames: [b.org]\n  rules: [{backendRefs: [{name: v2, port: 8080}]}]\n",
        ),
        "2024-01-01T00:00:00Z",
    );
    y += &aged(
        grpc_route(
            "infra",
            "grpc-b",
            "  parentRefs: [{name: gw}]\n  hostnames: [b.org]\n  rules: [{backendRefs: [{name: v3, port: 8080}]}]\n",
        ),
        "2024-03-01T00:00:00Z",
    );
    // Disjoint hostnames: both kinds are served.
    y += &grpc_route(
        "infra",
        "grpc-c",
        "  parentRefs: [{name: gw}]\n  hostnames: [c.net]\n  rules: [{backendRefs: [{name: v3, port: 8080}]}]\n",
    );
    let snap = snapshot(&y);
    let accepted =
        |route: &str| condition_of(&route_conditions(&snap, route, "infra/gw"), "Accepted");
    assert_eq!(accepted("infra/grpc-a"), ("True".into(), "Accepted".into()));
    assert_eq!(accepted("infra/http-a").0, "False");
    assert_eq!(accepted("infra/http-b"), ("True".into(), "Accepted".into()));
    assert_eq!(accepted("infra/grpc-b").0, "False");
    assert_eq!(accepted("infra/grpc-c"), ("True".into(), "Accepted".into()));
    let at = |host: &str| pick(&snap, &call(host, "/a.B/C", &[])).map(backends);
    assert_eq!(at("a.com"), Some(vec!["v1".to_string()]));
    // The detached HTTPRoute no longer serves its other hosts either.
    assert_eq!(at("z.com"), None);
    assert_eq!(at("b.org"), Some(vec!["v2".to_string()]));
    assert_eq!(at("c.net"), Some(vec!["v3".to_string()]));
    assert_eq!(attached_routes(&snap, "infra/gw", "http"), 3);
}

#[test]
fn grpcroute_and_httproute_of_the_same_name_count_twice() {
    let mut y = base();
    y += &grpc_route(
        "infra",
        "same",
        "  parentRefs: [{name: gw}]\n  hostnames: [g.com]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n",
    );
    y += &http_route(
        "infra",
        "same",
        "  parentRefs: [{name: gw}]\n  hostnames: [h.com]\n  rules: [{backendRefs: [{name: v2, port: 8080}]}]\n",
    );
    let snap = snapshot(&y);
    assert_eq!(attached_routes(&snap, "infra/gw", "http"), 2);
    assert_eq!(
        pick(&snap, &call("g.com", "/a.B/C", &[])).map(backends),
        Some(vec!["v1".to_string()])
    );
    assert_eq!(
        pick(&snap, &call("h.com", "/x", &[])).map(backends),
        Some(vec!["v2".to_string()])
    );
}

#[test]
fn a_conflict_on_one_listener_keeps_the_route_accepted_through_another() {
    let mut y = gateway(
        "infra",
        "gw",
        &[
            "{name: a, port: 80, protocol: HTTP, hostname: a.com}",
            "{name: b, port: 8080, protocol: HTTP, hostname: a.com}",
        ],
    );
    y += &service("infra", "v1", 8080, 9001);
    y += &service("infra", "v2", 8080, 9002);
    // The HTTPRoute is older and only on listener a: the GRPCRoute loses a, keeps b.
    y += &aged(
        http_route(
            "infra",
            "web",
            "  parentRefs: [{name: gw, sectionName: a}]\n  rules: [{backendRefs: [{name: v1, port: 8080}]}]\n",
        ),
        "2024-01-01T00:00:00Z",
    );
    y += &aged(
        grpc_route(
            "infra",
            "rpc",
            "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: v2, port: 8080}]}]\n",
        ),
        "2024-02-01T00:00:00Z",
    );
    // Same GRPCRoute kind-conflict, but pinned to listener a only: not accepted anywhere.
    y += &aged(
        grpc_route(
            "infra",
            "rpc-a",
            "  parentRefs: [{name: gw, sectionName: a}]\n  rules: [{backendRefs: [{name: v2, port: 8080}]}]\n",
        ),
        "2024-03-01T00:00:00Z",
    );
    let snap = snapshot(&y);
    let accepted =
        |route: &str| condition_of(&route_conditions(&snap, route, "infra/gw"), "Accepted");
    assert_eq!(accepted("infra/web"), ("True".into(), "Accepted".into()));
    assert_eq!(accepted("infra/rpc"), ("True".into(), "Accepted".into()));
    assert_eq!(
        accepted("infra/rpc-a"),
        ("False".into(), "NotAllowedByListeners".into())
    );
    assert_eq!(attached_routes(&snap, "infra/gw", "a"), 1);
    assert_eq!(attached_routes(&snap, "infra/gw", "b"), 1);
    let mut on_b = call("a.com", "/a.B/C", &[]);
    on_b.port = 8080;
    assert_eq!(
        pick(&snap, &on_b).map(backends),
        Some(vec!["v2".to_string()])
    );
    assert_eq!(
        pick(&snap, &call("a.com", "/a.B/C", &[])).map(backends),
        Some(vec!["v1".to_string()])
    );
}
