//! The test topology, built inside a fresh user + network + mount namespace
//! (`unshare -Urnm`, so it needs no privileges and vanishes with the
//! process). Two "nodes" are network namespaces joined by a veth pair (the
//! wire, 192.168.0.0/24) that route each other's pod CIDR; each node has a
//! bridge for its pods (node1 10.0.1.0/24, node2 10.0.2.0/24); each pod is a
//! network namespace on its node's bridge. Captured pods get the capture
//! rules istio-cni writes in in-pod mode. One ztunnel per node runs inside
//! the node's namespace and enters the pod namespaces its config names.
#![allow(dead_code)]

pub mod apps;
pub mod http_client;
pub mod waypoint;

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
    /// 1 or 2.
    pub node: u8,
    pub ip: &'static str,
    pub captured: bool,
}

impl Pod {
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/zt-{}", self.name))
    }
}

pub fn node_netns(node: u8) -> PathBuf {
    PathBuf::from(format!("/run/netns/zt-node{node}"))
}

/// Creates the two nodes, the pods, and the capture rules of captured pods.
pub fn build(pods: &[Pod]) {
    sh("mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns
        echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad || true
        echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad || true
        ip link set lo up
        for n in 1 2; do
          ip netns add zt-node$n
          ip -n zt-node$n link set lo up
          nsenter --net=/run/netns/zt-node$n sh -c 'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; echo 1 > /proc/sys/net/ipv4/ip_forward'
          ip -n zt-node$n link add br0 type bridge
          ip -n zt-node$n addr add 10.0.$n.1/24 dev br0
          ip -n zt-node$n link set br0 up
        done
        ip link add wire1 netns zt-node1 type veth peer name wire2 netns zt-node2
        ip -n zt-node1 addr add 192.168.0.1/24 dev wire1
        ip -n zt-node2 addr add 192.168.0.2/24 dev wire2
        ip -n zt-node1 link set wire1 up
        ip -n zt-node2 link set wire2 up
        ip -n zt-node1 route add 10.0.2.0/24 via 192.168.0.2
        ip -n zt-node2 route add 10.0.1.0/24 via 192.168.0.1");
    for pod in pods {
        let (name, ip, node) = (pod.name, pod.ip, pod.node);
        sh(&format!(
            "ip netns add zt-{name}
             nsenter --net=/run/netns/zt-{name} sh -c 'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad'
             ip link add v-{name} netns zt-node{node} type veth peer name eth0 netns zt-{name}
             ip -n zt-node{node} link set v-{name} master br0 up
             ip -n zt-{name} link set lo up
             ip -n zt-{name} addr add {ip}/24 dev eth0
             ip -n zt-{name} link set eth0 up
             ip -n zt-{name} route add default via 10.0.{node}.1"
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

/// A ztunnel process running inside its node's network namespace.
pub struct Ztunnel {
    pub child: Child,
    pub node: u8,
    pub args: Vec<String>,
}

impl Ztunnel {
    pub fn start(bin: &str, config: &Path, node: u8, ca_dir: &Path) -> Self {
        Self::start_with(bin, config, node, ca_dir, &[])
    }

    /// [`Ztunnel::start`] with extra flags (connected mode: `--xds ADDR`, …).
    pub fn start_with(bin: &str, config: &Path, node: u8, ca_dir: &Path, extra: &[String]) -> Self {
        let args = vec![
            format!("--net={}", node_netns(node).display()),
            bin.to_string(),
            "--config".to_string(),
            config.display().to_string(),
            "--node".into(),
            format!("node{node}"),
            "--ca-dir".into(),
            ca_dir.display().to_string(),
            "--workers".into(),
            "2".into(),
            "--metrics-addr".into(),
            "127.0.0.1:15020".into(),
            "--ready-addr".into(),
            "127.0.0.1:15021".into(),
            "--config-dump-addr".into(),
            "127.0.0.1:15080".into(),
        ];
        let mut args = args;
        args.extend(extra.iter().cloned());
        // Lets the suite run on the epoll driver too.
        if let Ok(driver) = std::env::var("RINGMESH_ZTUNNEL_IO_DRIVER") {
            args.extend(["--io-driver".to_string(), driver]);
        }
        let z = Ztunnel {
            child: Self::spawn(&args),
            node,
            args,
        };
        z.wait_ready();
        z
    }

    /// `nsenter` execs the ztunnel: the child is the ztunnel itself.
    fn spawn(args: &[String]) -> Child {
        Command::new("nsenter")
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .spawn()
            .expect("start ztunnel")
    }

    /// Kills the process and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.args);
    }

    /// GET on one of the ztunnel's local ports, from inside its node.
    fn get(&self, port: u16, path: &'static str) -> Option<String> {
        in_netns(&node_netns(self.node), move || {
            http_get(SocketAddr::from(([127, 0, 0, 1], port)), path)
        })
        .join()
        .unwrap()
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .get(15021, "/healthz/ready")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ztunnel node{} never became ready",
                self.node
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        self.get(15020, "/metrics").expect("scrape metrics")
    }

    pub fn config_dump(&self) -> String {
        self.get(15080, "/config_dump").expect("config dump")
    }

    /// The runtime's admin `/config_dump` (port 15000), which ztunnel fills
    /// with its workload registry.
    pub fn admin_config_dump(&self) -> String {
        self.get(15000, "/config_dump").expect("admin config dump")
    }

    /// The status line of `/healthz/ready`, if the ready server answers.
    pub fn ready_status(&self) -> Option<String> {
        let response = self.get(15021, "/healthz/ready")?;
        Some(response.lines().next().unwrap_or("").to_string())
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill -TERM {pid}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for ztunnel")
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
