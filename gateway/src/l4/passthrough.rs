//! TLS passthrough: read the ClientHello (without answering it), take its
//! SNI, route by it, and hand the buffered bytes and the rest of the stream
//! to the backend, which terminates TLS itself.
//!
//! The ClientHello is parsed by rustls's `server::Acceptor` fed with the
//! bytes as they arrive (a ClientHello split over many TCP segments, or
//! spread over several TLS records, is reassembled by it). Everything read
//! is kept and forwarded unchanged.

use std::time::Instant;

use mesh_registry::L4Routes;
use mesh_runtime::Accepted;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::server::Acceptor;

use super::metrics::HelloRejection;
use super::L4Handler;

/// More than any real ClientHello (rustls caps a handshake message at 64 KiB).
const MAX_HELLO_BYTES: usize = 80 * 1024;

pub async fn serve(handler: &L4Handler, conn: Accepted, routes: &L4Routes) {
    let mut stream = conn.stream;
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + handler.options.client_hello_timeout;
    let (buffered, sni) = match read_client_hello(&mut stream, deadline).await {
        Ok(hello) => hello,
        Err(rejection) => {
            handler.metrics.hello_rejected(rejection);
            tracing::debug!(peer = %conn.peer, port = conn.port, "TLS passthrough: no valid ClientHello ({rejection:?})");
            return;
        }
    };
    let route = routes.route(sni.as_deref()).map(|r| &**r);
    if route.is_none() {
        tracing::debug!(peer = %conn.peer, port = conn.port, sni = ?sni, "TLS passthrough: no route for this SNI");
    }
    handler
        .proxy("tls", stream, conn.peer, route, buffered)
        .await;
}

/// Reads until rustls has a whole ClientHello. Ok: every byte read and the
/// SNI (lower-case). A malformed hello is answered with rustls's alert.
async fn read_client_hello(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(Vec<u8>, Option<String>), HelloRejection> {
    let mut acceptor = Acceptor::default();
    let mut buffered: Vec<u8> = Vec::with_capacity(2048);
    let mut chunk: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        chunk.clear();
        let read = monoio::time::timeout_at(deadline.into(), stream.read(chunk)).await;
        let (result, c) = match read {
            Ok(r) => r,
            Err(_) => return Err(HelloRejection::Timeout),
        };
        chunk = c;
        match result {
            Ok(0) | Err(_) => return Err(HelloRejection::Incomplete),
            Ok(_) => {}
        }
        buffered.extend_from_slice(&chunk);
        if buffered.len() > MAX_HELLO_BYTES {
            return Err(HelloRejection::Invalid);
        }
        // rustls takes at most a few KiB per call: feed until the chunk is used up.
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => return Err(HelloRejection::Invalid),
                Ok(_) => {}
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok((buffered, sni));
            }
            Err((_error, mut alert)) => {
                let mut bytes = Vec::new();
                if alert.write_all(&mut bytes).is_ok() && !bytes.is_empty() {
                    let write = stream.write_all(bytes);
                    // Best effort: a client that does not read gets no alert.
                    let _ = monoio::time::timeout_at(deadline.into(), write).await;
                }
                return Err(HelloRejection::Invalid);
            }
        }
    }
}
