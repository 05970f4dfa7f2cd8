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

/// The first line of the HTTP/2 client preface.
const H2C_REQUEST_LINE: &[u8] = b"PRI * HTTP/2.0";

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
    /// Waypoint: the Service `VIP:port` the HBONE tunnel carrying this
    /// connection was opened for; requests are routed with that Service's
    /// table (GAMMA) instead of by port and Host.
    pub service: Option<SocketAddr>,
    /// Waypoint: the HBONE peer's SPIFFE identity (L7 AuthorizationPolicy).
    pub peer_identity: Option<std::rc::Rc<str>>,
    /// The current request's access log fields (None when logging is off).
    pub access: Option<crate::access_log::RequestLog>,
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
    let h2c = handler.options.h2.h2c_prior_knowledge;
    let drain = conn.drain.clone();
    let handed_over = serve_connection(
        handler.clone(),
        conn.stream,
        conn.peer,
        conn.port,
        conn.drain,
        "http",
        None,
        h2c,
        None,
    )
    .await;
    if let Some(io) = handed_over {
        serve_h2c(handler, io, conn.peer, conn.port, drain).await;
    }
}

/// An HTTP listener connection that opened with the HTTP/2 preface: served
/// by h2, with the bytes already read replayed in front of the socket.
async fn serve_h2c(
    handler: Rc<HttpHandler>,
    io: Io<monoio::net::TcpStream>,
    peer: SocketAddr,
    port: u16,
    drain: Drain,
) {
    let Io { stream, rbuf } = io;
    let stream = match monoio::io::IntoPollIo::into_poll_io(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, "h2c: cannot switch the socket to poll mode: {e}");
            handler.metrics.connection_closed();
            return;
        }
    };
    let conn = crate::h2::server::Conn {
        peer,
        port,
        scheme: "http",
        sni: None,
        drain,
        active: Default::default(),
        service: None,
        peer_identity: None,
    };
    let io = crate::h2::Rewind::new(rbuf.freeze(), stream);
    crate::h2::server::serve(handler, io, conn, false).await;
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
    serve_connection(handler, stream, peer, port, drain, scheme, sni, false, None).await;
}

/// Waypoint: HTTP/1.1 over a tunnel opened for Service `service` (VIP:port)
/// by the HBONE peer `peer_identity`.
pub(crate) async fn serve_service_stream<S: ClientStream>(
    handler: Rc<HttpHandler>,
    stream: S,
    peer: SocketAddr,
    service: SocketAddr,
    peer_identity: Option<Rc<str>>,
    drain: Drain,
) {
    let port = service.port();
    let h2c = handler.options.h2.h2c_prior_knowledge;
    let drain2 = drain.clone();
    let handed_over = serve_connection(
        handler.clone(),
        stream,
        peer,
        port,
        drain,
        "http",
        None,
        h2c,
        Some((service, peer_identity.clone())),
    )
    .await;
    // gRPC and other HTTP/2 inside the tunnel: h2 over the tunnel's monoio
    // stream through a poll-style adapter.
    if let Some(Io { stream, rbuf }) = handed_over {
        let conn = crate::h2::server::Conn {
            peer,
            port,
            scheme: "http",
            sni: None,
            drain: drain2,
            active: Default::default(),
            service: Some(service),
            peer_identity,
        };
        let io = crate::h2::Rewind::new(rbuf.freeze(), crate::h2::poll_io::PollIo::new(stream));
        crate::h2::server::serve(handler, io, conn, false).await;
    }
}

/// The HTTP/1.1 connection loop. With `h2c`, a connection that opens with
/// the HTTP/2 preface is handed back (its bytes read so far in `rbuf`) for
/// the caller to serve as HTTP/2; it still counts as open.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<S: ClientStream>(
    handler: Rc<HttpHandler>,
    stream: S,
    peer: SocketAddr,
    port: u16,
    drain: Drain,
    scheme: &'static str,
    sni: Option<Box<str>>,
    h2c: bool,
    scope: Option<(SocketAddr, Option<Rc<str>>)>,
) -> Option<Io<S>> {
    let (service, peer_identity) = match scope {
        Some((vip, identity)) => (Some(vip), identity),
        None => (None, None),
    };
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
        service,
        peer_identity,
        access: None,
    };
    let mut first = true;
    loop {
        let head = match read_head(&handler, &mut client, first, h2c).await {
            Head::Request(head) => head,
            Head::H2Preface => return Some(client.io),
            Head::Close => break,
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
    None
}

enum Head {
    Request(RequestHead),
    /// The connection opened with the HTTP/2 client preface (h2c).
    H2Preface,
    /// Close the connection (peer gone, idle timeout, drain, or an error
    /// response was already sent).
    Close,
}

/// Waits for the next request head.
async fn read_head<S: ClientStream>(
    handler: &HttpHandler,
    client: &mut Client<S>,
    first: bool,
    h2c: bool,
) -> Head {
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
            _ = monoio::time::sleep(wait) => return Head::Close,
            _ = client.drain.signaled() => return Head::Close,
        };
        match read {
            Ok(0) | Err(_) => return Head::Close,
            Ok(_) => {}
        }
    }
    let deadline = Instant::now() + opts.request_header_timeout;
    loop {
        match parse_request(&mut client.io.rbuf, opts.max_request_header_bytes) {
            Ok(Some(head)) => return Head::Request(head),
            Ok(None) => {}
            // "PRI * HTTP/2.0" is no HTTP/1.x request line: only a failed
            // parse looks for the h2c preface.
            Err(_) if h2c && first && client.io.rbuf.starts_with(H2C_REQUEST_LINE) => {
                return Head::H2Preface;
            }
            Err(e) => {
                proxy::send_error(handler, client, e.status(), e.reason()).await;
                return Head::Close;
            }
        }
        match monoio::time::timeout_at(deadline.into(), client.io.fill()).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Close,
            Ok(Ok(_)) => {}
            Err(_) => {
                proxy::send_error(handler, client, 408, "request header timeout").await;
                return Head::Close;
            }
        }
    }
}
