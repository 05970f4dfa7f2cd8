//! L7 AuthorizationPolicy in the waypoint, end to end in the two-node
//! topology: two client pods with their own service accounts (node1) →
//! ztunnel → HBONE → waypoint (node2) → HBONE → ztunnel → echo pod (node2).
//! The principals the waypoint checks are the HBONE peer identities the
//! client ztunnel presents for each pod; the policies attach with
//! `targetRefs` (the Service, the waypoint's Gateway), so ztunnel leaves
//! them to the waypoint.
//!
//! `waypoint_authz` re-runs this binary's `waypoint_authz_inside` under
//! `unshare -Urnm`; needs `target/debug/waypoint` (`cargo build -p
//! ringmesh-waypoint`); skipped where the tools or user namespaces are missing.

mod topology;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use topology::apps::spawn_http_app;
use topology::http_client::Client;
use topology::waypoint::Waypoint;
use topology::*;

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");

const CLIENT: Pod = Pod {
    name: "client",
    node: 1,
    ip: "10.0.1.2",
    captured: true,
};
const INTRUDER: Pod = Pod {
    name: "intruder",
    node: 1,
    ip: "10.0.1.4",
    captured: true,
};
const ECHO: Pod = Pod {
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
const INTRUDER_IDENTITY: &str = "spiffe://cluster.local/ns/apps/sa/intruder";

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
  name: intruder
  namespace: apps
  annotations: {ringmesh.io/netns: /run/netns/zt-intruder}
spec: {nodeName: node1, serviceAccountName: intruder, containers: []}
status: {podIP: 10.0.1.4}
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
endpoints: [{addresses: [10.0.2.2]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-allowed, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/allowed"], methods: [GET]}}]
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

#[test]
fn waypoint_authz() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED waypoint_authz: {why} (scripts/test.sh installs iproute2/iptables)");
        return;
    }
    let bin = waypoint_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ringmesh-waypoint` first",
        bin.display()
    );
    run_inside_namespaces("waypoint_authz_inside");
}

fn waypoint_bin() -> PathBuf {
    Path::new(ZTUNNEL).with_file_name("waypoint")
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by waypoint_authz"]
fn waypoint_authz_inside() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    build(&[CLIENT, INTRUDER, ECHO, WAYPOINT_POD]);
    let dir = std::env::temp_dir().join(format!("ringmesh-wpauthz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let ca = dir.join("ca");

    spawn_http_app(&ECHO, 8080);
    let _z1 = Ztunnel::start(ZTUNNEL, &config, 1, &ca);
    let _z2 = Ztunnel::start(ZTUNNEL, &config, 2, &ca);
    let waypoint = Waypoint::start(
        &waypoint_bin(),
        &WAYPOINT_POD,
        &config,
        "apps/waypoint",
        &ca,
    );

    // The first connections may race the listeners: retry the first request.
    let mut client = Client::new(&CLIENT, ECHO_VIP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let allowed = loop {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client.get("/allowed")));
        match r {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => {
                client = Client::new(&CLIENT, ECHO_VIP);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    };
    // ALLOW on a path: /allowed passes, /other does not.
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.pod(), "echo2", "{allowed:?}");
    let other = client.get("/other");
    assert_eq!(other.status, 403, "{other:?}");
    assert_eq!(other.body, "RBAC: access denied");

    // DENY by principal: the intruder's identity is refused even on /allowed.
    let mut intruder = Client::new(&INTRUDER, ECHO_VIP);
    let denied = intruder.get("/allowed");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.body, "RBAC: access denied");

    // The waypoint counted both denials, and labels the intruder's request
    // with its principal.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = waypoint.metrics();
        let denials = metric_sum(&m, "ringmesh_authz_denied_total", &[]);
        if denials >= 2 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        metric_sum(&metrics, "ringmesh_authz_denied_total", &[]),
        2,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                ("reporter", "waypoint"),
                ("response_code", "403"),
                ("response_flags", "RBAC"),
                ("source_principal", INTRUDER_IDENTITY),
                ("destination_service_name", "echo"),
            ],
        ),
        1,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                ("response_code", "200"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/apps/sa/client"
                ),
                ("source_workload_namespace", "apps"),
            ],
        ) >= 1,
        "{metrics}"
    );
}
