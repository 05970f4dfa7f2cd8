//! Ingress into the mesh, with real processes:
//! - `ingress_into_the_mesh`: the two-node network-namespace topology of
//!   the ztunnel tests (`ztunnel/tests/topology`, shared through `#[path]`),
//!   one ztunnel per node, a waypoint, and the gateway in a pod of its own
//!   (not captured) with `--ca-dir`. The gateway reaches mesh pods over
//!   HBONE with its own SPIFFE identity (seen by the destination ztunnels),
//!   HTTP/1.1 and HTTP/2 (an h2c Service) alike,
//!   a Service with `istio.io/ingress-use-waypoint` through its waypoint
//!   (whose HTTPRoute filter shows in the response), a Service bound to a
//!   missing waypoint fails closed (502, a refused connection), a backend
//!   outside the mesh gets plain TCP unless a DestinationRule asks for
//!   ISTIO_MUTUAL (then refused), and once
//!   the config binds it to the existing waypoint (live reload) it is
//!   served through that waypoint. Needs `target/debug/ztunnel`
//!   and `target/debug/waypoint` (`cargo build -p ringmesh-ztunnel -p
//!   ringmesh-waypoint`); skipped without unshare/iptables.
//! - `simple_tls_to_https_backends`: DestinationRule `tls.mode: SIMPLE`
//!   toward a rustls HTTPS backend on loopback: the CA bundle, SNI and
//!   subjectAltNames are applied (the backend echoes the SNI it got); a
//!   rule with the wrong CA fails like any upstream connection (502 without
//!   retries) with a log line naming the failure; a missing CA file is a
//!   config error naming the rule; a certificate not valid for the
//!   `subjectAltNames` is refused; `insecureSkipVerify` needs no CA; an
//!   HTTP/2 backend (appProtocol h2c) under SIMPLE gets TLS with ALPN h2.

mod support;
#[path = "../../ztunnel/tests/topology/mod.rs"]
mod topology;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use topology::apps::{pod_of, spawn_http_app};
use topology::*;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
const GATEWAY_IDENTITY: &str = "spiffe://cluster.local/ns/infra/sa/edge-istio";
const WAYPOINT_IDENTITY: &str = "spiffe://cluster.local/ns/apps/sa/waypoint";

const GW_POD: Pod = Pod {
    name: "gw",
    node: 1,
    ip: "10.0.1.9",
    captured: false,
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

const MESH_CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ringmesh}
spec: {controllerName: ringmesh.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: ringmesh
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
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
metadata: {name: gw, namespace: infra}
spec: {nodeName: node1, serviceAccountName: edge-istio, containers: []}
status: {podIP: 10.0.1.9}
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
metadata: {name: echo, namespace: apps}
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
metadata:
  name: echo-wp
  namespace: apps
  labels: {istio.io/use-waypoint: waypoint, istio.io/ingress-use-waypoint: "true"}
spec: {clusterIP: 10.96.0.20, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-wp-1, namespace: apps, labels: {kubernetes.io/service-name: echo-wp}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.1.3]}, {addresses: [10.0.2.2]}]
---
apiVersion: v1
kind: Service
metadata:
  name: lost
  namespace: apps
  labels: {istio.io/use-waypoint: nowhere, istio.io/ingress-use-waypoint: "true"}
spec: {clusterIP: 10.96.0.11, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lost-1, namespace: apps, labels: {kubernetes.io/service-name: lost}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.1.3]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-h2, namespace: apps}
spec: {clusterIP: 10.96.0.30, ports: [{name: grpc, port: 80, targetPort: 8081, appProtocol: kubernetes.io/h2c}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-h2-1, namespace: apps, labels: {kubernetes.io/service-name: echo-h2}}
addressType: IPv4
ports: [{name: grpc, port: 8081}]
endpoints: [{addresses: [10.0.2.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: outside, namespace: apps}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: outside-1, namespace: apps, labels: {kubernetes.io/service-name: outside}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints: [{addresses: [10.0.2.9]}]
---
apiVersion: v1
kind: Service
metadata: {name: outside-mutual, namespace: apps}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: outside-mutual-1, namespace: apps, labels: {kubernetes.io/service-name: outside-mutual}}
addressType: IPv4
ports: [{name: http, port: 9091}]
endpoints: [{addresses: [10.0.2.9]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outside-mutual, namespace: apps}
spec:
  host: outside-mutual
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: apps}
spec:
  host: echo
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ingress, namespace: apps}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /direct}}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /through-waypoint}}]
    backendRefs: [{name: echo-wp, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /lost}}]
    backendRefs: [{name: lost, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /h2}}]
    backendRefs: [{name: echo-h2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /outside-mutual}}]
    backendRefs: [{name: outside-mutual, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /outside}}]
    backendRefs: [{name: outside, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-wp, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-wp, port: 80}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-via-waypoint, value: "yes"}]}
    backendRefs: [{name: echo-wp, port: 80}]
"#;

#[test]
fn ingress_into_the_mesh() {
    if let Some(why) = missing_tools() {
        eprintln!(
            "SKIPPED ingress_into_the_mesh: {why} (scripts/test.sh installs iproute2/iptables)"
        );
        return;
    }
    for bin in [sibling_bin("ztunnel"), sibling_bin("waypoint")] {
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build -p ringmesh-ztunnel -p ringmesh-waypoint` first",
            bin.display()
        );
    }
    run_inside_namespaces("ingress_into_the_mesh_inside");
}

/// A binary built next to the gateway (same target folder).
fn sibling_bin(name: &str) -> PathBuf {
    Path::new(GATEWAY).with_file_name(name)
}

/// An HTTP/2-only app (h2c prior knowledge, tokio + h2) inside `pod`:
/// answers every request with `pod=NAME proto=VERSION`.
fn spawn_h2c_app(pod: &'static Pod, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&pod.netns(), move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind h2c app");
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let body = format!("pod={} proto={:?}\n", pod.name, request.version());
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-length", body.len())
                            .body(())
                            .unwrap();
                        if let Ok(mut send) = respond.send_response(head, false) {
                            let _ = send.send_data(bytes::Bytes::from(body), true);
                        }
                    }
                });
            }
        });
    });
    rx.recv().unwrap();
}

/// A program inside a pod's network namespace, killed on drop.
struct PodProcess {
    child: Child,
    pod: &'static Pod,
}

impl PodProcess {
    fn start(pod: &'static Pod, bin: &Path, args: &[&str]) -> Self {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns().display()))
            .arg(bin)
            .args(args)
            .args(["--workers", "2"])
            .args(["--admin-addr", "127.0.0.1:15000"])
            .args(["--metrics-addr", "127.0.0.1:15020"])
            .args(["--ready-addr", "127.0.0.1:15021"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .spawn()
            .expect("start a pod process");
        let p = PodProcess { child, pod };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p
            .local_get(15021, "/healthz/ready")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(
                Instant::now() < deadline,
                "{} in pod {} never became ready",
                bin.display(),
                pod.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// GET on one of the process's ports inside its pod.
    fn local_get(&self, port: u16, path: &'static str) -> Option<String> {
        in_netns(&self.pod.netns(), move || {
            http_get(SocketAddr::from(([127, 0, 0, 1], port)), path)
        })
        .join()
        .unwrap()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn inbound_from(z: &Ztunnel, principal: &str) -> u64 {
    metric_sum(
        &z.metrics(),
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination"), ("source_principal", principal)],
    )
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by ingress_into_the_mesh"]
fn ingress_into_the_mesh_inside() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    build(&[GW_POD, ECHO_1, ECHO_2, WAYPOINT_POD]);
    let dir = std::env::temp_dir().join(format!("ringmesh-gw-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, MESH_CONFIG).unwrap();
    let ca = dir.join("ca");
    let (config_arg, ca_arg) = (config.display().to_string(), ca.display().to_string());

    spawn_http_app(&ECHO_1, 8080);
    spawn_http_app(&ECHO_2, 8080);
    spawn_h2c_app(&ECHO_2, 8081);
    // Not mesh workloads: apps in the (uncaptured) waypoint pod.
    spawn_http_app(&WAYPOINT_POD, 9090);
    spawn_http_app(&WAYPOINT_POD, 9091);
    let ztunnel = sibling_bin("ztunnel");
    let z1 = Ztunnel::start(ztunnel.to_str().unwrap(), &config, 1, &ca);
    let z2 = Ztunnel::start(ztunnel.to_str().unwrap(), &config, 2, &ca);
    let waypoint = PodProcess::start(
        &WAYPOINT_POD,
        &sibling_bin("waypoint"),
        &[
            "--config",
            &config_arg,
            "--name",
            "apps/waypoint",
            "--ca-dir",
            &ca_arg,
        ],
    );
    let gateway = PodProcess::start(
        &GW_POD,
        Path::new(GATEWAY),
        &[
            "--config",
            &config_arg,
            "--gateway",
            "infra/edge",
            "--ca-dir",
            &ca_arg,
        ],
    );
    let through_gateway = |path: &'static str| {
        gateway
            .local_get(8080, path)
            .unwrap_or_else(|| panic!("GET {path} through the gateway: no answer"))
    };

    // 1. Straight to the Service's pods over HBONE: both pods answer, and
    //    both destination ztunnels saw the gateway's own SPIFFE identity.
    let mut pods = std::collections::HashSet::new();
    for _ in 0..20 {
        let response = through_gateway("/direct");
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(!response.contains("x-via-waypoint"), "{response}");
        pods.insert(pod_of(&response).to_string());
    }
    assert_eq!(pods.len(), 2, "both endpoints served: {pods:?}");
    for z in [&z1, &z2] {
        assert!(
            inbound_from(z, GATEWAY_IDENTITY) > 0,
            "node{} inbound from the gateway's identity: {}",
            z.node,
            z.metrics()
        );
        assert_eq!(inbound_from(z, WAYPOINT_IDENTITY), 0, "no waypoint yet");
    }

    // 1b. An HTTP/2 (h2c, as gRPC) Service in the mesh: HTTP/2 inside an
    //     HBONE tunnel with the gateway's identity.
    let before = inbound_from(&z2, GATEWAY_IDENTITY);
    for _ in 0..3 {
        let response = through_gateway("/h2");
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(response.contains("pod=echo2 proto=HTTP/2.0"), "{response}");
    }
    assert!(
        inbound_from(&z2, GATEWAY_IDENTITY) > before,
        "the h2c tunnel came from the gateway's identity: {}",
        z2.metrics()
    );

    // 2. `istio.io/ingress-use-waypoint`: through the waypoint, whose
    //    HTTPRoute adds a header; the pods then see the waypoint's identity.
    let before = [&z1, &z2].map(|z| inbound_from(z, GATEWAY_IDENTITY));
    for _ in 0..10 {
        let response = through_gateway("/through-waypoint");
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(
            response.contains("x-via-waypoint: yes\r\n"),
            "the waypoint's route ran: {response}"
        );
    }
    let from_waypoint: u64 = [&z1, &z2]
        .iter()
        .map(|z| inbound_from(z, WAYPOINT_IDENTITY))
        .sum();
    assert!(from_waypoint > 0, "the pods were reached by the waypoint");
    let after = [&z1, &z2].map(|z| inbound_from(z, GATEWAY_IDENTITY));
    assert_eq!(before, after, "the gateway did not bypass the waypoint");
    let served = metric_sum(
        &waypoint.local_get(15020, "/metrics").unwrap(),
        "istio_requests_total",
        &[
            ("destination_service_name", "echo-wp"),
            ("response_code", "200"),
        ],
    );
    assert!(served >= 10, "the waypoint counted the requests: {served}");

    // 3. A Service bound to a waypoint that does not exist: refused like a
    //    failed upstream connection (502), not a bypass to its pods.
    let response = through_gateway("/lost");
    assert!(response.starts_with("HTTP/1.1 502"), "{response:?}");

    // 3b. Outside the mesh: plain TCP, unless a DestinationRule asks for
    //     ISTIO_MUTUAL, which only a mesh workload can give (refused).
    //     (`echo` above carries ISTIO_MUTUAL too: HBONE, as without it.)
    let response = through_gateway("/outside");
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    assert_eq!(pod_of(&response), "wp", "{response}");
    let response = through_gateway("/outside-mutual");
    assert!(response.starts_with("HTTP/1.1 502"), "{response:?}");

    // 4. Live reload: the Service is bound to the existing waypoint instead.
    //    The gateway (and the waypoint, the ztunnels) pick the edit up, and
    //    its traffic now goes through the waypoint to its pod.
    let edited = MESH_CONFIG.replace(
        "istio.io/use-waypoint: nowhere",
        "istio.io/use-waypoint: waypoint",
    );
    assert_ne!(edited, MESH_CONFIG);
    let staged = dir.join(".mesh.yaml.tmp");
    std::fs::write(&staged, edited).unwrap();
    std::fs::rename(&staged, &config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = through_gateway("/lost");
        if response.starts_with("HTTP/1.1 200") {
            assert_eq!(pod_of(&response), "echo1", "{response}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit was not applied: {response:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = metric_sum(
        &waypoint.local_get(15020, "/metrics").unwrap(),
        "istio_requests_total",
        &[
            ("destination_service_name", "lost"),
            ("response_code", "200"),
        ],
    );
    assert!(served >= 1, "the waypoint served the rebound Service");

    drop((gateway, waypoint, z1, z2));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// DestinationRule tls.mode SIMPLE toward HTTPS backends (loopback).

struct TestCert {
    pem: String,
    der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn self_signed(name: &str) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        pem: cert.pem(),
        der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// An HTTPS backend (rustls) answering every request with `sni=NAME`, the
/// server name the client sent.
fn https_backend(cert: &TestCert) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der.clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_der.clone().into()),
    )
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
                let Ok(tls) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(tls, conn);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let body = format!("sni={}\n", s.conn.server_name().unwrap_or("-"));
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(response.as_bytes())
                        .and_then(|_| s.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An HTTPS backend that speaks HTTP/2 only (ALPN h2; tokio-rustls + h2):
/// answers every request with `sni=NAME proto=VERSION`.
fn h2_https_backend(cert: &TestCert) -> u16 {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der.clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_der.clone().into()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                    let Ok(mut conn) = h2::server::handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let body = format!("sni={sni} proto={:?}\n", request.version());
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-length", body.len())
                            .body(())
                            .unwrap();
                        if let Ok(mut send) = respond.send_response(head, false) {
                            let _ = send.send_data(bytes::Bytes::from(body), true);
                        }
                    }
                });
            }
        });
    });
    port
}

/// One backend per `(name, port, tls settings, appProtocol)`, routed by `/name`.
fn tls_config(listener_port: u16, backends: &[(&str, u16, &str, &str)]) -> String {
    let mut out = format!(
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
"
    );
    for (name, port, tls, app_protocol) in backends {
        out.push_str(&format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]
    backendRefs: [{{name: {name}, port: 443}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: https, port: 443, appProtocol: {app_protocol}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: https, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {name}
  trafficPolicy:
    tls: {tls}
"
        ));
    }
    out
}

#[test]
fn simple_tls_to_https_backends() {
    let cfg = support::TempConfig::new();
    let backend_cert = self_signed("backend.example");
    let other_ca = self_signed("someone-else.example");
    let good_ca = cfg.write("backend-ca.pem", &backend_cert.pem);
    let wrong_ca = cfg.write("other-ca.pem", &other_ca.pem);
    // The CA bundles sit next to the config; only YAML files are config.
    let (good_port, wrong_port) = (https_backend(&backend_cert), https_backend(&backend_cert));
    let (missing_port, grpc_port) = (
        https_backend(&backend_cert),
        h2_https_backend(&backend_cert),
    );
    let (insecure_port, othername_port) =
        (https_backend(&backend_cert), https_backend(&backend_cert));
    // No CA at all, any certificate accepted; the SNI still goes out.
    let insecure_tls = "{mode: SIMPLE, insecureSkipVerify: true, sni: backend.example}";
    // The right CA, but the certificate must be valid for another name.
    let othername_tls = format!(
        "{{mode: SIMPLE, caCertificates: {}, sni: backend.example, subjectAltNames: [other.example]}}",
        good_ca.display()
    );
    let listener = support::free_port();
    let good_tls = format!(
        "{{mode: SIMPLE, caCertificates: {}, sni: backend.example, subjectAltNames: [backend.example]}}",
        good_ca.display()
    );
    let wrong_tls = format!(
        "{{mode: SIMPLE, caCertificates: {}, sni: backend.example}}",
        wrong_ca.display()
    );
    let missing_tls = "{mode: SIMPLE, caCertificates: /nonexistent/ca.pem, sni: backend.example}";
    cfg.write(
        "all.yaml",
        &tls_config(
            listener,
            &[
                ("good", good_port, &good_tls, "https"),
                ("wrong", wrong_port, &wrong_tls, "https"),
                ("missing", missing_port, missing_tls, "https"),
                ("grpc", grpc_port, &good_tls, "kubernetes.io/h2c"),
                ("insecure", insecure_port, insecure_tls, "https"),
                ("othername", othername_port, &othername_tls, "https"),
            ],
        ),
    );
    let gw = support::Gateway::with_config(cfg.path()).start();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener));

    // The right CA: TLS to the backend, which got our SNI (and the
    // certificate matched the subjectAltNames). Keep-alive reuse works.
    for _ in 0..3 {
        let r = support::get(addr, "/good").unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
        assert_eq!(r.body, "sni=backend.example\n");
    }

    // The wrong CA: the connection fails like any upstream connect failure
    // (the engine answers 502 without retries, 503 once retries are
    // exhausted), and the log says why.
    let r = support::get(addr, "/wrong").unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("upstream connect error"), "{r:?}");
    support::wait_for("the TLS failure log line", Duration::from_secs(5), || {
        gw.logs().lines().any(|l| {
            l.contains("upstream TLS handshake failed")
                && l.contains(&format!("127.0.0.1:{wrong_port}"))
                && l.contains("UnknownIssuer")
        })
    });

    // A CA file that does not exist: a config error naming the rule (the
    // gateway keeps serving), and its backend is refused, never plaintext.
    let r = support::get(addr, "/missing").unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    let logs = gw.logs();
    assert!(
        logs.lines().any(|l| l.contains("config error")
            && l.contains("DestinationRule default/missing")
            && l.contains("/nonexistent/ca.pem")),
        "{logs}"
    );
    let status = support::get(gw.admin, "/status").unwrap().body;
    assert!(
        status.contains("DestinationRule default/missing"),
        "{status}"
    );
    // insecureSkipVerify: served without any CA.
    let r = support::get(addr, "/insecure").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "sni=backend.example\n");

    // subjectAltNames that the certificate does not carry: refused, logged.
    let r = support::get(addr, "/othername").unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    support::wait_for("the name mismatch log line", Duration::from_secs(5), || {
        gw.logs().lines().any(|l| {
            l.contains("upstream TLS handshake failed")
                && l.contains(&format!("127.0.0.1:{othername_port}"))
                && l.contains("not valid for name \"other.example\"")
        })
    });

    // An HTTP/2 backend (appProtocol h2c, as gRPC services) under SIMPLE:
    // TLS with ALPN h2, the same CA, SNI and subjectAltNames.
    for _ in 0..3 {
        let r = support::get(addr, "/grpc").unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
        assert_eq!(r.body, "sni=backend.example proto=HTTP/2.0\n");
    }
}
