//! Both directions of an L4 connection: bytes copied as they come, a FIN
//! passed on as a write shutdown (half-close), an error in either direction
//! ends both.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

/// Per-direction buffer. Large enough for bulk transfers to batch well,
/// small enough for many idle connections.
const BUFFER: usize = 64 * 1024;

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

/// Reads until EOF, writing everything; on EOF shuts the writer's sending
/// half so the peer sees the FIN while the other direction continues.
async fn one_way<R, W>(mut from: R, mut to: W, counter: &Cell<u64>) -> std::io::Result<()>
where
    R: AsyncReadRent,
    W: AsyncWriteRent,
{
    let mut buf = Vec::with_capacity(BUFFER);
    loop {
        // monoio reads into the start of a Vec (it sets the length): start empty.
        buf.clear();
        let (result, b) = from.read(buf).await;
        buf = b;
        match result? {
            0 => {
                to.shutdown().await?;
                return Ok(());
            }
            n => counter.set(counter.get() + n as u64),
        }
        let (result, b) = to.write_all(buf).await;
        buf = b;
        result?;
    }
}

/// Writes `bytes` (the buffered ClientHello) before the copy starts.
pub async fn write_prefix(to: &mut TcpStream, bytes: Vec<u8>) -> std::io::Result<()> {
    let (result, _) = to.write_all(bytes).await;
    result.map(|_| ())
}
