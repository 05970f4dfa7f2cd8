//! Serving one request: route, filters, backend pick, forward with
//! retries and timeouts, stream the response back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mesh_registry::{BackendTarget, Cluster, RetryPolicy};

use crate::body::{copy_body, BodyReader, OutFraming};
use crate::codec::headers::write_header;
use crate::codec::wire::{
    connection_listed, is_hop_by_hop, is_listed, write_decimal, write_status_line,
};
use crate::codec::{BodyKind, Headers, RequestHead, ResponseHead};
use crate::filters::mirror::spawn_mirror;
use crate::filters::plan::{apply_filters, LocalAnswer, Plan};
use crate::filters::{cors, headers as header_filter};
use crate::io::{flush, ClientStream, Io};
pub(crate) use crate::local::send_error;
use crate::local::{answer, body_failure};
use crate::policy::{self, deadline_or};
use crate::retry::{next_try, pause_before_retry};
use crate::route::{self, routing_host};
use crate::server::Client;
use crate::upstream::exchange::{attempt, AttemptError};
use crate::upstream::head::{new_request_id, write_upstream_head, UpstreamBody};
use crate::upstream::pick;
use crate::HttpHandler;

pub(crate) enum Outcome {
    KeepAlive,
    Close,
    /// 101 sent to the client: tunnel bytes between it and this upstream.
    Upgrade(Io),
}

pub(crate) async fn handle<S: ClientStream>(
    h: &HttpHandler,
    c: &mut Client<S>,
    mut req: RequestHead,
) -> Outcome {
    let start = Instant::now();
    let protocol = if req.minor_version == 1 {
        "HTTP/1.1"
    } else {
        "HTTP/1.0"
    };
    c.access = crate::access_log::RequestLog::capture(&req, protocol);
    let reader = BodyReader::new(req.body, h.options.max_request_body_bytes)
        .with_idle_timeout(Some(h.options.body_idle_timeout));
    if let (BodyKind::Length(n), Some(limit)) = (req.body, h.options.max_request_body_bytes) {
        if n > limit {
            send_error(h, c, 413, "request body too large").await;
            return Outcome::Close;
        }
    }
    if let Some(normalized) = route::normalize_path(&req.path) {
        req.path = Bytes::from(normalized);
    }
    let snapshot = h.snapshots.load_full();
    let host_raw = req.host_header().cloned().unwrap_or_default();
    let host = routing_host(&host_raw);
    if let Some(sni) = c.sni.as_deref() {
        if route::misdirected(&snapshot, c.port, sni, &host) {
            return answer(
                h,
                c,
                &req,
                &reader,
                start,
                421,
                &Headers::default(),
                "misdirected request: the Host belongs to another listener than the TLS server name\n",
                None,
            )
            .await;
        }
    }
    let identity = c.peer_identity.as_deref();
    let denied = policy::authz::check_request(h, &snapshot, c.service, identity, c.peer.ip(), &req);
    if let Some(dest) = denied {
        let (status, body) = (403, policy::authz::DENIED_BODY);
        let none = Headers::default();
        let dest = Some(&dest);
        return answer(h, c, &req, &reader, start, status, &none, body, dest).await;
    }
    let Some(entry) = route::select_scoped(&snapshot, c.service, c.port, &host, &req) else {
        return answer(
            h,
            c,
            &req,
            &reader,
            start,
            404,
            &Headers::default(),
            "no route\n",
            None,
        )
        .await;
    };
    let rule = &*entry.rule;
    if let Some(limited) = policy::rate_limit(rule, &(&req, c.peer.ip()), Instant::now()) {
        let (status, headers, body) = policy::rate_limited_response(&limited);
        return answer(h, c, &req, &reader, start, status, &headers, body, None).await;
    }
    let mut plan = Plan::default();
    let mut local = apply_filters(&rule.filters, entry, &mut req, &mut plan, c.port, c.scheme);
    let mut backend = None;
    if local.is_none() {
        let picked = pick::pick_backend(rule, &mut *h.rng.borrow_mut());
        match picked {
            None => {
                return answer(
                    h,
                    c,
                    &req,
                    &reader,
                    start,
                    500,
                    &Headers::default(),
                    "no backend\n",
                    None,
                )
                .await
            }
            Some(b) => {
                local = apply_filters(&b.filters, entry, &mut req, &mut plan, c.port, c.scheme);
                backend = Some(b);
            }
        }
    }
    match local {
        Some(LocalAnswer::Redirect { status, location }) => {
            let mut headers = Headers::default();
            headers.add(Bytes::from_static(b"location"), Bytes::from(location));
            return answer(h, c, &req, &reader, start, status, &headers, "", None).await;
        }
        Some(LocalAnswer::Preflight(headers)) => {
            return answer(h, c, &req, &reader, start, 200, &headers, "", None).await;
        }
        None => {}
    }
    if let Some(fault) = plan.fault {
        if let Some(abort) = crate::filters::fault::inject(fault, &h.rng).await {
            let (status, headers, body) = crate::filters::fault::http1_answer(abort, &req);
            return answer(h, c, &req, &reader, start, status, &headers, body, None).await;
        }
    }
    let Some(backend) = backend else {
        return Outcome::Close;
    };
    let cluster: Arc<Cluster> = match &backend.target {
        BackendTarget::Cluster(cl) => cl.clone(),
        BackendTarget::Invalid { .. } => {
            return answer(
                h,
                c,
                &req,
                &reader,
                start,
                500,
                &Headers::default(),
                "invalid backend\n",
                None,
            )
            .await
        }
    };
    if cluster.endpoints.is_empty() {
        return answer(
            h,
            c,
            &req,
            &reader,
            start,
            503,
            &Headers::default(),
            "no healthy upstream\n",
            Some(&cluster),
        )
        .await;
    }
    if cluster.protocol == mesh_registry::UpstreamProtocol::H2c {
        // appProtocol h2c/grpc: the backend speaks HTTP/2 (h2/from_h1.rs).
        return crate::h2::from_h1::forward(h, c, req, reader, rule, &cluster, plan, start).await;
    }
    forward(h, c, req, reader, rule, &cluster, plan, start).await
}

#[allow(clippy::too_many_arguments)]
async fn forward<S: ClientStream>(
    h: &HttpHandler,
    c: &mut Client<S>,
    req: RequestHead,
    mut reader: BodyReader,
    rule: &mesh_registry::RouteRule,
    cluster: &Arc<Cluster>,
    plan: Plan<'_>,
    start: Instant,
) -> Outcome {
    // Circuit breakers before anything is read or sent: overflow is a 503.
    let admit_until = deadline_or(rule, start, h.options.connect_timeout);
    let Ok(_admission) = h.policy.admit_http1(cluster, admit_until).await else {
        let (status, headers, body) = policy::overflow_response();
        let cl = Some(&**cluster);
        return answer(h, c, &req, &reader, start, status, &headers, body, cl).await;
    };
    if req.expect_continue {
        c.wbuf.clear();
        c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if flush(&mut c.io.stream, &mut c.wbuf).await.is_err() {
            return Outcome::Close;
        }
    }
    let buffered: Option<Bytes> = match req.body {
        BodyKind::None => Some(Bytes::new()),
        BodyKind::Length(n) if n <= h.options.max_buffered_body_bytes as u64 => {
            match reader
                .read_all(&mut c.io, h.options.max_buffered_body_bytes)
                .await
            {
                Ok(b) => Some(b),
                Err(e) => return body_failure(h, c, e, false).await,
            }
        }
        _ => None,
    };
    let upstream_body = UpstreamBody::for_request(buffered.as_ref(), req.body);
    let out_framing = upstream_body.framing();
    let mut id_buf = [0u8; 36];
    let request_id = new_request_id(&req.headers, &mut *h.rng.borrow_mut(), &mut id_buf);
    if let Some(log) = c.access.as_mut() {
        if !request_id.is_empty() {
            log.request_id = Some(String::from_utf8_lossy(request_id).into_owned());
        }
    }
    let client_ip = c.peer.ip();
    let body_len = buffered.as_ref().map_or(0, Bytes::len);
    // The connection's scratch buffer, reclaimed after the tries below.
    let mut wire = std::mem::take(&mut c.scratch);
    wire.clear();
    wire.reserve(512 + body_len);
    write_upstream_head(
        &mut wire,
        &req,
        client_ip,
        upstream_body,
        false,
        request_id,
        c.scheme,
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
            c.scheme,
        );
    }

    let head_request = req.method_is("HEAD");
    let idempotent = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        .iter()
        .any(|m| req.method_is(m));
    let per_try = rule.timeouts.backend_request;
    let deadline = rule.timeouts.request.map(|d| start + d);
    let retry: Option<&RetryPolicy> = rule.retry.as_ref().filter(|_| buffered.is_some());
    let max_tries = 1 + retry.map_or(0, |r| r.attempts);
    let mut tries = 0;
    let mut sent = Instant::now();
    let mut last_addr = None;
    let mut picked_cookie = None;
    let mut _retry_permit = None;
    let result = {
        let mut stream_src = if buffered.is_none() {
            Some((&mut reader, &mut c.io))
        } else {
            None
        };
        loop {
            tries += 1;
            let Some(picked) = pick::pick_for_request(h, cluster, &req, client_ip) else {
                break Err(AttemptError::Connect);
            };
            let addr = picked.addr;
            last_addr = Some(addr);
            picked_cookie = picked.set_cookie;
            let now = Instant::now();
            sent = now;
            let try_deadline = match (per_try, deadline) {
                (Some(p), Some(d)) => Some((now + p).min(d)),
                (Some(p), None) => Some(now + p),
                (None, d) => d,
            };
            // A reset on a pooled connection may just mean the peer closed it
            // while idle: replay once on a fresh one, but only when no retry
            // policy counts tries and replaying is safe.
            let stale_retry =
                retry.is_none() && buffered.is_some() && (idempotent || body_len == 0);
            let fut = attempt(
                h,
                addr,
                &wire,
                stream_src.take(),
                out_framing,
                head_request,
                stale_retry,
            );
            let r = match try_deadline {
                Some(d) => monoio::time::timeout_at(d.into(), fut)
                    .await
                    .unwrap_or(Err(AttemptError::Timeout)),
                None => fut.await,
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
        }
    };

    if let Ok(mut b) = wire.try_into_mut() {
        b.clear();
        c.scratch = b;
    }
    let (upstream, mut resp, addr) = match result {
        Ok(r) => r,
        Err(AttemptError::Client(e)) => return body_failure(h, c, e, false).await,
        Err(e) => {
            if let Some(log) = c.access.as_mut() {
                // The endpoint last tried, as Envoy's UPSTREAM_HOST shows it.
                log.upstream_host = last_addr;
                if matches!(e, AttemptError::Reset { .. }) && tries == 1 {
                    log.flags = Some("UC");
                }
            }
            let (status, text) = match e {
                AttemptError::Timeout => (504, "upstream request timeout\n"),
                AttemptError::BadResponse => (502, "invalid upstream response\n"),
                // Envoy's answer once retries on connection failures are exhausted.
                _ if tries > 1 => (503, "upstream connect error or reset before headers\n"),
                _ => (502, "upstream connect error or reset before headers\n"),
            };
            return answer(
                h,
                c,
                &req,
                &reader,
                start,
                status,
                &Headers::default(),
                text,
                Some(cluster),
            )
            .await;
        }
    };
    policy::decorate_response(&mut resp.headers, sent, picked_cookie);
    respond(
        h, c, &req, &reader, upstream, resp, addr, &plan, cluster, start,
    )
    .await
}
#[allow(clippy::too_many_arguments)]
async fn respond<S: ClientStream>(
    h: &HttpHandler,
    c: &mut Client<S>,
    req: &RequestHead,
    reader: &BodyReader,
    mut up: Io,
    resp: ResponseHead,
    addr: SocketAddr,
    plan: &Plan<'_>,
    cluster: &Cluster,
    start: Instant,
) -> Outcome {
    let status = resp.status;
    let upgraded = status == 101;
    if upgraded && req.upgrade.is_none() {
        return answer(
            h,
            c,
            req,
            reader,
            start,
            502,
            &Headers::default(),
            "unexpected upgrade\n",
            Some(cluster),
        )
        .await;
    }
    let mut headers = resp.headers;
    for m in &plan.response_modifiers {
        header_filter::apply(&mut headers, m);
    }
    if let Some(p) = plan.cors {
        cors::response_headers(p, req, &mut headers);
    }
    let mut keep = req.keep_alive && reader.is_done() && !c.drain.is_draining();
    let http11 = req.minor_version == 1;
    let framing = match resp.body {
        BodyKind::Chunked | BodyKind::Eof if http11 => OutFraming::Chunked,
        BodyKind::Chunked | BodyKind::Eof => {
            keep = false;
            OutFraming::Raw
        }
        _ => OutFraming::Raw,
    };
    let listed = connection_listed(&headers);
    let out = &mut c.wbuf;
    out.clear();
    write_status_line(out, status, &resp.reason);
    let head_request = req.method_is("HEAD");
    for hdr in headers.iter() {
        let name = &hdr.name[..];
        // A HEAD response keeps the length the GET would have had.
        let keep_length = head_request && name.eq_ignore_ascii_case(b"content-length");
        if (is_hop_by_hop(name) && !keep_length) || (!listed.is_empty() && is_listed(&listed, name))
        {
            continue;
        }
        write_header(out, name, &hdr.value);
    }
    match resp.body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked | BodyKind::Eof if http11 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        BodyKind::None
            if !head_request && !(100..200).contains(&status) && status != 204 && status != 304 =>
        {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    if upgraded {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(u) = headers.get("upgrade") {
            write_header(out, b"upgrade", u);
        }
        out.extend_from_slice(b"\r\n");
        h.metrics.record_request_from(
            c.peer_identity.as_deref(),
            status,
            Some(cluster),
            start.elapsed(),
        );
        finish_log(c, status, &headers, addr, 0, start);
        if flush(&mut c.io.stream, &mut c.wbuf).await.is_err() {
            return Outcome::Close;
        }
        return Outcome::Upgrade(up);
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !http11 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut body =
        BodyReader::new(resp.body, None).with_idle_timeout(Some(h.options.body_idle_timeout));
    let copied = copy_body(&mut body, &mut up, &mut c.io.stream, framing, &mut c.wbuf).await;
    h.metrics.record_request_from(
        c.peer_identity.as_deref(),
        status,
        Some(cluster),
        start.elapsed(),
    );
    let sent_bytes = match resp.body {
        BodyKind::Length(n) if !head_request => n,
        _ => 0,
    };
    finish_log(c, status, &headers, addr, sent_bytes, start);
    match copied {
        Ok(()) => {
            if resp.keep_alive && body.is_done() && h.policy.keep_connection(cluster, &up) {
                h.pool.put(addr, up);
            }
            if keep {
                Outcome::KeepAlive
            } else {
                Outcome::Close
            }
        }
        // Upstream broke mid-body or the client went away: the response is
        // truncated, so the only honest signal left is closing.
        Err(_) => Outcome::Close,
    }
}

/// The access log line of a proxied response.
fn finish_log<S: ClientStream>(
    c: &mut Client<S>,
    status: u16,
    headers: &Headers,
    upstream: SocketAddr,
    bytes_sent: u64,
    start: Instant,
) {
    if let Some(mut log) = c.access.take() {
        log.upstream_host = Some(upstream);
        log.upstream_service_ms = Some(crate::access_log::service_time_of(headers));
        log.emit(status, "-", bytes_sent, start);
    }
}
