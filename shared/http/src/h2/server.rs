//! One client HTTP/2 connection: handshake, accept streams (each served in
//! its own task), GOAWAY on drain or idleness, and the flood guard's verdict.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::Reason;
use mesh_runtime::Drain;
use tokio::io::{AsyncRead, AsyncWrite};

use super::guard::{FrameGuard, GuardState};
use super::H2Options;
use crate::HttpHandler;

/// A connection that misbehaved gets this long to take its GOAWAY before
/// the socket is simply dropped (it may not be reading at all).
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// What every stream of one connection shares.
pub(crate) struct Conn {
    pub peer: SocketAddr,
    pub port: u16,
    /// "http" (h2c) or "https".
    pub scheme: &'static str,
    /// The TLS server name: a request whose :authority selects another
    /// listener than the SNI did gets 421.
    pub sni: Option<Box<str>>,
    pub drain: Drain,
    /// Streams being served now (the idle timer runs only at zero).
    pub active: Cell<usize>,
    /// Waypoint: the Service (VIP:port) the carrying tunnel was opened for;
    /// requests are routed with that Service's table.
    pub service: Option<SocketAddr>,
    /// Waypoint: the HBONE peer's SPIFFE identity (L7 AuthorizationPolicy).
    pub peer_identity: Option<std::rc::Rc<str>>,
}

impl H2Options {
    fn server_builder(&self, max_header_list_size: u32) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            // Also bounds a CONTINUATION flood: h2 stops decoding a header
            // block past this and answers GOAWAY(ENHANCE_YOUR_CALM) when
            // it keeps coming.
            .max_header_list_size(max_header_list_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        b
    }
}

/// Serves one HTTP/2 connection until it closes. `io` starts with the client
/// preface (TLS with ALPN h2, or h2c with the preface replayed).
/// `count_connection`: count it as opened (false when the HTTP/1.1 reader
/// already did, for h2c).
pub(crate) async fn serve<S>(handler: Rc<HttpHandler>, io: S, conn: Conn, count_connection: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let metrics = handler.metrics.clone();
    if count_connection {
        metrics.connection_opened();
    }
    metrics.h2_connection_opened();
    serve_inner(handler, io, Rc::new(conn)).await;
    metrics.connection_closed();
}

async fn serve_inner<S>(handler: Rc<HttpHandler>, io: S, conn: Rc<Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let opts = &handler.options;
    let guard_state = Rc::new(GuardState::default());
    let io = FrameGuard::new(io, guard_state.clone(), true);
    let max_headers = u32::try_from(opts.max_request_header_bytes).unwrap_or(u32::MAX);
    let handshake = opts
        .h2
        .server_builder(max_headers)
        .handshake::<_, Bytes>(io);
    let mut h2 = match monoio::time::timeout(opts.request_header_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            handler.metrics.h2_protocol_error();
            tracing::debug!(peer = %conn.peer, "HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let drained = conn.drain.signaled();
    let mut drained = pin!(drained);
    let idle = monoio::time::sleep(opts.idle_timeout);
    let mut idle = pin!(idle);
    let mut idle_armed = true;
    let mut going_away = false;
    let mut abort_deadline: Option<Instant> = None;
    let abort_sleep = monoio::time::sleep(Duration::from_secs(3600));
    let mut abort_sleep = pin!(abort_sleep);
    let result = poll_fn(|cx| loop {
        guard_state.register(cx.waker());
        if abort_deadline.is_none() {
            if let Some(flood) = guard_state.tripped() {
                tracing::debug!(peer = %conn.peer, ?flood, "HTTP/2 flood: GOAWAY");
                handler.metrics.h2_flood();
                h2.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                let deadline = Instant::now() + ABORT_GRACE;
                abort_deadline = Some(deadline);
                abort_sleep.as_mut().reset(deadline.into());
            }
        }
        if abort_deadline.is_some() && abort_sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if !going_away {
            let drain_now = drained.as_mut().poll(cx).is_ready();
            let idle_now = if conn.active.get() == 0 {
                if !idle_armed {
                    idle.as_mut()
                        .reset((Instant::now() + opts.idle_timeout).into());
                    idle_armed = true;
                }
                idle.as_mut().poll(cx).is_ready()
            } else {
                idle_armed = false;
                false
            };
            if drain_now || idle_now {
                // GOAWAY; open streams finish, then poll_accept ends.
                h2.graceful_shutdown();
                going_away = true;
            }
        }
        match h2.poll_accept(cx) {
            Poll::Ready(Some(Ok((request, respond)))) => {
                let (h, c) = (handler.clone(), conn.clone());
                c.active.set(c.active.get() + 1);
                monoio::spawn(async move {
                    super::handle::serve_request(&h, &c, request, respond).await;
                    c.active.set(c.active.get() - 1);
                });
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => {
                // An idle timer that fired while streams were open: re-check.
                if !going_away && conn.active.get() == 0 && !idle_armed {
                    continue;
                }
                return Poll::Pending;
            }
        }
    })
    .await;
    if let Err(e) = result {
        // Protocol errors we detected (h2 sent GOAWAY), not I/O or the peer's GOAWAY.
        if !e.is_io() && !e.is_remote() {
            handler.metrics.h2_protocol_error();
        }
        tracing::debug!(peer = %conn.peer, "HTTP/2 connection ended: {e}");
    }
}
