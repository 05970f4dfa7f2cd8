//! What `bench compare waypoint-latency` adds to the HBONE topology
//! ([`hbone_topology`](super::hbone_topology)): the waypoint's pod and
//! Gateway, two Services in front of pod b's echo (one bound to the waypoint
//! with `istio.io/use-waypoint`, one not), the nginx pod of the reference L7
//! hop, and the processes: echo backends, waypoint, nginx.

use super::contenders::nginx_conf_in_user_namespace;
use super::hbone_topology::{self as topo, in_ns, netns, PodNet, APP_PORT, POD_B, POD_D};
use super::procs::Proc;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

/// The waypoint's pod (node2, not captured: it speaks HBONE itself).
pub const WAYPOINT_POD: PodNet = PodNet {
    name: "wp",
    node: 2,
    ip: "10.0.2.9",
    captured: false,
};
/// nginx's pod (node2, outside the mesh), the reference L7 hop.
pub const NGINX_POD: PodNet = PodNet {
    name: "ng",
    node: 2,
    ip: "10.0.2.8",
    captured: false,
};
/// nginx's listener in its pod.
pub const NGINX_PORT: u16 = 8081;
/// Service `echo-l4` (no waypoint): pod b's echo behind both ztunnels.
pub const L4_VIP: &str = "10.96.0.20";
/// Service `echo-l7` (bound to the waypoint): the same echo, through it.
pub const L7_VIP: &str = "10.96.0.21";
pub const WAYPOINT_NAME: &str = "apps/waypoint";

/// The YAML documents appended to the HBONE topology's mesh config (pods a
/// and b): the waypoint Gateway and pod, and the two Services of pod b.
pub fn mesh_yaml() -> String {
    let service = |name: &str, vip: &str, labels: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps{labels}}}\n\
             spec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: {APP_PORT}}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: apps, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {APP_PORT}}}]\nendpoints: [{{addresses: [{POD_B}]}}]\n"
        )
    };
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: apps}}\n\
         ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: apps}}\n\
         spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: wp\n  namespace: apps\n  \
         labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}\n\
         spec: {{nodeName: node{}, serviceAccountName: waypoint, containers: []}}\nstatus: {{podIP: {}}}\n{}{}",
        WAYPOINT_POD.node,
        WAYPOINT_POD.ip,
        service("echo-l4", L4_VIP, ""),
        service(
            "echo-l7",
            L7_VIP,
            ", labels: {istio.io/use-waypoint: waypoint}"
        ),
    )
}

/// `bench echo --fixed-response SIZE` on APP_PORT inside `pod`, pinned to `cpu`.
pub fn start_echo(bench: &Path, cpu: usize, pod: &str, size: usize) -> anyhow::Result<Proc> {
    let mut cmd = in_ns(cpu, &netns(pod), bench);
    cmd.args(["echo", "--bind", "0.0.0.0", "--quiet"])
        .args(["--port", &APP_PORT.to_string()])
        .args(["--name", "echo", "--namespace", "apps"])
        .args(["--fixed-response", &size.to_string()]);
    topo::start_listening(&format!("echo in pod {pod}"), cmd)
}

/// The waypoint (one worker) in its pod, pinned to `cpu`, once ready.
pub fn start_waypoint(bin: &Path, cpu: usize, dir: &Path) -> anyhow::Result<Proc> {
    if !bin.is_file() {
        bail!(
            "{} not found (cargo build --release -p ringmesh-waypoint, or set WAYPOINT_BIN)",
            bin.display()
        );
    }
    let ns = netns(WAYPOINT_POD.name);
    let mut cmd = in_ns(cpu, &ns, bin);
    cmd.arg("--config")
        .arg(dir.join("mesh.yaml"))
        .args(["--name", WAYPOINT_NAME, "--workers", "1"])
        .arg("--ca-dir")
        .arg(dir)
        .args(["--metrics-addr", "127.0.0.1:15020"])
        .args(["--ready-addr", "127.0.0.1:15021"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let mut p = Proc::spawn("waypoint", cmd)?;
    topo::wait_healthz(&mut p, &ns)?;
    Ok(p)
}

/// nginx in its pod proxying to pod d's echo, pinned to `cpu`.
pub fn start_nginx(cpu: usize, dir: &Path) -> anyhow::Result<Proc> {
    let ng_dir = dir.join("nginx");
    std::fs::create_dir_all(&ng_dir)?;
    let listen: SocketAddr = ([0, 0, 0, 0], NGINX_PORT).into();
    let backend: SocketAddr = format!("{POD_D}:{APP_PORT}").parse()?;
    let conf = ng_dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf_in_user_namespace(&ng_dir, listen, backend),
    )?;
    let mut cmd = in_ns(cpu, &netns(NGINX_POD.name), Path::new("nginx"));
    cmd.arg("-p")
        .arg(&ng_dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut p = Proc::spawn("nginx", cmd).context("starting nginx")?;
    // nginx prints nothing once listening; give it a moment to fail on its config.
    std::thread::sleep(std::time::Duration::from_millis(300));
    p.check_alive()?;
    Ok(p)
}

/// The requests the waypoint counted (`istio_requests_total`, summed over
/// its labels), from its /metrics inside its pod: proof that the `waypoint`
/// path really ran through it.
pub fn waypoint_requests() -> anyhow::Result<u64> {
    scrape_counter(WAYPOINT_POD.name, "istio_requests_total")
}

/// The TCP connections ztunnel node2 accepted for its pods
/// (`istio_tcp_connections_opened_total`): proof that the mesh paths were
/// captured and tunneled, not passed through.
pub fn node2_ztunnel_connections() -> anyhow::Result<u64> {
    scrape_counter("node2", "istio_tcp_connections_opened_total")
}

/// Counter `name` summed from 127.0.0.1:15020/metrics inside namespace hb-NS.
fn scrape_counter(ns: &str, name: &str) -> anyhow::Result<u64> {
    let metrics = SocketAddr::from(([127, 0, 0, 1], 15020));
    let text = topo::on_thread_in(&netns(ns), move || {
        super::procs::http_get(metrics, "/metrics")
    })?
    .with_context(|| format!("scraping /metrics in {ns}"))?;
    Ok(counter_sum(&text, name))
}

/// Sum of a Prometheus counter's samples over all label sets.
pub fn counter_sum(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_sums_every_label_set_and_nothing_else() {
        let text = "# TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"waypoint\",response_code=\"200\"} 1200\n\
            istio_requests_total{reporter=\"waypoint\",response_code=\"503\"} 3\n\
            istio_requests_total_extra{a=\"b\"} 99\n\
            istio_request_duration_milliseconds_sum{a=\"b\"} 77\n";
        assert_eq!(counter_sum(text, "istio_requests_total"), 1203);
        assert_eq!(
            counter_sum("HTTP/1.1 200 OK\r\n\r\n", "istio_requests_total"),
            0
        );
    }

    fn docs(yaml: &str) -> Vec<serde_yaml_ng::Value> {
        serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_yaml_ng::Value| !v.is_null())
            .collect()
    }

    #[test]
    fn only_the_l7_service_is_bound_to_the_waypoint() {
        let docs = docs(&mesh_yaml());
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "Gateway",
                "Pod",
                "Service",
                "EndpointSlice",
                "Service",
                "EndpointSlice"
            ]
        );
        assert_eq!(docs[1]["spec"]["gatewayClassName"], "istio-waypoint");
        assert_eq!(
            docs[2]["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "waypoint"
        );
        assert_eq!(docs[2]["status"]["podIP"], WAYPOINT_POD.ip);
        let (l4, l7) = (&docs[3], &docs[5]);
        assert_eq!(l4["spec"]["clusterIP"], L4_VIP);
        assert!(l4["metadata"]["labels"].is_null(), "{l4:?}");
        assert_eq!(l7["spec"]["clusterIP"], L7_VIP);
        assert_eq!(
            l7["metadata"]["labels"]["istio.io/use-waypoint"],
            "waypoint"
        );
        for slice in [&docs[4], &docs[6]] {
            assert_eq!(slice["endpoints"][0]["addresses"][0], POD_B);
            assert_eq!(slice["ports"][0]["port"], APP_PORT);
        }
        assert_eq!(
            format!("apps/{}", docs[1]["metadata"]["name"].as_str().unwrap()),
            WAYPOINT_NAME
        );
    }
}
