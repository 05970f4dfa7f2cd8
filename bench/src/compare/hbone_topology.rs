//! The HBONE benchmark's topology, built inside the private `unshare -Urnm`
//! namespaces the scenario re-runs itself in (ztunnel/tests/topology's recipe):
//! two node namespaces joined by a veth wire, a bridge per node, and four pod
//! namespaces: a (node1) and b (node2) captured by the ztunnels with
//! istio-cni's in-pod rules; c (node1) and d (node2) outside the mesh, used by
//! the reference tunnel and by direct TCP. All pod-to-pod bytes cross the same
//! path: pod veth → node bridge → wire veth → node bridge → pod veth.

use super::procs::{http_status, pinned_command, Proc};
use anyhow::{bail, Context};
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INNER_ENV: &str = "RINGMESH_HBONE_BENCH_INNER";

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const POD_A: &str = "10.0.1.2";
pub const POD_B: &str = "10.0.2.2";
pub const POD_C: &str = "10.0.1.3";
pub const POD_D: &str = "10.0.2.3";
pub const APP_PORT: u16 = 8080;

pub fn netns(name: &str) -> String {
    format!("/run/netns/hb-{name}")
}

fn sh(script: &str) -> anyhow::Result<()> {
    let out = Command::new("bash").arg("-ec").arg(script).output()?;
    if !out.status.success() {
        bail!(
            "setup failed: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A pod namespace `hb-NAME` on node `node` (1 or 2) with address `ip`;
/// `captured` pods get istio-cni's in-pod redirection rules.
pub struct PodNet {
    pub name: &'static str,
    pub node: u8,
    pub ip: &'static str,
    pub captured: bool,
}

/// The four pods every HBONE scenario uses.
const BASE_PODS: [PodNet; 4] = [
    PodNet {
        name: "a",
        node: 1,
        ip: POD_A,
        captured: true,
    },
    PodNet {
        name: "b",
        node: 2,
        ip: POD_B,
        captured: true,
    },
    PodNet {
        name: "c",
        node: 1,
        ip: POD_C,
        captured: false,
    },
    PodNet {
        name: "d",
        node: 2,
        ip: POD_D,
        captured: false,
    },
];

/// Nodes, wire, bridges, the four pods, and capture rules in a and b.
pub fn build() -> anyhow::Result<()> {
    build_with(&[])
}

/// `build`, plus `extra` pods (e.g. the waypoint's).
/// Pods reuse TIME_WAIT ports: connrate opens tens of thousands of connections
/// per pod pair, and without reuse connect() slows to ~100/s once half the
/// ephemeral range is in TIME_WAIT (seen in the first runs).
pub fn build_with(extra: &[PodNet]) -> anyhow::Result<()> {
    sh("mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns
        ip link set lo up
        for n in 1 2; do
          ip netns add hb-node$n
          ip -n hb-node$n link set lo up
          nsenter --net=/run/netns/hb-node$n sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
          ip -n hb-node$n link add br0 type bridge
          ip -n hb-node$n addr add 10.0.$n.1/24 dev br0
          ip -n hb-node$n link set br0 up
        done
        ip link add wire1 netns hb-node1 type veth peer name wire2 netns hb-node2
        ip -n hb-node1 addr add 192.168.0.1/24 dev wire1
        ip -n hb-node2 addr add 192.168.0.2/24 dev wire2
        ip -n hb-node1 link set wire1 up
        ip -n hb-node2 link set wire2 up
        ip -n hb-node1 route add 10.0.2.0/24 via 192.168.0.2
        ip -n hb-node2 route add 10.0.1.0/24 via 192.168.0.1")?;
    for pod in BASE_PODS.iter().chain(extra) {
        add_pod(pod)?;
    }
    Ok(())
}

fn add_pod(pod: &PodNet) -> anyhow::Result<()> {
    let PodNet {
        name,
        node,
        ip,
        captured,
    } = *pod;
    sh(&format!(
        "ip netns add hb-{name}
         ip link add v-{name} netns hb-node{node} type veth peer name eth0 netns hb-{name}
         ip -n hb-node{node} link set v-{name} master br0 up
         ip -n hb-{name} link set lo up
         ip -n hb-{name} addr add {ip}/24 dev eth0
         ip -n hb-{name} link set eth0 up
         ip -n hb-{name} route add default via 10.0.{node}.1
         nsenter --net=/run/netns/hb-{name} sh -c 'echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo 1024 65000 > /proc/sys/net/ipv4/ip_local_port_range'"
    ))?;
    if captured {
        sh(&format!(
            "ns='nsenter --net=/run/netns/hb-{name}'
             $ns iptables -t mangle -A PREROUTING -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
             $ns iptables -t mangle -A OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark
             $ns iptables -t nat -A OUTPUT -p tcp -m mark --mark 0x539/0xfff -j RETURN
             $ns iptables -t nat -A OUTPUT -p tcp -o lo -j RETURN
             $ns iptables -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001
             $ns iptables -t nat -A PREROUTING -p tcp --dport 15008 -j RETURN
             $ns iptables -t nat -A PREROUTING -p tcp ! -i lo -j REDIRECT --to-ports 15006
             ip -n hb-{name} rule add fwmark 0x111/0xfff pref 32764 lookup 100
             ip -n hb-{name} route add local 0.0.0.0/0 dev lo table 100"
        ))?;
    }
    Ok(())
}

/// The mesh config for the ztunnels (pods a and b) and the shared CA files.
pub fn write_config(dir: &Path) -> anyhow::Result<PathBuf> {
    write_config_with(dir, "")
}

/// `write_config` with more YAML documents (`---`-separated) appended.
pub fn write_config_with(dir: &Path, extra_yaml: &str) -> anyhow::Result<PathBuf> {
    let ca = mesh_tls::CertificateAuthority::generate(TRUST_DOMAIN)?;
    ca.write(&dir.join("root-cert.pem"), &dir.join("ca-key.pem"))?;
    let pod = |name: &str, node: u8, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: apps\n  \
             labels: {{app: {name}}}\n  annotations: {{ringmesh.io/netns: {}}}\n\
             spec: {{nodeName: node{node}, serviceAccountName: sa-{name}, containers: []}}\n\
             status: {{podIP: {ip}}}\n",
            netns(name)
        )
    };
    let path = dir.join("mesh.yaml");
    std::fs::write(
        &path,
        format!(
            "{}---\n{}{extra_yaml}",
            pod("a", 1, POD_A),
            pod("b", 2, POD_B)
        ),
    )?;
    Ok(path)
}

/// `taskset -c CPU nsenter --net=NETNS PROGRAM`: both exec, so the child's pid
/// is the program's and its CPU time is the program's own.
pub fn in_ns(cpu: usize, ns: &str, program: &Path) -> Command {
    let mut c = pinned_command(cpu, "nsenter");
    c.arg(format!("--net={ns}")).arg(program);
    c
}

pub fn start_ztunnel(bin: &Path, cpu: usize, node: u8, dir: &Path) -> anyhow::Result<Proc> {
    let mut cmd = in_ns(cpu, &netns(&format!("node{node}")), bin);
    cmd.arg("--config")
        .arg(dir.join("mesh.yaml"))
        .args(["--node", &format!("node{node}"), "--workers", "1"])
        .arg("--ca-dir")
        .arg(dir)
        .args([
            "--metrics-addr",
            "127.0.0.1:15020",
            "--ready-addr",
            "127.0.0.1:15021",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let mut p = Proc::spawn(&format!("ztunnel node{node}"), cmd)?;
    wait_healthz(&mut p, &netns(&format!("node{node}")))?;
    Ok(p)
}

/// Waits until `p` (a ztunnel or the waypoint, inside namespace `ns`)
/// answers 200 on 127.0.0.1:15021/healthz/ready.
pub fn wait_healthz(p: &mut Proc, ns: &str) -> anyhow::Result<()> {
    let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_thread_in(ns, move || http_status(ready, "/healthz/ready"))? != Some(200) {
        p.check_alive()?;
        if Instant::now() > deadline {
            bail!("{} never became ready", p.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Re-runs this program (same arguments) under `unshare -Urnm`, where the
/// scenario builds its topology; Ok(true) when already inside.
pub fn reexec_in_namespaces() -> anyhow::Result<bool> {
    if std::env::var_os(INNER_ENV).is_some() {
        return Ok(true);
    }
    let status = Command::new("unshare")
        .args(["-Urnm", "--"])
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(INNER_ENV, "1")
        .status()
        .context("running unshare -Urnm (user namespaces needed)")?;
    if !status.success() {
        bail!("the benchmark inside unshare -Urnm failed: {status}");
    }
    Ok(false)
}

/// A long-running helper (`bench reftunnel ...`) that prints one line once listening.
pub fn start_listening(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut p = Proc::spawn(name, cmd)?;
    let line = p.first_stdout_line()?;
    if !line.contains("listening") {
        bail!("{name} printed {line:?}");
    }
    Ok(p)
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn on_thread_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let file = File::open(ns).with_context(|| format!("opening {ns}"))?;
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd only moves this new thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        (rc == 0).then(f)
    });
    match handle.join() {
        Ok(Some(v)) => Ok(v),
        _ => bail!("could not enter {ns}"),
    }
}
