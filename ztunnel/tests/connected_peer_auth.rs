//! PeerAuthentication STRICT reaching connected ztunnels over xDS the way
//! istiod sends it (the static `istio_converted_static_strict` Authorization
//! listed by the STRICT workloads): a controller in node1's namespace, two
//! ztunnels with `--xds`; plaintext from a pod outside the mesh to a STRICT
//! pod is refused on the destination ztunnel's 15006 (counted with
//! `response_flags="DENY"`), HBONE from a mesh pod still works, and switching
//! the PeerAuthentication to PERMISSIVE on the controller lets plaintext in
//! again. `connected_peer_auth` re-runs this binary's `..._inside` under
//! `unshare -Urnm`; skipped without the tools.

mod topology;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use topology::*;

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");

const CLIENT: Pod = Pod {
    name: "client",
    node: 1,
    ip: "10.0.1.2",
    captured: true,
};
/// Outside the mesh (not captured).
const OUTSIDE: Pod = Pod {
    name: "outside",
    node: 1,
    ip: "10.0.1.3",
    captured: false,
};
const SERVER: Pod = Pod {
    name: "server",
    node: 2,
    ip: "10.0.2.2",
    captured: true,
};
const SERVER_APP: &str = "10.0.2.2:8080";
const XDS: &str = "192.168.0.1:15010";

const PODS: &str = r#"
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
metadata: {name: outside, namespace: legacy}
spec: {nodeName: node1, containers: []}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: apps
  labels: {app: server}
  annotations: {ringmesh.io/netns: /run/netns/zt-server}
spec: {nodeName: node2, serviceAccountName: server, containers: []}
status: {podIP: 10.0.2.2}
---
apiVersion: v1
kind: Secret
metadata: {name: ringmesh-node-tokens, namespace: istio-system}
stringData: {node1: token-of-node1, node2: token-of-node2}
"#;

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: apps}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

#[test]
fn connected_peer_auth() {
    if let Some(why) = missing_tools() {
        eprintln!(
            "SKIPPED connected_peer_auth: {why} (scripts/test.sh installs iproute2/iptables)"
        );
        return;
    }
    let controller = sibling("controller");
    assert!(
        controller.exists(),
        "{} is missing: build it first (cargo build -p ringmesh-controller)",
        controller.display()
    );
    run_inside_namespaces("connected_peer_auth_inside");
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

/// From inside `pod`: send `data`, half-close, read to EOF.
fn exchange(pod: &Pod, to: &str, data: &'static [u8]) -> std::io::Result<Vec<u8>> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&pod.netns(), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(data)?;
        s.shutdown(Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })
    .join()
    .unwrap()
}

/// An echo server on `port` inside `pod`.
fn spawn_echo(pod: &Pod, port: u16) {
    let netns = pod.netns();
    let addr: SocketAddr = format!("{}:{port}", pod.ip).parse().unwrap();
    std::thread::spawn(move || {
        let listener = in_netns(&netns, move || std::net::TcpListener::bind(addr))
            .join()
            .unwrap()
            .expect("bind echo");
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = Vec::new();
                if stream.read_to_end(&mut buf).is_ok() {
                    let _ = stream.write_all(&buf);
                }
            });
        }
    });
}

fn echoed(pod: &Pod) -> bool {
    exchange(pod, SERVER_APP, b"ping").is_ok_and(|r| r == b"ping")
}

fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by connected_peer_auth"]
fn connected_peer_auth_inside() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    build(&[CLIENT, OUTSIDE, SERVER]);
    let dir = std::env::temp_dir().join(format!("ringmesh-peer-auth-{}", std::process::id()));
    let config = dir.join("controller");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    write_file(&config.join("pods.yaml"), PODS);
    write_file(
        &config.join("peer-auth.yml"),
        &peer_authentication("STRICT"),
    );
    let local = dir.join("local.yaml");
    write_file(&local, PODS);
    for node in [1, 2] {
        std::fs::write(
            dir.join(format!("node{node}.token")),
            format!("token-of-node{node}\n"),
        )
        .unwrap();
    }
    spawn_echo(&SERVER, 8080);

    let _controller = KillOnDrop(
        Command::new("nsenter")
            .arg(format!("--net={}", node_netns(1).display()))
            .arg(sibling("controller"))
            .arg("--config")
            .arg(&config)
            .args(["--xds-addr", XDS, "--xds-tls-addr", "192.168.0.1:15012"])
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
    let connected = |node: u8| {
        let extra = [
            "--xds".to_string(),
            XDS.into(),
            "--node-token-file".into(),
            dir.join(format!("node{node}.token")).display().to_string(),
            "--pod-ip".into(),
            format!("192.168.0.{node}"),
        ];
        Ztunnel::start_with(ZTUNNEL, &local, node, &dir.join("unused-ca"), &extra)
    };
    let _z1 = connected(1);
    let z2 = connected(2);

    // Mesh traffic (HBONE, the client's identity) is served under STRICT.
    wait_until(
        "client → server over HBONE",
        Duration::from_secs(10),
        || echoed(&CLIENT),
    );
    // Plaintext from outside the mesh is refused by the server's ztunnel.
    assert!(!echoed(&OUTSIDE), "STRICT admitted plaintext");
    let denied = metric_sum(
        &z2.metrics(),
        "istio_tcp_connections_opened_total",
        &[
            ("connection_security_policy", "none"),
            ("response_flags", "DENY"),
        ],
    );
    assert!(denied >= 1, "{}", z2.metrics());

    // PERMISSIVE on the controller: the converted policy is withdrawn from the
    // workload and plaintext gets in again.
    write_file(
        &config.join("peer-auth.yml"),
        &peer_authentication("PERMISSIVE"),
    );
    wait_until(
        "PERMISSIVE reaches the ztunnel",
        Duration::from_secs(10),
        || echoed(&OUTSIDE),
    );
    assert!(echoed(&CLIENT), "HBONE still works");
    let _ = std::fs::remove_dir_all(&dir);
}
