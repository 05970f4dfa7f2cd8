//! Shared helpers for tests that run the real `gateway` binary on loopback.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A fresh temporary folder holding config files; removed on drop.
pub struct TempConfig {
    pub dir: PathBuf,
}

impl TempConfig {
    pub fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringmesh-gw-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Writes `name` atomically (temp file + rename), as editors and
    /// Kubernetes do, so the gateway never reads half a file.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.join(name);
        let file_name = path.file_name().unwrap().to_string_lossy().to_string();
        let tmp = path.with_file_name(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on right now.
/// A port that is free now, picked below the kernel's ephemeral range (32768 and up): a
/// port the kernel handed out for `:0` could be handed again to the gateway's own admin or
/// metrics server, bound to `:0` before the gateway binds the listener on it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(131);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + (start.wrapping_add(n) % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response read until the server closed (or Content-Length was met).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    read_response(&mut s)
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, "localhost")
}

/// Reads one response; honours Content-Length, else reads to EOF.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            s.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// The address from the runtime's `serving server="NAME" addr=IP:PORT` log line.
fn served_addr(logs: &str, server: &str) -> Option<SocketAddr> {
    let marker = format!("server=\"{server}\" addr=");
    let line = logs
        .lines()
        .find(|l| l.contains("serving") && l.contains(&marker))?;
    let rest = &line[line.find(&marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The gateway process; killed on drop if still running. Its stderr (logs)
/// goes to a file so tests can show it on failure.
pub struct Gateway {
    pub child: Option<Child>,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
    pub log: PathBuf,
}

pub struct GatewayBuilder {
    config: PathBuf,
    workers: u16,
    extra: Vec<String>,
}

impl GatewayBuilder {
    pub fn workers(mut self, n: u16) -> Self {
        self.workers = n;
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    /// Starts the gateway with its control endpoints on kernel-chosen
    /// loopback ports (no races with other tests over "free" ports) and waits
    /// until its log names them.
    pub fn spawn(self) -> Gateway {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "ringmesh-gw-test-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let any = "127.0.0.1:0";
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--config")
            .arg(&self.config)
            .args([
                "--admin-addr",
                any,
                "--metrics-addr",
                any,
                "--ready-addr",
                any,
            ])
            .args(["--workers", &self.workers.to_string()])
            .args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn gateway");
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut gw = Gateway {
            child: Some(child),
            admin: unknown,
            metrics: unknown,
            ready: unknown,
            log,
        };
        let start = Instant::now();
        loop {
            let logs = gw.logs();
            let found = (
                served_addr(&logs, "admin"),
                served_addr(&logs, "metrics"),
                served_addr(&logs, "ready"),
            );
            if let (Some(admin), Some(metrics), Some(ready)) = found {
                (gw.admin, gw.metrics, gw.ready) = (admin, metrics, ready);
                return gw;
            }
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {status} during start-up:\n{logs}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "gateway control endpoints not up after 15 s:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the gateway and waits until `/healthz/ready` answers 200.
    pub fn start(self) -> Gateway {
        let mut gw = self.spawn();
        gw.wait_ready();
        gw
    }
}

impl Gateway {
    pub fn with_config(config: &Path) -> GatewayBuilder {
        GatewayBuilder {
            config: config.to_path_buf(),
            workers: 2,
            extra: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(r) = get(self.ready, "/healthz/ready") {
                if r.status == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "gateway exited with {status} before ready:\n{}",
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "gateway not ready after 15 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on the pid of our own child process; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "gateway still running after {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The snapshot version `/config_dump` reports.
    pub fn version(&self) -> u64 {
        get(self.admin, "/config_dump").unwrap().json()["version"]
            .as_u64()
            .expect("version in /config_dump")
    }

    pub fn wait_version_above(&self, version: u64) -> u64 {
        let mut now = 0;
        wait_for("a new snapshot version", Duration::from_secs(5), || {
            now = self.version();
            now > version
        });
        now
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!(
                "--- gateway log ({}) ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
    }
}
