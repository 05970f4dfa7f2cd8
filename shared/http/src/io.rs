//! A TCP stream with its read buffer. monoio reads into owned buffers; a
//! `BytesMut` passed directly is filled from its start, so reads go through a
//! `SliceMut` over the spare capacity to append after what is buffered.

use std::io;

use bytes::BytesMut;
use monoio::buf::{IoBuf, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};

/// Bytes requested per body read: the unit a body streams in.
pub const READ_SIZE: usize = 64 * 1024;
/// Bytes requested when waiting for a head: small, because an idle
/// keep-alive connection keeps this buffer pinned by its pending read.
pub const HEAD_READ_SIZE: usize = 4 * 1024;
/// Buffers bigger than this are given back when a connection goes idle.
const IDLE_KEEP: usize = 16 * 1024;

/// What the server side can serve HTTP over: a TCP stream today, a TLS or
/// HBONE stream later. `Split` (read and write may run concurrently) is
/// needed for upgrade tunnels.
pub trait ClientStream: AsyncReadRent + AsyncWriteRent + Split + 'static {}
impl<T: AsyncReadRent + AsyncWriteRent + Split + 'static> ClientStream for T {}

pub struct Io<S = crate::upstream::connect::UpstreamStream> {
    pub stream: S,
    pub rbuf: BytesMut,
}

impl<S> Io<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
        }
    }

    /// Drops a large, empty read buffer before the connection idles (many idle
    /// keep-alive connections must not each hold a body-sized buffer).
    pub fn shrink_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_KEEP {
            self.rbuf = BytesMut::new();
        }
    }
}

impl<S: AsyncReadRent + AsyncWriteRent> Io<S> {
    /// Reads once, appending to `rbuf`. Ok(0) means the peer closed.
    /// If this future is dropped mid-read the buffered bytes are lost; callers
    /// only do that when they are about to close the connection.
    pub async fn fill(&mut self) -> io::Result<usize> {
        fill_from(&mut self.stream, &mut self.rbuf, HEAD_READ_SIZE).await
    }

    /// A read sized for streaming a body.
    pub async fn fill_body(&mut self) -> io::Result<usize> {
        fill_from(&mut self.stream, &mut self.rbuf, READ_SIZE).await
    }

    pub async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> io::Result<T> {
        write_all(&mut self.stream, buf).await
    }
}

/// Reads once from `r`, appending to `rbuf` (see [`Io::fill`]).
/// `want`: how much to make room for when the spare capacity is below a quarter of it.
pub async fn fill_from<R: AsyncReadRent>(
    r: &mut R,
    rbuf: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    if rbuf.capacity() - rbuf.len() < want / 4 {
        rbuf.reserve(want);
    }
    let buf = std::mem::take(rbuf);
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = r.read(SliceMut::new(buf, len, cap)).await;
    *rbuf = slice.into_inner();
    res
}

/// Writes a whole owned buffer and gives it back for reuse.
pub async fn write_all<W: AsyncWriteRent, T: IoBuf + 'static>(w: &mut W, buf: T) -> io::Result<T> {
    let (res, buf) = w.write_all(buf).await;
    res.map(|_| buf)
}

/// Writes `buf` if non-empty, then clears it for reuse.
pub async fn flush<W: AsyncWriteRent>(w: &mut W, buf: &mut BytesMut) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut b = write_all(w, std::mem::take(buf)).await?;
    b.clear();
    *buf = b;
    Ok(())
}
