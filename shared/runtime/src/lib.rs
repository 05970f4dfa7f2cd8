//! Thread-per-core runtime shared by every data-plane program.
//!
//! ```ignore
//! # use std::rc::Rc;
//! # struct Echo;
//! # impl mesh_runtime::ConnectionHandler for Echo {
//! #     fn handle(self: Rc<Self>, _c: mesh_runtime::Accepted) -> impl std::future::Future<Output = ()> + 'static { async {} }
//! # }
//! let snapshots = mesh_registry::new_handle(Default::default());
//! let mut runtime = mesh_runtime::Runtime::new(mesh_runtime::RuntimeOptions::default(), snapshots);
//! // runtime.add_metrics(...); runtime.watch_config(path, reload);
//! runtime.run(|_worker| Echo).unwrap(); // returns after SIGTERM + drain
//! ```
//!
//! - Workers: `options.workers` threads, each a monoio runtime (io_uring, or
//!   epoll with a warning) with one handler made by the factory on that thread,
//!   and its own SO_REUSEPORT socket per listener port of the current snapshot
//!   (`snapshot.ports`). Workers re-read the snapshot every 100 ms and bind or
//!   close ports to match. A connection stays on its worker until it closes.
//! - Control thread: admin (`/config_dump`, `/status`, `/quitquitquit`,
//!   `/healthz/ready`, `/logging`), metrics (`/metrics`), ready (`/healthz/ready`) servers,
//!   SIGTERM/SIGINT, and the config watcher.
//! - Shutdown: listeners close, every worker's [`Drain`] is raised, and workers
//!   exit when their connections reach zero or at the drain deadline.

mod admin;
mod control;
pub mod drain;
mod http_responder;
mod listener;
mod metrics;
mod shutdown;
mod watch;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh_registry::SnapshotHandle;

pub use drain::Drain;
pub use shutdown::ShutdownHandle;
pub use watch::{publish, ReloadFn};
pub use worker::{ActiveGuard as ConnectionGuard, WorkerHandle};

/// Renders the program's view for the admin `/config_dump` (instead of the
/// runtime's gateway snapshot). Called on the control thread per request.
pub type ConfigDumpFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A connection accepted by a worker, handed to the program's handler on the
/// same thread; it stays on this worker until it closes.
pub struct Accepted {
    /// As accepted: socket options (TCP_NODELAY, buffers) are the handler's choice.
    pub stream: monoio::net::TcpStream,
    /// The client address (IPv4-mapped IPv6 addresses are reported as IPv4).
    pub peer: SocketAddr,
    /// The listener port the connection arrived on.
    pub port: u16,
    /// This worker's drain signal: raised once shutdown starts.
    pub drain: Drain,
}

/// What a program does with an accepted connection. One handler per worker
/// (not Send): it owns that worker's upstream pools and counters.
pub trait ConnectionHandler: 'static {
    fn handle(self: Rc<Self>, conn: Accepted) -> impl Future<Output = ()> + 'static;
}

/// Something that renders Prometheus text for `/metrics` (summing its
/// per-worker counters at scrape time).
pub trait MetricsSource: Send + Sync + 'static {
    fn render(&self, out: &mut String);
}

/// Reads (`None`) or replaces (`Some(filter)`) the process's log filter,
/// returning the filter now in effect; backs the admin `/logging` endpoint.
pub type LogControl = Box<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

/// Default drain deadline: Istio's `terminationDrainDuration` default (5 s),
/// well inside Kubernetes' default 30 s termination grace period.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Worker threads (at least 1).
    pub workers: usize,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub ready_addr: SocketAddr,
    /// How long connections may keep running after shutdown starts.
    pub drain_timeout: Duration,
    pub io_driver: IoDriver,
}

/// Which monoio driver the workers run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring, falling back to epoll with a warning when it cannot be set up.
    #[default]
    Auto,
    /// io_uring or fail to start.
    IoUring,
    /// epoll (monoio's legacy driver), e.g. where seccomp forbids io_uring.
    Epoll,
}

impl std::str::FromStr for IoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "io-uring" | "io_uring" | "uring" => Ok(Self::IoUring),
            "epoll" | "legacy" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown io driver {other:?}: use auto, io-uring or epoll"
            )),
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 15020)),
            ready_addr: SocketAddr::from(([0, 0, 0, 0], 15021)),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            io_driver: IoDriver::Auto,
        }
    }
}

/// One worker per available core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A data-plane process being assembled: add metrics sources and a config
/// watcher, then [`run`](Runtime::run) it.
pub struct Runtime {
    options: RuntimeOptions,
    snapshots: SnapshotHandle,
    sources: Vec<Arc<dyn MetricsSource>>,
    watch: Option<watch::ConfigWatch>,
    shutdown: Arc<shutdown::ShutdownState>,
    log_control: Option<LogControl>,
    control_listeners: Option<control::ControlListeners>,
    config_dump: Option<ConfigDumpFn>,
}

/// Where the control endpoints listen (useful when configured with port 0).
#[derive(Debug, Clone, Copy)]
pub struct ControlAddrs {
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
}

impl Runtime {
    pub fn new(options: RuntimeOptions, snapshots: SnapshotHandle) -> Self {
        let shutdown = Arc::new(shutdown::ShutdownState::new(options.drain_timeout));
        Self {
            options,
            snapshots,
            sources: Vec::new(),
            watch: None,
            shutdown,
            log_control: None,
            control_listeners: None,
            config_dump: None,
        }
    }

    /// Rendered on `/metrics` before the runtime's own series, in the order added.
    pub fn add_metrics(&mut self, source: Arc<dyn MetricsSource>) {
        self.sources.push(source);
    }

    /// Polls everything under `path` every 250 ms; on a change (once the
    /// files stop changing for 100 ms) calls `reload` and publishes its
    /// snapshot as the next version. A reload error is logged and counted; the
    /// last good snapshot keeps serving.
    ///
    /// Register the watch before loading the initial snapshot: changes are
    /// detected relative to the files as they are at this call.
    pub fn watch_config(&mut self, path: PathBuf, reload: ReloadFn) {
        let baseline = watch::Fingerprint::of(&path);
        self.watch = Some(watch::ConfigWatch {
            path,
            reload,
            baseline,
        });
    }

    /// Enables the admin `/logging` endpoint: `GET /logging` shows the log
    /// filter, `POST /logging?level=debug` (any `RUST_LOG` syntax) replaces it.
    pub fn set_log_control(&mut self, control: LogControl) {
        self.log_control = Some(control);
    }

    /// Makes the admin `/config_dump` serve `dump()` instead of the
    /// runtime's snapshot (for programs whose configuration is not a
    /// gateway snapshot). `/status` is unchanged.
    pub fn set_config_dump(&mut self, dump: ConfigDumpFn) {
        self.config_dump = Some(dump);
    }

    /// Starts a graceful shutdown, like SIGTERM or `/quitquitquit`.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Binds the admin, metrics and ready addresses now (otherwise `run` does)
    /// and reports the bound addresses.
    pub fn bind_control(&mut self) -> anyhow::Result<ControlAddrs> {
        if self.control_listeners.is_none() {
            self.control_listeners = Some(control::ControlListeners {
                admin: bind_control(self.options.admin_addr, "admin")?,
                metrics: bind_control(self.options.metrics_addr, "metrics")?,
                ready: bind_control(self.options.ready_addr, "ready")?,
            });
        }
        let l = self.control_listeners.as_ref().expect("bound above");
        Ok(ControlAddrs {
            admin: l.admin.local_addr()?,
            metrics: l.metrics.local_addr()?,
            ready: l.ready.local_addr()?,
        })
    }

    /// Binds the control endpoints, starts the control thread and the
    /// workers, and blocks until shutdown finished draining. `factory` runs
    /// once on each worker thread with the worker's index.
    ///
    /// Errors: a control address cannot be bound, or a worker cannot start.
    /// Listener ports that cannot be bound are not errors: they are logged,
    /// retried every second, and keep `/healthz/ready` at 503.
    pub fn run<H, F>(mut self, factory: F) -> anyhow::Result<()>
    where
        H: ConnectionHandler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let workers = self.options.workers.max(1);
        self.bind_control()?;
        let listeners = self.control_listeners.take().expect("bound above");
        let worker_states: Vec<Arc<worker::WorkerState>> = (0..workers)
            .map(|_| Arc::new(worker::WorkerState::default()))
            .collect();
        let state = Arc::new(control::ControlState {
            snapshots: self.snapshots.clone(),
            workers: worker_states.clone(),
            shutdown: self.shutdown.clone(),
            sources: self.sources,
            reloads: Default::default(),
            log_control: self.log_control,
            config_dump: self.config_dump,
        });
        control::spawn(state, listeners, self.watch).context("cannot start the control thread")?;

        let factory = Arc::new(factory);
        let (started_tx, started_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::with_capacity(workers);
        for (index, worker_state) in worker_states.into_iter().enumerate() {
            let params = worker::WorkerParams {
                index,
                snapshots: self.snapshots.clone(),
                state: worker_state,
                shutdown: self.shutdown.clone(),
                io_driver: self.options.io_driver,
                drain: Drain::new(),
            };
            let factory = factory.clone();
            let started = started_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("ringmesh-worker-{index}"))
                .spawn(move || worker_main(params, &*factory, started))
                .context("cannot spawn a worker thread")?;
            threads.push(thread);
        }
        drop(started_tx);

        let mut start_error = None;
        for _ in 0..workers {
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    start_error.get_or_insert(e);
                }
                Err(_) => {
                    start_error
                        .get_or_insert_with(|| "a worker thread exited during start-up".into());
                    break;
                }
            }
        }
        if let Some(e) = &start_error {
            self.shutdown.trigger("a worker failed to start");
            tracing::error!(error = %e, "worker start-up failed");
        } else {
            tracing::info!(workers, "workers started");
        }

        let mut panicked = 0;
        for thread in threads {
            if thread.join().is_err() {
                panicked += 1;
            }
        }
        if let Some(e) = start_error {
            anyhow::bail!("worker start-up failed: {e}");
        }
        if panicked > 0 {
            anyhow::bail!("{panicked} worker thread(s) panicked");
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

fn worker_main<H, F>(
    params: worker::WorkerParams,
    factory: &F,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) where
    H: ConnectionHandler,
    F: Fn(usize) -> H,
{
    let index = params.index;
    let mut rt = match worker::WorkerRuntime::build(index, params.io_driver) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = started.send(Err(format!("worker {index}: cannot build a runtime: {e}")));
            return;
        }
    };
    let uring = rt.is_uring();
    worker::WorkerHandle::install(index, params.drain.clone(), params.state.clone());
    params
        .state
        .io_uring
        .store(uring, std::sync::atomic::Ordering::Relaxed);
    let _panic_guard = WorkerPanicGuard {
        index,
        state: params.state.clone(),
        shutdown: params.shutdown.clone(),
    };
    rt.block_on(async move {
        // The factory runs inside the runtime so handlers may create
        // runtime-bound resources (timers, sockets).
        let handler = Rc::new(factory(index));
        let _ = started.send(Ok(()));
        drop(started);
        worker::run(params, handler, !uring).await;
    });
}

/// A worker that panics outside a connection (its control loop, a task a
/// handler spawned) leaves its share of every port unserved: rather than limp
/// on half-alive, the process stops being ready and shuts down, so the
/// supervisor restarts it (and `run` returns an error).
struct WorkerPanicGuard {
    index: usize,
    state: Arc<worker::WorkerState>,
    shutdown: Arc<shutdown::ShutdownState>,
}

impl Drop for WorkerPanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.state
                .all_bound
                .store(false, std::sync::atomic::Ordering::Release);
            tracing::error!(
                worker = self.index,
                "worker panicked; shutting the process down"
            );
            self.shutdown.trigger("a worker panicked");
        }
    }
}

fn bind_control(addr: SocketAddr, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot bind the {what} address {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Parses `250us`, `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds (`1.5`): the
/// duration syntax of every ringmesh CLI (the programs and `bench`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 5s, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ns, us, ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("10ns"), Ok(Duration::from_nanos(10)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
