//! The HBONE side of the waypoint: a 15008 listener per worker, mTLS with
//! the waypoint's certificate (clients must present a mesh identity of our
//! trust domain), and every CONNECT stream whose `:authority` is a Service
//! `VIP:port` bound to this waypoint served by the HTTP engine as an
//! HTTP/1.1 byte stream, routed by that Service.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mesh_hbone::{
    ConnectHandler, ConnectRequest, ConnectionInfo, H2Stream, PipeOutcome, Refusal, Server,
    ServerConfig,
};
use mesh_http::upstream::connect::HboneStream;
use mesh_http::HttpHandler;
use mesh_registry::SnapshotHandle;
use mesh_runtime::WorkerHandle;
use mesh_tls::HboneTls;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use monoio::BufResult;

use crate::metrics::WaypointMetrics;

/// What one worker's tunnels share.
pub struct Worker {
    pub http: Rc<HttpHandler>,
    pub snapshots: SnapshotHandle,
    pub tls: Arc<HboneTls>,
    pub metrics: Arc<WaypointMetrics>,
    pub handle: WorkerHandle,
}

/// Binds `addr` (SO_REUSEPORT: one socket per worker) and accepts until drain.
pub fn start(worker: Rc<Worker>, addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind_with_config(
        addr,
        &ListenerOpts::new().reuse_port(true).reuse_addr(true),
    )?;
    monoio::spawn(accept_loop(listener, worker));
    Ok(())
}

async fn accept_loop(listener: TcpListener, worker: Rc<Worker>) {
    let drain = worker.handle.drain().clone();
    let server = Server::new(
        ServerConfig::default(),
        Tunnels {
            worker: worker.clone(),
        },
    );
    loop {
        let accepted = monoio::select! {
            _ = drain.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = worker.handle.track_connection();
                let worker = worker.clone();
                let server = server.clone();
                monoio::spawn(async move {
                    serve_connection(worker, server, stream, peer).await;
                    drop(guard);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // E.g. out of file descriptors: do not spin.
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // On io_uring a cancelled accept keeps the socket listening until it
    // completes; shutdown(2) stops it at once (new connections are refused).
    use std::os::fd::AsRawFd as _;
    // SAFETY: shutdown(2) on the listener's own open fd; no memory involved.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    // GOAWAY to every connection this worker serves; open streams finish.
    server.shutdown();
}

async fn serve_connection(
    worker: Rc<Worker>,
    server: Server<Tunnels>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let tls = match mesh_tls::accept(worker.tls.server_config(), stream).await {
        Ok(tls) => tls,
        Err(e) => {
            worker.metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, error = %e, "HBONE TLS handshake refused");
            return;
        }
    };
    worker
        .metrics
        .hbone_connections
        .fetch_add(1, Ordering::Relaxed);
    let info = ConnectionInfo {
        peer_identity: Some(tls.peer_identity().to_string().into()),
        peer_addr: Some(peer),
        local_addr: None,
    };
    if let Err(e) = server.serve(tls, info).await {
        tracing::debug!(%peer, error = %e, "HBONE connection ended");
    }
}

struct Tunnels {
    worker: Rc<Worker>,
}

impl ConnectHandler for Tunnels {
    type Upstream = Terminated;

    async fn connect(&self, request: &ConnectRequest) -> Result<Terminated, Refusal> {
        // TLS already proved a mesh identity of our trust domain; a client
        // without one never gets here.
        if request.peer_identity.is_none() {
            return Err(Refusal::Denied("no client identity".into()));
        }
        let known = self
            .worker
            .snapshots
            .load()
            .services
            .get(request.authority)
            .is_some();
        if !known {
            self.worker
                .metrics
                .unknown_destination
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                authority = %request.authority,
                peer = request.peer_identity.as_deref().unwrap_or(""),
                "CONNECT refused: not a Service bound to this waypoint"
            );
            return Err(Refusal::Unavailable(format!(
                "{} is not a Service of this waypoint",
                request.authority
            )));
        }
        Ok(Terminated)
    }

    async fn serve_tunnel(
        &self,
        request: &ConnectRequest,
        tunnel: H2Stream,
        _upstream: Terminated,
    ) -> PipeOutcome {
        let (reader, writer) = tunnel.into_io();
        // The app's own address when the client ztunnel sent it (`forwarded`).
        let peer = request
            .forwarded_for
            .or(request.peer_addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        self.worker
            .http
            .clone()
            .serve_service_stream_from(
                HboneStream::new(reader, writer).finish_on_drop(),
                peer,
                request.authority,
                // The tunnel's mTLS identity: `source.principal` for L7 authz.
                request.peer_identity.as_deref().map(Rc::from),
                self.worker.handle.drain().clone(),
            )
            .await;
        PipeOutcome {
            into_tunnel: 0,
            out_of_tunnel: 0,
            result: Ok(()),
        }
    }
}

/// The "upstream" of a tunnel the waypoint serves itself: never read or
/// written, because [`Tunnels::serve_tunnel`] replaces the pipe to it.
struct Terminated;

// SAFETY (Split's contract): stateless, so reads and writes cannot interfere.
unsafe impl Split for Terminated {}

impl AsyncReadRent for Terminated {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Ok(0), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (Ok(0), buf)
    }
}

impl AsyncWriteRent for Terminated {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        (Err(io::ErrorKind::BrokenPipe.into()), buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        (Err(io::ErrorKind::BrokenPipe.into()), buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        Ok(())
    }
}
