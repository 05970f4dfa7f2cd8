//! The targets of `bench compare loadgen`: what the two load generators of a
//! mode hit (the same target, in the same run), and how each generator is
//! run against it.
//!
//! - `http`: `bench echo --fixed-response N` (plain HTTP/1.1), wrk vs `bench load`.
//! - `https`: nginx answering `return 200` over TLS 1.2/1.3 (HTTP/1.1
//!   keep-alive), wrk vs `bench load -k`.
//! - `h2`: the same nginx with ALPN h2, h2load vs `bench load --h2 -m STREAMS`.
//!
//! nginx answers from memory (no upstream), so the target costs as little
//! per request as a TLS server can, and the generator's core is the limit.

use super::procs::{free_port, pinned_command, Proc};
use super::tls_setup::{self, LoadSettings, TlsFiles, TlsLoad};
use super::wrk::{self, LoadResult};
use super::{loadrun, start_backend};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1 keep-alive: wrk vs `bench load`.
    Http,
    /// HTTPS keep-alive: wrk vs `bench load -k`.
    Https,
    /// HTTP/2 over TLS: h2load vs `bench load --h2`.
    H2,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Https => "https",
            Mode::H2 => "h2",
        }
    }

    /// The third-party generator `bench load` is checked against.
    pub fn reference(self) -> &'static str {
        match self {
            Mode::Http | Mode::Https => "wrk",
            Mode::H2 => "h2load",
        }
    }

    /// The `bench load` column's name in the runs.
    pub fn bench_tool(self) -> &'static str {
        match self {
            Mode::Http => "bench",
            Mode::Https => "bench-https",
            Mode::H2 => "bench-h2",
        }
    }

    /// (program, apt package) the mode needs.
    pub fn needs(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Mode::Http => vec![("wrk", "wrk")],
            Mode::Https => vec![("wrk", "wrk"), ("nginx", "nginx")],
            Mode::H2 => vec![("h2load", "nghttp2-client"), ("nginx", "nginx")],
        }
    }

    pub fn target_description(self, response_size: usize) -> String {
        match self {
            Mode::Http => format!("bench echo, 1 worker, {response_size}-byte body"),
            Mode::Https => format!(
                "nginx, 1 worker, return 200 ({response_size}-byte body) over TLS, HTTP/1.1"
            ),
            Mode::H2 => {
                format!("nginx, 1 worker, return 200 ({response_size}-byte body) over TLS, ALPN h2")
            }
        }
    }
}

/// A started target.
pub struct Target {
    pub mode: Mode,
    pub addr: SocketAddr,
    pub proc: Proc,
}

/// Starts the mode's target pinned to `cpu`; TLS files go to `work_dir`.
pub fn start(
    mode: Mode,
    bench_bin: &Path,
    cpu: usize,
    response_size: usize,
    work_dir: &Path,
) -> anyhow::Result<Target> {
    if mode == Mode::Http {
        let (proc, addr) = start_backend(bench_bin, cpu, response_size)?;
        return Ok(Target { mode, addr, proc });
    }
    let dir = work_dir.join(format!("nginx-{}", mode.name()));
    let tls = TlsFiles::generate(&dir.join("tls"))?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_static_tls_conf(&dir, port, &tls, mode == Mode::H2, response_size),
    )?;
    let mut cmd = pinned_command(cpu, "nginx");
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn("nginx", cmd)?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    tls_setup::wait_ready(
        &mut proc,
        bench_bin,
        addr,
        mode == Mode::H2,
        Duration::from_secs(15),
    )
    .context("starting the nginx TLS target")?;
    Ok(Target { mode, addr, proc })
}

/// How one generator run is set up.
pub struct RunSettings<'a> {
    pub bench_bin: &'a Path,
    pub cpu: usize,
    pub connections: usize,
    pub streams: usize,
    pub duration: Duration,
    pub json_tmp: &'a Path,
}

impl Target {
    /// One run of the mode's reference generator (closed loop).
    pub fn run_reference(&self, s: &RunSettings<'_>) -> anyhow::Result<LoadResult> {
        match self.mode {
            Mode::Http => wrk::run_wrk(
                s.cpu,
                &format!("http://{}/", self.addr),
                s.connections,
                s.duration,
            ),
            Mode::Https => wrk::run_wrk(
                s.cpu,
                &format!("https://{}/", self.addr),
                s.connections,
                s.duration,
            ),
            Mode::H2 => tls_setup::run(TlsLoad::H2load, &self.tls_settings(s, None), self.addr),
        }
    }

    /// One run of `bench load`: closed loop, or open loop at `qps`.
    pub fn run_bench(&self, s: &RunSettings<'_>, qps: Option<f64>) -> anyhow::Result<LoadResult> {
        match self.mode {
            Mode::Http => loadrun::run_bench_load(
                s.bench_bin,
                s.cpu,
                &format!("http://{}/", self.addr),
                s.connections,
                s.duration,
                qps,
                s.json_tmp,
            ),
            Mode::Https => {
                tls_setup::run(TlsLoad::KeepAlive, &self.tls_settings(s, qps), self.addr)
            }
            Mode::H2 => tls_setup::run(TlsLoad::BenchH2, &self.tls_settings(s, qps), self.addr),
        }
    }

    fn tls_settings<'a>(&self, s: &RunSettings<'a>, qps: Option<f64>) -> LoadSettings<'a> {
        LoadSettings {
            bench_bin: s.bench_bin,
            cpu: s.cpu,
            connections: s.connections,
            streams: s.streams,
            duration: s.duration,
            qps,
            json_tmp: s.json_tmp,
        }
    }
}

/// nginx answering every request from memory over TLS (HTTP/2 with `h2`):
/// one worker, no log, keep-alive without a request limit.
pub fn nginx_static_tls_conf(
    dir: &Path,
    port: u16,
    tls: &TlsFiles,
    h2: bool,
    body_size: usize,
) -> String {
    let d = dir.display();
    let body = "x".repeat(body_size);
    let http2 = if h2 { " http2" } else { "" };
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
    server {{
        listen 127.0.0.1:{port} ssl{http2} reuseport backlog=4096;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"#,
        tls.cert_file.display(),
        tls.key_file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_pair_bench_load_with_the_right_reference() {
        assert_eq!(
            [Mode::Http, Mode::Https, Mode::H2].map(Mode::reference),
            ["wrk", "wrk", "h2load"]
        );
        assert_eq!(
            [Mode::Http, Mode::Https, Mode::H2].map(Mode::bench_tool),
            ["bench", "bench-https", "bench-h2"]
        );
        assert!(Mode::H2.needs().contains(&("h2load", "nghttp2-client")));
        assert!(!Mode::Http.needs().iter().any(|(p, _)| *p == "nginx"));
    }

    #[test]
    fn static_target_serves_the_body_over_tls_and_h2_only_when_asked() {
        let dir = std::env::temp_dir().join(format!("ringmesh-lg-target-{}", std::process::id()));
        let tls = TlsFiles::generate(&dir).unwrap();
        let conf = nginx_static_tls_conf(&dir, 9443, &tls, false, 5);
        assert!(
            conf.contains("listen 127.0.0.1:9443 ssl reuseport"),
            "{conf}"
        );
        assert!(conf.contains(r#"return 200 "xxxxx";"#), "{conf}");
        assert!(conf.contains(&format!("ssl_certificate {};", tls.cert_file.display())));
        assert!(conf.contains("worker_processes 1;"));
        let h2 = nginx_static_tls_conf(&dir, 9443, &tls, true, 5);
        assert!(
            h2.contains("listen 127.0.0.1:9443 ssl http2 reuseport"),
            "{h2}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
