//! A worker: one thread, one monoio runtime (io_uring, epoll as fallback), one
//! handler, its own SO_REUSEPORT socket per listener port.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mesh_registry::SnapshotHandle;

use crate::listener::{self, ListenerTask};
use crate::shutdown::ShutdownState;
use crate::{ConnectionHandler, Drain};

/// How often a worker looks for a new snapshot or a shutdown request. Loading
/// the snapshot pointer costs about 50 ns, so this is free.
const TICK: Duration = Duration::from_millis(100);
/// While draining, look more often so the process exits soon after the last
/// connection closes.
const DRAIN_TICK: Duration = Duration::from_millis(20);
/// A port that failed to bind is retried this often (it may be freed later).
const BIND_RETRY: Duration = Duration::from_secs(1);

/// What the control thread can see of a worker. Aligned to a cache line: each
/// worker writes only its own.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct WorkerState {
    /// Open connections accepted by this worker.
    pub(crate) active: AtomicUsize,
    /// The worker reconciled its listeners at least once.
    pub(crate) started: AtomicBool,
    /// Every port of the last snapshot the worker reconciled is bound.
    pub(crate) all_bound: AtomicBool,
    /// Version of the snapshot last reconciled.
    pub(crate) seen_version: AtomicU64,
    /// Ports currently bound (for `/metrics`).
    pub(crate) bound_ports: AtomicUsize,
    /// The worker runs on io_uring (false: the epoll fallback).
    pub(crate) io_uring: AtomicBool,
}

/// Per-worker values shared by its accept loops (single thread: `Rc`).
pub(crate) struct WorkerContext {
    pub(crate) index: usize,
    pub(crate) drain: Drain,
    state: Arc<WorkerState>,
}

impl WorkerContext {
    /// Counts a connection until the returned guard drops.
    pub(crate) fn connection_started(&self) -> ActiveGuard {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.state.clone())
    }
}

/// Counts one open connection of a worker until dropped: the shutdown drain
/// waits for every guard to drop (or the drain deadline). Programs that accept
/// connections on their own listeners get one from [`WorkerHandle::track_connection`].
#[must_use = "the connection is counted only while the guard lives"]
pub struct ActiveGuard(Arc<WorkerState>);

/// The current worker, for programs that accept connections on listeners the
/// runtime does not manage (e.g. bound inside another network namespace):
/// they count those connections with [`track_connection`](Self::track_connection)
/// and stop accepting once [`drain`](Self::drain) is signaled, so shutdown
/// drains them like the runtime's own.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    index: usize,
    drain: Drain,
    state: Arc<WorkerState>,
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<WorkerHandle>> = const { std::cell::RefCell::new(None) };
}

impl WorkerHandle {
    /// The worker running on this thread (set before the handler factory
    /// runs); `None` outside worker threads.
    pub fn current() -> Option<Self> {
        CURRENT.with(|c| c.borrow().clone())
    }

    pub(crate) fn install(index: usize, drain: Drain, state: Arc<WorkerState>) {
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(Self {
                index,
                drain,
                state,
            })
        });
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// This worker's drain signal: raised once shutdown starts, after the
    /// runtime's own listeners closed.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// Counts a connection in this worker's active connections (the number the
    /// shutdown drain waits on) until the guard drops.
    pub fn track_connection(&self) -> ActiveGuard {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.state.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds this thread's runtime: io_uring with timers, or epoll with a warning
/// when io_uring cannot be set up (old kernel, seccomp, memlock limits).
pub(crate) enum WorkerRuntime {
    Uring(monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>),
    Legacy(monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>),
}

impl WorkerRuntime {
    pub(crate) fn build(index: usize, driver: crate::IoDriver) -> std::io::Result<Self> {
        let epoll = || -> std::io::Result<Self> {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()?;
            Ok(Self::Legacy(rt))
        };
        if driver == crate::IoDriver::Epoll {
            return epoll();
        }
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(4096)
            .enable_timer()
            .build()
        {
            Ok(rt) => Ok(Self::Uring(rt)),
            Err(e) if driver == crate::IoDriver::Auto => {
                tracing::warn!(worker = index, error = %e, "io_uring unavailable, falling back to epoll");
                epoll()
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn is_uring(&self) -> bool {
        matches!(self, Self::Uring(_))
    }

    pub(crate) fn block_on<F: Future>(&mut self, f: F) -> F::Output {
        match self {
            Self::Uring(rt) => rt.block_on(f),
            Self::Legacy(rt) => rt.block_on(f),
        }
    }
}

pub(crate) struct WorkerParams {
    pub(crate) index: usize,
    pub(crate) snapshots: SnapshotHandle,
    pub(crate) state: Arc<WorkerState>,
    pub(crate) shutdown: Arc<ShutdownState>,
    pub(crate) io_driver: crate::IoDriver,
    /// This worker's drain signal (also reachable through [`WorkerHandle`]).
    pub(crate) drain: Drain,
}

/// The worker's control loop: reconcile listeners with the snapshot, then on
/// shutdown close them, raise the drain signal and wait for connections to
/// finish (or the deadline). Returns when the worker may exit.
pub(crate) async fn run<H: ConnectionHandler>(
    params: WorkerParams,
    handler: Rc<H>,
    nonblocking: bool,
) {
    let WorkerParams {
        index,
        snapshots,
        state,
        shutdown,
        io_driver: _,
        drain,
    } = params;
    let ctx = Rc::new(WorkerContext {
        index,
        drain,
        state: state.clone(),
    });
    let mut listeners = Listeners {
        bound: BTreeMap::new(),
        failed: BTreeMap::new(),
        nonblocking,
    };

    while !shutdown.is_requested() {
        let snapshot = snapshots.load();
        let wanted: BTreeSet<u16> = snapshot.ports.keys().copied().collect();
        let all_bound = listeners.reconcile(&wanted, &handler, &ctx);
        state
            .bound_ports
            .store(listeners.bound.len(), Ordering::Relaxed);
        state.all_bound.store(all_bound, Ordering::Release);
        state
            .seen_version
            .store(snapshot.version, Ordering::Release);
        state.started.store(true, Ordering::Release);
        drop(snapshot);
        monoio::time::sleep(TICK).await;
    }

    listeners.close_all().await;
    state.bound_ports.store(0, Ordering::Relaxed);
    state.all_bound.store(false, Ordering::Release);
    ctx.drain.start();
    // Let the tasks the signal just woke run first (accept loops of programs that accept on
    // their own close their listeners then): once this returns the runtime stops polling them,
    // and a listener left open would take connections nobody serves. A timer, not a yield:
    // the runtime runs every queued task before it looks at timers again.
    monoio::time::sleep(Duration::from_millis(1)).await;
    let deadline = shutdown
        .deadline()
        .unwrap_or_else(|| Instant::now() + shutdown.drain_timeout);
    loop {
        let active = state.active.load(Ordering::Relaxed);
        if active == 0 {
            tracing::debug!(worker = index, "drained");
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                worker = index,
                active,
                "drain deadline reached; closing remaining connections"
            );
            break;
        }
        monoio::time::sleep(DRAIN_TICK).await;
    }
}

struct Listeners {
    bound: BTreeMap<u16, ListenerTask>,
    /// Ports whose bind failed, with when it was last tried and the error
    /// (logged once per distinct error).
    failed: BTreeMap<u16, (Instant, String)>,
    nonblocking: bool,
}

impl Listeners {
    /// Returns whether every wanted port is bound.
    fn reconcile<H: ConnectionHandler>(
        &mut self,
        wanted: &BTreeSet<u16>,
        handler: &Rc<H>,
        ctx: &Rc<WorkerContext>,
    ) -> bool {
        let gone: Vec<u16> = self
            .bound
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(task) = self.bound.remove(&port) {
                tracing::info!(
                    port,
                    worker = ctx.index,
                    "listener removed; existing connections continue"
                );
                let _closed = task.stop();
            }
        }
        self.failed.retain(|p, _| wanted.contains(p));

        for &port in wanted {
            if self.bound.contains_key(&port) {
                continue;
            }
            if let Some((tried, _)) = self.failed.get(&port) {
                if tried.elapsed() < BIND_RETRY {
                    continue;
                }
            }
            let result = listener::bind(port, self.nonblocking)
                .and_then(|l| listener::spawn_accept_loop(l, port, handler.clone(), ctx.clone()));
            match result {
                Ok(task) => {
                    if self.failed.remove(&port).is_some() || ctx.index == 0 {
                        tracing::info!(port, worker = ctx.index, "listening");
                    }
                    self.bound.insert(port, task);
                }
                Err(e) => {
                    let message = e.to_string();
                    let repeated = self
                        .failed
                        .get(&port)
                        .is_some_and(|(_, previous)| *previous == message);
                    if !repeated {
                        tracing::error!(port, worker = ctx.index, error = %message, "cannot bind listener port; not ready until it binds");
                    }
                    self.failed.insert(port, (Instant::now(), message));
                }
            }
        }
        self.failed.is_empty()
    }

    /// Stops every accept loop and waits (briefly) until the sockets are
    /// closed: on io_uring the close is itself an operation that must reach
    /// the ring before the runtime goes away.
    async fn close_all(&mut self) {
        let closed: Vec<_> = std::mem::take(&mut self.bound)
            .into_values()
            .map(ListenerTask::stop)
            .collect();
        let give_up = Instant::now() + Duration::from_secs(1);
        while closed.iter().any(|c| !c.get()) && Instant::now() < give_up {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        // One more turn of the driver submits the queued close operations.
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs a connection future, turning a panic into an error so that one bad
/// connection cannot take its whole worker (and every connection on it) down.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field; `self.0` is never moved
        // out of the pinned struct.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
