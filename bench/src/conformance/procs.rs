//! Child processes of a run (echo backends, gateway): killed and reaped on drop, and
//! killed by the kernel if the runner dies (PR_SET_PDEATHSIG).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn spawn(mut command: Command, what: &str) -> anyhow::Result<ChildGuard> {
        // SAFETY: the pre_exec closure only calls prctl, which is async-signal-safe.
        // It makes the kernel SIGKILL the child when the runner dies (ctrl-c, panic abort,
        // kill), so no backend or gateway outlives a run. Children are spawned from the
        // main thread only, since PDEATHSIG follows the spawning thread.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(ChildGuard {
            child,
            what: what.to_string(),
        })
    }

    /// `Some(description)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", self.what)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.what)),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One running `bench echo` process.
pub struct EchoProcess {
    pub namespace: String,
    pub service: String,
    pub pod: String,
    pub port: u16,
    /// Its stdout lines after the first ("Echoing back request made to ..." lines).
    pub log: Arc<Mutex<Vec<String>>>,
    _guard: ChildGuard,
}

impl EchoProcess {
    pub fn start(
        bench_exe: &Path,
        namespace: &str,
        service: &str,
        pod: &str,
        grpc: bool,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(bench_exe);
        command
            .args(["echo", "--port", "0", "--bind", "127.0.0.1"])
            .args(["--name", service, "--namespace", namespace, "--pod", pod]);
        if grpc {
            command.arg("--grpc");
        }
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn(command, &format!("echo {namespace}/{service}"))?;
        let stdout = guard.child.stdout.take().context("echo stdout")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (first_line_tx, first_line_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = first_line_tx.send(first);
            }
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let first = first_line_rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("echo {namespace}/{service} did not report its address"))?;
        let port = parse_listening_line(&first)
            .with_context(|| format!("unexpected first echo line {first:?}"))?;
        Ok(EchoProcess {
            namespace: namespace.to_string(),
            service: service.to_string(),
            pod: pod.to_string(),
            port,
            log,
            _guard: guard,
        })
    }

    /// Log lines mentioning `needle` (a probe's uuid): echoed requests and failed retry
    /// attempts, for diagnosing a failed case.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    pub fn saw_request(&self, path: &str) -> bool {
        let needle = format!("Echoing back request made to {path} to client");
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|line| line.starts_with(&needle))
    }
}

/// "echo listening on 127.0.0.1:PORT pod NAME" → PORT.
fn parse_listening_line(line: &str) -> Option<u16> {
    let addr = line.strip_prefix("echo listening on ")?.split(' ').next()?;
    addr.parse::<SocketAddr>().ok().map(|a| a.port())
}

/// A running gateway with its admin and ready addresses.
pub struct GatewayProcess {
    pub guard: ChildGuard,
    pub admin: SocketAddr,
    pub log_path: PathBuf,
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl GatewayProcess {
    /// Starts the gateway and waits until it is ready. Its admin/metrics/ready ports are
    /// picked free and released before the gateway binds them, so a client connection
    /// can take one in between: a start that fails with "Address already in use" is
    /// retried with fresh ports.
    pub fn start(
        gateway_bin: &Path,
        config_dir: &Path,
        gateway: &str,
        log_path: PathBuf,
        ready_timeout: Duration,
        workers: usize,
    ) -> anyhow::Result<GatewayProcess> {
        const ATTEMPTS: usize = 5;
        let mut attempt = 1;
        loop {
            let result = Self::start_once(
                gateway_bin,
                config_dir,
                gateway,
                log_path.clone(),
                ready_timeout,
                workers,
            );
            match result {
                Err(e)
                    if attempt < ATTEMPTS
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once(
        gateway_bin: &Path,
        config_dir: &Path,
        gateway: &str,
        log_path: PathBuf,
        ready_timeout: Duration,
        workers: usize,
    ) -> anyhow::Result<GatewayProcess> {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let ready: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(gateway_bin);
        command
            .arg("--config")
            .arg(config_dir)
            .args(["--admin-addr", &admin.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--ready-addr", &ready.to_string()])
            .args([
                "--workers",
                &workers.max(1).to_string(),
                "--gateway",
                gateway,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut guard = ChildGuard::spawn(command, &format!("gateway {}", gateway_bin.display()))?;
        let deadline = Instant::now() + ready_timeout;
        loop {
            if let Some(exit) = guard.exited() {
                bail!("{exit} before becoming ready; log: {}", log_tail(&log_path));
            }
            if is_ready(ready) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway not ready on {ready}/healthz/ready after {ready_timeout:?}; log: {}",
                    log_tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(GatewayProcess {
            guard,
            admin,
            log_path,
        })
    }
}

fn is_ready(ready: SocketAddr) -> bool {
    let request = super::client::HttpRequest {
        method: "GET".into(),
        host: ready.to_string(),
        path: "/healthz/ready".into(),
        headers: vec![],
    };
    matches!(
        super::client::send(ready, &request, Duration::from_secs(1)),
        Ok(response) if response.status == 200
    )
}

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    format!("{} [{}]", path.display(), lines[start..].join(" | "))
}
