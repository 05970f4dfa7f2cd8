//! The byte streams the engine's upstream side works with: plain TCP, an
//! HBONE tunnel (each upstream HTTP/1.1 connection is one CONNECT stream,
//! e.g. to `podIP:15008` with `:authority podIP:targetPort`), or TLS we
//! originate. Which one a new connection gets is decided per worker by the
//! installed connector (`super::connector`, re-exported here).
//!
//! [`UpstreamStream`] is the byte stream of `Io` (its default parameter);
//! it dispatches to a TCP socket, an HBONE tunnel or a TLS stream.
//! [`HboneStream`] is an HBONE tunnel (its reader and writer halves joined)
//! as one monoio stream; the waypoint also serves its downstream
//! connections over it.

use std::cell::Cell;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mesh_hbone::{TunnelReader, TunnelWriter};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;

use crate::io::Io;
use crate::tls::TlsIo;

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

/// An upstream connection: TCP, an HBONE tunnel, or TLS we originate
/// (DestinationRule `tls.mode: SIMPLE`).
pub enum UpstreamStream {
    Tcp(TcpStream),
    Hbone(HboneStream),
    /// Boxed: the TLS state is large, and `Io` values are moved around.
    Tls(Box<TlsIo>),
}

/// The TCP socket's descriptor, or for a tunnel a negative per-stream id
/// that no syscall accepts (EBADF) but that keys per-connection state.
impl AsRawFd for UpstreamStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            UpstreamStream::Tcp(s) => s.as_raw_fd(),
            UpstreamStream::Hbone(s) => s.id,
            UpstreamStream::Tls(s) => s.get_ref().tcp().as_raw_fd(),
        }
    }
}

impl UpstreamStream {
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            UpstreamStream::Tcp(s) => Some(s),
            // Not probed when pooled: a TLS 1.3 server may send session
            // tickets after the handshake, which a peek would take for
            // stray bytes.
            UpstreamStream::Hbone(_) | UpstreamStream::Tls(_) => None,
        }
    }
}

// SAFETY (Split's contract): TcpStream is Split itself, HboneStream is (see
// above) and so is TlsIo (crate::tls); the enum adds no shared state.
unsafe impl Split for UpstreamStream {}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.read(buf).await,
            UpstreamStream::Hbone(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.readv(buf).await,
            UpstreamStream::Hbone(s) => s.readv(buf).await,
            UpstreamStream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.write(buf).await,
            UpstreamStream::Hbone(s) => s.write(buf).await,
            UpstreamStream::Tls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Tcp(s) => s.writev(buf).await,
            UpstreamStream::Hbone(s) => s.writev(buf).await,
            UpstreamStream::Tls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => s.flush().await,
            UpstreamStream::Hbone(s) => s.flush().await,
            UpstreamStream::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamStream::Tcp(s) => s.shutdown().await,
            UpstreamStream::Hbone(s) => s.shutdown().await,
            UpstreamStream::Tls(s) => s.shutdown().await,
        }
    }
}

pub use super::connector::{
    connect, install_hbone_upstream, install_upstream_connector, HboneUpstream, IdentityLookup,
    UpstreamConnector,
};

pub(crate) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<Io> {
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    stream.set_nodelay(true)?;
    Ok(Io::new(UpstreamStream::Tcp(stream)))
}
