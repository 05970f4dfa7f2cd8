//! Moving body bytes through h2 streams under flow control: send only what
//! the peer's window grants (h2 then never buffers more than its send
//! buffer), and give receive capacity back only once the bytes were passed on.

use std::future::poll_fn;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};

/// Sends all of `data`, in pieces no larger than the granted capacity.
pub async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = wait_capacity(send).await?;
        let chunk = data.split_to(capacity.min(data.len()));
        send.send_data(chunk, false)?;
    }
    Ok(())
}

async fn wait_capacity(send: &mut SendStream<Bytes>) -> Result<usize, h2::Error> {
    let capacity = send.capacity();
    if capacity > 0 {
        return Ok(capacity);
    }
    loop {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(capacity)) => return Ok(capacity),
            Some(Err(err)) => return Err(err),
            // Reset or closed: nothing can be sent any more.
            None => return Err(h2::Error::from(Reason::CANCEL)),
        }
    }
}

/// The next non-empty DATA payload; None at the end of the stream. The
/// caller calls [`release`] once it has written the bytes on.
pub async fn next_data(recv: &mut RecvStream) -> Option<Result<Bytes, h2::Error>> {
    loop {
        match recv.data().await? {
            Ok(d) if d.is_empty() => continue,
            other => return Some(other),
        }
    }
}

/// Gives `n` bytes of receive window back to the peer.
pub fn release(recv: &mut RecvStream, n: usize) {
    let _ = recv.flow_control().release_capacity(n);
}

/// Resolves when the peer reset the stream we answer on.
pub async fn reset_by_peer(send: &mut SendStream<Bytes>) -> Reason {
    poll_fn(|cx| send.poll_reset(cx))
        .await
        .unwrap_or(Reason::CANCEL)
}
