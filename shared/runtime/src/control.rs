//! The control thread: one std thread with a current-thread tokio runtime
//! running the admin, metrics and ready servers, the signal handlers and the
//! config watcher. Nothing here is on the request path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mesh_registry::SnapshotHandle;

use crate::http_responder::{self, Router};
use crate::shutdown::ShutdownState;
use crate::watch::{self, ConfigWatch, ReloadStats};
use crate::worker::WorkerState;
use crate::MetricsSource;

/// Everything the control endpoints read.
pub(crate) struct ControlState {
    pub(crate) snapshots: SnapshotHandle,
    pub(crate) workers: Vec<Arc<WorkerState>>,
    pub(crate) shutdown: Arc<ShutdownState>,
    pub(crate) sources: Vec<Arc<dyn MetricsSource>>,
    pub(crate) reloads: ReloadStats,
    pub(crate) log_control: Option<crate::LogControl>,
    pub(crate) config_dump: Option<crate::ConfigDumpFn>,
}

impl ControlState {
    /// Every worker bound every port of the snapshot it last reconciled (it
    /// reconciles every 100 ms), and no shutdown is under way.
    pub(crate) fn is_ready(&self) -> bool {
        !self.shutdown.is_requested()
            && self
                .workers
                .iter()
                .all(|w| w.started.load(Ordering::Acquire) && w.all_bound.load(Ordering::Acquire))
    }
}

/// Control-plane sockets, bound before anything starts so that a taken port
/// is a start-up error rather than a silent gap.
pub(crate) struct ControlListeners {
    pub(crate) admin: std::net::TcpListener,
    pub(crate) metrics: std::net::TcpListener,
    pub(crate) ready: std::net::TcpListener,
}

pub(crate) fn spawn(
    state: Arc<ControlState>,
    listeners: ControlListeners,
    watch: Option<ConfigWatch>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ringmesh-control".into())
        .spawn(move || rt.block_on(run(state, listeners, watch)))
}

async fn run(state: Arc<ControlState>, listeners: ControlListeners, watch: Option<ConfigWatch>) {
    // Signals first: a SIGTERM must never hit the default handler once the
    // process can report ready.
    match Signals::install() {
        Ok(signals) => {
            tokio::spawn(signals.handle(state.shutdown.clone()));
        }
        Err(e) => tracing::error!(error = %e, "cannot install signal handlers"),
    }
    let servers: [(std::net::TcpListener, Router, &str); 3] = [
        (listeners.admin, crate::admin::admin, "admin"),
        (listeners.metrics, crate::admin::metrics, "metrics"),
        (listeners.ready, crate::admin::ready, "ready"),
    ];
    for (listener, router, name) in servers {
        // Logged with the real address: tests and operators using port 0 read it here.
        let addr = listener
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => {
                tracing::info!(server = name, addr = %addr, "serving");
                tokio::spawn(http_responder::serve(listener, state.clone(), router));
            }
            Err(e) => tracing::error!(server = name, error = %e, "cannot serve"),
        }
    }
    if let Some(watch) = watch {
        let state = state.clone();
        tokio::spawn(async move {
            watch::run(watch, state.snapshots.clone(), &state.reloads).await;
        });
    }
    // The control thread lives as long as the process: the admin endpoints
    // keep answering while workers drain.
    std::future::pending::<()>().await;
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGTERM/SIGINT start a graceful shutdown; a second one exits at once.
    async fn handle(mut self, shutdown: Arc<ShutdownState>) {
        let mut seen = 0;
        loop {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            };
            seen += 1;
            if seen > 1 {
                tracing::warn!(
                    signal = name,
                    "second signal: exiting without waiting for the drain"
                );
                std::process::exit(1);
            }
            shutdown.trigger(name);
        }
    }
}
