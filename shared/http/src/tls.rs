//! HTTPS listeners: TLS termination in front of the HTTP/1.1 server, or the
//! HTTP/2 server when the client negotiated ALPN `h2`.
//!
//! The port's rustls `ServerConfig` (certificate by SNI, ALPN) is built at
//! translation (`PortConfig::tls`); here a connection is handshaken with a
//! deadline, counted, and served through [`TlsIo`], which puts mesh-tls's
//! tokio-style stream behind monoio's owned-buffer traits.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry::tls::PortTls;
use mesh_runtime::Accepted;
use mesh_tls::TlsStream;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::BufResult;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::HttpHandler;

/// Upper bound for a TLS handshake (a client that stalls mid-handshake holds a
/// socket only this long). The request header timeout applies if shorter.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Terminates TLS on an accepted connection, then serves HTTP/1.1 over it.
pub(crate) async fn serve(handler: Rc<HttpHandler>, conn: Accepted, tls: Arc<PortTls>) {
    let _ = conn.stream.set_nodelay(true);
    let deadline = TLS_HANDSHAKE_TIMEOUT.min(handler.options.request_header_timeout);
    let handshake = mesh_tls::accept_plain(tls.server_config.clone(), conn.stream);
    let stream = match monoio::time::timeout(deadline, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            handler.metrics.tls_handshake_failed();
            tracing::debug!(peer = %conn.peer, port = conn.port, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            handler.metrics.tls_handshake_failed();
            tracing::debug!(peer = %conn.peer, port = conn.port, "TLS handshake timed out");
            return;
        }
    };
    handler.metrics.tls_handshake_completed();
    let sni: Option<Box<str>> = stream.server_name().map(|s| s.to_ascii_lowercase().into());
    if stream.alpn_protocol() == Some(b"h2") {
        let conn = crate::h2::server::Conn {
            peer: conn.peer,
            port: conn.port,
            scheme: "https",
            sni,
            drain: conn.drain,
            active: Default::default(),
            service: None,
            peer_identity: None,
        };
        // h2 drives the TLS stream through its tokio traits and flushes itself.
        return crate::h2::server::serve(handler, stream, conn, true).await;
    }
    crate::server::serve_stream_with_sni(
        handler,
        TlsIo(stream),
        conn.peer,
        conn.port,
        conn.drain,
        "https",
        sni,
    )
    .await;
}

/// A mesh-tls stream with monoio's owned-buffer I/O traits. Every write is
/// flushed: the HTTP engine writes whole heads and body chunks and expects them
/// on the wire (mesh-tls batches encrypted records until a flush).
pub struct TlsIo(pub TlsStream);

impl TlsIo {
    pub fn get_ref(&self) -> &TlsStream {
        &self.0
    }

    async fn read_into(&mut self, dst: *mut u8, len: usize) -> io::Result<usize> {
        // SAFETY: callers pass a pointer valid for `len` writable bytes that
        // stays valid until this returns (an owned monoio buffer they hold);
        // ReadBuf only writes into it and tracks how much it filled.
        let slice = unsafe { std::slice::from_raw_parts_mut(dst.cast::<MaybeUninit<u8>>(), len) };
        let mut buf = ReadBuf::uninit(slice);
        poll_fn(|cx| Pin::new(&mut self.0).poll_read(cx, &mut buf)).await?;
        Ok(buf.filled().len())
    }

    async fn write_from(&mut self, src: *const u8, len: usize) -> io::Result<usize> {
        // SAFETY: callers pass a pointer valid for `len` readable bytes that
        // stays valid until this returns (an owned monoio buffer they hold).
        let data = unsafe { std::slice::from_raw_parts(src, len) };
        let n = poll_fn(|cx| Pin::new(&mut self.0).poll_write(cx, data)).await?;
        poll_fn(|cx| Pin::new(&mut self.0).poll_flush(cx)).await?;
        Ok(n)
    }
}

impl AsyncReadRent for TlsIo {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // monoio reads into the start of the buffer: `write_ptr` for `bytes_total`.
        let res = self.read_into(buf.write_ptr(), buf.bytes_total()).await;
        if let Ok(n) = res {
            // SAFETY: exactly `n` bytes from `write_ptr` were written by the read.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the first iovec's pointer and length are valid while we own
        // `buf` (IoVecBufMut contract), as monoio's own slice reader does.
        let res = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(mut first) => self.read_into(first.write_ptr(), first.bytes_total()).await,
            None => Ok(0),
        };
        if let Ok(n) = res {
            // SAFETY: `n` bytes of the first iovec were written.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }
}

impl AsyncWriteRent for TlsIo {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let res = self.write_from(buf.read_ptr(), buf.bytes_init()).await;
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the first iovec's pointer and length are valid while we own
        // `buf` (IoVecBuf contract); a partial write is allowed by writev.
        let res = match unsafe { RawBuf::new_from_iovec(&buf) } {
            Some(first) => self.write_from(first.read_ptr(), first.bytes_init()).await,
            None => Ok(0),
        };
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut self.0).poll_flush(cx)).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut self.0).poll_shutdown(cx)).await
    }
}

// SAFETY: `Split` promises that a read and a write may be in flight at once
// (upgrade tunnels). mesh-tls keeps them apart: reads only feed rustls and
// register the socket's read waker, writes only drain rustls' outgoing buffer
// and register the write waker (see mesh_tls::stream), and both run on one
// thread, each poll completing before the other starts.
unsafe impl Split for TlsIo {}
