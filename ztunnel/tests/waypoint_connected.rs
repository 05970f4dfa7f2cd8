//! A connected waypoint (`waypoint --xds --name apps/waypoint --node node2`)
//! in the two-node topology: the controller (node1's namespace, TLS on
//! 192.168.0.1:15012) gives the waypoint its certificate, its L7 config (one
//! `ringmesh.l7.v1.Proxy` of kind WAYPOINT) and the workload registry; the
//! waypoint presents that certificate on the xDS stream (the controller
//! gives the Proxy to `sa/waypoint` only). Run twice: with the ztunnels
//! standalone on the same config and CA (`waypoint_connected_topology`), and
//! with the ztunnels connected too (`waypoint_connected_ztunnels_topology`:
//! they learn the Service's waypoint from the controller's `Service.waypoint`,
//! resolved through the waypoint's Service). client → ztunnel → HBONE →
//! waypoint (routes from the controller) → HBONE → the pods; the waypoint
//! counts the requests; an HTTPRoute edit on the controller changes the
//! responses within a second; binding the Service to a waypoint that does not
//! exist makes the client's ztunnel refuse (fail closed). Each test re-runs
//! this binary's `..._inside` under `unshare -Urnm`; skipped without the tools.

mod topology;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
const WAYPOINT_POD: Pod = Pod {
    name: "wp",
    node: 2,
    ip: "10.0.2.9",
    captured: false,
};
const ECHO_VIP: &str = "10.96.0.10:80";
const WAYPOINT_IDENTITY: &str = "spiffe://cluster.local/ns/apps/sa/waypoint";
const XDS_TLS: &str = "192.168.0.1:15012";

/// `echo_waypoint`: the waypoint the Service `echo` names (`waypoint` exists).
fn config(header_value: &str, echo_waypoint: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: apps}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: apps}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
# The Service Istio deploys with every waypoint: connected ztunnels resolve
# the waypoint's hostname (waypoint.apps.svc.cluster.local) through it.
apiVersion: v1
kind: Service
metadata: {{name: waypoint, namespace: apps}}
spec:
  clusterIP: 10.96.0.9
  selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}
  ports: [{{name: mesh, port: 15008}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: wp
  namespace: apps
  labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {{nodeName: node2, serviceAccountName: waypoint, containers: []}}
status: {{podIP: 10.0.2.9}}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: apps
  annotations: {{ringmesh.io/netns: /run/netns/zt-client}}
spec: {{nodeName: node1, serviceAccountName: client, containers: []}}
status: {{podIP: 10.0.1.2}}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo1
  namespace: apps
  labels: {{app: echo}}
  annotations: {{ringmesh.io/netns: /run/netns/zt-echo1}}
spec: {{nodeName: node1, serviceAccountName: echo, containers: []}}
status: {{podIP: 10.0.1.3}}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo2
  namespace: apps
  labels: {{app: echo}}
  annotations: {{ringmesh.io/netns: /run/netns/zt-echo2}}
spec: {{nodeName: node2, serviceAccountName: echo, containers: []}}
status: {{podIP: 10.0.2.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: apps, labels: {{istio.io/use-waypoint: {echo_waypoint}}}}}
spec: {{clusterIP: 10.96.0.10, selector: {{app: echo}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: apps, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.0.1.3]}}, {{addresses: [10.0.2.2]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-two, namespace: apps}}
spec: {{clusterIP: 10.96.0.12, ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-two-1, namespace: apps, labels: {{kubernetes.io/service-name: echo-two}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [10.0.2.2]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: apps}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /two}}}}]
    backendRefs: [{{name: echo-two, port: 80}}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{add: [{{name: x-via-waypoint, value: "{header_value}"}}]}}
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: ringmesh-node-tokens, namespace: istio-system}}
stringData: {{node1: token-of-node1, node2: token-of-node2}}
"#
    )
}

#[test]
fn waypoint_connected_topology() {
    if prerequisites("waypoint_connected_topology") {
        run_inside_namespaces("waypoint_connected_topology_inside");
    }
}

#[test]
fn waypoint_connected_ztunnels_topology() {
    if prerequisites("waypoint_connected_ztunnels_topology") {
        run_inside_namespaces("waypoint_connected_ztunnels_topology_inside");
    }
}

/// False (with a SKIPPED line) without the namespace tools; panics when the
/// controller or waypoint binary has not been built.
fn prerequisites(test: &str) -> bool {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED {test}: {why} (scripts/test.sh installs iproute2/iptables)");
        return false;
    }
    for bin in ["waypoint", "controller"] {
        let path = sibling(bin);
        assert!(
            path.exists(),
            "{} is missing: build it first (cargo build -p ringmesh-{})",
            path.display(),
            if bin == "waypoint" {
                "waypoint"
            } else {
                "controller"
            }
        );
    }
    true
}

fn sibling(bin: &str) -> PathBuf {
    Path::new(ZTUNNEL).with_file_name(bin)
}

/// A child killed on drop, so a failing assertion leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// From inside the client pod: one GET through the Service VIP, read to EOF
/// (empty when the connection was closed unanswered).
fn get(path: &str) -> std::io::Result<String> {
    let to: SocketAddr = ECHO_VIP.parse().unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: echo.apps\r\nConnection: close\r\n\r\n");
    in_netns(&CLIENT.netns(), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
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

fn in_pod_get(pod: &'static Pod, port: u16, path: &'static str) -> Option<String> {
    in_netns(&pod.netns(), move || {
        http_get(SocketAddr::from(([127, 0, 0, 1], port)), path)
    })
    .join()
    .unwrap()
}

fn controller_status() -> serde_json::Value {
    let response = in_netns(&node_netns(1), || {
        http_get(SocketAddr::from(([127, 0, 0, 1], 15014)), "/status")
    })
    .join()
    .unwrap()
    .expect("controller /status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    serde_json::from_str(body).expect("status JSON")
}

/// Writes atomically (temp + rename) so the watcher never reads a half file.
fn write_config(dir: &Path, text: &str) {
    let tmp = dir.join("mesh.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("controller/mesh.yaml")).unwrap();
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by waypoint_connected_topology"]
fn waypoint_connected_topology_inside() {
    if std::env::var_os(INNER_ENV).is_some() {
        run(ZtunnelMode::Standalone);
    }
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by waypoint_connected_ztunnels_topology"]
fn waypoint_connected_ztunnels_topology_inside() {
    if std::env::var_os(INNER_ENV).is_some() {
        run(ZtunnelMode::Connected);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ZtunnelMode {
    /// `--config` (the controller's file) and `--ca-dir` (the controller's CA).
    Standalone,
    /// `--xds`: registry, waypoint bindings and certificates from the controller.
    Connected,
}

fn run(mode: ZtunnelMode) {
    build(&[CLIENT, ECHO_1, ECHO_2, WAYPOINT_POD]);
    let dir = std::env::temp_dir().join(format!("ringmesh-wp-connected-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("controller")).unwrap();
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    write_config(&dir, &config("yes", "waypoint"));
    let mesh_file = dir.join("controller/mesh.yaml");
    // Connected ztunnels read only their pods' netns paths from a local list.
    let local_pods = dir.join("local-pods.yaml");
    std::fs::write(&local_pods, config("yes", "waypoint")).unwrap();
    std::fs::write(dir.join("node1.token"), "token-of-node1\n").unwrap();
    std::fs::write(dir.join("node2.token"), "token-of-node2\n").unwrap();
    spawn_http_app(&ECHO_1, 8080);
    spawn_http_app(&ECHO_2, 8080);

    // The controller first: it writes the CA the standalone ztunnels then load.
    let _controller = KillOnDrop(
        Command::new("nsenter")
            .arg(format!("--net={}", node_netns(1).display()))
            .arg(sibling("controller"))
            .arg("--config")
            .arg(dir.join("controller"))
            .args(["--xds-addr", "192.168.0.1:15010", "--xds-tls-addr", XDS_TLS])
            .args(["--xds-tls-san", "192.168.0.1"])
            .args(["--admin-addr", "127.0.0.1:15014"])
            .arg("--ca-cert")
            .arg(dir.join("ca/root-cert.pem"))
            .arg("--ca-key")
            .arg(dir.join("ca/ca-key.pem"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start the controller"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("ca/root-cert.pem").exists()
        || in_netns(&node_netns(1), || {
            http_get(SocketAddr::from(([127, 0, 0, 1], 15014)), "/healthz/ready")
        })
        .join()
        .unwrap()
        .is_none_or(|r| !r.starts_with("HTTP/1.1 200"))
    {
        assert!(
            Instant::now() < deadline,
            "the controller never became ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let start_ztunnel = |node: u8| match mode {
        ZtunnelMode::Standalone => Ztunnel::start(ZTUNNEL, &mesh_file, node, &dir.join("ca")),
        ZtunnelMode::Connected => {
            let extra = [
                "--xds".to_string(),
                XDS_TLS.into(),
                "--xds-root-cert".into(),
                dir.join("ca/root-cert.pem").display().to_string(),
                "--xds-server-name".into(),
                "192.168.0.1".into(),
                "--node-token-file".into(),
                dir.join(format!("node{node}.token")).display().to_string(),
                "--pod-ip".into(),
                format!("192.168.0.{node}"),
            ];
            Ztunnel::start_with(ZTUNNEL, &local_pods, node, &dir.join("unused-ca"), &extra)
        }
    };
    let z1 = start_ztunnel(1);
    let z2 = start_ztunnel(2);
    eprintln!("ztunnels: {mode:?}");

    let _waypoint = KillOnDrop(
        Command::new("nsenter")
            .arg(format!("--net={}", WAYPOINT_POD.netns().display()))
            .arg(sibling("waypoint"))
            .args(["--xds", XDS_TLS, "--name", "apps/waypoint"])
            .arg("--xds-root-cert")
            .arg(dir.join("ca/root-cert.pem"))
            .args(["--xds-server-name", "192.168.0.1"])
            .args(["--node", "node2", "--node-token-file"])
            .arg(dir.join("node2.token"))
            .args(["--pod-ip", WAYPOINT_POD.ip])
            .args(["--workers", "2"])
            .args(["--metrics-addr", "127.0.0.1:15020"])
            .args(["--ready-addr", "127.0.0.1:15021"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .spawn()
            .expect("start the waypoint"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !in_pod_get(&WAYPOINT_POD, 15021, "/healthz/ready")
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(Instant::now() < deadline, "the waypoint never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    // 1. Through the waypoint, with the routes the controller sent: the
    //    header filter of the default rule, both pods of the Service.
    let mut pods = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = 0;
    while answered < 20 {
        let response = get("/hello").unwrap_or_default();
        if response.is_empty() {
            assert!(Instant::now() < deadline, "the waypoint never answered");
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(response.contains("x-via-waypoint: yes\r\n"), "{response}");
        pods.insert(pod_of(&response).to_string());
        answered += 1;
    }
    assert_eq!(pods.len(), 2, "both endpoints served: {pods:?}");
    for _ in 0..3 {
        let response = get("/two").unwrap();
        assert_eq!(pod_of(&response), "echo2", "{response}");
        assert!(!response.contains("x-via-waypoint"), "{response}");
    }

    // The waypoint did the L7 work: it counted every request.
    let metrics = in_pod_get(&WAYPOINT_POD, 15020, "/metrics").expect("waypoint metrics");
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

    // 2. The controller served the Proxy to the waypoint's identity over TLS
    //    (no denial), and the waypoint applied it without a NACK.
    let status = controller_status();
    assert_eq!(
        status["xds"]["denials"],
        serde_json::json!([]),
        "{status:#}"
    );
    assert_eq!(status["xds"]["nacks"], serde_json::json!([]), "{status:#}");
    let metrics = in_pod_get(&WAYPOINT_POD, 15020, "/metrics").expect("waypoint metrics");
    assert!(
        metric_sum(&metrics, "ringmesh_waypoint_xds_pushes_applied_total", &[]) >= 1,
        "{metrics}"
    );

    // 3. The destination ztunnels saw the identity the controller's CA gave
    //    the waypoint.
    for z in [&z1, &z2] {
        let inbound = metric_sum(
            &z.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", WAYPOINT_IDENTITY),
            ],
        );
        assert!(inbound > 0, "node{} inbound from the waypoint", z.node);
    }

    // 4. A route edit on the controller reaches the waypoint within 1 s.
    let edited = Instant::now();
    write_config(&dir, &config("edited", "waypoint"));
    let deadline = edited + Duration::from_secs(10);
    loop {
        let response = get("/hello").unwrap_or_default();
        if response.contains("x-via-waypoint: edited\r\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit never arrived: {response}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(1), "edit took {took:?}");
    eprintln!("route edit reached the connected waypoint in {took:?}");

    // 5. The Service names a waypoint that does not exist: the client's
    //    ztunnel refuses (fail closed) instead of going around the waypoint.
    write_config(&dir, &config("edited", "nope"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = || {
        metric_sum(
            &z1.metrics(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("response_flags", "WAYPOINT_MISSING"),
            ],
        )
    };
    while refused() == 0 {
        assert!(Instant::now() < deadline, "never failed closed");
        let _ = get("/hello");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = refused();
    assert_eq!(
        get("/hello").unwrap_or_default(),
        "",
        "answered without its waypoint"
    );
    assert!(refused() > before, "the refusal is counted");
    let _ = std::fs::remove_dir_all(&dir);
}
