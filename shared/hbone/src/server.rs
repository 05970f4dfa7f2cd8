//! HBONE server: accepts HTTP/2 connections, answers each CONNECT stream
//! with the handler's decision and pipes the tunnel to the upstream.
//!
//! Status codes (Istio's): 200 once the upstream connection is up and policy
//! allowed it; 400 for anything that is not a CONNECT to `ip:port`; 401 when
//! policy denies; 503 for an unknown workload or a failed upstream connect.
//!
//! One `Server` per worker thread (it is `Rc`-based): `serve` runs one
//! connection on the current monoio runtime, which must have its timer
//! enabled (handshake timeout, PING keepalive). `shutdown` sends GOAWAY on
//! every connection it serves; their in-flight streams run to completion.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::event::Event;
use crate::headers;
use crate::keepalive::{Keepalive, KeepaliveError};
use crate::pipe::PipeOutcome;
use crate::settings::H2Settings;
use crate::stream::H2Stream;

/// One CONNECT stream as the handler sees it.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// `:authority`, the destination the client wants (`ip:port`).
    pub authority: SocketAddr,
    /// The authenticated identity of the connection's peer (the client
    /// certificate's SPIFFE URI), from the [`ConnectionInfo`] given to [`Server::serve`].
    pub peer_identity: Option<Arc<str>>,
    /// The HBONE connection's remote address (the client ztunnel / pod).
    pub peer_addr: Option<SocketAddr>,
    /// The HBONE connection's local address (which of our addresses it reached).
    pub local_addr: Option<SocketAddr>,
    /// The original source from `forwarded: for="ip:port"`, if sent.
    pub forwarded_for: Option<SocketAddr>,
    pub baggage: Option<String>,
    pub traceparent: Option<String>,
    /// All request headers, for anything not parsed above.
    pub headers: HeaderMap,
}

/// What the caller knows about an accepted HBONE connection (after TLS).
#[derive(Clone, Debug, Default)]
pub struct ConnectionInfo {
    /// The verified peer identity (client certificate URI SAN); `None` for plain TCP.
    pub peer_identity: Option<Arc<str>>,
    pub peer_addr: Option<SocketAddr>,
    pub local_addr: Option<SocketAddr>,
}

/// Why a CONNECT is not served; each maps to Istio's status code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed request.
    BadRequest(String),
    /// 401: authorization policy denied the connection.
    Denied(String),
    /// 503: unknown destination workload, or the upstream connect failed.
    Unavailable(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Refusal::BadRequest(reason)
            | Refusal::Denied(reason)
            | Refusal::Unavailable(reason) => reason,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.reason())
    }
}

/// How a CONNECT stream ended, for metrics and access logs.
#[derive(Debug)]
pub enum TunnelOutcome {
    /// Answered with the refusal's status.
    Refused(Refusal),
    /// Answered 200 and piped until both sides finished or one failed.
    Piped(PipeOutcome),
    /// The 200 could not be sent (the client reset the stream meanwhile).
    ResponseFailed(h2::Error),
}

/// Decides each CONNECT and supplies its upstream byte stream.
pub trait ConnectHandler: 'static {
    /// The upstream connection, e.g. `monoio::net::TcpStream` to the app.
    type Upstream: Splitable<OwnedRead: AsyncReadRent, OwnedWrite: AsyncWriteRent> + 'static;

    /// Applies policy, connects the upstream. Runs in the stream's own task.
    fn connect(
        &self,
        request: &ConnectRequest,
    ) -> impl Future<Output = Result<Self::Upstream, Refusal>>;

    /// Called once per stream that reached the handler, after it ended.
    fn finished(&self, _request: &ConnectRequest, _outcome: &TunnelOutcome) {}

    /// Carries an accepted tunnel (its 200 is sent) until it ends. The
    /// default pipes it to `upstream`; a handler that terminates tunnels
    /// itself (the waypoint serves HTTP on them, e.g. over
    /// [`H2Stream::into_io`]) overrides this.
    fn serve_tunnel(
        &self,
        _request: &ConnectRequest,
        tunnel: H2Stream,
        upstream: Self::Upstream,
    ) -> impl Future<Output = PipeOutcome> {
        async move {
            let (read, write) = upstream.into_split();
            tunnel.pipe(read, write).await
        }
    }
}

/// A [`ConnectHandler`] from an async closure; see [`handler_fn`].
pub struct HandlerFn<F>(F);

/// Wraps `Fn(ConnectRequest) -> impl Future<Output = Result<Upstream, Refusal>>`.
pub fn handler_fn<F>(f: F) -> HandlerFn<F> {
    HandlerFn(f)
}

impl<F, Fut, U> ConnectHandler for HandlerFn<F>
where
    F: Fn(ConnectRequest) -> Fut + 'static,
    Fut: Future<Output = Result<U, Refusal>>,
    U: Splitable<OwnedRead: AsyncReadRent, OwnedWrite: AsyncWriteRent> + 'static,
{
    type Upstream = U;

    fn connect(&self, request: &ConnectRequest) -> impl Future<Output = Result<U, Refusal>> {
        (self.0)(request.clone())
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub h2: H2Settings,
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise: clients open another
    /// connection beyond it.
    pub max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            h2: H2Settings::default(),
            max_concurrent_streams: 100,
        }
    }
}

#[derive(Debug)]
pub enum ServerError {
    /// No valid HTTP/2 preface within the handshake timeout.
    HandshakeTimeout,
    Handshake(h2::Error),
    /// The connection failed (I/O error, protocol error from the client).
    Connection(h2::Error),
    /// The client stopped answering PINGs.
    Keepalive(KeepaliveError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::HandshakeTimeout => f.write_str("HTTP/2 handshake timed out"),
            ServerError::Handshake(err) => write!(f, "HTTP/2 handshake failed: {err}"),
            ServerError::Connection(err) => write!(f, "HTTP/2 connection failed: {err}"),
            ServerError::Keepalive(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ServerError {}

/// A per-worker HBONE server. Cheap to clone (all clones share state).
pub struct Server<H> {
    inner: Rc<Inner<H>>,
}

impl<H> Clone for Server<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H> {
    handler: H,
    config: ServerConfig,
    shutdown: Rc<Event>,
    connections: Cell<usize>,
    streams: Cell<usize>,
    idle_waiters: RefCell<Vec<Waker>>,
}

impl<H: ConnectHandler> Server<H> {
    pub fn new(config: ServerConfig, handler: H) -> Self {
        Self {
            inner: Rc::new(Inner {
                handler,
                config,
                shutdown: Rc::new(Event::default()),
                connections: Cell::new(0),
                streams: Cell::new(0),
                idle_waiters: RefCell::new(Vec::new()),
            }),
        }
    }

    pub fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// Serves one connection (TLS already terminated by the caller, who
    /// passes the verified peer identity and addresses) until it closes. Each CONNECT
    /// stream runs in its own task.
    pub async fn serve<S>(&self, io: S, connection: ConnectionInfo) -> Result<(), ServerError>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let _connection = Counted::new(&self.inner, |inner| &inner.connections);
        let settings = &self.inner.config.h2;
        let handshake = settings
            .server_builder(self.inner.config.max_concurrent_streams)
            .handshake::<S, Bytes>(io);
        let mut conn = monoio::time::timeout(settings.handshake_timeout, handshake)
            .await
            .map_err(|_| ServerError::HandshakeTimeout)?
            .map_err(ServerError::Handshake)?;
        let mut keepalive = settings.keepalive_interval.and_then(|interval| {
            Some(Keepalive::new(
                conn.ping_pong()?,
                interval,
                settings.keepalive_timeout,
            ))
        });

        let shutdown = self.inner.shutdown.clone();
        let mut shutdown_slot = None;
        let mut going_away = false;
        let result = poll_fn(|cx| loop {
            if !going_away && shutdown.poll_wait(cx, &mut shutdown_slot).is_ready() {
                // GOAWAY now; h2 sends the final last-stream-id after a PING
                // round trip, and `poll_accept` ends once open streams closed.
                conn.graceful_shutdown();
                going_away = true;
            }
            if let Some(keepalive) = keepalive.as_mut() {
                if let Poll::Ready(err) = keepalive.poll(cx) {
                    return Poll::Ready(Err(ServerError::Keepalive(err)));
                }
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let inner = self.inner.clone();
                    let connection = connection.clone();
                    monoio::spawn(async move {
                        handle_stream(inner, request, respond, connection).await
                    });
                }
                Poll::Ready(Some(Err(err))) => {
                    return Poll::Ready(Err(ServerError::Connection(err)))
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        shutdown.forget(&mut shutdown_slot);
        result
    }

    /// Starts a graceful shutdown: every connection this server serves (and
    /// any it is handed later) gets GOAWAY; open streams finish normally.
    pub fn shutdown(&self) {
        self.inner.shutdown.fire();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_fired()
    }

    /// Connections currently being served.
    pub fn connections(&self) -> usize {
        self.inner.connections.get()
    }

    /// CONNECT streams currently open (being decided or piping).
    pub fn streams(&self) -> usize {
        self.inner.streams.get()
    }

    /// Resolves when no connection is being served (e.g. after `shutdown`).
    pub async fn wait_idle(&self) {
        poll_fn(|cx| {
            if self.inner.connections.get() == 0 {
                Poll::Ready(())
            } else {
                let mut waiters = self.inner.idle_waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

async fn handle_stream<H: ConnectHandler>(
    inner: Rc<Inner<H>>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    connection: ConnectionInfo,
) {
    let _stream = Counted::new(&inner, |inner| &inner.streams);
    let (parts, body) = request.into_parts();
    let request = match parse_connect(parts, connection) {
        Ok(request) => request,
        Err(refusal) => {
            tracing::debug!(%refusal, "HBONE request refused");
            let _ = respond.send_response(status_only(refusal.status()), true);
            return;
        }
    };
    let outcome = match inner.handler.connect(&request).await {
        Err(refusal) => {
            let _ = respond.send_response(status_only(refusal.status()), true);
            TunnelOutcome::Refused(refusal)
        }
        Ok(upstream) => match respond.send_response(status_only(StatusCode::OK), false) {
            Ok(send) => {
                let tunnel = H2Stream::new(send, body);
                TunnelOutcome::Piped(inner.handler.serve_tunnel(&request, tunnel, upstream).await)
            }
            Err(err) => TunnelOutcome::ResponseFailed(err),
        },
    };
    inner.handler.finished(&request, &outcome);
}

fn parse_connect(
    parts: http::request::Parts,
    connection: ConnectionInfo,
) -> Result<ConnectRequest, Refusal> {
    if parts.method != Method::CONNECT {
        return Err(Refusal::BadRequest(format!(
            "method {} is not CONNECT",
            parts.method
        )));
    }
    let authority = parts
        .uri
        .authority()
        .ok_or_else(|| Refusal::BadRequest("CONNECT without :authority".into()))?;
    let authority: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|_| Refusal::BadRequest(format!(":authority {authority} is not ip:port")))?;
    Ok(ConnectRequest {
        authority,
        forwarded_for: headers::parse_forwarded_for(&parts.headers),
        baggage: headers::header_text(&parts.headers, headers::BAGGAGE),
        traceparent: headers::header_text(&parts.headers, headers::TRACEPARENT),
        headers: parts.headers,
        peer_identity: connection.peer_identity,
        peer_addr: connection.peer_addr,
        local_addr: connection.local_addr,
    })
}

fn status_only(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// Increments a counter for its lifetime; wakes `wait_idle` at zero connections.
struct Counted<H> {
    inner: Rc<Inner<H>>,
    counter: fn(&Inner<H>) -> &Cell<usize>,
}

impl<H> Counted<H> {
    fn new(inner: &Rc<Inner<H>>, counter: fn(&Inner<H>) -> &Cell<usize>) -> Self {
        let cell = counter(inner);
        cell.set(cell.get() + 1);
        Self {
            inner: inner.clone(),
            counter,
        }
    }
}

impl<H> Drop for Counted<H> {
    fn drop(&mut self) {
        let cell = (self.counter)(&self.inner);
        cell.set(cell.get() - 1);
        if self.inner.connections.get() == 0 {
            for waker in self.inner.idle_waiters.borrow_mut().drain(..) {
                waker.wake();
            }
        }
    }
}
