//! L7 AuthorizationPolicy in the waypoint's entry point
//! (`serve_service_stream_from`): real HTTP/1.1 and gRPC traffic through a
//! Service-scoped server whose HBONE peer identity is fixed per listener.

mod common;
mod h2_support;

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use common::*;
use h2_support::*;
use http::Request;
use mesh_registry::service_routes::{ServiceRoute, ServiceRoutes};
use mesh_registry::{new_handle, Cluster, RouteTable, SnapshotHandle, UpstreamProtocol};

const VIP: &str = "10.96.0.10:80";
const CLIENT: &str = "spiffe://cluster.local/ns/apps/sa/client";
const INTRUDER: &str = "spiffe://cluster.local/ns/apps/sa/intruder";

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-allowed, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/allowed", "/echo.Echo/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-intruder, namespace: apps}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/apps/sa/intruder"]}}]
"#;

fn snapshot_for(cluster: &Arc<Cluster>) -> SnapshotHandle {
    let loaded = mesh_config::load_str("authz.yaml", POLICIES);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let authz = mesh_registry::translate::l7_authz::l7_authz_for(
        &loaded.resources,
        &obj("apps", "waypoint"),
        &obj("apps", "echo"),
    )
    .expect("both policies apply to apps/echo");
    let mut snap = snapshot(1, vec![], vec![]);
    snap.services = ServiceRoutes {
        by_vip: [(
            VIP.parse().unwrap(),
            Arc::new(ServiceRoute {
                service: obj("apps", "echo"),
                port: 80,
                table: Arc::new(RouteTable {
                    entries: vec![prefix("/", rule(vec![backend(cluster, 1)], vec![]))],
                }),
                from_routes: false,
                authz: Some(Arc::new(authz)),
            }),
        )]
        .into_iter()
        .collect(),
    };
    new_handle(snap)
}

/// A waypoint-like server: every connection is a tunnel for VIP from `identity`.
fn waypoint(
    snapshots: SnapshotHandle,
    identity: &'static str,
) -> (SocketAddr, Arc<mesh_http::WorkerMetrics>) {
    let metrics = Arc::new(mesh_http::WorkerMetrics::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let m = metrics.clone();
    std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = monoio::net::TcpListener::from_std(listener).unwrap();
            let handler = Rc::new(mesh_http::HttpHandler::new(snapshots, m, quick_options()));
            let drain = mesh_runtime::Drain::new();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                monoio::spawn(handler.clone().serve_service_stream_from(
                    stream,
                    peer,
                    VIP.parse().unwrap(),
                    Some(Rc::from(identity)),
                    drain.clone(),
                ));
            }
        });
    });
    (addr, metrics)
}

fn get(addr: SocketAddr, path: &str) -> Response {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    (&s).write_all(
        format!("GET {path} HTTP/1.1\r\nHost: echo.apps\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    read_response(&mut BufReader::new(s), false)
}

#[test]
fn allow_on_a_path_and_deny_by_principal_over_http1() {
    let up = upstream();
    let snapshots = snapshot_for(&cluster("echo", vec![up.addr]));
    let (client, metrics) = waypoint(snapshots.clone(), CLIENT);
    let (intruder, intruder_metrics) = waypoint(snapshots, INTRUDER);

    let allowed = get(client, "/allowed");
    assert_eq!(allowed.status, 200, "{}", allowed.head);
    let other = get(client, "/other");
    assert_eq!(other.status, 403, "{}", other.head);
    assert_eq!(other.text(), "RBAC: access denied");
    let denied = get(intruder, "/allowed");
    assert_eq!(denied.status, 403, "DENY by principal: {}", denied.head);
    assert_eq!(denied.text(), "RBAC: access denied");

    let seen: Vec<String> = up
        .seen
        .heads
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.lines().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        seen,
        vec!["GET /allowed HTTP/1.1".to_string()],
        "only the allowed request went upstream"
    );
    assert_eq!(
        metrics
            .authz_denied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        intruder_metrics
            .authz_denied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Requests are recorded once their response is written: wait for them.
    let recorded =
        |m: &mesh_http::WorkerMetrics| m.requests().values().map(|s| s.count).sum::<u64>();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (recorded(&metrics) < 2 || recorded(&intruder_metrics) < 1)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let by_source = intruder_metrics.requests_labeled();
    assert!(
        by_source
            .keys()
            .any(|k| k.destination.name == "echo" && k.code == 403 && k.source == INTRUDER),
        "the denial is counted with the peer's principal: {by_source:?}"
    );
    let codes: Vec<u16> = metrics.requests().keys().map(|(_, code)| *code).collect();
    assert!(codes.contains(&403) && codes.contains(&200), "{codes:?}");
}

#[test]
fn grpc_denial_is_permission_denied() {
    let c = Arc::new(Cluster {
        name: "apps/echo:80".into(),
        service: obj("apps", "echo"),
        port: 80,
        endpoints: vec![h2c_backend()],
        protocol: UpstreamProtocol::H2c,
        policy: Default::default(),
    });
    let snapshots = snapshot_for(&c);
    let (client, metrics) = waypoint(snapshots.clone(), CLIENT);
    let (intruder, _) = waypoint(snapshots, INTRUDER);
    let call = |path: &str| {
        Request::post(format!("http://echo.apps{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    runtime().block_on(async {
        let ok = send(
            &h2c_client(client).await,
            call("/echo.Echo/Say"),
            Some(b"hi"),
            7,
        )
        .await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, b"hi");
        assert_eq!(ok.trailers.unwrap()["grpc-status"], "0");

        let other = send(&h2c_client(client).await, call("/other.Svc/Do"), None, 0).await;
        assert_eq!(other.status, 200, "gRPC errors are trailers-only 200s");
        assert_eq!(other.header("grpc-status"), Some("7"), "PERMISSION_DENIED");
        assert_eq!(other.header("grpc-message"), Some("RBAC: access denied"));

        let denied = send(&h2c_client(intruder).await, call("/echo.Echo/Say"), None, 0).await;
        assert_eq!(denied.header("grpc-status"), Some("7"));
    });
    // Counted by gRPC status: the served call 0, the denied one 7.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let statuses = loop {
        let statuses: Vec<Option<u32>> = metrics
            .requests_labeled()
            .keys()
            .map(|k| k.grpc_status)
            .collect();
        if statuses.len() >= 2 || std::time::Instant::now() > deadline {
            break statuses;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(
        statuses.contains(&Some(0)) && statuses.contains(&Some(7)),
        "{statuses:?}"
    );
}
