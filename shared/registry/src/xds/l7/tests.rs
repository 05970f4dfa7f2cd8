//! YAML → Snapshot vs YAML → Proxy → (bytes) → Snapshot: the same snapshot
//! (structurally, as JSON) and the same routing decisions; golden checks on
//! encoded fields; unusable resources are errors, not panics.

use std::path::Path;

use mesh_api::prost::Message as _;
use mesh_api::ringmesh::l7::v1 as pb;

use super::*;
use crate::snapshot::{BackendTarget, Filter, RouteRule, Snapshot};
use crate::{translate_loaded, TranslateOptions};

fn cert(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn secret(name: &str, (crt, key): &(String, String)) -> String {
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

/// One Gateway with every listener kind, routes using every feature the
/// Proxy carries, and a second Gateway on its own port.
const CONFIG: &str = include_str!("tests_fixture.yaml");

struct Fixture {
    loaded: mesh_config::Loaded,
    ca_file: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

impl Fixture {
    fn new() -> Self {
        // The CA bundle subset v2's DestinationRule `tls` names (SIMPLE).
        // One file per fixture: tests run in parallel.
        static FIXTURES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FIXTURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ca_file =
            std::env::temp_dir().join(format!("ringmesh-l7-ca-{}-{n}.pem", std::process::id()));
        std::fs::write(&ca_file, cert(&["ca.example.com"]).0).unwrap();
        let mut yaml = CONFIG.replace("@CA_FILE@", &ca_file.display().to_string());
        yaml += &secret("cert-s", &cert(&["s.example.com"]));
        yaml += &secret("cert-wild", &cert(&["*.example.com"]));
        let loaded = mesh_config::load_strs(&[(Path::new("t.yaml"), &yaml)]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        Fixture { loaded, ca_file }
    }

    fn direct(&self, gateway: &ObjectRef) -> Snapshot {
        let options = TranslateOptions {
            gateway: Some(gateway.clone()),
            ..Default::default()
        };
        let snapshot = translate_loaded(&self.loaded, &options);
        assert!(snapshot.status.config_errors.is_empty());
        snapshot
    }

    fn proxy(&self, gateway: &ObjectRef) -> pb::Proxy {
        proxy_of(&self.direct(gateway), gateway, &self.loaded.resources).unwrap()
    }

    /// Through the wire: encoded, decoded, rebuilt.
    fn via_proxy(&self, gateway: &ObjectRef) -> Snapshot {
        let any = to_any(&self.proxy(gateway));
        let proxy = decode("infra/gw", &any).unwrap();
        snapshot_of(&proxy).unwrap()
    }
}

fn gw() -> ObjectRef {
    ObjectRef {
        namespace: "infra".into(),
        name: "gw".into(),
    }
}

/// The first place two JSON values differ, for a readable failure.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .find_map(|(k, p)| match y.get(k) {
                Some(q) => first_difference(p, q, &format!("{path}.{k}")),
                None => Some(format!("{path}.{k}: only before the round trip")),
            })
            .or_else(|| {
                y.keys()
                    .find(|k| !x.contains_key(*k))
                    .map(|k| format!("{path}.{k}: only after the round trip"))
            }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

fn assert_same_ports(direct: &Snapshot, via: &Snapshot) {
    let (a, b) = (ports_json(direct), ports_json(via));
    if let Some(difference) = first_difference(&a, &b, "ports") {
        panic!("the round trip changed the snapshot: {difference}");
    }
}

fn ports_json(s: &Snapshot) -> serde_json::Value {
    // serde_json's Value sorts object keys, so HashMap order does not matter.
    serde_json::to_value(&s.ports).unwrap()
}

#[test]
fn the_round_trip_rebuilds_the_same_snapshot() {
    let f = Fixture::new();
    let direct = f.direct(&gw());
    let via = f.via_proxy(&gw());
    assert_same_ports(&direct, &via);
    assert_eq!(
        direct.ports.keys().collect::<Vec<_>>(),
        vec![&80, &82, &443, &8443, &9000],
        "only this gateway's ports"
    );
    // HTTPS: the same certificate hostnames in the same order (default certificate).
    let tls = |s: &Snapshot| s.ports[&443].tls.as_ref().unwrap().hostnames.clone();
    assert_eq!(tls(&direct), tls(&via));
    assert_eq!(tls(&via), vec!["s.example.com", "*.example.com"]);
}

/// A request as the engine sees it.
struct Req {
    port: u16,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const fn get(port: u16, host: &'static str, path: &'static str) -> Req {
    Req {
        port,
        host,
        method: "GET",
        path,
        headers: &[],
    }
}

fn pick<'s>(snap: &'s Snapshot, r: &Req) -> Option<(&'s str, &'s RouteRule)> {
    let port = snap.ports.get(&r.port)?;
    let listener = port.listeners.select(r.host)?;
    let table = listener.routes.select(r.host)?;
    let (path, query) = r.path.split_once('?').unwrap_or((r.path, ""));
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let entry = table.entries.iter().find(|e| {
        let m = &e.matcher;
        m.path.matches(path)
            && m.method.as_deref().is_none_or(|x| x == r.method)
            && m.headers.iter().all(|h| {
                r.headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&h.name))
                    .is_some_and(|(_, v)| h.value.matches(v))
            })
            && m.query_params.iter().all(|q| {
                params
                    .iter()
                    .find(|(n, _)| *n == q.name)
                    .is_some_and(|(_, v)| q.value.matches(v))
            })
    })?;
    Some((listener.name.as_str(), &entry.rule))
}

/// Everything the engine acts on, as text.
fn decision(snap: &Snapshot, r: &Req) -> String {
    let Some((listener, rule)) = pick(snap, r) else {
        return "404".into();
    };
    let backends: Vec<String> = rule
        .backends
        .iter()
        .map(|b| match &b.target {
            BackendTarget::Cluster(c) => format!(
                "{}x{} {:?} {:?} lb={:?}",
                c.name, b.weight, c.endpoints, c.protocol, c.policy.load_balancer
            ),
            BackendTarget::Invalid { reason } => format!("invalid x{}: {reason}", b.weight),
        })
        .collect();
    let filters: Vec<String> = rule
        .filters
        .iter()
        .map(|f| match f {
            Filter::Mirror(m) => format!("mirror {} {}%", m.target.name, m.percent),
            other => format!("{other:?}"),
        })
        .collect();
    format!(
        "{listener} {}#{} {backends:?} {filters:?} {:?} {:?} limit={:?}",
        rule.route,
        rule.rule_index,
        rule.timeouts,
        rule.retry,
        rule.rate_limit.as_ref().map(|l| &l.config)
    )
}

const REQUESTS: &[Req] = &[
    get(80, "a.example.com", "/"),
    get(80, "b.example.com", "/api/x"),
    Req {
        port: 80,
        host: "b.example.com",
        method: "GET",
        path: "/api/x",
        headers: &[("x-env", "canary"), ("x-user", "u42")],
    },
    Req {
        port: 80,
        host: "a.example.com",
        method: "POST",
        path: "/api/x",
        headers: &[("x-env", "canary"), ("x-user", "u42")],
    },
    get(80, "a.example.com", "/login"),
    get(80, "a.example.com", "/v2/items?page=1&sort=asc"),
    get(80, "a.example.com", "/v2/items?page=2&sort=asc"),
    get(80, "a.example.com", "/old/thing"),
    get(80, "a.example.com", "/limited"),
    get(80, "a.example.com", "/limited2/x"),
    get(80, "other.org", "/anything"),
    Req {
        port: 82,
        host: "g.org",
        method: "POST",
        path: "/echo.Echo/Say",
        headers: &[("content-type", "application/grpc")],
    },
    get(81, "a.example.com", "/"),
    get(443, "s.example.com", "/login"),
    get(443, "s.example.com", "/elsewhere"),
    get(443, "z.example.com", "/old/x"),
    get(443, "other.org", "/"),
    get(80, "vs.example.org", "/fault"),
    Req {
        port: 80,
        host: "vs.example.org",
        method: "GET",
        path: "/vx",
        headers: &[("x-tier", "gold")],
    },
    get(80, "vs.example.org", "/vx"),
];

#[test]
fn the_round_trip_keeps_every_routing_decision() {
    let f = Fixture::new();
    let direct = f.direct(&gw());
    let via = f.via_proxy(&gw());
    let mut served = 0;
    for r in REQUESTS {
        let (a, b) = (decision(&direct, r), decision(&via, r));
        assert_eq!(a, b, "{} {}{}", r.port, r.host, r.path);
        served += usize::from(a != "404");
    }
    // The set is not vacuous: most requests route somewhere, some do not.
    assert!(served >= 13, "{served}");
    assert_eq!(decision(&via, &get(81, "a.example.com", "/")), "404");
    // L4: the same route for SNIs on the passthrough port and for TCP.
    for (port, sni) in [
        (8443, Some("x.p.example.com")),
        (8443, Some("y.p.example.com")),
        (8443, None),
        (9000, None),
    ] {
        let route = |s: &Snapshot| {
            s.ports[&port]
                .listeners
                .l4
                .as_ref()
                .unwrap()
                .route(sni)
                .map(|r| format!("{r:?}"))
        };
        assert_eq!(route(&direct), route(&via), "{port} {sni:?}");
    }
    assert!(via.ports[&8443]
        .listeners
        .l4
        .as_ref()
        .unwrap()
        .route(Some("x.p.example.com"))
        .is_some());
}

#[test]
fn rules_shared_by_listeners_stay_shared() {
    let f = Fixture::new();
    let via = f.via_proxy(&gw());
    // `main` is attached to the HTTP and the HTTPS port: one rule, one rate limiter.
    let on = |port: u16, host: &'static str| {
        pick(&via, &get(port, host, "/old/x")).unwrap().1 as *const RouteRule
    };
    assert_eq!(on(80, "z.example.com"), on(443, "z.example.com"));
    let proxy = f.proxy(&gw());
    let mains = proxy
        .rules
        .iter()
        .filter(|r| r.route == "infra/main")
        .count();
    assert_eq!(mains, 4, "every rule of `main` once");
}

#[test]
fn golden_fields() {
    let f = Fixture::new();
    let proxy = f.proxy(&gw());
    assert_eq!(
        (proxy.namespace.as_str(), proxy.name.as_str()),
        ("infra", "gw")
    );
    let names: Vec<(&str, u32)> = proxy
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.port))
        .collect();
    assert_eq!(
        names,
        vec![
            ("http-a", 80),
            ("http-wild", 80),
            ("http", 80),
            ("grpc", 82),
            ("https-s", 443),
            ("https-wild", 443),
            ("pass", 8443),
            ("tcp", 9000)
        ]
    );
    let https = &proxy.listeners[4];
    assert_eq!(https.protocol, pb::ListenerProtocol::Https as i32);
    let c = https.certificate.as_ref().unwrap();
    assert!(c.cert_chain.starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert_eq!(c.source, "infra/cert-s");
    assert_eq!(https.certificate_refs, vec!["infra/cert-s"]);

    let web = proxy
        .backends
        .iter()
        .find(|b| b.name.starts_with("infra/web"))
        .unwrap();
    assert_eq!(web.service, "infra/web");
    assert_eq!(web.port, 8080);
    assert_eq!(web.endpoints[0].address, vec![10, 0, 0, 1]);
    assert_eq!(web.endpoints[0].port, 9001);
    let lb = web.policy.as_ref().unwrap().load_balancer.as_ref().unwrap();
    assert_eq!(lb.algorithm, pb::load_balancer::Algorithm::RingHash as i32);
    assert_eq!(lb.minimum_ring_size, 2048);
    assert_eq!(web.subsets.keys().collect::<Vec<_>>(), vec!["v1", "v2"]);
    let api = proxy
        .backends
        .iter()
        .find(|b| b.service == "infra/api")
        .unwrap();
    assert_eq!(api.protocol, pb::BackendProtocol::Http2 as i32);
    assert_eq!(api.endpoints[0].address.len(), 16);

    let limited = proxy
        .rules
        .iter()
        .find(|r| r.route == "infra/limited")
        .unwrap();
    let limit = limited.rate_limit.as_ref().unwrap();
    assert_eq!((limit.max_tokens, limit.tokens_per_fill), (10, 5));
    assert_eq!(
        limit.fill_interval,
        Some(mesh_api::prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000
        })
    );
    assert_eq!(
        limit.key,
        Some(pb::rate_limit::Key::Header("x-api-key".into()))
    );

    // VirtualService routes: plain string prefixes, fault injection, gRPC retry codes.
    let string_prefixes = proxy
        .listeners
        .iter()
        .flat_map(|l| &l.virtual_hosts)
        .flat_map(|h| &h.entries)
        .filter_map(|e| e.r#match.as_ref()?.path.as_ref())
        .filter(|p| p.kind == pb::path_match::Kind::StringPrefix as i32)
        .count();
    assert!(string_prefixes >= 2, "{string_prefixes}");
    let vs: Vec<&pb::RouteRule> = proxy
        .rules
        .iter()
        .filter(|r| r.route == "infra/vs")
        .collect();
    let fault = vs
        .iter()
        .flat_map(|r| &r.filters)
        .find_map(|f| match &f.kind {
            Some(pb::filter::Kind::Fault(fault)) => Some(fault),
            _ => None,
        })
        .expect("a fault filter");
    assert_eq!(
        fault.abort.as_ref().unwrap().status,
        Some(pb::fault_abort::Status::GrpcStatus(14))
    );
    let retry = vs
        .iter()
        .find_map(|r| r.retry.as_ref())
        .expect("a retry policy");
    assert_eq!(retry.retry_on_grpc_status, vec![14]);
    assert!(retry.on_connect_failure);

    // The encoded bytes: Proxy.name (field 1, length-delimited) = "gw",
    // Proxy.namespace (field 2) = "infra", first on the wire.
    let bytes = proxy.encode_to_vec();
    assert_eq!(&bytes[..11], b"\x0a\x02gw\x12\x05infra");
    // A RouteRule's request timeout is a google.protobuf.Duration in field 7.
    let main0 = proxy
        .rules
        .iter()
        .find(|r| r.route == "infra/main" && r.rule_index == 0)
        .unwrap();
    let rule_bytes = main0.encode_to_vec();
    let timeout = [0x3a, 0x02, 0x08, 0x05]; // field 7, len 2, seconds=5
    assert!(
        rule_bytes.windows(4).any(|w| w == timeout),
        "{rule_bytes:?}"
    );
}

#[test]
fn encoding_is_deterministic() {
    let f = Fixture::new();
    let a = to_any(&f.proxy(&gw()));
    let b = to_any(&f.proxy(&gw()));
    assert_eq!(a, b, "an unchanged Gateway must keep its content version");
}

#[test]
fn unusable_proxies_are_errors_naming_the_field() {
    let f = Fixture::new();
    let good = f.proxy(&gw());
    let check = |edit: &dyn Fn(&mut pb::Proxy), want: &str| {
        let mut p = good.clone();
        edit(&mut p);
        let err = snapshot_of(&p).map(|_| ()).unwrap_err();
        assert!(err.contains(want), "{err}");
    };
    check(
        &|p| p.listeners[0].virtual_hosts[0].entries[0].rule = 999,
        "no rule 999",
    );
    check(
        &|p| p.backends[0].endpoints[0].address = vec![1, 2, 3],
        "3 bytes",
    );
    check(&|p| p.listeners[4].certificate = None, "has no certificate");
    check(
        &|p| p.listeners[4].certificate.as_mut().unwrap().private_key = b"junk".to_vec(),
        "tls.key",
    );
    check(&|p| p.listeners[0].port = 0, "invalid port");
    check(
        &|p| p.listeners[0].protocol = 42,
        "unknown listener protocol",
    );
    check(
        &|p| p.listeners[1].hostname = p.listeners[0].hostname.clone(),
        "appears twice",
    );
    check(
        &|p| {
            let entry = &mut p.listeners[0].virtual_hosts[0].entries[0];
            entry.r#match.as_mut().unwrap().path = Some(pb::PathMatch {
                kind: pb::path_match::Kind::Regex as i32,
                value: "(".into(),
            });
        },
        "regex",
    );
    check(&|p| p.rules[0].route = "no-slash".into(), "namespace/name");
    check(
        &|p| {
            let name = p.backends[0].name.clone();
            p.backends[0].subsets.insert("loop".into(), name);
        },
        "its own subset",
    );
    // Garbage bytes are a decode error, not a panic.
    let junk = mesh_api::prost_types::Any {
        type_url: mesh_api::type_url::L7_PROXY.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    assert!(decode("infra/gw", &junk).unwrap_err().contains("infra/gw"));
}

#[test]
fn another_gateway_gets_only_its_own_listeners() {
    let f = Fixture::new();
    let other = ObjectRef {
        namespace: "infra".into(),
        name: "other".into(),
    };
    let direct = f.direct(&other);
    let via = f.via_proxy(&other);
    assert_same_ports(&direct, &via);
    assert_eq!(via.ports.keys().collect::<Vec<_>>(), vec![&81]);
    assert_ne!(decision(&via, &get(81, "x", "/")), "404");
}

#[test]
fn faults_survive_the_round_trip() {
    use crate::snapshot::{AbortStatus, FaultAbort, FaultDelay, FaultInjection};
    let fault = FaultInjection {
        delay: Some(FaultDelay {
            duration: std::time::Duration::from_millis(1500),
            percent: 12.5,
        }),
        abort: Some(FaultAbort {
            status: AbortStatus::Grpc(14),
            percent: 100.0,
        }),
    };
    let back = policy::fault_of(&policy::fault(&fault)).unwrap();
    assert_eq!(format!("{back:?}"), format!("{fault:?}"));
    let mut bad = policy::fault(&fault);
    bad.abort.as_mut().unwrap().percent = 250.0;
    assert!(policy::fault_of(&bad)
        .unwrap_err()
        .contains("abort.percent"));
}

#[test]
fn simple_upstream_tls_is_rebuilt_from_the_ca_file_on_the_gateway() {
    let f = Fixture::new();
    let subset_v2 = |s: &Snapshot| {
        let rule = pick(s, &get(80, "other.org", "/")).unwrap().1;
        let BackendTarget::Cluster(c) = &rule.backends[0].target else {
            panic!("a cluster")
        };
        c.policy.subsets["v2"].policy.tls.clone().unwrap()
    };
    let direct = subset_v2(&f.direct(&gw()));
    assert!(
        direct.client_config.is_some() && direct.error.is_none(),
        "{direct:?}"
    );
    let via = subset_v2(&f.via_proxy(&gw()));
    assert!(via.client_config.is_some(), "{via:?}");
    assert_eq!(via.server_name.as_deref(), Some("v2.example.com"));

    // A CA file the gateway's host does not have: the backend fails closed.
    let mut proxy = f.proxy(&gw());
    for b in proxy
        .backends
        .iter_mut()
        .filter(|b| b.name.ends_with("|v2"))
    {
        let tls = b.policy.as_mut().unwrap().tls.as_mut().unwrap();
        assert!(tls.ca_certificates.ends_with(".pem"), "{tls:?}");
        tls.ca_certificates = "/nonexistent/ca.pem".into();
    }
    let tls = subset_v2(&snapshot_of(&proxy).unwrap());
    assert!(tls.client_config.is_none());
    assert!(
        tls.error
            .as_deref()
            .unwrap()
            .contains("/nonexistent/ca.pem"),
        "{tls:?}"
    );
}
