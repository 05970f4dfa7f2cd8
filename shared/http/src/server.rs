//! The downstream connection loop: read a head, serve it, repeat while the
//! connection may be kept; requests are answered strictly in order, so
//! pipelined requests simply wait in the read buffer.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use mesh_runtime::{Accepted, Drain};

use crate::codec::request::parse_request;
use crate::codec::RequestHead;
use crate::io::{ClientStream, Io};
use crate::proxy::{self, Outcome};
use crate::{tunnel, HttpHandler};

/// One downstream connection's state.
pub(crate) struct Client<S> {
    pub io: Io<S>,
    /// "http" or "https": x-forwarded-proto and the default redirect scheme.
    pub scheme: &'static str,
    pub peer: SocketAddr,
    pub port: u16,
    pub drain: Drain,
    /// Reused for every response head (and small bodies written with it).
    pub wbuf: BytesMut,
    /// Reused for every upstream request head.
    pub scratch: BytesMut,
    /// The TLS SNI (lower-case) on HTTPS connections: a request whose Host
    /// selects another listener of the port than the SNI did gets 421.
    pub sni: Option<Box<str>>,
}

pub(crate) async fn serve(handler: Rc<HttpHandler>, conn: Accepted) {
    let tls = handler
        .snapshots
        .load()
        .ports
        .get(&conn.port)
        .and_then(|p| p.tls.clone());
    if let Some(tls) = tls {
        return crate::tls::serve(handler, conn, tls).await;
    }
    let _ = conn.stream.set_nodelay(true);
    serve_stream(
        handler,
        conn.stream,
        conn.peer,
        conn.port,
        conn.drain,
        "http",
    )
    .await;
}

pub(crate) async fn serve_stream<S: ClientStream>(
    handler: Rc<HttpHandler>,
    stream: S,
    peer: SocketAddr,
    port: u16,
    drain: Drain,
    scheme: &'static str,
) {
    serve_stream_with_sni(handler, stream, peer, port, drain, scheme, None).await;
}

pub(crate) async fn serve_stream_with_sni<S: ClientStream>(
    handler: Rc<HttpHandler>,
    stream: S,
    peer: SocketAddr,
    port: u16,
    drain: Drain,
    scheme: &'static str,
    sni: Option<Box<str>>,
) {
    handler.metrics.connection_opened();
    let mut client = Client {
        io: Io::new(stream),
        scheme,
        peer,
        port,
        drain,
        wbuf: BytesMut::with_capacity(4096),
        scratch: BytesMut::new(),
        sni,
    };
    let mut first = true;
    loop {
        let Some(head) = read_head(&handler, &mut client, first).await else {
            break;
        };
        first = false;
        match proxy::handle(&handler, &mut client, head).await {
            Outcome::KeepAlive if !client.drain.is_draining() => continue,
            Outcome::KeepAlive | Outcome::Close => break,
            Outcome::Upgrade(upstream) => {
                tunnel::run(client.io, upstream).await;
                break;
            }
        }
    }
    handler.metrics.connection_closed();
}

/// Waits for the next request head. None: close the connection (peer gone,
/// idle timeout, drain, or an error response was already sent).
async fn read_head<S: ClientStream>(
    handler: &HttpHandler,
    client: &mut Client<S>,
    first: bool,
) -> Option<RequestHead> {
    let opts = &handler.options;
    if client.io.rbuf.is_empty() {
        client.io.shrink_idle();
        if client.wbuf.capacity() > 16 * 1024 {
            client.wbuf = BytesMut::with_capacity(4096);
        }
        // Idle between requests: close quietly on timeout or drain.
        let wait = if first {
            opts.request_header_timeout
        } else {
            opts.idle_timeout
        };
        let read = monoio::select! {
            r = client.io.fill() => r,
            _ = monoio::time::sleep(wait) => return None,
            _ = client.drain.signaled() => return None,
        };
        match read {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    let deadline = Instant::now() + opts.request_header_timeout;
    loop {
        match parse_request(&mut client.io.rbuf, opts.max_request_header_bytes) {
            Ok(Some(head)) => return Some(head),
            Ok(None) => {}
            Err(e) => {
                proxy::send_error(handler, client, e.status(), e.reason()).await;
                return None;
            }
        }
        match monoio::time::timeout_at(deadline.into(), client.io.fill()).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => {
                proxy::send_error(handler, client, 408, "request header timeout").await;
                return None;
            }
        }
    }
}
