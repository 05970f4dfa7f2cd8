//! Both directions of an L4 connection: bytes spliced as they come, a FIN
//! passed on as a write shutdown (half-close), an error in either direction
//! ends both.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;

/// Bytes moved, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    /// Client → backend.
    pub sent: u64,
    /// Backend → client.
    pub received: u64,
}

/// Copies until both sides have closed their sending half, or until either
/// direction fails (then both sockets are dropped, which closes them).
pub async fn bidirectional(client: TcpStream, backend: TcpStream) -> Copied {
    let sent = Cell::new(0u64);
    let received = Cell::new(0u64);
    let (client_read, client_write) = client.into_split();
    let (backend_read, backend_write) = backend.into_split();
    let mut up = pin!(one_way(client_read, backend_write, &sent));
    let mut down = pin!(one_way(backend_read, client_write, &received));
    let (mut up_done, mut down_done) = (None, None);
    poll_fn(|cx| {
        if up_done.is_none() {
            if let Poll::Ready(r) = up.as_mut().poll(cx) {
                up_done = Some(r);
            }
        }
        if down_done.is_none() {
            if let Poll::Ready(r) = down.as_mut().poll(cx) {
                down_done = Some(r);
            }
        }
        match (&up_done, &down_done) {
            (Some(Err(_)), _) | (_, Some(Err(_))) | (Some(Ok(())), Some(Ok(()))) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    })
    .await;
    Copied {
        sent: sent.get(),
        received: received.get(),
    }
}

/// Bytes moved per splice: a pipe's default capacity.
const SPLICE_CHUNK: u32 = 64 * 1024;

/// Moves bytes until EOF with splice(2) through a pipe (the payload never
/// enters user space; io_uring ops, or plain splice on the epoll driver),
/// then shuts the writer's sending half so the peer sees the FIN while the
/// other direction continues. `counter` grows as bytes are read.
async fn one_way(
    mut from: OwnedReadHalf<TcpStream>,
    mut to: OwnedWriteHalf<TcpStream>,
    counter: &Cell<u64>,
) -> std::io::Result<()> {
    let (mut pipe_out, mut pipe_in) = monoio::net::unix::new_pipe()?;
    loop {
        let mut pending = from.splice_to_pipe(&mut pipe_in, SPLICE_CHUNK).await?;
        if pending == 0 {
            break;
        }
        counter.set(counter.get() + u64::from(pending));
        while pending > 0 {
            match to.splice_from_pipe(&mut pipe_out, pending).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => pending -= n,
            }
        }
    }
    to.shutdown().await
}

/// Writes `bytes` (the buffered ClientHello) before the copy starts.
pub async fn write_prefix(to: &mut TcpStream, bytes: Vec<u8>) -> std::io::Result<()> {
    let (result, _) = to.write_all(bytes).await;
    result.map(|_| ())
}
