//! DestinationRule through the real gateway process: `gateway --config`
//! with a YAML folder, backends on loopback addresses sharing one port (an
//! EndpointSlice lists IPs with one port), requests over real sockets.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use support::{free_port, request, Gateway, TempConfig};

/// Backends on 127.0.0.2.. sharing one port; each answers with its IP and
/// holds the response for `?delay=MS`.
fn backends(n: u8) -> (Vec<String>, u16) {
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
            std::thread::spawn(move || {
                for stream in l.incoming() {
                    let Ok(stream) = stream else { return };
                    std::thread::spawn(move || serve(stream));
                }
            });
        }
        return (ips, port);
    }
    panic!("no port free on all loopback addresses");
}

fn serve(stream: TcpStream) {
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
        if let Some(ms) = path.split("delay=").nth(1) {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{me}",
            me.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn config(listener_port: u16, ips: &[String], backend_port: u16, rule: &str) -> String {
    let addresses = ips
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n"))
        .collect::<String>();
    format!(
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
  - {{name: http, port: {listener_port}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: app, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: default}}
spec:
  ports: [{{name: http, port: 80}}]
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
{addresses}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app, namespace: default}}
spec:
  host: app
  trafficPolicy:
{rule}"
    )
}

#[test]
fn consistent_hash_from_a_destination_rule_keeps_each_user_on_one_backend() {
    let (ips, backend_port) = backends(3);
    let port = free_port();
    let cfg = TempConfig::new();
    let rule = "    loadBalancer:
      consistentHash:
        httpQueryParameterName: user
        ringHash: {minimumRingSize: 1024}
";
    cfg.write("all.yaml", &config(port, &ips, backend_port, rule));
    let gw = Gateway::with_config(cfg.path()).start();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let mut owner: HashMap<u32, String> = HashMap::new();
    // Two workers, fresh connections: the pick must not depend on either.
    for round in 0..4 {
        for user in 0..25 {
            let r = request(listener, "GET", &format!("/x?user={user}"), "app.test").unwrap();
            assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
            let first = owner.entry(user).or_insert_with(|| r.body.clone());
            assert_eq!(*first, r.body, "round {round}: user {user} moved");
            assert!(r.header("x-envoy-upstream-service-time").is_some());
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "25 users on one backend: {owner:?}");
}

#[test]
fn circuit_breakers_from_a_destination_rule_answer_503_overloaded() {
    let (ips, backend_port) = backends(1);
    let port = free_port();
    let cfg = TempConfig::new();
    let rule = "    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
";
    cfg.write("all.yaml", &config(port, &ips, backend_port, rule));
    let gw = Gateway::with_config(cfg.path()).start();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    // Counters are shared by both workers: at most 1 in flight + 1 pending.
    let threads: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                request(listener, "GET", "/slow?delay=700", "app.test").unwrap()
            })
        })
        .collect();
    let responses: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let overloaded: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert!((1..=2).contains(&ok), "{responses:?}\n{}", gw.logs());
    assert_eq!(ok + overloaded.len(), 6, "{responses:?}");
    for r in overloaded {
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{r:?}");
    }
    assert_eq!(
        request(listener, "GET", "/after", "app.test")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_local_rate_limit_policy_answers_429_with_headers() {
    let (ips, backend_port) = backends(2);
    let port = free_port();
    let cfg = TempConfig::new();
    let mut yaml = config(
        port,
        &ips,
        backend_port,
        "    loadBalancer: {simple: ROUND_ROBIN}\n",
    );
    yaml.push_str(
        "---
apiVersion: policy.ringmesh.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: app-limit, namespace: default}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}
  tokenBucket: {maxTokens: 4, tokensPerFill: 4, fillInterval: 1h}
",
    );
    cfg.write("all.yaml", &yaml);
    let gw = Gateway::with_config(cfg.path()).start();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    // Fresh connections land on either worker: the bucket is shared.
    for i in 0..4 {
        let r = request(listener, "GET", "/r", "app.test").unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", gw.logs());
    }
    for _ in 0..3 {
        let r = request(listener, "GET", "/r", "app.test").unwrap();
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("4"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset > 3500 && reset <= 3600, "{reset}");
    }
}
