//! The test topology, built inside a fresh user + network + mount namespace
//! (`unshare -Urnm`, so it needs no privileges and vanishes with the
//! process): a bridge `br0` (10.0.0.1/24) in the namespace's root standing
//! for the wire between nodes, and one network namespace per pod joined to
//! it by a veth pair. Captured pods get the capture rules istio-cni writes
//! in in-pod mode. The ztunnels run in the root (each enters the pod
//! namespaces its config names).
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const INNER_ENV: &str = "RINGMESH_ZTUNNEL_TOPOLOGY";

/// Tools the topology needs; `None` when all are present.
pub fn missing_tools() -> Option<String> {
    for tool in ["unshare", "nsenter", "ip", "iptables"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let unshare_ok = Command::new("unshare")
        .args(["-Urnm", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !unshare_ok {
        return Some("unshare -Urnm is not permitted here".into());
    }
    None
}

/// Runs this test binary's `test_name` (an ignored test) inside
/// `unshare -Urnm` and fails when it fails.
pub fn run_inside_namespaces(test_name: &str) {
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["-Urnm", "--"])
        .arg(exe)
        .args([
            test_name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, "1")
        .status()
        .expect("run unshare");
    assert!(
        status.success(),
        "the in-namespace test {test_name} failed: {status}"
    );
}

pub fn sh(script: &str) {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "setup failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Pod {
    pub name: &'static str,
    pub ip: &'static str,
    pub captured: bool,
}

impl Pod {
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/zt-{}", self.name))
    }
}

/// Creates the bridge, the pods, and the capture rules of captured pods.
pub fn build(pods: &[Pod]) {
    sh("mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns
        echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad || true
        echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad || true
        ip link set lo up
        ip link add br0 type bridge
        ip addr add 10.0.0.1/24 dev br0
        ip link set br0 up");
    for pod in pods {
        let (name, ip) = (pod.name, pod.ip);
        sh(&format!(
            "ip netns add zt-{name}
             ip link add v-{name} type veth peer name eth0 netns zt-{name}
             ip link set v-{name} master br0 up
             ip -n zt-{name} link set lo up
             ip -n zt-{name} addr add {ip}/24 dev eth0
             ip -n zt-{name} link set eth0 up
             ip -n zt-{name} route add default via 10.0.0.1"
        ));
        if pod.captured {
            // istio-cni's in-pod rules (simplified): outbound TCP → 15001
            // unless marked by the proxy or local; inbound TCP → 15006
            // unless HBONE (15008); the proxy's transparent connections to
            // the app are connmarked so that the app's replies route back to
            // the local proxy socket (table 100) instead of leaving the pod.
            sh(&format!(
                "ns='nsenter --net=/run/netns/zt-{name}'
                 $ns iptables -t mangle -A PREROUTING -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
                 $ns iptables -t mangle -A OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark
                 $ns iptables -t nat -A OUTPUT -p tcp -m mark --mark 0x539/0xfff -j RETURN
                 $ns iptables -t nat -A OUTPUT -p tcp -o lo -j RETURN
                 $ns iptables -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001
                 $ns iptables -t nat -A PREROUTING -p tcp --dport 15008 -j RETURN
                 $ns iptables -t nat -A PREROUTING -p tcp ! -i lo -j REDIRECT --to-ports 15006
                 ip -n zt-{name} rule add fwmark 0x111/0xfff pref 32764 lookup 100
                 ip -n zt-{name} route add local 0.0.0.0/0 dev lo table 100"
            ));
        }
    }
}

/// Runs `f` on a new thread inside the network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns with a valid fd only moves this (new) thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A ztunnel process with its control ports.
pub struct Ztunnel {
    pub child: Child,
    pub node: String,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
    pub args: Vec<String>,
}

impl Ztunnel {
    pub fn start(bin: &str, config: &Path, node: &str, ca_dir: &Path, base_port: u16) -> Self {
        let args = vec![
            "--config".to_string(),
            config.display().to_string(),
            "--node".into(),
            node.into(),
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--workers".into(),
            "2".into(),
            "--admin-addr".into(),
            format!("127.0.0.1:{base_port}"),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", base_port + 20),
            "--ready-addr".into(),
            format!("127.0.0.1:{}", base_port + 21),
        ];
        let child = Command::new(bin)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .spawn()
            .expect("start ztunnel");
        let z = Ztunnel {
            child,
            node: node.into(),
            metrics: format!("127.0.0.1:{}", base_port + 20).parse().unwrap(),
            ready: format!("127.0.0.1:{}", base_port + 21).parse().unwrap(),
            args,
        };
        z.wait_ready();
        z
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http_get(self.ready, "/healthz/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ztunnel {} never became ready",
                self.node
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics, "/metrics").expect("scrape metrics")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Sum of a metric family's samples whose label set contains every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
