//! RequestMirror: a fire-and-forget copy of the request to one endpoint of
//! the mirror cluster. Runs as its own task; its response is read and
//! discarded, and nothing about it can delay or fail the main request.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::upstream::pool;

/// `wire`: the complete request (head with `connection: close`, plus body).
pub fn spawn(addr: SocketAddr, wire: Bytes, timeout: Duration) {
    monoio::spawn(async move {
        let _ = monoio::time::timeout(timeout, send(addr, wire, timeout)).await;
    });
}

async fn send(addr: SocketAddr, wire: Bytes, connect_timeout: Duration) {
    let Ok(mut io) = pool::connect(addr, connect_timeout).await else {
        tracing::debug!(%addr, "mirror connect failed");
        return;
    };
    if io.write_all(wire).await.is_err() {
        return;
    }
    // Read until the mirror closes (we asked for connection: close), discarding.
    loop {
        io.rbuf.clear();
        match io.fill().await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
