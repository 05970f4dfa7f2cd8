//! Istio VirtualService through the real gateway process (`gateway --config`):
//! weighted routes to DestinationRule subsets, fault abort (HTTP and gRPC
//! status) and delay, retries on 503, and the HTTPRoute-wins precedence
//! rule with its status condition. Backends are loopback addresses sharing
//! one port (an EndpointSlice lists IPs with one port); Pods give them the
//! subset labels.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{free_port, request, Gateway, TempConfig};

/// What a test backend answers for a path.
type Behaviour = Arc<dyn Fn(&str) -> u16 + Send + Sync>;

/// Backends on 127.0.0.2.. sharing one port; each answers its IP with the
/// status `behaviour` picks for the request path.
fn backends(n: u8, behaviour: Behaviour) -> (Vec<String>, u16) {
    'retry: for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 1..n {
            match TcpListener::bind(SocketAddr::from(([127, 0, 0, 2 + i], port))) {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'retry,
            }
        }
        let mut ips = Vec::new();
        for l in listeners {
            ips.push(l.local_addr().unwrap().ip().to_string());
            let behaviour = behaviour.clone();
            std::thread::spawn(move || {
                for stream in l.incoming() {
                    let Ok(stream) = stream else { return };
                    let behaviour = behaviour.clone();
                    std::thread::spawn(move || serve(stream, behaviour));
                }
            });
        }
        return (ips, port);
    }
    panic!("no port free on all loopback addresses");
}

fn serve(stream: TcpStream, behaviour: Behaviour) {
    let me = stream.local_addr().unwrap().ip().to_string();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        let status = behaviour(&path);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{me}",
            me.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn always_ok() -> Behaviour {
    Arc::new(|_| 200)
}

/// Gateway `default/edge` on `port`, Service `app` over the backends with
/// Pods labelled `version: v1` (the first) and `v2` (the others), and a
/// DestinationRule with both subsets; `extra` is appended.
fn config(port: u16, ips: &[String], backend_port: u16, extra: &str) -> String {
    let mut yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: ringmesh}}
spec: {{controllerName: ringmesh.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: ringmesh
  listeners:
  - {{name: http, port: {port}, protocol: HTTP}}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: default}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: default}}
spec:
  host: app
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  namespace: default
  labels: {{kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}}}]
endpoints:
"
    );
    for ip in ips {
        yaml.push_str(&format!("- addresses: [\"{ip}\"]\n"));
    }
    for (i, ip) in ips.iter().enumerate() {
        let version = if i == 0 { "v1" } else { "v2" };
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: app-{i}, namespace: default, labels: {{version: {version}}}}}
status: {{podIP: \"{ip}\"}}
"
        ));
    }
    yaml.push_str(extra);
    yaml
}

/// A VirtualService on the Gateway for `app.test` with these http routes.
fn virtual_service(http: &str) -> String {
    format!(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: default}}
spec:
  hosts: [app.test]
  gateways: [edge]
  http:
{http}"
    )
}

/// Starts the gateway on a free listener port with `config(port)`.
fn start(config: impl FnOnce(u16) -> String) -> (TempConfig, Gateway, SocketAddr) {
    let port = free_port();
    let cfg = TempConfig::new();
    cfg.write("all.yaml", &config(port));
    let gw = Gateway::with_config(cfg.path()).start();
    (cfg, gw, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn weighted_routes_send_each_subset_its_share() {
    let (ips, backend_port) = backends(2, always_ok());
    let vs = virtual_service(
        "  - route:
    - destination: {host: app, subset: v1, port: {number: 80}}
      weight: 75
    - destination: {host: app.default.svc.cluster.local, subset: v2}
      weight: 25
",
    );
    let (_cfg, gw, listener) = start(|port| config(port, &ips, backend_port, &vs));
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        let r = request(listener, "GET", "/", "app.test").unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
        *counts.entry(r.body).or_default() += 1;
    }
    let v1 = counts.get(&ips[0]).copied().unwrap_or(0);
    let v2 = counts.get(&ips[1]).copied().unwrap_or(0);
    assert_eq!(v1 + v2, 400, "{counts:?}");
    // 75% of 400 is 300; the bound is loose (about 5 standard deviations).
    assert!((255..=345).contains(&v1), "v1 got {v1}/400: {counts:?}");
}

#[test]
fn fault_abort_answers_locally_at_the_configured_percentage() {
    let (ips, backend_port) = backends(1, always_ok());
    let vs = virtual_service(
        "  - match: [{uri: {prefix: /half}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418}}
    route: [{destination: {host: app}}]
  - route: [{destination: {host: app}}]
",
    );
    let (_cfg, gw, listener) = start(|port| config(port, &ips, backend_port, &vs));
    let r = request(listener, "GET", "/teapot", "app.test").unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (418, "fault filter abort"),
        "{r:?}\n{}",
        gw.logs()
    );
    let mut aborted = 0;
    for _ in 0..400 {
        let r = request(listener, "GET", "/half", "app.test").unwrap();
        match r.status {
            503 => {
                assert_eq!(r.body, "fault filter abort", "{r:?}");
                aborted += 1;
            }
            200 => assert_eq!(r.body, ips[0]),
            _ => panic!("{r:?}"),
        }
    }
    // 50% of 400: 200, loose bound (5 standard deviations is 50).
    assert!((150..=250).contains(&aborted), "aborted {aborted}/400");
    assert_eq!(
        request(listener, "GET", "/other", "app.test")
            .unwrap()
            .status,
        200
    );
}

/// `curl --http2-prior-knowledge` a gRPC-looking POST: (status line, headers).
fn grpc_call(listener: SocketAddr, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", "host: app.test", "--data-binary", "@-"])
        .arg(format!("http://{listener}{path}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

#[test]
fn fault_abort_gives_grpc_requests_a_trailers_only_status() {
    let (ips, backend_port) = backends(1, always_ok());
    let vs = virtual_service(
        "  - match: [{uri: {prefix: /pkg.Echo/Unavailable}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /pkg.Echo/Http}}]
    fault: {abort: {httpStatus: 503}}
    route: [{destination: {host: app}}]
  - match: [{uri: {prefix: /plain}}]
    fault: {abort: {grpcStatus: 14}}
    route: [{destination: {host: app}}]
",
    );
    let (_cfg, gw, listener) = start(|port| config(port, &ips, backend_port, &vs));
    let head = grpc_call(listener, "/pkg.Echo/Unavailable");
    assert!(head.starts_with("http/2 200"), "{head}\n{}", gw.logs());
    assert!(head.contains("grpc-status: 14"), "{head}");
    assert!(head.contains("grpc-message: fault filter abort"), "{head}");
    // An HTTP status abort reaches a gRPC client as its gRPC mapping.
    let head = grpc_call(listener, "/pkg.Echo/Http");
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 14"), "{head}");
    // A gRPC status abort on a plain HTTP request: 200 with the body (Envoy's local reply).
    let r = request(listener, "GET", "/plain", "app.test").unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "fault filter abort"),
        "{r:?}"
    );
}

#[test]
fn fault_delay_holds_the_request_before_the_upstream_call() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let (ips, backend_port) = backends(
        1,
        Arc::new(move |path: &str| {
            log.lock().unwrap().push(path.to_string());
            200
        }),
    );
    let vs = virtual_service(
        "  - match: [{uri: {exact: /slow}}]
    fault: {delay: {fixedDelay: 2500ms, percentage: {value: 100}}}
    route: [{destination: {host: app}}]
  - route: [{destination: {host: app}}]
",
    );
    let (_cfg, gw, listener) = start(|port| config(port, &ips, backend_port, &vs));
    let started = Instant::now();
    let slow = std::thread::spawn(move || {
        let r = request(listener, "GET", "/slow", "app.test").unwrap();
        (r, started.elapsed())
    });
    // Once the delayed request is inside the gateway, an undelayed one overtakes it.
    std::thread::sleep(Duration::from_millis(200));
    let fast = request(listener, "GET", "/fast", "app.test").unwrap();
    assert_eq!(fast.status, 200, "{fast:?}\n{}", gw.logs());
    let (slow, took) = slow.join().unwrap();
    assert_eq!(slow.status, 200, "{slow:?}");
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["/fast".to_string(), "/slow".to_string()],
        "the backend saw the delayed request last"
    );
}

#[test]
fn retries_turn_a_503_into_a_200_and_only_when_configured() {
    // Every request id fails once with 503, then succeeds.
    let failed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let calls: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let (f, c) = (failed.clone(), calls.clone());
    let (ips, backend_port) = backends(
        1,
        Arc::new(move |path: &str| {
            *c.lock().unwrap().entry(path.to_string()).or_default() += 1;
            if f.lock().unwrap().insert(path.to_string()) {
                503
            } else {
                200
            }
        }),
    );
    let vs = virtual_service(
        "  - match: [{uri: {prefix: /retried}}]
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: app}}]
  - route: [{destination: {host: app}}]
",
    );
    let (_cfg, gw, listener) = start(|port| config(port, &ips, backend_port, &vs));
    for i in 0..5 {
        let path = format!("/retried/{i}");
        let r = request(listener, "GET", &path, "app.test").unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
        assert_eq!(calls.lock().unwrap()[&path], 2);
    }
    let r = request(listener, "GET", "/once", "app.test").unwrap();
    assert_eq!(r.status, 503, "no retries configured: {r:?}");
    assert_eq!(calls.lock().unwrap()["/once"], 1);
}

#[test]
fn an_httproute_for_the_same_host_wins_and_the_virtual_service_says_so() {
    let (ips, backend_port) = backends(2, always_ok());
    // The HTTPRoute sends app.test to the v2 pod only; the VirtualService would send it to v1.
    let extra = format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app-route, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [app.test]
  rules: [{{backendRefs: [{{name: app-v2, port: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: app-v2, namespace: default}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-v2-1
  namespace: default
  labels: {{kubernetes.io/service-name: app-v2}}
addressType: IPv4
ports: [{{name: http, port: {backend_port}}}]
endpoints: [{{addresses: [\"{}\"]}}]
",
        virtual_service(
            "  - route: [{destination: {host: app, subset: v1}}]
"
        ),
        ips[1]
    );
    let (_cfg, gw, listener) = start(|port| config(port, &ips, backend_port, &extra));
    for _ in 0..10 {
        let r = request(listener, "GET", "/", "app.test").unwrap();
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, ips[1].as_str()),
            "{r:?}\n{}",
            gw.logs()
        );
    }
    let status = support::get(gw.admin, "/status").unwrap().json();
    let vs = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "VirtualService")
        .unwrap_or_else(|| panic!("no VirtualService status: {status}"));
    assert_eq!(vs["route"]["name"], "app");
    let parent = &vs["parents"][0];
    assert_eq!(parent["parentRef"]["name"], "edge");
    let accepted = parent["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap();
    assert_eq!(accepted["status"], "False", "{accepted}");
    assert_eq!(accepted["reason"], "OverriddenByHTTPRoute", "{accepted}");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .contains("HTTPRoute default/app-route"),
        "{accepted}"
    );
}

#[test]
fn an_edited_virtual_service_is_served_live_and_a_broken_one_is_named() {
    let (ips, backend_port) = backends(2, always_ok());
    let port = free_port();
    let cfg = TempConfig::new();
    let to = |subset: &str| {
        virtual_service(&format!(
            "  - route: [{{destination: {{host: app, subset: {subset}}}}}]\n"
        ))
    };
    cfg.write("base.yaml", &config(port, &ips, backend_port, ""));
    cfg.write("vs.yaml", &to("v1"));
    let gw = Gateway::with_config(cfg.path()).start();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let body = || request(listener, "GET", "/", "app.test").unwrap().body;
    assert_eq!(body(), ips[0], "{}", gw.logs());

    let before = gw.version();
    cfg.write("vs.yaml", &to("v2"));
    gw.wait_version_above(before);
    for _ in 0..5 {
        assert_eq!(body(), ips[1]);
    }

    let before = gw.version();
    cfg.write("vs.yaml", &to("v2").replace("route:", "rout:"));
    gw.wait_version_above(before);
    let status = support::get(gw.admin, "/status").unwrap().json();
    let named = status["config_errors"].as_array().unwrap().iter().any(|e| {
        let e = e.as_str().unwrap();
        e.contains("vs.yaml")
            && e.contains("VirtualService default/app")
            && e.contains("spec.http[0]")
    });
    assert!(named, "{status}");
}
