//! RequestMirror: a fire-and-forget copy of the request to one endpoint of
//! the mirror cluster. Runs as its own task; its response is read and
//! discarded, and nothing about it can delay or fail the main request.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mesh_registry::Mirror;
use rand::Rng;

use crate::codec::RequestHead;
use crate::upstream::head::{write_upstream_head, UpstreamBody};
use crate::upstream::{pick, pool};
use crate::HttpHandler;

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

#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_mirror(
    h: &HttpHandler,
    m: &Mirror,
    req: &RequestHead,
    client_ip: IpAddr,
    buffered: Option<&Bytes>,
    request_id: &[u8],
    scheme: &str,
) {
    if m.percent < 100.0 && h.rng.borrow_mut().random_range(0.0..100.0) >= m.percent {
        return;
    }
    let Some(addr) = pick::pick_endpoint(&m.target, &h.round_robin) else {
        return;
    };
    // A streamed body cannot be copied without delaying the main request:
    // mirror only the head then.
    let body = buffered.cloned().unwrap_or_default();
    let mut wire = BytesMut::with_capacity(512 + body.len());
    write_upstream_head(
        &mut wire,
        req,
        client_ip,
        UpstreamBody::Buffered(body.len()),
        true,
        request_id,
        scheme,
    );
    wire.extend_from_slice(&body);
    spawn(addr, wire.freeze(), h.options.mirror_timeout);
}
