//! End-to-end connected mode: a real controller and two ztunnels (`--xds`) in
//! the two-node topology of `tests/topology` (under `unshare -Urnm`). The
//! controller runs in node1's namespace on the wire address, so node2's
//! ztunnel reaches it across the "network". Checks: traffic through the
//! registry and certificates the controller served; an added endpoint and a
//! DENY policy change traffic within 1 s of the file edit; a broken edit
//! changes nothing and is reported; a killed controller changes nothing for
//! existing and new connections; a restarted one resyncs without re-pushing.

mod topology;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use topology::*;

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");

const POD_A: Pod = Pod {
    name: "a",
    node: 1,
    ip: "10.0.1.2",
    captured: true,
};
const POD_B: Pod = Pod {
    name: "b",
    node: 2,
    ip: "10.0.2.2",
    captured: true,
};
/// Outside the mesh (node1), an endpoint added later.
const POD_C: Pod = Pod {
    name: "c",
    node: 1,
    ip: "10.0.1.3",
    captured: false,
};
const VIP_B: &str = "10.96.0.10:80";
const VIP_C: &str = "10.96.0.11:80";
const XDS: &str = "192.168.0.1:15010";
const XDS_TLS: &str = "192.168.0.1:15012";
/// What the issue asks: a file edit changes traffic within a second.
const EDIT_LIMIT: Duration = Duration::from_secs(1);

#[test]
fn connected_topology() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED connected_topology: {why} (scripts/test.sh installs iproute2/iptables)");
        return;
    }
    run_inside_namespaces("connected_topology_inside");
}

/// The controller binary sits next to the ztunnel (`cargo build --workspace --bins`).
fn controller_bin() -> PathBuf {
    let bin = Path::new(ZTUNNEL).with_file_name("controller");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p ringmesh-controller)",
        bin.display()
    );
    bin
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: apps
  labels: {app: a}
  annotations: {ringmesh.io/netns: /run/netns/zt-a}
spec: {nodeName: node1, serviceAccountName: sa-a, containers: []}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: b
  namespace: apps
  labels: {app: b}
  annotations: {ringmesh.io/netns: /run/netns/zt-b}
spec: {nodeName: node2, serviceAccountName: sa-b, containers: []}
status: {podIP: 10.0.2.2}
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: b, namespace: apps}
spec:
  clusterIP: 10.96.0.10
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: apps}
spec:
  clusterIP: 10.96.0.11
  selector: {app: c}
  ports: [{port: 80, targetPort: 9000}]
"#;

/// Pod c: not captured (no netns annotation), the endpoint of Service c.
const POD_C_YAML: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: apps, labels: {app: c}}
spec: {nodeName: node1, containers: []}
status: {podIP: 10.0.1.3}
"#;

const DENY_A: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-a, namespace: apps}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/apps/sa/sa-a]}}]}]
"#;

const NODE_TOKENS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: ringmesh-node-tokens, namespace: istio-system}
stringData: {node1: token-of-node1, node2: token-of-node2}
"#;

fn write_file(path: &Path, text: &str) {
    // Write then rename: the watcher never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The controller, running in node1's namespace.
struct Controller {
    child: Child,
    args: Vec<String>,
}

impl Controller {
    fn start(config: &Path, ca: &Path) -> Self {
        let args = vec![
            format!("--net={}", node_netns(1).display()),
            controller_bin().display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--xds-addr".into(),
            XDS.into(),
            "--xds-tls-addr".into(),
            XDS_TLS.into(),
            "--xds-tls-san".into(),
            "192.168.0.1".into(),
            "--admin-addr".into(),
            "127.0.0.1:15014".into(),
            "--ca-cert".into(),
            ca.join("root-cert.pem").display().to_string(),
            "--ca-key".into(),
            ca.join("ca-key.pem").display().to_string(),
        ];
        let mut controller = Controller {
            child: Self::spawn(&args),
            args,
        };
        controller.wait_ready();
        controller
    }

    fn spawn(args: &[String]) -> Child {
        Command::new("nsenter")
            .args(args)
            .stdout(std::process::Stdio::null())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .spawn()
            .expect("start controller")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .get("/healthz/ready")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the controller exited"
            );
            assert!(Instant::now() < deadline, "controller never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn get(&self, path: &'static str) -> Option<String> {
        in_netns(&node_netns(1), move || {
            http_get(SocketAddr::from(([127, 0, 0, 1], 15014)), path)
        })
        .join()
        .unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let response = self.get("/status").expect("controller /status");
        let body = response.split_once("\r\n\r\n").expect("http body").1;
        serde_json::from_str(body).expect("status JSON")
    }

    fn metric(&self, name: &str) -> u64 {
        metric_sum(
            &self.get("/metrics").expect("controller /metrics"),
            name,
            &[],
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.args);
        self.wait_ready();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Echo server in `pod`: echoes until EOF, then half-closes.
fn spawn_echo(pod: &Pod, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&pod.netns(), move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind echo");
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    rx.recv().unwrap();
}

/// From inside `pod`: one connection, "ping" echoed back?
fn echoes(pod: &Pod, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&pod.netns(), move || {
        let attempt = || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"ping")?;
            s.shutdown(Shutdown::Write)?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        };
        attempt().is_ok_and(|r| r == b"ping")
    })
    .join()
    .unwrap()
}

/// Polls until `echoes(pod, to) == want`; returns how long that took.
fn wait_for(pod: &Pod, to: &str, want: bool, limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        if echoes(pod, to) == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A connection held open from `pod` to `to`, used across a controller outage.
struct Held(TcpStream);

impl Held {
    fn open(pod: &Pod, to: &str) -> Self {
        let to: SocketAddr = to.parse().unwrap();
        let stream = in_netns(&pod.netns(), move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("held connection")
        })
        .join()
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Held(stream)
    }

    fn round_trip(&mut self, data: &[u8]) -> bool {
        if self.0.write_all(data).is_err() {
            return false;
        }
        let mut buf = vec![0u8; data.len()];
        self.0.read_exact(&mut buf).is_ok() && buf == data
    }
}

fn ztunnel_metric(z: &Ztunnel, name: &str) -> u64 {
    metric_sum(&z.metrics(), name, &[])
}

/// Waits until `check` holds, up to `limit`.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by connected_topology"]
fn connected_topology_inside() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    build(&[POD_A, POD_B, POD_C]);
    let dir = std::env::temp_dir().join(format!("ringmesh-connected-{}", std::process::id()));
    let config = dir.join("controller");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    write_file(&config.join("pods.yaml"), PODS);
    write_file(&config.join("services.yaml"), SERVICES);
    write_file(&config.join("tokens.yaml"), NODE_TOKENS);
    // Each node's local pod list: only the netns paths are read from it.
    let local = dir.join("local.yaml");
    write_file(&local, PODS);
    std::fs::write(dir.join("node1.token"), "token-of-node1\n").unwrap();
    std::fs::write(dir.join("node2.token"), "token-of-node2\n").unwrap();

    spawn_echo(&POD_B, 8080);
    spawn_echo(&POD_C, 9000);
    let mut controller = Controller::start(&config, &dir.join("ca"));
    let root = dir.join("ca/root-cert.pem");

    // node1: plaintext xDS + CA (15010); node2: TLS (15012), verifying the
    // controller's serving certificate against the mesh root.
    let connected = |node: u8, xds: &str, tls: bool| {
        let mut extra = vec![
            "--xds".to_string(),
            xds.to_string(),
            "--node-token-file".into(),
            dir.join(format!("node{node}.token")).display().to_string(),
            "--pod-ip".into(),
            format!("192.168.0.{node}"),
        ];
        if tls {
            extra.extend(["--xds-root-cert".to_string(), root.display().to_string()]);
        }
        Ztunnel::start_with(ZTUNNEL, &local, node, &dir.join("unused-ca"), &extra)
    };
    let z1 = connected(1, XDS, false);
    let z2 = connected(2, XDS_TLS, true);

    // 1. Traffic over HBONE with the controller's registry and certificates.
    wait_for(&POD_A, VIP_B, true, Duration::from_secs(5), "A → VIP b");
    let dump = z1.config_dump();
    assert!(dump.contains("\"apps/a\""), "{dump}");
    assert!(
        !dir.join("unused-ca").join("ca-key.pem").exists(),
        "connected mode must not mint its own CA"
    );
    let status = controller.status();
    let nodes: Vec<&str> = status["xds"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["node_id"].as_str())
        .collect();
    assert!(
        nodes.contains(
            &"ztunnel~192.168.0.2~ztunnel-node2.istio-system~istio-system.svc.cluster.local"
        ),
        "{nodes:?}"
    );
    assert_eq!(status["xds"]["nacks"].as_array().unwrap().len(), 0);

    // 2. An added endpoint: Service c gets pod c.
    assert!(!echoes(&POD_A, VIP_C), "Service c has no endpoint yet");
    write_file(&config.join("c.yaml"), POD_C_YAML);
    let took = wait_for(&POD_A, VIP_C, true, EDIT_LIMIT, "added endpoint");
    eprintln!("added endpoint reached traffic in {took:?}");

    // 3. A DENY policy.
    write_file(&config.join("policy.yaml"), DENY_A);
    let took = wait_for(&POD_A, VIP_B, false, EDIT_LIMIT, "DENY policy");
    eprintln!("DENY policy reached traffic in {took:?}");

    // 4. A broken edit of the policy file changes nothing and is reported.
    let sent = controller.metric("ringmesh_xds_resources_sent_total");
    write_file(
        &config.join("policy.yaml"),
        "kind: AuthorizationPolicy\nspec: [not, a, map\n",
    );
    eventually(
        "the broken edit is reported",
        Duration::from_secs(5),
        || {
            controller.status()["config_errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        },
    );
    assert!(!echoes(&POD_A, VIP_B), "the broken edit lifted the DENY");
    assert_eq!(
        controller.metric("ringmesh_xds_resources_sent_total"),
        sent,
        "the broken edit pushed something"
    );
    std::fs::remove_file(config.join("policy.yaml")).unwrap();
    wait_for(&POD_A, VIP_B, true, EDIT_LIMIT, "removed policy");

    // 5. The controller dies: open and new connections are unaffected.
    let mut held = Held::open(&POD_A, VIP_B);
    assert!(held.round_trip(b"before"));
    controller.kill();
    eventually("ztunnels notice", Duration::from_secs(10), || {
        ztunnel_metric(&z1, "ringmesh_ztunnel_xds_connected") == 0
            && ztunnel_metric(&z2, "ringmesh_ztunnel_xds_connected") == 0
    });
    assert!(held.round_trip(b"during"), "held connection broke");
    assert!(
        echoes(&POD_A, VIP_B),
        "new connection to b without controller"
    );
    assert!(
        echoes(&POD_A, VIP_C),
        "new connection to c without controller"
    );

    // 6. Restart: both resync with initial_resource_versions; nothing is re-pushed.
    controller.restart();
    eventually("ztunnels reconnect", Duration::from_secs(15), || {
        ztunnel_metric(&z1, "ringmesh_ztunnel_xds_streams_opened_total") >= 2
            && ztunnel_metric(&z2, "ringmesh_ztunnel_xds_streams_opened_total") >= 2
            && controller.metric("ringmesh_xds_connections_active") == 2
    });
    assert_eq!(controller.metric("ringmesh_xds_resources_sent_total"), 0);
    assert_eq!(controller.metric("ringmesh_xds_responses_total"), 0);
    assert!(held.round_trip(b"after"), "held connection broke on resync");
    // And the new controller still drives traffic with minimal deltas: per
    // ztunnel, the Authorization and pod b's Workload (which now lists it).
    write_file(&config.join("policy.yaml"), DENY_A);
    wait_for(&POD_A, VIP_B, false, EDIT_LIMIT, "DENY after restart");
    eventually(
        "the policy reached both ztunnels",
        Duration::from_secs(5),
        || controller.metric("ringmesh_xds_resources_sent_total") >= 4,
    );
    assert_eq!(controller.metric("ringmesh_xds_resources_sent_total"), 4);
    assert_eq!(ztunnel_metric(&z1, "ringmesh_ztunnel_xds_nacks_total"), 0);
    assert_eq!(ztunnel_metric(&z2, "ringmesh_ztunnel_xds_nacks_total"), 0);
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}
