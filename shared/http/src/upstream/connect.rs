//! How the engine reaches an upstream endpoint: plain TCP (the gateway), or
//! HBONE (the waypoint: each upstream HTTP/1.1 connection is one CONNECT
//! stream to `podIP:15008` with `:authority podIP:targetPort`, carried on a
//! pooled mTLS connection that presents the waypoint's identity and
//! verifies the destination workload's).
//!
//! The choice is per worker thread: a program that wants HBONE upstreams
//! calls [`install_hbone_upstream`] on each worker before serving. The
//! gateway never does, and its connect path costs one thread-local read
//! more than before (per new connection, not per request).
//!
//! [`UpstreamStream`] is the byte stream the engine's upstream side works
//! with (`Io`'s default); it dispatches to a TCP socket or an HBONE tunnel.
//! [`HboneStream`] is an HBONE tunnel (its reader and writer halves joined)
//! as one monoio stream; the waypoint also serves its downstream
//! connections over it.

use std::cell::{Cell, RefCell};
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mesh_hbone::{ClientConfig, Connect, Pool, PoolKey, TunnelReader, TunnelRequest, TunnelWriter};
use mesh_tls::{HboneTls, Identity, TlsStream};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::io::Io;

/// Istio's HBONE port on every mesh workload.
pub const HBONE_PORT: u16 = 15008;

/// An HBONE tunnel as one byte stream.
pub struct HboneStream {
    /// Always Some until dropped (taken by the drain on drop).
    reader: Option<TunnelReader>,
    writer: TunnelWriter,
    /// Negative and unique on this thread: stands in for a file descriptor
    /// where code keys per-connection state by fd (see `AsRawFd` below).
    id: RawFd,
    /// Send END_STREAM when dropped without `shutdown` (see [`Self::finish_on_drop`]).
    finish_on_drop: bool,
}

impl HboneStream {
    pub fn new(reader: TunnelReader, writer: TunnelWriter) -> Self {
        thread_local! {
            static NEXT_ID: Cell<RawFd> = const { Cell::new(-1) };
        }
        let id = NEXT_ID.with(|n| {
            let id = n.get();
            // Wraps back to -1 long after any stream with that id is gone.
            n.set(if id == RawFd::MIN { -1 } else { id - 1 });
            id
        });
        Self {
            reader: Some(reader),
            writer,
            id,
            finish_on_drop: false,
        }
    }

    /// A server side that closes a connection by dropping it (as the HTTP
    /// engine does) should end the tunnel the way closing a socket ends TCP:
    /// END_STREAM after the data already queued, then the peer's remaining
    /// bytes are read and discarded until it ends too (at most
    /// [`DRAIN_ON_DROP`]). Dropping both halves at once would make h2 reset
    /// the stream, and a peer may drop data it received just before a reset.
    /// Needs a monoio runtime where it is dropped.
    pub fn finish_on_drop(mut self) -> Self {
        self.finish_on_drop = true;
        self
    }

    fn reader(&mut self) -> &mut TunnelReader {
        self.reader
            .as_mut()
            .expect("the reader is only taken on drop")
    }
}

/// How long a finished tunnel waits for its peer to end its direction.
pub const DRAIN_ON_DROP: Duration = Duration::from_secs(10);

impl Drop for HboneStream {
    fn drop(&mut self) {
        if !self.finish_on_drop {
            return;
        }
        // TunnelWriter::shutdown queues END_STREAM synchronously and never
        // waits, so one poll completes it.
        {
            let mut shutdown = std::pin::pin!(self.writer.shutdown());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = shutdown.as_mut().poll(&mut cx);
        }
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        monoio::spawn(async move {
            let drain = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let (res, b) = reader.read(buf).await;
                    buf = b;
                    if !matches!(res, Ok(n) if n > 0) {
                        break;
                    }
                }
            };
            let _ = monoio::time::timeout(DRAIN_ON_DROP, drain).await;
        });
    }
}

// SAFETY (Split's contract): reads only touch `reader` and writes only
// `writer`, two independent halves of the h2 stream, so a read and a write
// may run concurrently.
unsafe impl Split for HboneStream {}

impl AsyncReadRent for HboneStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.reader().read(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.reader().readv(buf).await
    }
}

impl AsyncWriteRent for HboneStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.writer.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.writer.writev(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        // Once ended, there is nothing left to finish on drop.
        self.finish_on_drop = false;
        self.writer.shutdown().await
    }
}

/// An upstream connection: TCP, or an HBONE tunnel.
pub enum UpstreamStream {
    Tcp(TcpStream),
    Hbone(HboneStream),
}

/// The TCP socket's descriptor, or for a tunnel a negative per-stream id
/// that no syscall accepts (EBADF) but that keys per-connection state.
impl AsRawFd for UpstreamStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            UpstreamStream::Tcp(s) => s.as_raw_fd(),
            UpstreamStream::Hbone(s) => s.id,
        }
    }
}

impl UpstreamStream {
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            UpstreamStream::Tcp(s) => Some(s),
            UpstreamStream::Hbone(_) => None,
        }
    }
}

// SAFETY (Split's contract): TcpStream is Split itself, and HboneStream is
// (see above); the enum adds no shared state.
unsafe impl Split for UpstreamStream {}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.read(buf).await,
            UpstreamStream::Hbone(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.readv(buf).await,
            UpstreamStream::Hbone(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.write(buf).await,
            UpstreamStream::Hbone(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.writev(buf).await,
            UpstreamStream::Hbone(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => s.flush().await,
            UpstreamStream::Hbone(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => s.shutdown().await,
            UpstreamStream::Hbone(s) => s.shutdown().await,
        }
    }
}

/// Who a destination IP is in the mesh: its SPIFFE identity when it is a
/// workload reachable over HBONE, None for anything else (plain TCP then).
pub type IdentityLookup = Box<dyn Fn(IpAddr) -> Option<Arc<str>>>;

/// One worker's HBONE upstream side: its pool and whom it presents itself as.
pub struct HboneUpstream {
    pool: Pool<MtlsConnector>,
    source_identity: Arc<str>,
    identity_of: IdentityLookup,
}

impl HboneUpstream {
    /// `tls`: our certificate (presented) and the mesh roots (trusted).
    /// `identity_of`: the identity each endpoint must prove.
    pub fn new(tls: Arc<HboneTls>, identity_of: IdentityLookup) -> Self {
        let source_identity: Arc<str> = tls.cert_store().identity().to_string().into();
        Self {
            pool: Pool::new(ClientConfig::default(), MtlsConnector { tls }),
            source_identity,
            identity_of,
        }
    }

    /// A tunnel to `endpoint` (`podIP:targetPort`), or plain TCP when the
    /// endpoint is not a mesh workload.
    pub async fn connect(&self, endpoint: SocketAddr, timeout: Duration) -> io::Result<Io> {
        let Some(identity) = (self.identity_of)(endpoint.ip()) else {
            return connect_tcp(endpoint, timeout).await;
        };
        let key = PoolKey::new(
            Some(self.source_identity.clone()),
            Some(identity),
            SocketAddr::new(endpoint.ip(), HBONE_PORT),
        );
        let request = TunnelRequest::new(key, endpoint);
        let tunnel = match monoio::time::timeout(timeout, self.pool.connect(&request)).await {
            Ok(Ok(tunnel)) => tunnel,
            Ok(Err(e)) => {
                tracing::debug!(%endpoint, error = %e, "HBONE upstream refused");
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    e.to_string(),
                ));
            }
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HBONE connect timed out",
                ))
            }
        };
        let (reader, writer) = tunnel.into_io();
        Ok(Io::new(UpstreamStream::Hbone(HboneStream::new(
            reader, writer,
        ))))
    }
}

/// Pooled HBONE connections: TCP to `podIP:15008`, then mTLS verifying the
/// pool key's destination identity.
struct MtlsConnector {
    tls: Arc<HboneTls>,
}

impl Connect for MtlsConnector {
    type Io = TlsStream;

    async fn connect(&self, key: &PoolKey) -> io::Result<TlsStream> {
        let expected: Identity = key
            .destination_identity
            .as_deref()
            .ok_or_else(|| io::Error::other("no destination identity"))?
            .parse()
            .map_err(|e| io::Error::other(format!("bad destination identity: {e}")))?;
        let tcp = TcpStream::connect_addr(key.destination).await?;
        tcp.set_nodelay(true)?;
        let config = self
            .tls
            .client_config(std::slice::from_ref(&expected))
            .map_err(io::Error::other)?;
        mesh_tls::connect(config, tcp)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))
    }
}

thread_local! {
    /// This worker's HBONE upstream side, if its program installed one.
    static HBONE: RefCell<Option<Rc<HboneUpstream>>> = const { RefCell::new(None) };
}

/// Makes every upstream connection this worker thread opens from now on go
/// through HBONE (the waypoint calls it once per worker).
pub fn install_hbone_upstream(upstream: HboneUpstream) {
    HBONE.with(|h| *h.borrow_mut() = Some(Rc::new(upstream)));
}

/// A new upstream connection to `addr`, the way this worker is set up for.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Io> {
    match HBONE.with(|h| h.borrow().clone()) {
        None => connect_tcp(addr, timeout).await,
        Some(hbone) => hbone.connect(addr, timeout).await,
    }
}

async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<Io> {
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    Ok(Io::new(UpstreamStream::Tcp(stream)))
}
