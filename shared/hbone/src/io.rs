//! A tunnel as a monoio byte stream (`AsyncReadRent` / `AsyncWriteRent`),
//! for code written against sockets, such as an HTTP engine sending its
//! requests through HBONE.
//!
//! This adapter copies (the rent traits hand us the caller's buffer); the
//! zero-copy path is [`crate::pipe`]. Reads keep the unread rest of a DATA
//! frame; writes take as much as the stream's flow-control capacity allows.

use std::io;
use std::rc::Rc;

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

use crate::pipe::wait_capacity;
use crate::pool::Lease;

/// The receiving half: reads what the peer sent; 0 bytes at END_STREAM.
pub struct TunnelReader {
    recv: RecvStream,
    pending: Bytes,
    _lease: Option<Rc<Lease>>,
}

/// The sending half: `shutdown` sends END_STREAM (the peer reads EOF).
pub struct TunnelWriter {
    send: SendStream<Bytes>,
    _lease: Option<Rc<Lease>>,
}

pub(crate) fn split(
    send: SendStream<Bytes>,
    recv: RecvStream,
    lease: Option<Lease>,
) -> (TunnelReader, TunnelWriter) {
    let lease = lease.map(Rc::new);
    (
        TunnelReader {
            recv,
            pending: Bytes::new(),
            _lease: lease.clone(),
        },
        TunnelWriter {
            send,
            _lease: lease,
        },
    )
}

fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, err)
}

impl TunnelReader {
    /// Makes sure `pending` holds data; `false` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        while self.pending.is_empty() {
            match self.recv.data().await {
                None => return Ok(false),
                Some(Err(err)) => return Err(h2_to_io(err)),
                Some(Ok(data)) => {
                    // Released on receipt: what stays buffered here is at
                    // most one frame, and the caller is actively reading.
                    self.recv
                        .flow_control()
                        .release_capacity(data.len())
                        .map_err(h2_to_io)?;
                    self.pending = data;
                }
            }
        }
        Ok(true)
    }

    /// Copies from `pending` into a buffer of `room` writable bytes at `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `room` bytes.
    unsafe fn copy_out(&mut self, dst: *mut u8, room: usize) -> usize {
        let n = room.min(self.pending.len());
        // SAFETY: the caller guarantees `dst` has `room >= n` writable bytes;
        // `pending` is a separate allocation, so the ranges cannot overlap.
        unsafe { dst.copy_from_nonoverlapping(self.pending.as_ptr(), n) };
        self.pending.advance(n);
        n
    }
}

impl AsyncReadRent for TunnelReader {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        match self.fill().await {
            Ok(true) => {}
            Ok(false) => return (Ok(0), buf),
            Err(err) => return (Err(err), buf),
        }
        // SAFETY: IoBufMut guarantees `write_ptr` is valid for `bytes_total`
        // bytes (monoio reads into the start of the buffer); `set_init(n)`
        // then covers exactly the bytes written.
        let n = unsafe { self.copy_out(buf.write_ptr(), buf.bytes_total()) };
        unsafe { buf.set_init(n) };
        (Ok(n), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        match self.fill().await {
            Ok(true) => {}
            Ok(false) => return (Ok(0), buf),
            Err(err) => return (Err(err), buf),
        }
        // SAFETY: as monoio's own `&[u8]` reader does: fill the first iovec,
        // whose pointer and length IoVecBufMut guarantees valid, then mark
        // that many bytes initialized.
        let n = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(mut first) => unsafe { self.copy_out(first.write_ptr(), first.bytes_total()) },
            None => 0,
        };
        unsafe { buf.set_init(n) };
        (Ok(n), buf)
    }
}

impl TunnelWriter {
    /// Sends up to the granted capacity from `len` bytes at `src`.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes until this returns.
    async unsafe fn send_from(&mut self, src: *const u8, len: usize) -> io::Result<usize> {
        if len == 0 {
            return Ok(0);
        }
        self.send.reserve_capacity(len);
        let capacity = wait_capacity(&mut self.send).await.map_err(h2_to_io)?;
        let n = capacity.min(len);
        // SAFETY: the caller keeps `src..src+len` alive and readable; n <= len.
        let data = Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(src, n) });
        self.send.send_data(data, false).map_err(h2_to_io)?;
        Ok(n)
    }
}

impl AsyncWriteRent for TunnelWriter {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: IoBuf guarantees `read_ptr` is valid for `bytes_init` bytes,
        // and we own `buf` until we return it.
        let result = unsafe { self.send_from(buf.read_ptr(), buf.bytes_init()).await };
        (result, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the first iovec's pointer and length are valid while we own
        // `buf` (IoVecBuf contract); a partial write is allowed by writev.
        let result = match unsafe { RawBuf::new_from_iovec(&buf) } {
            Some(first) => unsafe { self.send_from(first.read_ptr(), first.bytes_init()).await },
            None => Ok(0),
        };
        (result, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        // h2's connection task writes frames out as soon as it can.
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.send.send_data(Bytes::new(), true).map_err(h2_to_io)
    }
}
