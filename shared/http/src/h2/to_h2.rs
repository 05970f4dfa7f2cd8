//! An HTTP/2 client's request to an h2c backend (Service port appProtocol
//! `kubernetes.io/h2c` or `grpc`): the stream is carried over the worker's
//! pooled h2c connection to the endpoint, bodies and trailers streaming both
//! ways at once (gRPC bidirectional streaming, `grpc-status` trailers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use mesh_registry::{Cluster, RouteRule};
use rand::Rng;

use super::body::{next_data, release, reset_by_peer, send_all};
use super::handle::Stream;
use super::{replay, translate};
use crate::codec::wire::is_hop_by_hop;
use crate::codec::{Headers, RequestHead};
use crate::filters::plan::Plan;
use crate::filters::{cors, headers as header_filter};
use crate::policy::{self, UpstreamResult};
use crate::upstream::pick;
use crate::HttpHandler;

pub(crate) async fn forward(
    mut s: Stream<'_>,
    req: RequestHead,
    body: RecvStream,
    rule: &RouteRule,
    cluster: &Arc<Cluster>,
    plan: Plan<'_>,
) {
    let h = s.h;
    let none = Headers::default();
    let Some(request) = upstream_request(h, &req, s.conn.peer.ip(), s.conn.scheme) else {
        return s.local(400, &none, "request cannot be sent over HTTP/2\n", None);
    };
    let end_stream = body.is_end_stream();
    let request_deadline = rule.timeouts.request.map(|r| s.start + r);
    // Circuit breakers for an HTTP/2 backend: http2MaxRequests.
    let Ok(_admission) = h.policy.admit_request(cluster) else {
        let (status, headers, body) = policy::overflow_response();
        return s.local(status, &headers, body, Some(cluster));
    };
    // Retries (replay.rs): the body streams upstream with a copy kept for a replay.
    let retry = rule.retry.as_ref();
    let max_tries = 1 + retry.map_or(0, |r| r.attempts);
    let mut body = Some(body);
    let tee = replay::SharedTee::default();
    let mut tries = 0;
    let mut _retry_permit = None;
    let (response, picked, sent) = loop {
        tries += 1;
        let Some(picked) = pick::pick_for_request(h, cluster, &req, s.conn.peer.ip()) else {
            return s.local(503, &none, "no healthy upstream\n", Some(cluster));
        };
        let addr = picked.addr;
        let sent = Instant::now();
        let deadline = match (rule.timeouts.backend_request, request_deadline) {
            (Some(p), Some(d)) => Some((sent + p).min(d)),
            (Some(p), None) => Some(sent + p),
            (None, d) => d,
        };
        let report = |result| h.policy.report(cluster, addr, result, Instant::now());
        let outcome = {
            let exchange = open_stream(h, addr, request.clone(), end_stream);
            let timed = async {
                match deadline {
                    Some(d) => monoio::time::timeout_at(d.into(), exchange)
                        .await
                        .unwrap_or(Err(Failure::Timeout)),
                    None => exchange.await,
                }
            };
            let opened = monoio::select! {
                r = timed => r,
                _ = std::future::poll_fn(|cx| s.respond.poll_reset(cx)) => return report(None),
            };
            match opened {
                Err(f) => Err(f),
                Ok((response, upstream_send)) => {
                    // The request body (and trailers) flows for as long as the call
                    // lasts, alongside the response: its own task.
                    if let Some(upstream_send) = upstream_send {
                        match (body.take(), retry) {
                            (Some(b), Some(_)) => monoio::spawn(replay::pump_tee(
                                b,
                                upstream_send,
                                tee.clone(),
                                h.options.max_buffered_body_bytes,
                            )),
                            (Some(b), None) => monoio::spawn(async move {
                                pump(b, upstream_send).await;
                            }),
                            (None, _) => monoio::spawn(replay::replay(tee.clone(), upstream_send)),
                        };
                    }
                    let response = async {
                        match deadline {
                            Some(d) => monoio::time::timeout_at(d.into(), response)
                                .await
                                .unwrap_or(Err(Failure::Timeout)),
                            None => response.await,
                        }
                    };
                    monoio::select! {
                        r = response => r,
                        _ = std::future::poll_fn(|cx| s.respond.poll_reset(cx)) => return report(None),
                    }
                }
            }
        };
        // Another try needs the policy's consent, tries left, the request
        // intact (not yet sent, or wholly kept) and the retry budget.
        let wanted = match (&outcome, retry) {
            (_, None) => false,
            (Ok(r), Some(p)) => replay::retriable_response(
                p,
                r.status().as_u16(),
                r.headers(),
                r.body().is_end_stream(),
            ),
            (Err(Failure::Connect), Some(p)) => p.on_connect_failure,
            (Err(Failure::Reset | Failure::Timeout), Some(p)) => p.on_reset,
            (Err(Failure::Client(_)), Some(_)) => false,
        };
        let expired = request_deadline.is_some_and(|d| Instant::now() >= d);
        let intact = end_stream || body.is_some() || tee.borrow().replayable();
        let permit = (wanted && tries < max_tries && !expired && intact)
            .then(|| h.policy.retry_permit(cluster).ok())
            .flatten();
        match outcome {
            Ok(r) if permit.is_none() => break (r, picked, sent),
            Err(f) if permit.is_none() => {
                report(Some(f.result()));
                let (status, text) = f.answer();
                return s.local(status, &none, text, Some(cluster));
            }
            Ok(r) => report(Some(UpstreamResult::Status(r.status().as_u16()))),
            Err(f) => report(Some(f.result())),
        }
        _retry_permit = permit;
        if !crate::retry::pause_before_retry(h, retry, tries, request_deadline).await {
            return s.local(504, &none, "upstream request timeout\n", Some(cluster));
        }
    };
    let addr = picked.addr;
    let (mut parts, up_body) = response.into_parts();
    let status = parts.status.as_u16();
    h.policy.report(
        cluster,
        addr,
        Some(UpstreamResult::Status(status)),
        Instant::now(),
    );
    let (name, value) = policy::service_time_header(sent);
    if let Ok(v) = HeaderValue::from_str(&value) {
        parts.headers.insert(name, v);
    }
    if let Some(cookie) = picked
        .set_cookie
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        parts.headers.append(http::header::SET_COOKIE, cookie);
    }
    let mut out = Response::new(());
    *out.status_mut() = parts.status;
    *out.headers_mut() = if plan.response_modifiers.is_empty() && plan.cors.is_none() {
        parts.headers
    } else {
        let mut headers = translate::headers_from_map(&parts.headers);
        for m in &plan.response_modifiers {
            header_filter::apply(&mut headers, m);
        }
        if let Some(p) = plan.cors {
            cors::response_headers(p, &req, &mut headers);
        }
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        translate::header_map(&headers, length)
    };
    let end = up_body.is_end_stream();
    // Trailers-only answers carry grpc-status in the head.
    let head_grpc_status = grpc_status_of(out.headers());
    let trailer_grpc_status = match s.respond.send_response(out, end) {
        Ok(client_send) if !end => pump(up_body, client_send).await,
        _ => None,
    };
    let grpc_status = s
        .grpc
        .then_some(head_grpc_status.or(trailer_grpc_status))
        .flatten();
    let service_ms = value.parse().unwrap_or(0);
    s.finish(status, grpc_status, cluster, addr, service_ms, None);
}

pub(super) enum Failure {
    Connect,
    Reset,
    Timeout,
    /// The HTTP/1.1 client's request body failed (from_h1 only).
    Client(crate::body::BodyError),
}

impl Failure {
    pub(super) fn result(&self) -> UpstreamResult {
        match self {
            Failure::Connect | Failure::Client(_) => UpstreamResult::ConnectFailure,
            Failure::Reset => UpstreamResult::Reset,
            Failure::Timeout => UpstreamResult::Timeout,
        }
    }

    pub(super) fn answer(&self) -> (u16, &'static str) {
        match self {
            Failure::Timeout => (504, "upstream request timeout\n"),
            Failure::Client(_) => (400, "request body failed\n"),
            Failure::Connect | Failure::Reset => {
                (502, "upstream connect error or reset before headers\n")
            }
        }
    }
}

type Opened = (h2::client::ResponseFuture, Option<SendStream<Bytes>>);

/// Opens the upstream stream: pooled connection first; a connection that
/// turns out dead or refuses the stream is replaced once.
pub(super) async fn open_stream(
    h: &HttpHandler,
    addr: SocketAddr,
    request: (http::Method, Uri, http::HeaderMap),
    end_stream: bool,
) -> Result<
    (
        impl std::future::Future<Output = Result<Response<RecvStream>, Failure>>,
        Option<SendStream<Bytes>>,
    ),
    Failure,
> {
    let mut fresh = false;
    let (response, send): Opened = loop {
        let mut sender = match h
            .h2_pool
            .ready(addr, h.options.connect_timeout, fresh)
            .await
        {
            Ok(s) => s,
            Err(_) if !fresh => {
                h.h2_pool.discard(addr);
                fresh = true;
                continue;
            }
            Err(_) => return Err(Failure::Connect),
        };
        let mut r = Request::new(());
        *r.method_mut() = request.0.clone();
        *r.uri_mut() = request.1.clone();
        *r.headers_mut() = request.2.clone();
        match sender.send_request(r, end_stream) {
            Ok((response, send)) => break (response, (!end_stream).then_some(send)),
            Err(_) if !fresh => {
                h.h2_pool.discard(addr);
                fresh = true;
            }
            Err(_) => return Err(Failure::Reset),
        }
    };
    let response = async move {
        response.await.map_err(|e| {
            tracing::debug!(%addr, "h2c upstream stream failed: {e}");
            Failure::Reset
        })
    };
    Ok((response, send))
}

/// Streams DATA and then trailers from one h2 stream to another, giving the
/// source's window back as bytes are handed on. Either side resetting ends
/// it (and resets the other).
/// Copies a body and its trailers; returns the trailers' `grpc-status`
/// (the call's outcome, for metrics).
async fn pump(mut from: RecvStream, mut to: SendStream<Bytes>) -> Option<u32> {
    loop {
        let next = monoio::select! {
            d = next_data(&mut from) => d,
            _ = reset_by_peer(&mut to) => return None,
        };
        match next {
            None => break,
            Some(Ok(d)) => {
                let n = d.len();
                if send_all(&mut to, d).await.is_err() {
                    return None;
                }
                release(&mut from, n);
            }
            Some(Err(_)) => {
                to.send_reset(Reason::CANCEL);
                return None;
            }
        }
    }
    let trailers = monoio::select! {
        t = std::future::poll_fn(|cx| from.poll_trailers(cx)) => t,
        _ = reset_by_peer(&mut to) => return None,
    };
    match trailers {
        Ok(Some(t)) => {
            let status = grpc_status_of(&t);
            let _ = to.send_trailers(t);
            status
        }
        Ok(None) => {
            let _ = to.send_data(Bytes::new(), true);
            None
        }
        Err(_) => {
            to.send_reset(Reason::CANCEL);
            None
        }
    }
}

fn grpc_status_of(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The request as sent upstream over h2: hop-by-hop fields dropped (`te:
/// trailers` kept, gRPC needs it), forwarding headers added.
pub(super) fn upstream_request(
    h: &HttpHandler,
    req: &RequestHead,
    client_ip: std::net::IpAddr,
    scheme: &str,
) -> Option<(http::Method, Uri, http::HeaderMap)> {
    let authority = req.host_header()?;
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_ref())
        .path_and_query(req.path.as_ref())
        .build()
        .ok()?;
    let method = http::Method::from_bytes(&req.method).ok()?;
    let mut headers = http::HeaderMap::with_capacity(req.headers.len() + 3);
    let mut forwarded_for = BytesMut::new();
    for hdr in req.headers.iter() {
        let name = &hdr.name[..];
        let keep_te =
            name.eq_ignore_ascii_case(b"te") && hdr.value.eq_ignore_ascii_case(b"trailers");
        let keep_length = name.eq_ignore_ascii_case(b"content-length");
        if (is_hop_by_hop(name) && !keep_te && !keep_length)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for.extend_from_slice(&hdr.value);
            forwarded_for.extend_from_slice(b", ");
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(&hdr.value),
        ) {
            headers.append(n, v);
        }
    }
    forwarded_for.extend_from_slice(client_ip.to_string().as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(forwarded_for.freeze()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_str(scheme).ok()?);
    if !headers.contains_key("x-request-id") {
        let random: [u8; 16] = h.rng.borrow_mut().random();
        let id = uuid::Builder::from_random_bytes(random)
            .into_uuid()
            .hyphenated()
            .to_string();
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", v);
        }
    }
    Some((method, uri, headers))
}
