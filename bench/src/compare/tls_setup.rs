//! What the TLS scenarios (gateway-https, gateway-h2) add to the proxy
//! comparison: one certificate and key every contender serves, the load runs
//! (`bench load` over HTTPS / HTTP/2, h2load) and a TLS readiness check.

use super::procs::{pinned_command, Proc};
use super::wrk::LoadResult;
use anyhow::{anyhow, bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name on the certificate and the SNI every load run sends.
pub const SERVER_NAME: &str = "bench.ringmesh.test";

/// The certificate and key (ECDSA P-256, self-signed) in the files each
/// contender's configuration points at.
pub struct TlsFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Certificate then key in one file (HAProxy's `crt`).
    pub combined_file: PathBuf,
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> anyhow::Result<TlsFiles> {
        let key = rcgen::KeyPair::generate().context("generating the benchmark key")?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .context("certificate names")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, SERVER_NAME);
        let cert = params.self_signed(&key).context("self-signing")?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        std::fs::create_dir_all(dir)?;
        let cert_file = dir.join("bench.crt");
        let key_file = dir.join("bench.key");
        let combined_file = dir.join("bench.pem");
        std::fs::write(&cert_file, &cert_pem)?;
        std::fs::write(&key_file, &key_pem)?;
        std::fs::write(&combined_file, format!("{cert_pem}{key_pem}"))?;
        Ok(TlsFiles {
            cert_pem,
            key_pem,
            cert_file,
            key_file,
            combined_file,
        })
    }

    /// The kubernetes.io/tls Secret the ringmesh Gateway's certificateRefs name.
    pub fn secret_yaml(&self, name: &str) -> String {
        let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: default\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&self.cert_pem),
            indent(&self.key_pem)
        )
    }
}

/// How a TLS scenario loads a contender; each is a column ("tool") of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLoad {
    /// `bench load` HTTPS, HTTP/1.1 keep-alive.
    KeepAlive,
    /// `bench load --new-conn` HTTPS: a new TCP + TLS connection (full
    /// handshake, no resumption) per request.
    NewConn,
    /// `h2load -m STREAMS` over TLS with ALPN h2.
    H2load,
    /// `bench load --h2 -m STREAMS`.
    BenchH2,
}

impl TlsLoad {
    pub fn name(self) -> &'static str {
        match self {
            TlsLoad::KeepAlive => "keep-alive",
            TlsLoad::NewConn => "new-conn",
            TlsLoad::H2load => "h2load",
            TlsLoad::BenchH2 => "bench-h2",
        }
    }

    pub fn from_name(name: &str) -> Option<TlsLoad> {
        [
            TlsLoad::KeepAlive,
            TlsLoad::NewConn,
            TlsLoad::H2load,
            TlsLoad::BenchH2,
        ]
        .into_iter()
        .find(|l| l.name() == name)
    }
}

pub struct LoadSettings<'a> {
    pub bench_bin: &'a Path,
    pub cpu: usize,
    pub connections: usize,
    pub streams: usize,
    pub duration: Duration,
    /// Open loop at this rate (`bench load` only; h2load always runs closed).
    pub qps: Option<f64>,
    pub json_tmp: &'a Path,
}

/// One timed run of `load` against `addr` (TLS, SNI `SERVER_NAME`).
pub fn run(load: TlsLoad, s: &LoadSettings<'_>, addr: SocketAddr) -> anyhow::Result<LoadResult> {
    let url = format!("https://{addr}/");
    match load {
        TlsLoad::H2load => run_h2load(s, &url),
        _ => {
            let mut extra: Vec<String> = vec!["-k".into(), "--sni".into(), SERVER_NAME.into()];
            match load {
                TlsLoad::NewConn => extra.push("--new-conn".into()),
                TlsLoad::BenchH2 => {
                    extra.push("--h2".into());
                    extra.push(format!("-m{}", s.streams));
                }
                _ => {}
            }
            super::loadrun::run_bench_load_with(
                s.bench_bin,
                s.cpu,
                &url,
                s.connections,
                s.duration,
                s.qps,
                &extra,
                s.json_tmp,
            )
        }
    }
}

fn run_h2load(s: &LoadSettings<'_>, url: &str) -> anyhow::Result<LoadResult> {
    let secs = s.duration.as_secs().max(1);
    let out = pinned_command(s.cpu, "h2load")
        // h2load 1.52 (Debian 12) has no --sni: it sends none for an IP URL;
        // every contender serves its one certificate regardless.
        .arg("-t1")
        .arg(format!("-c{}", s.connections))
        .arg(format!("-m{}", s.streams))
        .arg(format!("-D{secs}"))
        .arg(url)
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_h2load(&text)
}

/// h2load's summary: "finished in 10.00s, 12345.67 req/s, ...", the
/// "requests:" and "status codes:" lines and "time for request:" (min max mean
/// sd). h2load prints no percentiles: p50/p90/p99 stay 0 (shown as such), only
/// the max is filled; `bench-h2` gives the percentiles.
pub fn parse_h2load(text: &str) -> anyhow::Result<LoadResult> {
    let finished = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))
        .ok_or_else(|| anyhow!("h2load printed no 'finished in' line:\n{text}"))?;
    let mut parts = finished.split(',').map(str::trim);
    let seconds = parse_h2load_duration(parts.next().unwrap_or(""))
        .ok_or_else(|| anyhow!("bad h2load duration in {finished:?}"))?;
    let requests_line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests:"))
        .ok_or_else(|| anyhow!("h2load printed no 'requests:' line"))?;
    let field = |line: &str, name: &str| -> u64 {
        line.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_suffix(name).map(str::trim))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let succeeded = field(requests_line, "succeeded");
    let failed = field(requests_line, "failed") + field(requests_line, "errored");
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("status codes:"))
        .map(|l| field(l, "3xx") + field(l, "4xx") + field(l, "5xx"))
        .unwrap_or(0);
    let max_us = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("time for request:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(parse_h2load_duration))
        .map(|s| s * 1e6)
        .unwrap_or(0.0);
    Ok(LoadResult {
        requests: succeeded,
        seconds,
        rps: if seconds > 0.0 {
            succeeded as f64 / seconds
        } else {
            0.0
        },
        max_us,
        errors: failed + non_2xx,
        ..Default::default()
    })
}

/// "10.00s", "220.22ms", "90us" -> seconds.
fn parse_h2load_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Wait until the contender completes one HTTPS request (`bench load -k -n 1`,
/// with ALPN h2 when `h2`), or fail after `timeout`.
pub fn wait_ready(
    p: &mut Proc,
    bench_bin: &Path,
    addr: SocketAddr,
    h2: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        p.check_alive()?;
        let mut cmd = std::process::Command::new(bench_bin);
        cmd.args([
            "load",
            "-k",
            "-n1",
            "-c1",
            "--timeout",
            "2s",
            "--no-progress",
        ])
        .args(["--sni", SERVER_NAME]);
        if h2 {
            cmd.arg("--h2");
        }
        let out = cmd
            .arg(format!("https://{addr}/"))
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains("Status:     200: 1") {
            return Ok(());
        }
        // Keep the errors, not the whole summary.
        last = format!("{text}{}", String::from_utf8_lossy(&out.stderr))
            .lines()
            .filter(|l| l.starts_with("Error"))
            .collect::<Vec<_>>()
            .join("; ");
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{} did not answer 200 over {} on https://{addr}/ within {timeout:?} (last attempt: {})",
        p.name,
        if h2 { "HTTP/2 (ALPN h2)" } else { "HTTPS" },
        last.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2load_output() {
        let text = "\
finished in 10.00s, 9081.74 req/s, 639.43KB/s
requests: 90818 total, 90818 started, 90818 done, 90810 succeeded, 8 failed, 0 errored, 0 timeout
status codes: 90800 2xx, 0 3xx, 10 4xx, 0 5xx
traffic: 140.82KB (144196) total, 93.75KB (96000) headers (space savings 51.02%), 11.72KB (12000) data
                     min         max         mean         sd        +/- sd
time for request:       90us     13.35ms      2.49ms      2.75ms    84.60%
";
        let r = parse_h2load(text).unwrap();
        assert_eq!(r.requests, 90810);
        assert!((r.seconds - 10.0).abs() < 1e-9);
        assert!((r.rps - 9081.0).abs() < 1e-6);
        assert_eq!(r.errors, 18);
        assert!((r.max_us - 13350.0).abs() < 1e-6);
        assert!(parse_h2load("nothing").is_err());
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
        assert!(close(parse_h2load_duration("220.22ms"), 0.22022));
        assert!(close(parse_h2load_duration("90us"), 0.00009));
        assert!(close(parse_h2load_duration("1.5s"), 1.5));
        assert_eq!(parse_h2load_duration("7"), None);
    }

    #[test]
    fn secret_carries_both_pems() {
        let dir = std::env::temp_dir().join(format!("ringmesh-tls-setup-{}", std::process::id()));
        let f = TlsFiles::generate(&dir).unwrap();
        let y = f.secret_yaml("bench-cert");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&y).unwrap();
        assert_eq!(doc["type"], "kubernetes.io/tls");
        assert_eq!(doc["stringData"]["tls.crt"].as_str().unwrap(), f.cert_pem);
        assert_eq!(doc["stringData"]["tls.key"].as_str().unwrap(), f.key_pem);
        let combined = std::fs::read_to_string(&f.combined_file).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("PRIVATE KEY"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
