//! What every worker holds per captured pod, and how the pod's listeners
//! (15001, 15006, 15008, bound inside the pod's network namespace) are made.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_hbone::{ClientConfig, Connect, Pool, PoolKey};
use mesh_registry::workloads::{Workload, WorkloadRegistry};
use mesh_runtime::WorkerHandle;
use mesh_tls::{HboneTls, Identity, TlsStream};

use crate::metrics::{Metrics, WorkerMetrics};
use crate::netns::NetNs;
use crate::sockets::{self, PodSockets, Upstream};
use crate::{inbound, inbound_plaintext, outbound};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;

/// A pod this ztunnel serves, as all workers share it.
pub struct CapturedPod {
    pub workload: Arc<Workload>,
    pub netns: Arc<NetNs>,
    /// Certificate for the pod's identity, trust in the mesh CA.
    pub tls: Arc<HboneTls>,
}

/// Process-wide state (Send + Sync).
pub struct Shared {
    pub registry: Arc<ArcSwap<WorkloadRegistry>>,
    pub pods: Vec<CapturedPod>,
    pub metrics: Arc<Metrics>,
    /// The workers run on io_uring (blocking fds) rather than epoll.
    pub uring: bool,
    /// Connect to apps from the client's address (IP_TRANSPARENT).
    pub preserve_source: bool,
}

/// One worker's view of one captured pod.
pub struct PodProxy {
    pub shared: Arc<Shared>,
    pub workload: Arc<Workload>,
    /// Upstream sockets made ahead in the pod's namespace (this worker's).
    pub sockets: Rc<PodSockets>,
    pub tls: Arc<HboneTls>,
    pub pool: Pool<PodConnector>,
    pub metrics: Arc<WorkerMetrics>,
    /// Round-robin position over service endpoints.
    pub next_endpoint: Cell<usize>,
    /// Logged once: transparent connects are not possible here.
    pub transparent_failed: Cell<bool>,
    /// This worker: its drain signal and its active-connection count, which
    /// the runtime's shutdown waits on.
    pub worker: WorkerHandle,
}

impl PodProxy {
    pub fn upstream(&self, destination: SocketAddr, source: Option<std::net::IpAddr>) -> Upstream {
        Upstream {
            destination,
            transparent_source: source.filter(|_| self.shared.preserve_source),
            uring: self.shared.uring,
        }
    }

    /// Connects to an app in this pod, from `source` when possible.
    pub async fn connect_app(
        &self,
        destination: SocketAddr,
        source: std::net::IpAddr,
    ) -> io::Result<monoio::net::TcpStream> {
        let up = self.upstream(destination, Some(source));
        if up.transparent_source.is_some() && !self.transparent_failed.get() {
            match sockets::connect_in(&self.sockets, up).await {
                Ok(s) => return Ok(s),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPERM | libc::EADDRNOTAVAIL | libc::EINVAL)
                    ) =>
                {
                    tracing::warn!(pod = %self.workload.uid, error = %e, "cannot keep the client's source address (IP_TRANSPARENT); connecting from the pod's own address");
                    self.transparent_failed.set(true);
                }
                Err(e) => return Err(e),
            }
        }
        sockets::connect_in(&self.sockets, self.upstream(destination, None)).await
    }
}

/// Makes the pooled HBONE connections of one pod: TCP from inside the pod's
/// namespace (marked, so capture skips it), then mTLS presenting the pod's
/// certificate and verifying the destination identity.
pub struct PodConnector {
    sockets: Rc<PodSockets>,
    tls: Arc<HboneTls>,
    uring: bool,
    metrics: Arc<WorkerMetrics>,
}

impl Connect for PodConnector {
    type Io = TlsStream;

    async fn connect(&self, key: &PoolKey) -> io::Result<TlsStream> {
        let expected: Identity = key
            .destination_identity
            .as_deref()
            .ok_or_else(|| io::Error::other("no destination identity"))?
            .parse()
            .map_err(|e| io::Error::other(format!("bad destination identity: {e}")))?;
        let tcp = sockets::connect_in(
            &self.sockets,
            Upstream {
                destination: key.destination,
                transparent_source: None,
                uring: self.uring,
            },
        )
        .await?;
        let config = self
            .tls
            .client_config(std::slice::from_ref(&expected))
            .map_err(io::Error::other)?;
        let tls = mesh_tls::connect(config, tcp)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
        self.metrics
            .hbone_connections_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(tls)
    }
}

/// Runs on each worker thread: binds the three listeners of every captured
/// pod inside its namespace and spawns their accept loops.
pub fn start_worker(shared: &Arc<Shared>, worker: usize) {
    let Some(handle) = WorkerHandle::current() else {
        tracing::error!(worker, "not on a runtime worker thread; no pod listeners");
        return;
    };
    let metrics = shared.metrics.workers[worker % shared.metrics.workers.len()].clone();
    for pod in &shared.pods {
        let pod_sockets = Rc::new(PodSockets::new(pod.netns.clone()));
        let connector = PodConnector {
            sockets: pod_sockets.clone(),
            tls: pod.tls.clone(),
            uring: shared.uring,
            metrics: metrics.clone(),
        };
        let proxy = Rc::new(PodProxy {
            shared: shared.clone(),
            workload: pod.workload.clone(),
            sockets: pod_sockets,
            tls: pod.tls.clone(),
            pool: Pool::new(ClientConfig::default(), connector),
            metrics: metrics.clone(),
            next_endpoint: Cell::new(worker),
            transparent_failed: Cell::new(false),
            worker: handle.clone(),
        });
        for port in [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT] {
            match sockets::bind_listener(&pod.netns, port, !shared.uring) {
                Ok(listener) => {
                    // On io_uring each accept is one operation: with several in flight, one
                    // completion round accepts several queued clients, and their first
                    // frames share one TLS write. The epoll driver wakes one waiter per
                    // socket, so it keeps one.
                    let listener = Rc::new(listener);
                    let accepts = if shared.uring { ACCEPTS_IN_FLIGHT } else { 1 };
                    for _ in 0..accepts {
                        monoio::spawn(accept_loop(listener.clone(), port, proxy.clone()));
                    }
                }
                Err(e) => tracing::error!(
                    pod = %pod.workload.uid,
                    netns = %pod.netns.path().display(),
                    port,
                    error = %e,
                    "cannot listen inside the pod's network namespace"
                ),
            }
        }
        if worker == 0 {
            tracing::info!(pod = %pod.workload.uid, ip = %pod.workload.ip, netns = %pod.netns.path().display(), "capturing pod: listening on 15001, 15006, 15008 in its namespace");
        }
    }
}

/// Accept operations kept in flight per listener on io_uring.
const ACCEPTS_IN_FLIGHT: usize = 4;

/// Accepts until shutdown starts, then (the last of the listener's loops) drops the
/// listener (new connections are refused) while the connections already accepted finish:
/// each holds a guard counted in the worker's drain.
async fn accept_loop(listener: Rc<monoio::net::TcpListener>, port: u16, proxy: Rc<PodProxy>) {
    let drain = proxy.worker.drain().clone();
    loop {
        let accepted = monoio::select! {
            _ = drain.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let peer = unmap(peer);
                let proxy = proxy.clone();
                let guard = proxy.worker.track_connection();
                match port {
                    OUTBOUND_PORT => monoio::spawn(async move {
                        outbound::handle(proxy, stream, peer).await;
                        drop(guard);
                    }),
                    INBOUND_PLAINTEXT_PORT => monoio::spawn(async move {
                        inbound_plaintext::handle(proxy, stream, peer).await;
                        drop(guard);
                    }),
                    _ => monoio::spawn(async move {
                        inbound::handle(proxy, stream, peer).await;
                        drop(guard);
                    }),
                };
            }
            Err(_) if drain.is_draining() => break,
            Err(e) => {
                tracing::warn!(port, error = %e, "accept failed");
                // E.g. out of file descriptors: do not spin.
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The other loops of this listener still hold it (their accepts are being cancelled);
    // the last one stops it.
    let Some(listener) = Rc::into_inner(listener) else {
        return;
    };
    // Dropping the listener is not enough on io_uring: the cancelled accept
    // operation keeps the socket listening until it completes. shutdown(2)
    // on a listening socket stops it at once (new connections are refused).
    use std::os::fd::AsRawFd as _;
    // SAFETY: shutdown(2) on the listener's own open fd; no memory involved.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    if rc != 0 {
        tracing::debug!(port, error = %io::Error::last_os_error(), "shutdown of the listener failed");
    }
    drop(listener);
    if proxy.worker.index() == 0 {
        tracing::info!(pod = %proxy.workload.uid, port, "draining: stopped accepting");
    }
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
