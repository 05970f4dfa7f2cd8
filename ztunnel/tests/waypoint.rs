//! End-to-end through a waypoint: two nodes, a client pod, a Service that
//! uses a waypoint (`istio.io/use-waypoint`) backed by two pods (one per
//! node), the waypoint in its own (uncaptured) pod, one ztunnel per node.
//! client → ztunnel (node1) → HBONE → waypoint (L7: HTTPRoute with a header
//! filter and a path match to another Service) → HBONE → ztunnel of the
//! chosen pod → app. A Service bound to a missing waypoint is refused.
//! `waypoint_topology` re-runs this binary's `waypoint_topology_inside`
//! under `unshare -Urnm`; skipped (with a message) where the tools or user
//! namespaces are missing.

mod topology;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use topology::apps::{pod_of, spawn_http_app};
use topology::*;

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");

const CLIENT: Pod = Pod {
    name: "client",
    node: 1,
    ip: "10.0.1.2",
    captured: true,
};
const ECHO_1: Pod = Pod {
    name: "echo1",
    node: 1,
    ip: "10.0.1.3",
    captured: true,
};
const ECHO_2: Pod = Pod {
    name: "echo2",
    node: 2,
    ip: "10.0.2.2",
    captured: true,
};
/// The waypoint's pod: not captured (it speaks HBONE itself).
const WAYPOINT_POD: Pod = Pod {
    name: "wp",
    node: 2,
    ip: "10.0.2.9",
    captured: false,
};
const ECHO_VIP: &str = "10.96.0.10:80";
const LOST_VIP: &str = "10.96.0.11:80";
const WAYPOINT_IDENTITY: &str = "spiffe://cluster.local/ns/apps/sa/waypoint";

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: wp
  namespace: apps
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: node2, serviceAccountName: waypoint, containers: []}
status: {podIP: 10.0.2.9}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: apps
  annotations: {ringmesh.io/netns: /run/netns/zt-client}
spec: {nodeName: node1, serviceAccountName: client, containers: []}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo1
  namespace: apps
  labels: {app: echo}
  annotations: {ringmesh.io/netns: /run/netns/zt-echo1}
spec: {nodeName: node1, serviceAccountName: echo, containers: []}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo2
  namespace: apps
  labels: {app: echo}
  annotations: {ringmesh.io/netns: /run/netns/zt-echo2}
spec: {nodeName: node2, serviceAccountName: echo, containers: []}
status: {podIP: 10.0.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: apps, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.1.3]}, {addresses: [10.0.2.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-two, namespace: apps}
spec: {clusterIP: 10.96.0.12, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-two-1, namespace: apps, labels: {kubernetes.io/service-name: echo-two}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.2.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-one, namespace: apps}
spec: {clusterIP: 10.96.0.13, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-one-1, namespace: apps, labels: {kubernetes.io/service-name: echo-one}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.1.3]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /two}}]
    backendRefs: [{name: echo-two, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: echo-one, port: 80, weight: 80}, {name: echo-two, port: 80, weight: 20}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-via-waypoint, value: "yes"}]}
    backendRefs: [{name: echo, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: lost, namespace: apps, labels: {istio.io/use-waypoint: nowhere}}
spec: {clusterIP: 10.96.0.11, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
"#;

#[test]
fn waypoint_topology() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED waypoint_topology: {why} (scripts/test.sh installs iproute2/iptables)");
        return;
    }
    // Built by `cargo build --workspace --bins` (scripts/test.sh) next to ztunnel.
    let bin = waypoint_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ringmesh-waypoint` first",
        bin.display()
    );
    run_inside_namespaces("waypoint_topology_inside");
}

fn waypoint_bin() -> PathBuf {
    Path::new(ZTUNNEL).with_file_name("waypoint")
}

/// From inside `pod`: one GET to `to`, read to EOF. Err on connect failure
/// or timeout; an empty string when the connection was closed unanswered.
fn get(pod: &Pod, to: &str, path: &str) -> std::io::Result<String> {
    let to: SocketAddr = to.parse().unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: echo.apps\r\nConnection: close\r\n\r\n");
    in_netns(&pod.netns(), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        // A refused (reset) connection counts as unanswered too.
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => return Err(e),
        }
        Ok(String::from_utf8_lossy(&out).to_string())
    })
    .join()
    .unwrap()
}

/// From inside `pod`: `n` GETs of `path` on one keep-alive connection to
/// `to`; how many answers came from each pod.
fn keep_alive_gets(pod: &Pod, to: &str, path: &str, n: usize) -> HashMap<String, usize> {
    let to: SocketAddr = to.parse().unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: echo.apps\r\n\r\n");
    in_netns(&pod.netns(), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut counts = HashMap::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        for i in 0..n {
            s.write_all(request.as_bytes()).unwrap();
            // One response: its head, then content-length bytes of body.
            let (head_end, body_len) = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    assert!(head.starts_with("http/1.1 200"), "response {i}: {head}");
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .expect("content-length");
                    break (end + 4, len);
                }
                let got = s.read(&mut chunk).unwrap();
                assert!(got > 0, "connection closed after {i} responses");
                buf.extend_from_slice(&chunk[..got]);
            };
            while buf.len() < head_end + body_len {
                let got = s.read(&mut chunk).unwrap();
                assert!(got > 0, "connection closed mid-body after {i} responses");
                buf.extend_from_slice(&chunk[..got]);
            }
            let body = String::from_utf8_lossy(&buf[head_end..head_end + body_len]).to_string();
            *counts.entry(pod_of(&body).to_string()).or_default() += 1;
            buf.drain(..head_end + body_len);
        }
        counts
    })
    .join()
    .unwrap()
}

/// The waypoint process inside its pod's network namespace.
struct Waypoint {
    child: Child,
}

impl Waypoint {
    fn start(config: &Path, ca_dir: &Path) -> Self {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", WAYPOINT_POD.netns().display()))
            .arg(waypoint_bin())
            .args(["--config", &config.display().to_string()])
            .args(["--name", "apps/waypoint"])
            .args(["--ca-dir", &ca_dir.display().to_string()])
            .args(["--workers", "2"])
            .args(["--metrics-addr", "127.0.0.1:15020"])
            .args(["--ready-addr", "127.0.0.1:15021"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .spawn()
            .expect("start waypoint");
        let w = Waypoint { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !w
            .local_get(15021, "/healthz/ready")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(Instant::now() < deadline, "the waypoint never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn local_get(&self, port: u16, path: &'static str) -> Option<String> {
        in_netns(&WAYPOINT_POD.netns(), move || {
            http_get(SocketAddr::from(([127, 0, 0, 1], port)), path)
        })
        .join()
        .unwrap()
    }

    fn metrics(&self) -> String {
        self.local_get(15020, "/metrics").expect("scrape waypoint")
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by waypoint_topology"]
fn waypoint_topology_inside() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    build(&[CLIENT, ECHO_1, ECHO_2, WAYPOINT_POD]);
    let dir = std::env::temp_dir().join(format!("ringmesh-wp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let ca = dir.join("ca");

    spawn_http_app(&ECHO_1, 8080);
    spawn_http_app(&ECHO_2, 8080);
    let z1 = Ztunnel::start(ZTUNNEL, &config, 1, &ca);
    let z2 = Ztunnel::start(ZTUNNEL, &config, 2, &ca);
    let waypoint = Waypoint::start(&config, &ca);

    // 1. Through the waypoint: the HTTPRoute's header filter is applied, and
    //    the waypoint spreads requests over both pods of the Service.
    let mut pods: HashMap<String, usize> = HashMap::new();
    let first = Instant::now();
    let mut answered = 0;
    while answered < 20 {
        let response = get(&CLIENT, ECHO_VIP, "/hello").expect("GET through the waypoint");
        if response.is_empty() && answered == 0 && first.elapsed() < Duration::from_secs(10) {
            // The first connections may race the waypoint's listeners.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(
            response.contains("x-via-waypoint: yes\r\n"),
            "the route's RequestHeaderModifier ran: {response}"
        );
        assert!(response.contains("GET /hello HTTP/1.1"), "{response}");
        // The engine's forwarding headers: the client pod is the source.
        assert!(
            response.contains("x-forwarded-for: 10.0.1.2"),
            "original client forwarded: {response}"
        );
        *pods.entry(pod_of(&response).to_string()).or_default() += 1;
        answered += 1;
    }
    assert_eq!(pods.len(), 2, "both endpoints served: {pods:?}");

    // 2. A path match routes to another Service (only echo2 backs it), and
    //    that rule has no header filter.
    for _ in 0..5 {
        let response = get(&CLIENT, ECHO_VIP, "/two").unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert_eq!(pod_of(&response), "echo2", "{response}");
        assert!(!response.contains("x-via-waypoint"), "{response}");
    }

    // 2b. A weighted split (80/20 between two single-pod Services), per
    //     request on one keep-alive client connection: within ±5%.
    let split = keep_alive_gets(&CLIENT, ECHO_VIP, "/split", 1000);
    let one = split.get("echo1").copied().unwrap_or(0);
    assert_eq!(
        one + split.get("echo2").copied().unwrap_or(0),
        1000,
        "{split:?}"
    );
    assert!((750..=850).contains(&one), "80/20 split: {split:?}");

    // 3. The waypoint counted the requests with its Istio labels.
    let metrics = waypoint.metrics();
    let served = metric_sum(
        &metrics,
        "istio_requests_total",
        &[
            ("reporter", "waypoint"),
            ("destination_service_name", "echo"),
            ("response_code", "200"),
        ],
    );
    assert!(served >= 20, "waypoint istio_requests_total: {metrics}");
    assert!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[("destination_service_name", "echo-two")]
        ) >= 5,
        "{metrics}"
    );

    // 4. The destination ztunnels saw the waypoint's identity (HBONE from
    //    the waypoint), and the client's ztunnel sent to the waypoint.
    for z in [&z1, &z2] {
        let m = z.metrics();
        let from_waypoint = metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", WAYPOINT_IDENTITY),
            ],
        );
        assert!(
            from_waypoint > 0,
            "node{} inbound from the waypoint: {m}",
            z.node
        );
        let from_client = metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/apps/sa/client",
                ),
                ("destination_workload", "echo1"),
            ],
        ) + metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/apps/sa/client",
                ),
                ("destination_workload", "echo2"),
            ],
        );
        assert_eq!(
            from_client, 0,
            "the client never bypassed the waypoint: {m}"
        );
    }
    let m1 = z1.metrics();
    assert!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_workload", "waypoint"),
                ("destination_principal", WAYPOINT_IDENTITY),
                ("response_flags", ""),
            ],
        ) >= 25,
        "{m1}"
    );

    // 5. A Service bound to a waypoint that does not exist: refused (the
    //    connection closes unanswered), counted and logged by ztunnel.
    let response = get(&CLIENT, LOST_VIP, "/").unwrap_or_default();
    assert!(response.is_empty(), "fail closed: {response:?}");
    let m1 = z1.metrics();
    assert!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &[
                ("destination_service", "lost.apps.svc.cluster.local"),
                ("response_flags", "WAYPOINT_MISSING"),
            ],
        ) >= 1,
        "{m1}"
    );

    // 5b. Plain HTTP straight at the waypoint's HBONE port (no mTLS):
    //     refused at the handshake and counted; the waypoint keeps serving.
    let response = get(&CLIENT, "10.0.2.9:15008", "/").unwrap_or_default();
    assert!(
        !response.starts_with("HTTP/1.1"),
        "no plaintext HTTP on 15008: {response:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(
        &waypoint.metrics(),
        "ringmesh_waypoint_tls_refused_total",
        &[],
    ) == 0
    {
        assert!(Instant::now() < deadline, "{}", waypoint.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    let response = get(&CLIENT, ECHO_VIP, "/hello").unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");

    drop(waypoint);
    // 6. With the waypoint gone, the bound Service fails (no bypass to the pods).
    let response = get(&CLIENT, ECHO_VIP, "/hello").unwrap_or_default();
    assert!(
        !response.starts_with("HTTP/1.1 200"),
        "no waypoint, no answer: {response:?}"
    );
    drop((z1, z2));
    let _ = std::fs::remove_dir_all(&dir);
}
