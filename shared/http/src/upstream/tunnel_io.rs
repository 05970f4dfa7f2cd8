//! An HBONE tunnel behind tokio's poll-based I/O traits, so that the h2
//! crate can speak HTTP/2 inside it: h2c/gRPC clusters of mesh pods reached
//! over HBONE (the h2 pool). HTTP/1.1 uses `connect::HboneStream` instead.
//!
//! Flow control: received bytes are released to the peer as soon as they
//! are taken off the stream (at most one DATA frame is buffered here);
//! writes send what the stream's send window allows, checking `capacity()`
//! before waiting in `poll_capacity`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use mesh_hbone::{Lease, Tunnel};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct PollTunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and released, not yet read.
    pending: Bytes,
    /// The pooled connection's stream slot, held while the tunnel lives.
    _lease: Lease,
    finished: bool,
}

impl PollTunnel {
    pub fn new(tunnel: Tunnel) -> Self {
        let (stream, lease) = tunnel.into_parts();
        let (send, recv) = stream.into_parts();
        Self {
            send,
            recv,
            pending: Bytes::new(),
            _lease: lease,
            finished: false,
        }
    }
}

impl AsyncRead for PollTunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // The peer ended its direction: EOF.
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PollTunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.finished {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len());
        let mut window = this.send.capacity();
        while window == 0 {
            window = match ready!(this.send.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(n)) => n,
            };
        }
        let n = window.min(buf.len());
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 queues DATA frames on the connection, which its own task writes.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.finished {
            this.finished = true;
            this.send
                .send_data(Bytes::new(), true)
                .map_err(io::Error::other)?;
        }
        Poll::Ready(Ok(()))
    }
}
