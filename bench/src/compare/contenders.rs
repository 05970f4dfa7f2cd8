//! The proxies being compared, each started with ONE worker on the proxy CPU
//! with a fair, tuned configuration generated into a temp dir.

use super::procs::{free_port, pinned_command, wait_ready, Proc};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Load straight to the backend (no proxy): the ceiling.
    Direct,
    /// `gateway --workers 1`.
    Ringmesh,
    /// nginx, worker_processes 1.
    Nginx,
    /// HAProxy, nbthread 1.
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Ringmesh => "ringmesh",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// A started contender: where to send load and which process to charge CPU to.
pub struct Contender {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// None for `direct` (no proxy process).
    pub proc: Option<Proc>,
}

impl Contender {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

pub struct StartContext<'a> {
    pub work_dir: &'a Path,
    pub backend: SocketAddr,
    pub proxy_cpu: usize,
    pub gateway_bin: &'a Path,
}

pub fn start(kind: Kind, cx: &StartContext<'_>) -> anyhow::Result<Contender> {
    if kind == Kind::Direct {
        return Ok(Contender {
            kind,
            addr: cx.backend,
            proc: None,
        });
    }
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = cx.work_dir.join(kind.name());
    std::fs::create_dir_all(&dir)?;
    let mut cmd = match kind {
        Kind::Direct => unreachable!("handled above"),
        Kind::Ringmesh => {
            write_gateway_config(&dir, port, cx.backend)?;
            let mut c = pinned_command(cx.proxy_cpu, &cx.gateway_bin.to_string_lossy());
            c.args(["--workers", "1", "--config"]).arg(&dir);
            for flag in ["--admin-addr", "--metrics-addr", "--ready-addr"] {
                c.arg(flag).arg(format!("127.0.0.1:{}", free_port()?));
            }
            c.env("RUST_LOG", "warn");
            c
        }
        Kind::Nginx => {
            let conf = write_nginx_config(&dir, port, cx.backend)?;
            let mut c = pinned_command(cx.proxy_cpu, "nginx");
            c.arg("-p").arg(&dir).arg("-c").arg(conf);
            c
        }
        Kind::Haproxy => {
            let conf = write_haproxy_config(&dir, port, cx.backend)?;
            let mut c = pinned_command(cx.proxy_cpu, "haproxy");
            c.arg("-db").arg("-f").arg(conf);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(kind.name(), cmd)?;
    wait_ready(&mut proc, addr, "/", Duration::from_secs(15))
        .with_context(|| format!("starting {}", kind.name()))?;
    Ok(Contender {
        kind,
        addr,
        proc: Some(proc),
    })
}

/// Gateway API config: one Gateway (class ringmesh) with an HTTP listener, one
/// HTTPRoute to a Service whose EndpointSlice is the backend.
pub fn gateway_yaml(port: u16, backend: SocketAddr) -> String {
    let bport = backend.port();
    let bip = backend.ip();
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bench
  namespace: default
spec:
  gatewayClassName: ringmesh
  listeners:
  - name: http
    port: {port}
    protocol: HTTP
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bench
  namespace: default
spec:
  parentRefs:
  - name: bench
  rules:
  - backendRefs:
    - name: echo
      port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: {bport}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-bench
  namespace: default
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
- name: http
  port: {bport}
endpoints:
- addresses: ["{bip}"]
  conditions:
    ready: true
"#
    )
}

fn write_gateway_config(dir: &Path, port: u16, backend: SocketAddr) -> anyhow::Result<()> {
    std::fs::write(dir.join("bench.yaml"), gateway_yaml(port, backend))?;
    Ok(())
}

/// nginx tuned the way a careful operator would for a keep-alive HTTP/1.1
/// reverse proxy: one worker, upstream keepalive pool, no access log, no
/// buffering to disk, its own prefix so the system config is untouched.
pub fn nginx_conf(dir: &Path, port: u16, backend: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering on;
        }}
    }}
}}
"#
    )
}

fn write_nginx_config(dir: &Path, port: u16, backend: SocketAddr) -> anyhow::Result<PathBuf> {
    let path = dir.join("nginx.conf");
    std::fs::write(&path, nginx_conf(dir, port, backend))?;
    Ok(path)
}

/// HAProxy: one thread, server-side connection reuse always, keep-alive.
pub fn haproxy_cfg(port: u16, backend: SocketAddr) -> String {
    format!(
        r#"global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:{port}
    default_backend echo
backend echo
    server echo1 {backend} maxconn 1000
"#
    )
}

fn write_haproxy_config(dir: &Path, port: u16, backend: SocketAddr) -> anyhow::Result<PathBuf> {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, haproxy_cfg(port, backend))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_yaml_points_at_the_backend() {
        let y = gateway_yaml(18080, "127.0.0.1:3456".parse().unwrap());
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&y)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0]["spec"]["gatewayClassName"], "ringmesh");
        assert_eq!(docs[0]["spec"]["listeners"][0]["port"], 18080);
        assert_eq!(docs[3]["ports"][0]["port"], 3456);
        assert_eq!(docs[3]["endpoints"][0]["addresses"][0], "127.0.0.1");
    }

    #[test]
    fn nginx_and_haproxy_use_one_worker_and_reuse_upstreams() {
        let b: SocketAddr = "127.0.0.1:3456".parse().unwrap();
        let n = nginx_conf(Path::new("/tmp/x"), 9000, b);
        for must in [
            "worker_processes 1;",
            "keepalive 64;",
            "proxy_http_version 1.1;",
            "access_log off;",
            "server 127.0.0.1:3456;",
        ] {
            assert!(n.contains(must), "{must}");
        }
        let h = haproxy_cfg(9000, b);
        for must in [
            "nbthread 1",
            "http-reuse always",
            "bind 127.0.0.1:9000",
            "127.0.0.1:3456",
        ] {
            assert!(h.contains(must), "{must}");
        }
    }
}
