//! One HBONE tunnel's HTTP/2 stream: the request/response halves as one value.

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::pipe::{self, PipeOutcome};

/// The two halves of an accepted CONNECT stream: bytes we send into the
/// tunnel and bytes the peer sends us.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv }
    }

    pub fn into_parts(self) -> (SendStream<Bytes>, RecvStream) {
        (self.send, self.recv)
    }

    /// Sends `data`, waiting for flow-control capacity as needed (no copy:
    /// the `Bytes` is split into frames).
    pub async fn send(&mut self, data: Bytes) -> Result<(), h2::Error> {
        pipe::send_all(&mut self.send, data).await
    }

    /// Ends our direction (END_STREAM): the peer reads EOF.
    pub fn finish(&mut self) -> Result<(), h2::Error> {
        self.send.send_data(Bytes::new(), true)
    }

    /// Next non-empty chunk from the peer; `None` once the peer finished its direction.
    /// The chunk's flow-control capacity is released on return: the caller
    /// owns the bytes from here on.
    pub async fn recv(&mut self) -> Option<Result<Bytes, h2::Error>> {
        loop {
            let data = match self.recv.data().await? {
                Ok(data) => data,
                Err(err) => return Some(Err(err)),
            };
            // An empty DATA frame (e.g. one that only carries END_STREAM) is
            // not a chunk.
            if data.is_empty() {
                continue;
            }
            return Some(
                self.recv
                    .flow_control()
                    .release_capacity(data.len())
                    .map(|()| data),
            );
        }
    }

    /// Aborts the stream (RST_STREAM with `reason`).
    pub fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }

    /// This stream as monoio reader and writer halves (copying adapter, see [`crate::io`]).
    pub fn into_io(self) -> (crate::io::TunnelReader, crate::io::TunnelWriter) {
        crate::io::split(self.send, self.recv, None)
    }

    /// Pipes bytes both ways between this stream and a byte stream split
    /// into `read` and `write` halves, until both directions finished.
    pub async fn pipe<R: AsyncReadRent, W: AsyncWriteRent>(self, read: R, write: W) -> PipeOutcome {
        pipe::pipe(self, read, write).await
    }

    /// [`H2Stream::pipe`] to a TCP socket, with fewer frames and syscalls per connection
    /// (see [`pipe::pipe_tcp`]).
    pub async fn pipe_tcp(self, tcp: monoio::net::TcpStream) -> PipeOutcome {
        pipe::pipe_tcp(self, tcp).await
    }
}
