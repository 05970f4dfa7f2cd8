//! The proxies being compared, each started with ONE worker on the proxy CPU
//! with a fair, tuned configuration generated into a temp dir.

use super::procs::{free_port, pinned_command, wait_ready, Proc};
use super::tls_setup::TlsFiles;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
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

/// TLS termination for the gateway-https / gateway-h2 scenarios.
pub struct TlsListener<'a> {
    pub files: &'a TlsFiles,
    /// Offer ALPN h2 (and require the contender to speak HTTP/2).
    pub h2: bool,
    /// For the readiness check (`bench load` over TLS).
    pub bench_bin: &'a Path,
}

pub struct StartContext<'a> {
    pub work_dir: &'a Path,
    pub backend: SocketAddr,
    pub proxy_cpu: usize,
    pub gateway_bin: &'a Path,
    /// Terminate TLS on the listener (None: plain HTTP/1.1).
    pub tls: Option<TlsListener<'a>>,
}

pub fn start(kind: Kind, cx: &StartContext<'_>) -> anyhow::Result<Contender> {
    if kind == Kind::Direct && cx.tls.is_some() {
        anyhow::bail!("the backend speaks plain HTTP/1.1 only, so there is no direct TLS baseline");
    }
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
            match &cx.tls {
                None => write_gateway_config(&dir, port, cx.backend)?,
                Some(tls) => {
                    std::fs::write(
                        dir.join("bench.yaml"),
                        gateway_https_yaml(port, cx.backend, GATEWAY_CERT_SECRET),
                    )?;
                    std::fs::write(
                        dir.join("cert.yaml"),
                        tls.files.secret_yaml(GATEWAY_CERT_SECRET),
                    )?;
                }
            }
            let mut c = pinned_command(cx.proxy_cpu, &cx.gateway_bin.to_string_lossy());
            c.args(["--workers", "1", "--config"]).arg(&dir);
            for flag in ["--admin-addr", "--metrics-addr", "--ready-addr"] {
                c.arg(flag).arg(format!("127.0.0.1:{}", free_port()?));
            }
            c.env("RUST_LOG", "warn");
            c
        }
        Kind::Nginx => {
            let conf = dir.join("nginx.conf");
            let tls = cx.tls.as_ref().map(|t| NginxTls {
                cert: &t.files.cert_file,
                key: &t.files.key_file,
                h2: t.h2,
            });
            std::fs::write(&conf, nginx_conf_with(&dir, port, cx.backend, tls.as_ref()))?;
            let mut c = pinned_command(cx.proxy_cpu, "nginx");
            c.arg("-p").arg(&dir).arg("-c").arg(conf);
            c
        }
        Kind::Haproxy => {
            let conf = dir.join("haproxy.cfg");
            let bind_tls = cx
                .tls
                .as_ref()
                .map(|t| haproxy_bind_tls(&t.files.combined_file, t.h2));
            std::fs::write(
                &conf,
                haproxy_cfg_with(port, cx.backend, bind_tls.as_deref().unwrap_or("")),
            )?;
            let mut c = pinned_command(cx.proxy_cpu, "haproxy");
            c.arg("-db").arg("-f").arg(conf);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(kind.name(), cmd)?;
    match &cx.tls {
        None => wait_ready(&mut proc, addr, "/", Duration::from_secs(15)),
        Some(t) => super::tls_setup::wait_ready(
            &mut proc,
            t.bench_bin,
            addr,
            t.h2,
            Duration::from_secs(15),
        ),
    }
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

/// The Secret the HTTPS listener's certificateRefs name.
pub const GATEWAY_CERT_SECRET: &str = "bench-cert";

/// As `gateway_yaml`, with an HTTPS listener terminating TLS with the
/// certificate in Secret `secret` (no hostname: it serves every SNI).
pub fn gateway_https_yaml(port: u16, backend: SocketAddr, secret: &str) -> String {
    gateway_yaml(port, backend).replacen(
        &format!("    port: {port}\n    protocol: HTTP\n"),
        &format!(
            "    port: {port}\n    protocol: HTTPS\n    tls:\n      mode: Terminate\n      certificateRefs:\n      - kind: Secret\n        name: {secret}\n"
        ),
        1,
    )
}

fn write_gateway_config(dir: &Path, port: u16, backend: SocketAddr) -> anyhow::Result<()> {
    std::fs::write(dir.join("bench.yaml"), gateway_yaml(port, backend))?;
    Ok(())
}

/// nginx tuned the way a careful operator would for a keep-alive HTTP/1.1
/// reverse proxy: one worker, upstream keepalive pool, no access log, no
/// buffering to disk, its own prefix so the system config is untouched.
#[cfg(test)]
pub fn nginx_conf(dir: &Path, port: u16, backend: SocketAddr) -> String {
    nginx_conf_with(dir, port, backend, None)
}

/// TLS on nginx's listener.
pub struct NginxTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub h2: bool,
}

/// `nginx_conf`, terminating TLS (and HTTP/2 with ALPN h2) when `tls` is given.
/// The `listen ... ssl http2` spelling works on nginx 1.22 (Debian 12) and,
/// with a deprecation warning, on later versions.
pub fn nginx_conf_with(
    dir: &Path,
    port: u16,
    backend: SocketAddr,
    tls: Option<&NginxTls<'_>>,
) -> String {
    nginx_conf_at(dir, ([127, 0, 0, 1], port).into(), backend, tls)
}

/// nginx as a plain HTTP/1.1 reverse proxy inside the private user namespace
/// of the HBONE topology (waypoint-latency's L7 reference hop), listening on
/// `listen`. Single-process mode: there a master running as root cannot start
/// a worker (`initgroups` fails: `unshare -U` denies setgroups), and one
/// process is the same event loop as one worker.
pub fn nginx_conf_in_user_namespace(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> String {
    nginx_conf_at(dir, listen, backend, None).replacen(
        "master_process on;\n",
        "master_process off;\n",
        1,
    )
}

fn nginx_conf_at(
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
    tls: Option<&NginxTls<'_>>,
) -> String {
    let d = dir.display();
    let (listen_tls, tls_lines) = match tls {
        None => (String::new(), String::new()),
        Some(t) => (
            if t.h2 { " ssl http2".to_string() } else { " ssl".to_string() },
            format!(
                "        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:10m;\n",
                t.cert.display(),
                t.key.display()
            ),
        ),
    };
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
        listen {listen}{listen_tls} reuseport backlog=4096;
{tls_lines}        location / {{
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

/// HAProxy: one thread, server-side connection reuse always, keep-alive.
#[cfg(test)]
pub fn haproxy_cfg(port: u16, backend: SocketAddr) -> String {
    haproxy_cfg_with(port, backend, "")
}

/// The `bind` suffix terminating TLS with the combined cert+key file.
pub fn haproxy_bind_tls(combined_pem: &Path, h2: bool) -> String {
    format!(
        " ssl crt {} alpn {}",
        combined_pem.display(),
        if h2 { "h2,http/1.1" } else { "http/1.1" }
    )
}

/// `haproxy_cfg` with `bind_suffix` appended to the frontend's bind line.
pub fn haproxy_cfg_with(port: u16, backend: SocketAddr, bind_suffix: &str) -> String {
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
    bind 127.0.0.1:{port}{bind_suffix}
    default_backend echo
backend echo
    server echo1 {backend} maxconn 1000
"#
    )
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

    #[test]
    fn tls_configs_share_the_certificate_and_offer_h2_only_when_asked() {
        let b: SocketAddr = "127.0.0.1:3456".parse().unwrap();
        let (cert, key) = (Path::new("/c/bench.crt"), Path::new("/c/bench.key"));
        let n = nginx_conf_with(
            Path::new("/tmp/x"),
            9443,
            b,
            Some(&NginxTls {
                cert,
                key,
                h2: false,
            }),
        );
        assert!(n.contains("listen 127.0.0.1:9443 ssl reuseport"), "{n}");
        assert!(
            n.contains("ssl_certificate /c/bench.crt;")
                && n.contains("ssl_certificate_key /c/bench.key;")
        );
        let n2 = nginx_conf_with(
            Path::new("/tmp/x"),
            9443,
            b,
            Some(&NginxTls {
                cert,
                key,
                h2: true,
            }),
        );
        assert!(
            n2.contains("listen 127.0.0.1:9443 ssl http2 reuseport"),
            "{n2}"
        );
        assert!(!nginx_conf(Path::new("/tmp/x"), 9000, b).contains("ssl"));
    }

    #[test]
    fn nginx_in_a_user_namespace_runs_one_process_on_the_pod_address() {
        let b: SocketAddr = "10.0.2.3:8080".parse().unwrap();
        let n =
            nginx_conf_in_user_namespace(Path::new("/tmp/x"), "0.0.0.0:8081".parse().unwrap(), b);
        assert!(n.contains("master_process off;"), "{n}");
        assert!(!n.contains("master_process on;"), "{n}");
        assert!(n.contains("listen 0.0.0.0:8081 reuseport"), "{n}");
        assert!(n.contains("server 10.0.2.3:8080;"), "{n}");
        let h = haproxy_cfg_with(9443, b, &haproxy_bind_tls(Path::new("/c/bench.pem"), true));
        assert!(
            h.contains("bind 127.0.0.1:9443 ssl crt /c/bench.pem alpn h2,http/1.1"),
            "{h}"
        );

        let y = gateway_https_yaml(9443, b, "bench-cert");
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&y)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let listener = &docs[0]["spec"]["listeners"][0];
        assert_eq!(listener["protocol"], "HTTPS");
        assert_eq!(listener["port"], 9443);
        assert_eq!(listener["tls"]["mode"], "Terminate");
        assert_eq!(listener["tls"]["certificateRefs"][0]["name"], "bench-cert");
    }
}
