use std::time::{Duration, Instant};

use super::fixtures::*;
use crate::snapshot::{BackendTarget, Filter, PathModifier};
use crate::TranslateOptions;

fn route(ns: &str, name: &str, body: &str) -> String {
    format!("\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}")
}

fn base() -> String {
    let mut y = gateway("infra", "gw", &["{name: http, port: 80, protocol: HTTP}"]);
    y += &service("infra", "v1", 8080, 9001);
    y += &service("infra", "v2", 8080, 9002);
    y += &service("infra", "v3", 8080, 9003);
    y
}

#[test]
fn precedence_across_routes_and_rules() {
    let mut y = base();
    y += &route(
        "infra",
        "a",
        r#"
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match/}}]
    backendRefs: [{name: v2, port: 8080}]
"#,
    );
    y += &route(
        "infra",
        "b",
        r#"
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: Exact, value: /match}}]
    backendRefs: [{name: v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match}, headers: [{name: X-Version, value: two}]}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: RegularExpression, value: "/match/[0-9]+"}}]
    backendRefs: [{name: v1, port: 8080}]
"#,
    );
    let snap = snapshot(&y);
    let b = |r: Req<'_>| pick(&snap, &r).map(backends);
    assert_eq!(b(req("", "/match")), Some(vec!["v3".into()]));
    assert_eq!(b(req("", "/match/x")), Some(vec!["v2".into()]));
    assert_eq!(b(req("", "/matchx")), Some(vec!["v1".into()]));
    // Regex after Exact, before any prefix.
    assert_eq!(b(req("", "/match/12")), Some(vec!["v1".into()]));
    // Equal prefix length: more header matches wins, across routes.
    let mut r = req("", "/match/y");
    r.headers.push(("x-version", "two"));
    // "/match" prefix with a header vs "/match" prefix (trailing slash stored trimmed) without:
    assert_eq!(b(r), Some(vec!["v1".into()]));
}

#[test]
fn older_route_wins_ties_then_name() {
    let mut y = base();
    y += &route(
        "infra",
        "zzz-old",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: v1, port: 8080}]\n",
    );
    y = y.replace(
        "name: zzz-old, namespace: infra}",
        "name: zzz-old, namespace: infra, creationTimestamp: '2020-01-01T00:00:00Z'}",
    );
    y += &route(
        "infra",
        "aaa-new",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: v2, port: 8080}]\n",
    );
    y = y.replace(
        "name: aaa-new, namespace: infra}",
        "name: aaa-new, namespace: infra, creationTimestamp: '2021-01-01T00:00:00Z'}",
    );
    y += &route(
        "infra",
        "bbb-new",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: v3, port: 8080}]\n",
    );
    y = y.replace(
        "name: bbb-new, namespace: infra}",
        "name: bbb-new, namespace: infra, creationTimestamp: '2021-01-01T00:00:00Z'}",
    );
    let snap = snapshot(&y);
    assert_eq!(backends(pick(&snap, &req("", "/")).unwrap()), vec!["v1"]);
}

#[test]
fn wildcard_route_is_copied_into_more_specific_host_groups() {
    let mut y = base();
    y += &route("infra", "wild", "  parentRefs: [{name: gw}]\n  hostnames: ['*.example.com']\n  rules:\n  - backendRefs: [{name: v1, port: 8080}]\n");
    y += &route("infra", "exact", "  parentRefs: [{name: gw}]\n  hostnames: [foo.example.com]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /only}}]\n    backendRefs: [{name: v2, port: 8080}]\n");
    y += &route("infra", "any", "  parentRefs: [{name: gw}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /any}}]\n    backendRefs: [{name: v3, port: 8080}]\n");
    let snap = snapshot(&y);
    let b = |h: &str, p: &str| pick(&snap, &req(h, p)).map(backends);
    assert_eq!(b("foo.example.com", "/only"), Some(vec!["v2".into()]));
    assert_eq!(b("foo.example.com", "/other"), Some(vec!["v1".into()]));
    // A longer matching path in a less specific host group still loses to the exact host's rules?
    // No: hostname specificity comes first, then path; /any is only in the `any` route.
    assert_eq!(b("foo.example.com", "/any"), Some(vec!["v1".into()]));
    assert_eq!(b("bar.example.com", "/only"), Some(vec!["v1".into()]));
    assert_eq!(b("other.org", "/any"), Some(vec!["v3".into()]));
    assert_eq!(b("other.org", "/"), None);
    assert_eq!(b("example.com", "/"), None);
}

#[test]
fn listener_isolation_and_conflicts() {
    let mut y = gateway(
        "infra",
        "gw",
        &[
            "{name: any, port: 80, protocol: HTTP}",
            "{name: wild, port: 80, protocol: HTTP, hostname: '*.example.com'}",
            "{name: dup, port: 80, protocol: HTTP, hostname: '*.example.com'}",
            "{name: tls, port: 443, protocol: HTTPS}",
            "{name: udp, port: 53, protocol: UDP}",
        ],
    );
    y += &service("infra", "v1", 8080, 9001);
    y += &service("infra", "v2", 8080, 9002);
    y += &route("infra", "r-any", "  parentRefs: [{name: gw, sectionName: any}]\n  rules:\n  - backendRefs: [{name: v1, port: 8080}]\n");
    y += &route("infra", "r-wild", "  parentRefs: [{name: gw, sectionName: wild}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /w}}]\n    backendRefs: [{name: v2, port: 8080}]\n");
    y += &route("infra", "r-tls", "  parentRefs: [{name: gw, sectionName: tls}]\n  rules:\n  - backendRefs: [{name: v2, port: 8080}]\n");
    let snap = snapshot(&y);
    assert_eq!(
        backends(pick(&snap, &req("a.example.com", "/w")).unwrap()),
        vec!["v2"]
    );
    // Isolation: no fall-through to the catch-all listener.
    assert!(pick(&snap, &req("a.example.com", "/")).is_none());
    assert_eq!(
        backends(pick(&snap, &req("other", "/")).unwrap()),
        vec!["v1"]
    );
    assert!(!snap.ports.contains_key(&443));

    let gw = &snap.status.gateways[0];
    let cond = |l: &str, t: &str| {
        let l = gw.listeners.iter().find(|x| x.name == l).unwrap();
        let c = l.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(
        cond("dup", "Conflicted"),
        ("True".into(), "HostnameConflict".into())
    );
    assert_eq!(cond("dup", "Programmed").0, "False");
    assert_eq!(
        cond("wild", "Conflicted"),
        ("False".into(), "NoConflicts".into())
    );
    // HTTPS without certificateRefs: accepted, but its refs do not resolve and it is
    // not programmed (port 443 is absent above).
    assert_eq!(
        cond("tls", "ResolvedRefs"),
        ("False".into(), "InvalidCertificateRef".into())
    );
    assert_eq!(cond("tls", "Programmed").0, "False");
    assert_eq!(
        cond("udp", "Accepted"),
        ("False".into(), "UnsupportedProtocol".into())
    );
    assert_eq!(
        cond("any", "Programmed"),
        ("True".into(), "Programmed".into())
    );
    let gw_accepted = gw
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .unwrap();
    assert_eq!(
        (gw_accepted.status.as_str(), gw_accepted.reason.as_str()),
        ("True", "ListenersNotValid")
    );
    assert_eq!(attached_routes(&snap, "infra/gw", "any"), 1);
    assert_eq!(attached_routes(&snap, "infra/gw", "tls"), 0);
    let tls = route_conditions(&snap, "infra/r-tls", "infra/gw");
    assert_eq!(
        condition_of(&tls, "Accepted"),
        ("False".into(), "NotAllowedByListeners".into())
    );
    let json = serde_json::to_string(&snap.status).unwrap();
    assert!(json.contains("\"attachedRoutes\":1"), "{json}");
}

#[test]
fn allowed_routes_selector_and_parent_refs() {
    let mut y = gateway(
        "infra",
        "gw",
        &["{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}, matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [blocked]}]}}}}"],
    );
    y += "\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: apps, labels: {team: a}}\n";
    y += "\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: blocked, labels: {team: a}}\n";
    y += &service("apps", "v1", 8080, 9001);
    y += &service("blocked", "v1", 8080, 9001);
    y += &route("apps", "ok", "  parentRefs: [{name: gw, namespace: infra, port: 80}]\n  rules:\n  - backendRefs: [{name: v1, port: 8080}]\n");
    y += &route("blocked", "no", "  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - backendRefs: [{name: v1, port: 8080}]\n");
    y += &route(
        "nolabels",
        "no2",
        "  parentRefs: [{name: gw, namespace: infra}]\n  rules: [{}]\n",
    );
    y += &route(
        "apps",
        "wrongsection",
        "  parentRefs: [{name: gw, namespace: infra, sectionName: nope}]\n  rules: [{}]\n",
    );
    y += &route(
        "apps",
        "other-gateway",
        "  parentRefs: [{name: not-ours, namespace: infra}]\n  rules: [{}]\n",
    );
    let snap = snapshot(&y);
    let acc = |r: &str| condition_of(&route_conditions(&snap, r, "infra/gw"), "Accepted");
    assert_eq!(acc("apps/ok"), ("True".into(), "Accepted".into()));
    assert_eq!(
        acc("blocked/no"),
        ("False".into(), "NotAllowedByListeners".into())
    );
    assert_eq!(
        acc("nolabels/no2"),
        ("False".into(), "NotAllowedByListeners".into())
    );
    assert_eq!(
        acc("apps/wrongsection"),
        ("False".into(), "NoMatchingParent".into())
    );
    assert!(snap
        .status
        .routes
        .iter()
        .all(|r| r.route.name != "other-gateway"));
    assert_eq!(attached_routes(&snap, "infra/gw", "http"), 1);
    let parent = &snap
        .status
        .routes
        .iter()
        .find(|r| r.route.name == "ok")
        .unwrap()
        .parents[0];
    assert_eq!(parent.controller_name, "ringmesh.io/gateway-controller");
    assert_eq!(parent.parent_ref.port, Some(80));
}

#[test]
fn backends_cross_namespace_missing_and_kinds() {
    let mut y = base();
    y += &service("other", "granted", 8080, 9100);
    y += &service("other", "secret", 8080, 9101);
    y += r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service, name: granted}]
"#;
    let rule = |path: &str, refs: &str| {
        format!(
            "  - matches: [{{path: {{type: Exact, value: {path}}}}}]\n    backendRefs: {refs}\n"
        )
    };
    let mut body = String::from("  parentRefs: [{name: gw}]\n  rules:\n");
    body += &rule(
        "/granted",
        "[{name: granted, namespace: other, port: 8080}]",
    );
    body += &rule("/secret", "[{name: secret, namespace: other, port: 8080}]");
    body += &rule("/missing", "[{name: nope, port: 8080}]");
    body += &rule("/kind", "[{name: x, kind: ConfigMap, port: 8080}]");
    body += &rule(
        "/weights",
        "[{name: v1, port: 8080, weight: 3}, {name: v2, port: 8080, weight: 0}]",
    );
    body += "  - matches: [{path: {type: Exact, value: /none}}]\n";
    y += &route("infra", "r", &body);
    let snap = snapshot(&y);
    let target = |p: &str| {
        let rule = pick(&snap, &req("", p)).unwrap();
        match &rule.backends[0].target {
            BackendTarget::Cluster(c) => format!("{} {:?}", c.name, c.endpoints),
            BackendTarget::Invalid { reason } => format!("invalid {reason}"),
        }
    };
    assert_eq!(target("/granted"), "other/granted:8080 [127.0.0.1:9100]");
    assert!(
        target("/secret").starts_with("invalid RefNotPermitted"),
        "{}",
        target("/secret")
    );
    assert!(target("/missing").starts_with("invalid BackendNotFound"));
    assert!(target("/kind").starts_with("invalid InvalidKind"));
    let w = pick(&snap, &req("", "/weights")).unwrap();
    assert_eq!(
        (w.backends.len(), w.total_weight, w.backends[1].weight),
        (2, 3, 0)
    );
    assert!(pick(&snap, &req("", "/none")).unwrap().backends.is_empty());
    let conds = route_conditions(&snap, "infra/r", "infra/gw");
    assert_eq!(
        condition_of(&conds, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        condition_of(&conds, "ResolvedRefs"),
        ("False".into(), "RefNotPermitted".into())
    );
}

#[test]
fn endpoints_from_several_slices_ports_by_name_and_readiness() {
    let mut y = gateway("infra", "gw", &["{name: http, port: 80, protocol: HTTP}"]);
    y += r#"
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: infra}
spec:
  ports: [{name: http, port: 8080, targetPort: 3000}, {name: admin, port: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-a, namespace: infra, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: admin, port: 7000}, {name: http, port: 4001}]
endpoints:
- addresses: [127.0.0.1]
- addresses: [127.0.0.9]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-b, namespace: infra, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 4002}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: unrelated, namespace: infra, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{name: http, port: 5000}]
endpoints: [{addresses: [127.0.0.1]}]
"#;
    y += &route(
        "infra",
        "r",
        "  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: echo, port: 8080}]\n",
    );
    let snap = snapshot(&y);
    let rule = pick(&snap, &req("", "/")).unwrap();
    let BackendTarget::Cluster(c) = &rule.backends[0].target else {
        panic!()
    };
    let eps: Vec<String> = c.endpoints.iter().map(|e| e.to_string()).collect();
    assert_eq!(eps, vec!["127.0.0.1:4001", "127.0.0.1:4002"]);
}

#[test]
fn service_entry_backends_by_hostname_and_by_name() {
    let mut y = gateway("infra", "gw", &["{name: http, port: 80, protocol: HTTP}"]);
    y += r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: infra}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {http: 9500}
  - address: 127.0.0.2
"#;
    y += &route(
        "infra",
        "r",
        r#"
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /host}}]
    backendRefs: [{group: networking.istio.io, kind: Hostname, name: ext.example.com, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /name}}]
    backendRefs: [{group: networking.istio.io, kind: ServiceEntry, name: ext, port: 80}]
"#,
    );
    let snap = snapshot(&y);
    for p in ["/host", "/name"] {
        let rule = pick(&snap, &req("", p)).unwrap();
        let BackendTarget::Cluster(c) = &rule.backends[0].target else {
            panic!("{p}")
        };
        let eps: Vec<String> = c.endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(eps, vec!["127.0.0.1:9500", "127.0.0.2:80"], "{p}");
    }
}

#[test]
fn invalid_rules_are_dropped_with_status() {
    let mut y = base();
    y += &route(
        "infra",
        "partly",
        r#"
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /good}}]
    backendRefs: [{name: v1, port: 8080}]
"#,
    );
    y += &route(
        "infra",
        "all-bad",
        r#"
  parentRefs: [{name: gw}]
  rules:
  - matches: [{headers: [{type: RegularExpression, name: x, value: "[z-a]"}]}]
    timeouts: {request: "10"}
"#,
    );
    let snap = snapshot(&y);
    assert!(pick(&snap, &req("", "/good")).is_some());
    let partly = route_conditions(&snap, "infra/partly", "infra/gw");
    assert_eq!(condition_of(&partly, "Accepted").0, "True");
    assert_eq!(
        condition_of(&partly, "PartiallyInvalid"),
        ("True".into(), "UnsupportedValue".into())
    );
    let bad = route_conditions(&snap, "infra/all-bad", "infra/gw");
    assert_eq!(
        condition_of(&bad, "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
    assert_eq!(attached_routes(&snap, "infra/gw", "http"), 1);
}

#[test]
fn filters_timeouts_and_retry() {
    let mut y = base();
    y += &route(
        "infra",
        "r",
        r#"
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix/}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Set, value: a}], add: [{name: X-Add, value: b}], remove: [X-Remove]}
    - type: URLRewrite
      urlRewrite: {hostname: rewritten, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: v2, port: 8080}, fraction: {numerator: 1, denominator: 4}}
    - type: CORS
      cors: {allowOrigins: ['https://*.bar.com'], allowMethods: [GET, OPTIONS], allowCredentials: true}
    backendRefs:
    - name: v1
      port: 8080
      filters:
      - type: ResponseHeaderModifier
        responseHeaderModifier: {set: [{name: X-Backend, value: v1}]}
    timeouts: {request: 1h2m, backendRequest: 500ms}
    retry: {codes: [500, 503], attempts: 2, backoff: 100ms}
  - matches: [{path: {type: Exact, value: /redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /x}}
  - matches: [{path: {type: Exact, value: /zero}}]
    timeouts: {request: 0s}
    backendRefs: [{name: v1, port: 8080}]
"#,
    );
    let snap = snapshot(&y);
    let r = pick(&snap, &req("", "/prefix")).unwrap();
    assert_eq!(r.filters.len(), 4);
    let Filter::RequestHeaders(h) = &r.filters[0] else {
        panic!()
    };
    assert_eq!(h.remove, vec!["x-remove"]);
    let Filter::UrlRewrite(u) = &r.filters[1] else {
        panic!()
    };
    assert!(matches!(&u.path, Some(PathModifier::ReplacePrefixMatch(p)) if p == "/new"));
    let Filter::Mirror(m) = &r.filters[2] else {
        panic!()
    };
    assert_eq!((m.target.service.name.as_str(), m.percent), ("v2", 25.0));
    let Filter::Cors(c) = &r.filters[3] else {
        panic!()
    };
    assert_eq!((c.allow_credentials, c.max_age_seconds), (true, Some(5)));
    assert_eq!(r.backends[0].filters.len(), 1);
    assert_eq!(r.timeouts.request, Some(Duration::from_secs(3720)));
    assert_eq!(r.timeouts.backend_request, Some(Duration::from_millis(500)));
    let retry = r.retry.as_ref().unwrap();
    assert_eq!(
        (retry.codes.clone(), retry.attempts, retry.backoff),
        (vec![500, 503], 2, Some(Duration::from_millis(100)))
    );
    let red = pick(&snap, &req("", "/redirect")).unwrap();
    let Filter::Redirect(rd) = &red.filters[0] else {
        panic!()
    };
    assert_eq!(
        (rd.status, rd.port, rd.scheme.as_deref()),
        (302, Some(8443), Some("https"))
    );
    assert!(red.backends.is_empty());
    assert_eq!(
        pick(&snap, &req("", "/zero")).unwrap().timeouts.request,
        None
    );
}

#[test]
fn gateways_share_ports_and_class_and_selection_filter() {
    let mut y = gateway(
        "infra",
        "a",
        &["{name: http, port: 80, protocol: HTTP, hostname: a.com}"],
    );
    y += &gateway(
        "infra",
        "b",
        &[
            "{name: http, port: 80, protocol: HTTP, hostname: b.com}",
            "{name: alt, port: 8080, protocol: HTTP}",
        ],
    );
    y += &gateway(
        "infra",
        "c",
        &["{name: http, port: 80, protocol: HTTP, hostname: a.com}"],
    );
    y += "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: foreign, namespace: infra}\nspec:\n  gatewayClassName: other\n  listeners: [{name: http, port: 81, protocol: HTTP}]\n";
    let snap = snapshot(&y);
    assert_eq!(
        snap.ports.keys().copied().collect::<Vec<_>>(),
        vec![80, 8080]
    );
    let p80 = &snap.ports[&80];
    assert_eq!(p80.listeners.exact["a.com"].gateway.name, "a");
    assert_eq!(p80.listeners.exact["b.com"].gateway.name, "b");
    let c = snap
        .status
        .gateways
        .iter()
        .find(|g| g.gateway.name == "c")
        .unwrap();
    assert_eq!(
        c.listeners[0]
            .conditions
            .iter()
            .find(|x| x.type_ == "Conflicted")
            .unwrap()
            .status,
        "True"
    );
    assert!(snap
        .status
        .gateways
        .iter()
        .all(|g| g.gateway.name != "foreign"));

    let only_c = TranslateOptions {
        gateway: Some(parse_ref("infra/c")),
        ..Default::default()
    };
    let snap = snapshot_with(&y, &only_c);
    assert_eq!(snap.status.gateways.len(), 1);
    assert_eq!(snap.ports[&80].listeners.exact["a.com"].gateway.name, "c");
}

#[test]
fn ten_thousand_routes_translate_quickly() {
    let mut y = base();
    for i in 0..10_000 {
        y += &format!(
            "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: infra}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [h{i}.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}]\n    backendRefs: [{{name: v1, port: 8080}}]\n"
        );
    }
    y += &route("infra", "wild", "  parentRefs: [{name: gw}]\n  hostnames: ['*.example.com']\n  rules:\n  - backendRefs: [{name: v2, port: 8080}]\n");
    let loaded = mesh_config::load_str("big.yaml", &y);
    assert!(loaded.errors.is_empty());
    let start = Instant::now();
    let snap = crate::translate(&loaded.resources, &TranslateOptions::default());
    let took = start.elapsed();
    assert_eq!(
        backends(pick(&snap, &req("h77.example.com", "/p77")).unwrap()),
        vec!["v1"]
    );
    assert_eq!(
        backends(pick(&snap, &req("h77.example.com", "/p78")).unwrap()),
        vec!["v2"]
    );
    // Debug builds are ~10x slower than release; the budget is for release.
    assert!(took < Duration::from_secs(5), "translation took {took:?}");
    eprintln!("10k routes translated in {took:?}");
}

#[test]
fn allowed_route_kinds_and_loader_errors_in_status() {
    let mut y = gateway(
        "infra",
        "gw",
        &[
            "{name: udp-only, port: 80, protocol: HTTP, hostname: g.com, allowedRoutes: {kinds: [{kind: UDPRoute}]}}",
            "{name: mixed, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}, {kind: TCPRoute}]}}",
        ],
    );
    y += &route("infra", "r", "  parentRefs: [{name: gw}]\n  rules: [{}]\n");
    y += "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: infra}\nspec: {ports: [{port: eighty}]}\n";
    let loaded = mesh_config::load_str("mixed.yaml", &y);
    assert_eq!(loaded.errors.len(), 1);
    let snap = crate::translate_loaded(&loaded, &TranslateOptions::default());
    assert_eq!(snap.status.config_errors.len(), 1);
    assert!(
        snap.status.config_errors[0]
            .starts_with("mixed.yaml: Service infra/broken: spec.ports[0].port: "),
        "{:?}",
        snap.status.config_errors
    );
    let gw = &snap.status.gateways[0];
    let grpc = &gw.listeners[0];
    assert!(grpc.supported_kinds.is_empty());
    let rr = grpc
        .conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .unwrap();
    assert_eq!(
        (rr.status.as_str(), rr.reason.as_str()),
        ("False", "InvalidRouteKinds")
    );
    assert_eq!(
        gw.listeners[1].supported_kinds,
        vec!["gateway.networking.k8s.io/HTTPRoute"]
    );
    assert_eq!(attached_routes(&snap, "infra/gw", "udp-only"), 0);
    assert_eq!(attached_routes(&snap, "infra/gw", "mixed"), 1);
    // The route has no backends: it matches and the engine answers 500.
    assert!(pick(&snap, &req("x.org", "/")).unwrap().backends.is_empty());
    assert!(pick(&snap, &req("g.com", "/")).is_none());
}
