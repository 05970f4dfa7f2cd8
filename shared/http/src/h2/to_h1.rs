//! An HTTP/2 client's request to an HTTP/1.1 backend: the request head is
//! written by the same code as for HTTP/1.1 clients, the body streams from
//! the h2 stream (Content-Length when the client gave one, chunked when the
//! length is unknown), the response streams back as DATA frames. Small
//! bodies are read whole first so the request can be retried.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream};
use http::{Response, StatusCode};
use mesh_registry::{Cluster, RetryPolicy, RouteRule};
use monoio::io::{AsyncWriteRent, Splitable};
use monoio::net::TcpStream;

use super::body::{next_data, release, reset_by_peer, send_all};
use super::handle::Stream;
use super::translate;
use crate::body::{write_piece, BodyError, BodyReader, CopyError, OutFraming};
use crate::codec::{chunked, BodyKind, Headers, RequestHead, ResponseHead};
use crate::filters::mirror::spawn_mirror;
use crate::filters::plan::Plan;
use crate::filters::{cors, headers as header_filter};
use crate::io::{flush, Io};
use crate::policy::{self, deadline_or};
use crate::retry::{next_try, pause_before_retry};
use crate::upstream::exchange::{attempt, read_response_head, AttemptError};
use crate::upstream::head::{new_request_id, write_upstream_head, UpstreamBody};
use crate::upstream::{pick, pool};
use crate::HttpHandler;

pub(crate) async fn forward(
    mut s: Stream<'_>,
    req: RequestHead,
    mut body: RecvStream,
    rule: &RouteRule,
    cluster: &Arc<Cluster>,
    plan: Plan<'_>,
) {
    let h = s.h;
    let none = Headers::default();
    let idle = h.options.body_idle_timeout;
    // Circuit breakers (the backend speaks HTTP/1.1: a connection per
    // request), before anything is read or sent: overflow is a 503.
    let admit_until = deadline_or(rule, s.start, h.options.connect_timeout);
    let Ok(_admission) = h.policy.admit_http1(cluster, admit_until).await else {
        let (status, headers, body) = policy::overflow_response();
        return s.local(status, &headers, body, Some(cluster));
    };
    let buffered: Option<Bytes> = match req.body {
        BodyKind::None => Some(Bytes::new()),
        BodyKind::Length(n) if n <= h.options.max_buffered_body_bytes as u64 => {
            match read_all(&mut body, idle).await {
                Ok(b) => Some(b),
                Err(e) => return client_body_failure(&mut s, e),
            }
        }
        _ => None,
    };
    let upstream_body = UpstreamBody::for_request(buffered.as_ref(), req.body);
    let framing = upstream_body.framing();
    let mut id_buf = [0u8; 36];
    let request_id = new_request_id(&req.headers, &mut *h.rng.borrow_mut(), &mut id_buf);
    let client_ip = s.conn.peer.ip();
    let mut wire = BytesMut::with_capacity(512 + buffered.as_ref().map_or(0, Bytes::len));
    write_upstream_head(
        &mut wire,
        &req,
        client_ip,
        upstream_body,
        false,
        request_id,
        s.conn.scheme,
    );
    if let Some(b) = &buffered {
        wire.extend_from_slice(b);
    }
    let wire = wire.freeze();
    for m in &plan.mirrors {
        spawn_mirror(
            h,
            m,
            &req,
            client_ip,
            buffered.as_ref(),
            request_id,
            s.conn.scheme,
        );
    }

    let head_request = req.method_is("HEAD");
    let idempotent = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        .iter()
        .any(|m| req.method_is(m));
    let per_try = rule.timeouts.backend_request;
    let deadline = rule.timeouts.request.map(|d| s.start + d);
    let retry: Option<&RetryPolicy> = rule.retry.as_ref().filter(|_| buffered.is_some());
    let max_tries = 1 + retry.map_or(0, |r| r.attempts);
    let body_limit = h.options.max_request_body_bytes;
    let mut tries = 0;
    let mut sent = Instant::now();
    let mut picked_cookie = None;
    let mut _retry_permit = None;
    let result = loop {
        tries += 1;
        let Some(picked) = pick::pick_for_request(h, cluster, &req, client_ip) else {
            break Err(AttemptError::Connect);
        };
        let addr = picked.addr;
        picked_cookie = picked.set_cookie;
        let now = Instant::now();
        sent = now;
        let try_deadline = match (per_try, deadline) {
            (Some(p), Some(d)) => Some((now + p).min(d)),
            (Some(p), None) => Some(now + p),
            (None, d) => d,
        };
        let stale_retry = retry.is_none()
            && buffered.is_some()
            && (idempotent || buffered.as_ref().is_some_and(Bytes::is_empty));
        let exchange = async {
            if buffered.is_some() {
                attempt(
                    h,
                    addr,
                    &wire,
                    None::<(&mut BodyReader, &mut Io<TcpStream>)>,
                    OutFraming::Raw,
                    head_request,
                    stale_retry,
                )
                .await
            } else {
                attempt_streaming(h, addr, &wire, &mut body, framing, head_request, body_limit)
                    .await
            }
        };
        let timed = async {
            match try_deadline {
                Some(d) => monoio::time::timeout_at(d.into(), exchange)
                    .await
                    .unwrap_or(Err(AttemptError::Timeout)),
                None => exchange.await,
            }
        };
        let r = monoio::select! {
            r = timed => r,
            // The client cancelled: drop the upstream exchange.
            _ = poll_fn(|cx| s.respond.poll_reset(cx)) => {
                // Says nothing about the endpoint, but ends its in-flight count.
                h.policy.report(cluster, addr, None, Instant::now());
                return;
            }
        };
        h.policy
            .report(cluster, addr, policy::attempt_result(&r), Instant::now());
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let Some(permit) = next_try(h, cluster, retry, &r, tries, max_tries, expired) else {
            if expired && r.is_err() {
                break Err(AttemptError::Timeout);
            }
            break r.map(|(io, resp)| (io, resp, addr));
        };
        drop(r);
        _retry_permit = Some(permit);
        if !pause_before_retry(h, retry, tries, deadline).await {
            break Err(AttemptError::Timeout);
        }
    };
    let (up, mut resp, addr) = match result {
        Ok(r) => r,
        Err(AttemptError::Client(e)) => return client_body_failure(&mut s, e),
        Err(e) => {
            let (status, text) = match e {
                AttemptError::Timeout => (504, "upstream request timeout\n"),
                AttemptError::BadResponse => (502, "invalid upstream response\n"),
                _ if tries > 1 => (503, "upstream connect error or reset before headers\n"),
                _ => (502, "upstream connect error or reset before headers\n"),
            };
            return s.local(status, &none, text, Some(cluster));
        }
    };
    policy::decorate_response(&mut resp.headers, sent, picked_cookie);
    respond(s, &req, up, resp, addr, &plan, cluster).await;
}

/// The client's request body failed before a response was sent.
fn client_body_failure(s: &mut Stream<'_>, e: BodyError) {
    match e {
        BodyError::TooLarge => s.local(413, &Headers::default(), "request body too large\n", None),
        BodyError::Timeout => s.local(408, &Headers::default(), "request body timeout\n", None),
        _ => s.respond.send_reset(Reason::CANCEL),
    }
}

/// Reads a small body whole, returning its flow-control capacity as it goes.
async fn read_all(body: &mut RecvStream, idle: Duration) -> Result<Bytes, BodyError> {
    let mut out = BytesMut::new();
    loop {
        let next = monoio::time::timeout(idle, next_data(body))
            .await
            .map_err(|_| BodyError::Timeout)?;
        match next {
            None => return Ok(out.freeze()),
            Some(Ok(d)) => {
                out.extend_from_slice(&d);
                release(body, d.len());
            }
            Some(Err(e)) => return Err(BodyError::Io(std::io::Error::other(e))),
        }
    }
}

/// Streams the h2 request body to an HTTP/1.1 upstream in `framing`.
async fn pump_body<W: AsyncWriteRent>(
    body: &mut RecvStream,
    w: &mut W,
    framing: OutFraming,
    idle: Duration,
    limit: Option<u64>,
) -> Result<(), CopyError> {
    let mut out = BytesMut::new();
    let mut seen = 0u64;
    loop {
        let next = monoio::time::timeout(idle, next_data(body))
            .await
            .map_err(|_| CopyError::Read(BodyError::Timeout))?;
        let data = match next {
            None => break,
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(CopyError::Read(BodyError::Io(std::io::Error::other(e)))),
        };
        seen += data.len() as u64;
        if limit.is_some_and(|l| seen > l) {
            return Err(CopyError::Read(BodyError::TooLarge));
        }
        let n = data.len();
        write_piece(w, &mut out, framing, data)
            .await
            .map_err(CopyError::Write)?;
        flush(w, &mut out).await.map_err(CopyError::Write)?;
        // Only now is the window given back: the bytes are on their way.
        release(body, n);
    }
    if framing == OutFraming::Chunked {
        out.extend_from_slice(chunked::LAST_CHUNK);
    }
    flush(w, &mut out).await.map_err(CopyError::Write)
}

enum FirstDone {
    Sent(Result<(), CopyError>),
    Received(Result<ResponseHead, AttemptError>),
}

/// One attempt with a streamed body: the body goes out while the response
/// head is awaited (an upstream may answer early and stop reading).
async fn attempt_streaming(
    h: &HttpHandler,
    addr: SocketAddr,
    wire: &Bytes,
    body: &mut RecvStream,
    framing: OutFraming,
    head_request: bool,
    limit: Option<u64>,
) -> Result<(Io, ResponseHead), AttemptError> {
    let mut up = match h.pool.take(addr, true) {
        Some(io) => io,
        None => pool::connect(addr, h.options.connect_timeout)
            .await
            .map_err(|_| AttemptError::Connect)?,
    };
    up.write_all(wire.clone())
        .await
        .map_err(|_| AttemptError::Reset { any_bytes: false })?;
    let max_head = h.options.max_response_header_bytes;
    let idle = h.options.body_idle_timeout;
    let Io { stream, mut rbuf } = up;
    let (mut rd, mut wr) = stream.into_split();
    let (result, early) = {
        let mut send = pin!(pump_body(body, &mut wr, framing, idle, limit));
        let mut recv = pin!(read_response_head(
            &mut rd,
            &mut rbuf,
            head_request,
            max_head
        ));
        let first = monoio::select! {
            r = &mut send => FirstDone::Sent(r),
            r = &mut recv => FirstDone::Received(r),
        };
        match first {
            FirstDone::Sent(Ok(())) => (recv.await, false),
            FirstDone::Sent(Err(CopyError::Read(e))) => return Err(AttemptError::Client(e)),
            FirstDone::Sent(Err(CopyError::Write(_))) => (recv.await, true),
            FirstDone::Received(r) => (r, true),
        }
    };
    let mut resp = result?;
    if early {
        resp.keep_alive = false;
    }
    let stream = rd
        .reunite(wr)
        .map_err(|_| AttemptError::Reset { any_bytes: true })?;
    Ok((Io { stream, rbuf }, resp))
}

/// Sends the upstream's response head and streams its body as DATA frames.
async fn respond(
    mut s: Stream<'_>,
    req: &RequestHead,
    mut up: Io,
    resp: ResponseHead,
    addr: SocketAddr,
    plan: &Plan<'_>,
    cluster: &Arc<Cluster>,
) {
    let h = s.h;
    let status = resp.status;
    if status == 101 {
        return s.local(
            502,
            &Headers::default(),
            "unexpected upgrade\n",
            Some(cluster),
        );
    }
    let mut headers = resp.headers;
    for m in &plan.response_modifiers {
        header_filter::apply(&mut headers, m);
    }
    if let Some(p) = plan.cors {
        cors::response_headers(p, req, &mut headers);
    }
    let service_ms = crate::access_log::service_time_of(&headers);
    let head_request = req.method_is("HEAD");
    let content_length = match resp.body {
        BodyKind::Length(n) => Some(n),
        _ if head_request => headers
            .get_str("content-length")
            .and_then(|v| v.trim().parse().ok()),
        BodyKind::None if status != 204 && status != 304 => Some(0),
        _ => None,
    };
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = translate::header_map(&headers, content_length);
    let end = resp.body == BodyKind::None;
    let mut send = match s.respond.send_response(response, end) {
        Ok(send) => send,
        Err(_) => {
            s.finish(status, None, cluster, addr, service_ms, content_length);
            return;
        }
    };
    let mut clean = end;
    if !end {
        let mut reader =
            BodyReader::new(resp.body, None).with_idle_timeout(Some(h.options.body_idle_timeout));
        loop {
            let next = monoio::select! {
                n = reader.next(&mut up) => n,
                _ = reset_by_peer(&mut send) => break,
            };
            match next {
                Ok(Some(chunk)) => {
                    if send_all(&mut send, chunk).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    clean = send.send_data(Bytes::new(), true).is_ok();
                    break;
                }
                // The upstream broke mid-body: the client must not take a
                // truncated body for a whole one.
                Err(_) => {
                    send.send_reset(Reason::INTERNAL_ERROR);
                    break;
                }
            }
        }
    }
    s.finish(status, None, cluster, addr, service_ms, content_length);
    if clean && resp.keep_alive && h.policy.keep_connection(cluster, &up) {
        h.pool.put(addr, up);
    }
}
