//! Byte pipes between an HTTP/2 stream and a completion-based byte stream
//! (a monoio `TcpStream`'s halves, or anything implementing monoio's
//! `AsyncReadRent`/`AsyncWriteRent`).
//!
//! - No copies: each socket read lands in a fresh region of a `BytesMut` that
//!   is frozen and handed to h2 as `Bytes`; each h2 DATA chunk is written to
//!   the socket as the `Bytes` h2 gave us.
//! - Flow control (DESIGN.md): look at `capacity()` before awaiting
//!   `poll_capacity` (which only reports increases), and release receive
//!   capacity only after the socket write completed, so a slow reader pushes
//!   back on the sender instead of filling our memory.
//! - Half-close both ways: socket EOF → END_STREAM; END_STREAM → shutdown(Write).
//!   The pipe ends when both directions ended, or at the first error (then the
//!   stream is reset and the socket halves are dropped).

use std::cell::Cell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::stream::H2Stream;

/// Size of each socket read: one read becomes one 256 KiB DATA frame at most.
const READ_SIZE: usize = 256 * 1024;
/// Below this much spare room in the read buffer, start a new one.
const MIN_READ_ROOM: usize = 32 * 1024;
/// Each socket read lands at an address 14 bytes past a multiple of 64. rustls copies the
/// plaintext of each TLS record to 5 bytes into a fresh (64-byte aligned) record buffer,
/// after the 9-byte h2 frame header: with the payload at 14 (mod 64), source and
/// destination share their alignment. At most other offsets the destination lands 1-31
/// bytes past the source modulo 64, where `rep movsb` (glibc's memcpy for large copies) is
/// ~15x slower on the AMD EPYC machines we benchmark on: that copy was 28% of the sending
/// ztunnel's CPU and dropped ~6x with this (bench/results/hbone.md).
const READ_ALIGN: usize = 14;

/// Why a pipe stopped before both directions finished cleanly.
#[derive(Debug)]
pub enum PipeError {
    /// Reading the byte stream failed.
    Read(io::Error),
    /// Writing the byte stream failed.
    Write(io::Error),
    /// The HTTP/2 stream failed (reset by the peer, connection lost).
    Stream(h2::Error),
    /// The peer reset the HTTP/2 stream while we were reading the byte stream.
    Reset(Reason),
}

impl fmt::Display for PipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PipeError::Read(err) => write!(f, "reading the byte stream: {err}"),
            PipeError::Write(err) => write!(f, "writing the byte stream: {err}"),
            PipeError::Stream(err) => write!(f, "HTTP/2 stream: {err}"),
            PipeError::Reset(reason) => write!(f, "HTTP/2 stream reset by peer: {reason}"),
        }
    }
}

impl std::error::Error for PipeError {}

/// Bytes moved by a pipe, counted even when it ended with an error.
#[derive(Debug)]
pub struct PipeOutcome {
    /// Read from the byte stream and sent into the tunnel.
    pub into_tunnel: u64,
    /// Received from the tunnel and written to the byte stream.
    pub out_of_tunnel: u64,
    pub result: Result<(), PipeError>,
}

/// See the module documentation.
pub async fn pipe<R: AsyncReadRent, W: AsyncWriteRent>(
    stream: H2Stream,
    mut read: R,
    mut write: W,
) -> PipeOutcome {
    pipe_with(stream, &mut read, &mut write, None).await
}

/// [`pipe`] for a TCP socket, cheaper per connection: after a read that did not fill the
/// buffer, one non-blocking `recv` looks for more bytes or the end, so that a short request
/// followed by FIN (the usual single-exchange connection) goes out as one DATA frame with
/// END_STREAM instead of two TLS writes; and the socket is closed once, without the extra
/// `shutdown(2)` that dropping monoio's owned write half makes.
pub async fn pipe_tcp(stream: H2Stream, tcp: TcpStream) -> PipeOutcome {
    let fd = tcp.as_raw_fd();
    let (mut read, mut write) = tcp.into_split();
    let outcome = pipe_with(stream, &mut read, &mut write, Some(fd)).await;
    // The pipe already sent FIN when the tunnel ended its direction (or failed, in which
    // case closing the socket is the signal): reuniting skips the write half's drop-time
    // shutdown. The halves come from one `into_split`, so reunite cannot fail.
    if let Ok(tcp) = read.reunite(write) {
        drop(tcp);
    }
    outcome
}

async fn pipe_with<R: AsyncReadRent, W: AsyncWriteRent>(
    stream: H2Stream,
    read: &mut R,
    write: &mut W,
    probe_fd: Option<RawFd>,
) -> PipeOutcome {
    let (mut send, mut recv) = stream.into_parts();
    let into_tunnel = Cell::new(0u64);
    let out_of_tunnel = Cell::new(0u64);
    let result = try_join(
        socket_to_stream(read, &mut send, &into_tunnel, probe_fd),
        stream_to_socket(&mut recv, write, &out_of_tunnel),
    )
    .await;
    if result.is_err() {
        // No-op when the stream already closed; otherwise the peer learns now
        // instead of waiting for the handles to drop.
        send.send_reset(Reason::CANCEL);
    }
    PipeOutcome {
        into_tunnel: into_tunnel.get(),
        out_of_tunnel: out_of_tunnel.get(),
        result,
    }
}

/// Sends all of `data` on `send`, in pieces no larger than the capacity h2
/// grants, so h2 never buffers more than `max_send_buffer_size` for us.
pub(crate) async fn send_all(send: &mut SendStream<Bytes>, data: Bytes) -> Result<(), h2::Error> {
    send_all_then(send, data, false).await
}

/// [`send_all`], with END_STREAM on the last piece when `end` (no separate empty frame).
async fn send_all_then(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if end {
            send.send_data(data, true)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = wait_capacity(send).await?;
        let chunk = data.split_to(capacity.min(data.len()));
        send.send_data(chunk, end && data.is_empty())?;
    }
    Ok(())
}

pub(crate) async fn wait_capacity(send: &mut SendStream<Bytes>) -> Result<usize, h2::Error> {
    let capacity = send.capacity();
    if capacity > 0 {
        return Ok(capacity);
    }
    loop {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(capacity)) => return Ok(capacity),
            Some(Err(err)) => return Err(err),
            // The stream can no longer send: it was reset or closed.
            None => return Err(h2::Error::from(Reason::CANCEL)),
        }
    }
}

/// Moves the (empty) buffer's start to an address that is `target` modulo 64, skipping at
/// most 63 bytes of its spare room.
fn align_start(buf: &mut BytesMut, target: usize) {
    use bytes::{Buf, BufMut};
    debug_assert!(buf.is_empty());
    let addr = buf.as_ptr() as usize;
    let pad = (target + 64 - addr % 64) % 64;
    if pad > 0 {
        buf.put_bytes(0, pad);
        buf.advance(pad);
    }
}

async fn socket_to_stream<R: AsyncReadRent>(
    read: &mut R,
    send: &mut SendStream<Bytes>,
    count: &Cell<u64>,
    probe_fd: Option<RawFd>,
) -> Result<(), PipeError> {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        if buf.capacity() < MIN_READ_ROOM + 64 {
            // Reuses the old allocation when every chunk cut from it was
            // already written out by h2; allocates otherwise.
            buf.reserve(READ_SIZE + 64);
        }
        align_start(&mut buf, READ_ALIGN);
        let (n, filled) = read_unless_reset(read, std::mem::take(&mut buf), send).await?;
        buf = filled;
        if n == 0 {
            send.send_data(Bytes::new(), true)
                .map_err(PipeError::Stream)?;
            return Ok(());
        }
        // The read did not fill the buffer: the socket was drained, and the peer may
        // already have closed its side too.
        let ended = match probe_fd {
            Some(fd) if buf.len() < buf.capacity() => probe_more(fd, &mut buf),
            _ => false,
        };
        count.set(count.get() + buf.len() as u64);
        // monoio reads into the start of the buffer, so `buf` holds exactly
        // this read; split it off and keep the spare room for the next one.
        let chunk = buf.split().freeze();
        send_all_then(send, chunk, ended)
            .await
            .map_err(PipeError::Stream)?;
        if ended {
            return Ok(());
        }
    }
}

/// One non-blocking `recv` into `buf`'s spare room: appends what is already queued on the
/// socket and says whether the peer has closed its side (EOF right after the bytes). Errors
/// and "nothing yet" change nothing: the next ordinary read reports or waits for them.
fn probe_more(fd: RawFd, buf: &mut BytesMut) -> bool {
    let room = buf.capacity() - buf.len();
    // SAFETY: recv writes at most `room` bytes into the spare capacity of `buf`, which we
    // own exclusively here; `set_len` then covers exactly the bytes the kernel wrote.
    unsafe {
        let spare = buf.as_mut_ptr().add(buf.len());
        let got = libc::recv(fd, spare.cast(), room, libc::MSG_DONTWAIT);
        match got {
            0 => true,
            n if n > 0 => {
                buf.set_len(buf.len() + n as usize);
                false
            }
            _ => false,
        }
    }
}

/// One read of the byte stream, abandoned if the peer resets the HTTP/2
/// stream meanwhile (otherwise an idle socket would keep a dead tunnel open).
async fn read_unless_reset<R: AsyncReadRent>(
    read: &mut R,
    buf: BytesMut,
    send: &mut SendStream<Bytes>,
) -> Result<(usize, BytesMut), PipeError> {
    let mut reading = pin!(read.read(buf));
    poll_fn(|cx| {
        if let Poll::Ready((result, buf)) = reading.as_mut().poll(cx) {
            return Poll::Ready(result.map(|n| (n, buf)).map_err(PipeError::Read));
        }
        match send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Poll::Ready(Err(PipeError::Reset(reason))),
            Poll::Ready(Err(err)) => Poll::Ready(Err(PipeError::Stream(err))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

async fn stream_to_socket<W: AsyncWriteRent>(
    recv: &mut RecvStream,
    write: &mut W,
    count: &Cell<u64>,
) -> Result<(), PipeError> {
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                let len = data.len();
                if len == 0 {
                    continue;
                }
                let (result, _) = write.write_all(data).await;
                result.map_err(PipeError::Write)?;
                count.set(count.get() + len as u64);
                recv.flow_control()
                    .release_capacity(len)
                    .map_err(PipeError::Stream)?;
            }
            Some(Err(err)) => return Err(PipeError::Stream(err)),
            None => {
                return match write.shutdown().await {
                    // The other side already went away entirely: nothing left to signal.
                    Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
                    other => other.map_err(PipeError::Write),
                };
            }
        }
    }
}

/// Runs both directions together; the first error ends both.
async fn try_join<A, B, E>(a: A, b: B) -> Result<(), E>
where
    A: Future<Output = Result<(), E>>,
    B: Future<Output = Result<(), E>>,
{
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (mut a_done, mut b_done) = (false, false);
    poll_fn(|cx| {
        if !a_done {
            if let Poll::Ready(result) = a.as_mut().poll(cx) {
                if let Err(err) = result {
                    return Poll::Ready(Err(err));
                }
                a_done = true;
            }
        }
        if !b_done {
            if let Poll::Ready(result) = b.as_mut().poll(cx) {
                if let Err(err) = result {
                    return Poll::Ready(Err(err));
                }
                b_done = true;
            }
        }
        if a_done && b_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}
