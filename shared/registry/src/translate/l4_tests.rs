//! TLSRoute/TCPRoute translation: SNI tables, listener isolation, weights,
//! hostname claims, status reasons, ReferenceGrants from L4 route kinds.

use std::path::Path;

use crate::snapshot::{BackendTarget, ListenerProtocol, Snapshot};
use crate::{translate_loaded, L4Route, TranslateOptions};

fn snapshot(yaml: &str) -> Snapshot {
    let loaded = mesh_config::load_strs(&[(Path::new("l4.yaml"), yaml)]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    translate_loaded(&loaded, &TranslateOptions::default())
}

fn gateway(listeners: &[&str]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: infra}}\nspec:\n  gatewayClassName: ringmesh\n  listeners:\n{}",
        listeners
            .iter()
            .map(|l| format!("  - {l}\n"))
            .collect::<String>()
    )
}

/// A Service `name` in `ns` on port 8443 with one endpoint 127.0.0.1:`target`.
fn service(ns: &str, name: &str, target: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: main, port: 8443}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: main, port: {target}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
    )
}

fn tls_route(name: &str, created: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: infra, creationTimestamp: '{created}'}}\nspec:\n{spec}"
    )
}

fn tcp_route(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n{spec}"
    )
}

fn route_on<'s>(snap: &'s Snapshot, port: u16, sni: Option<&str>) -> Option<&'s L4Route> {
    snap.ports[&port]
        .listeners
        .l4
        .as_ref()
        .expect("an L4 port")
        .route(sni)
        .map(|r| &**r)
}

/// Endpoints of each backend of a route, as `addr` strings ("-" when invalid).
fn backends(route: &L4Route) -> Vec<(u32, String)> {
    route
        .backends
        .iter()
        .map(|b| match &b.target {
            BackendTarget::Cluster(c) => (b.weight, c.endpoints[0].to_string()),
            BackendTarget::Invalid { .. } => (b.weight, "-".to_string()),
        })
        .collect()
}

fn route_condition(snap: &Snapshot, kind: &str, name: &str, type_: &str) -> (String, String) {
    let r = snap
        .status
        .routes
        .iter()
        .find(|r| r.kind == kind && r.route.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {name}"));
    let c = r.parents[0]
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap();
    (c.status.clone(), c.reason.clone())
}

fn listener_condition(snap: &Snapshot, listener: &str, type_: &str) -> (String, String) {
    let l = snap.status.gateways[0]
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .unwrap();
    let c = l.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[test]
fn passthrough_routes_by_sni_with_the_most_specific_route_hostname() {
    let mut y = gateway(&["{name: tls, port: 8443, protocol: TLS, tls: {mode: Passthrough}}"]);
    y += &service("infra", "a", 9001);
    y += &service("infra", "b", 9002);
    y += &tls_route(
        "exact",
        "2024-01-01T00:00:00Z",
        "  parentRefs: [{name: gw}]\n  hostnames: [a.example.com]\n  rules: [{backendRefs: [{name: a, port: 8443}]}]\n",
    );
    y += &tls_route(
        "wild",
        "2024-01-02T00:00:00Z",
        "  parentRefs: [{name: gw}]\n  hostnames: ['*.example.com']\n  rules: [{backendRefs: [{name: b, port: 8443}]}]\n",
    );
    let snap = snapshot(&y);
    let port = &snap.ports[&8443];
    assert_eq!(port.protocol, ListenerProtocol::TlsPassthrough);
    assert!(port.tls.is_none(), "passthrough never terminates");
    assert!(port.listeners.any.is_none() && port.listeners.exact.is_empty());
    let pick = |sni| route_on(&snap, 8443, sni).map(|r| r.route.name.clone());
    assert_eq!(pick(Some("a.example.com")).as_deref(), Some("exact"));
    assert_eq!(pick(Some("x.example.com")).as_deref(), Some("wild"));
    assert_eq!(pick(Some("example.com")), None);
    assert_eq!(pick(Some("other.org")), None);
    assert_eq!(pick(None), None, "no SNI, no route with hostname");
    let a = route_on(&snap, 8443, Some("a.example.com")).unwrap();
    assert_eq!(backends(a), vec![(1, "127.0.0.1:9001".to_string())]);
    for name in ["exact", "wild"] {
        assert_eq!(
            route_condition(&snap, "TLSRoute", name, "Accepted"),
            ("True".into(), "Accepted".into())
        );
    }
    let l = &snap.status.gateways[0].listeners[0];
    assert_eq!(l.attached_routes, 2);
    assert_eq!(
        l.supported_kinds,
        vec!["gateway.networking.k8s.io/TLSRoute".to_string()]
    );
}

#[test]
fn listener_isolation_and_hostname_intersection() {
    let mut y = gateway(&[
        "{name: wild, port: 8443, protocol: TLS, hostname: '*.example.com', tls: {mode: Passthrough}}",
        "{name: foo, port: 8443, protocol: TLS, hostname: foo.example.com, tls: {mode: Passthrough}}",
    ]);
    y += &service("infra", "a", 9001);
    // No hostnames: the route takes the listener's hostname.
    y += &tls_route(
        "any",
        "2024-01-01T00:00:00Z",
        "  parentRefs: [{name: gw, sectionName: wild}]\n  rules: [{backendRefs: [{name: a, port: 8443}]}]\n",
    );
    // Does not intersect the listener's hostname.
    y += &tls_route(
        "elsewhere",
        "2024-01-01T00:00:00Z",
        "  parentRefs: [{name: gw, sectionName: foo}]\n  hostnames: [bar.example.com]\n  rules: [{backendRefs: [{name: a, port: 8443}]}]\n",
    );
    let snap = snapshot(&y);
    let pick = |sni| route_on(&snap, 8443, Some(sni)).map(|r| r.route.name.clone());
    assert_eq!(pick("x.example.com").as_deref(), Some("any"));
    // foo.example.com selects listener `foo`, which has no route: refused,
    // although the wildcard listener's route would cover the name.
    assert_eq!(pick("foo.example.com"), None);
    assert_eq!(
        route_condition(&snap, "TLSRoute", "elsewhere", "Accepted"),
        ("False".into(), "NoMatchingListenerHostname".into())
    );
}

#[test]
fn a_hostname_claimed_twice_goes_to_the_oldest_route() {
    let mut y = gateway(&["{name: tls, port: 8443, protocol: TLS, tls: {mode: Passthrough}}"]);
    y += &service("infra", "a", 9001);
    y += &service("infra", "b", 9002);
    y += &tls_route(
        "newer",
        "2024-03-01T00:00:00Z",
        "  parentRefs: [{name: gw}]\n  hostnames: [db.example.com]\n  rules: [{backendRefs: [{name: b, port: 8443}]}]\n",
    );
    y += &tls_route(
        "older",
        "2024-01-01T00:00:00Z",
        "  parentRefs: [{name: gw}]\n  hostnames: [db.example.com]\n  rules: [{backendRefs: [{name: a, port: 8443}]}]\n",
    );
    let snap = snapshot(&y);
    let r = route_on(&snap, 8443, Some("db.example.com")).unwrap();
    assert_eq!(r.route.name, "older");
}

#[test]
fn tcp_routes_carry_weights_and_invalid_backends_keep_their_share() {
    let mut y = gateway(&["{name: tcp, port: 9000, protocol: TCP}"]);
    y += &service("infra", "a", 9001);
    y += &service("infra", "b", 9002);
    y += &tcp_route(
        "split",
        "  parentRefs: [{name: gw, port: 9000}]\n  rules:\n  - backendRefs: [{name: a, port: 8443, weight: 3}, {name: b, port: 8443, weight: 1}, {name: missing, port: 8443, weight: 1}]\n",
    );
    let snap = snapshot(&y);
    assert_eq!(snap.ports[&9000].protocol, ListenerProtocol::Tcp);
    let r = route_on(&snap, 9000, None).unwrap();
    assert_eq!(r.kind, "TCPRoute");
    assert_eq!(r.total_weight, 5);
    assert_eq!(
        backends(r),
        vec![
            (3, "127.0.0.1:9001".to_string()),
            (1, "127.0.0.1:9002".to_string()),
            (1, "-".to_string())
        ]
    );
    // TCP ignores the SNI entirely.
    assert!(route_on(&snap, 9000, Some("whatever.example")).is_some());
    assert_eq!(
        route_condition(&snap, "TCPRoute", "split", "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        route_condition(&snap, "TCPRoute", "split", "ResolvedRefs"),
        ("False".into(), "BackendNotFound".into())
    );
}

#[test]
fn routes_and_listeners_of_the_wrong_protocol_are_refused_with_reasons() {
    let mut y = gateway(&[
        "{name: http, port: 80, protocol: HTTP}",
        "{name: tls, port: 8443, protocol: TLS, tls: {mode: Passthrough}}",
        "{name: tcp, port: 9000, protocol: TCP}",
        "{name: terminate, port: 8444, protocol: TLS, tls: {mode: Terminate}}",
        "{name: udp, port: 53, protocol: UDP}",
        "{name: kinds, port: 8445, protocol: TLS, tls: {mode: Passthrough}, allowedRoutes: {kinds: [{kind: HTTPRoute}, {kind: TLSRoute}]}}",
    ]);
    y += &service("infra", "a", 9001);
    y += &tls_route(
        "on-http",
        "2024-01-01T00:00:00Z",
        "  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{backendRefs: [{name: a, port: 8443}]}]\n",
    );
    y += &tcp_route(
        "on-tls",
        "  parentRefs: [{name: gw, sectionName: tls}]\n  rules: [{backendRefs: [{name: a, port: 8443}]}]\n",
    );
    y += "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: infra}\nspec:\n  parentRefs: [{name: gw, sectionName: tcp}]\n  rules: [{backendRefs: [{name: a, port: 8443}]}]\n";
    let snap = snapshot(&y);
    for (kind, name) in [
        ("TLSRoute", "on-http"),
        ("TCPRoute", "on-tls"),
        ("HTTPRoute", "web"),
    ] {
        assert_eq!(
            route_condition(&snap, kind, name, "Accepted"),
            ("False".into(), "NotAllowedByListeners".into()),
            "{kind} {name}"
        );
    }
    assert!(route_on(&snap, 9000, None).is_none());
    assert_eq!(
        listener_condition(&snap, "terminate", "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
    assert_eq!(
        listener_condition(&snap, "udp", "Accepted"),
        ("False".into(), "UnsupportedProtocol".into())
    );
    assert_eq!(
        listener_condition(&snap, "kinds", "ResolvedRefs"),
        ("False".into(), "InvalidRouteKinds".into())
    );
    let kinds = &snap.status.gateways[0].listeners[5];
    assert_eq!(
        kinds.supported_kinds,
        vec!["gateway.networking.k8s.io/TLSRoute".to_string()]
    );
    assert!(!snap.ports.contains_key(&8444) && !snap.ports.contains_key(&53));
    assert_eq!(
        listener_condition(&snap, "tcp", "Programmed"),
        ("True".into(), "Programmed".into())
    );
    // A TLS listener with routes of no kind still binds: every connection is refused.
    assert!(snap.ports[&8445].listeners.l4.is_some());
}

#[test]
fn cross_namespace_backends_need_a_grant_from_the_route_kind() {
    let mut y = gateway(&["{name: tcp, port: 9000, protocol: TCP}"]);
    y += &service("data", "db", 9001);
    y += &tcp_route(
        "db",
        "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: db, namespace: data, port: 8443}]}]\n",
    );
    let grant = |from_kind: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: data}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: infra}}]\n  to: [{{group: '', kind: Service}}]\n"
        )
    };
    let snap = snapshot(&(y.clone() + &grant("HTTPRoute")));
    assert_eq!(
        route_condition(&snap, "TCPRoute", "db", "ResolvedRefs"),
        ("False".into(), "RefNotPermitted".into())
    );
    assert_eq!(
        backends(route_on(&snap, 9000, None).unwrap()),
        vec![(1, "-".to_string())]
    );
    let snap = snapshot(&(y + &grant("TCPRoute")));
    assert_eq!(
        route_condition(&snap, "TCPRoute", "db", "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
    assert_eq!(
        backends(route_on(&snap, 9000, None).unwrap()),
        vec![(1, "127.0.0.1:9001".to_string())]
    );
}
