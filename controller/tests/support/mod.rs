//! Spawns the real `controller` binary on 127.0.0.1 port 0 and reads the
//! bound addresses from its first stdout line.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ControllerProcess {
    child: Child,
    pub xds: SocketAddr,
    pub xds_tls: SocketAddr,
    pub admin: SocketAddr,
}

impl ControllerProcess {
    /// `xds_addr`: `127.0.0.1:0`, or a fixed address to restart on the same port.
    pub fn start(config: &Path, xds_addr: &str) -> Self {
        Self::start_with(config, xds_addr, &[])
    }

    /// With extra flags.
    pub fn start_with(config: &Path, xds_addr: &str, extra: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_controller"))
            .arg("--config")
            .arg(config)
            .args(["--xds-addr", xds_addr])
            .args([
                "--xds-tls-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn controller");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read controller stdout");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .parse()
                .unwrap()
        };
        Self {
            xds: field("xds"),
            xds_tls: field("xds_tls"),
            admin: field("admin"),
            child,
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn get(&self, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(self.admin).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status")).unwrap()
    }

    pub fn metric(&self, name: &str) -> u64 {
        self.get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Polls the status page until `done` holds (up to `limit`).
    pub fn wait_status(
        &self,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(start.elapsed() < limit, "status never matched: {status:#}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes atomically (temp + rename) so the watcher never reads a half file.
pub fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("ringmesh-controller-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub const BASE: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: apps
  labels: {app: a}
  annotations: {ringmesh.io/netns: /run/netns/a}
spec: {nodeName: node1, serviceAccountName: sa-a, containers: []}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: apps, labels: {app: b}}
spec: {nodeName: node2, serviceAccountName: sa-b, containers: []}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: apps}
spec:
  clusterIP: 10.96.0.10
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: apps}
spec:
  selector: {matchLabels: {app: b}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/apps/sa/sa-a"]}}]
"#;

pub fn pod(name: &str, ip: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: {node}, containers: []}}\nstatus: {{podIP: {ip}}}\n"
    )
}
