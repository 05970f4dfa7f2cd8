//! An HTTP/1.1 client's request to an h2c backend (appProtocol
//! `kubernetes.io/h2c` or `grpc`): the request goes out as one stream on
//! the worker's pooled h2c connection, its body streamed from the client
//! connection; the response comes back as HTTP/1.1, chunked unless the
//! backend gave a length, with the backend's trailers (`grpc-status`) as
//! chunked trailer fields.

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use mesh_registry::{Cluster, RouteRule};

use super::body::{next_data, release, send_all};
use super::to_h2::{open_stream, upstream_request, Failure};
use crate::body::{BodyError, BodyReader};
use crate::codec::headers::write_header;
use crate::codec::wire::{write_decimal, write_status_line};
use crate::codec::{chunked, reason_phrase, Headers, RequestHead};
use crate::filters::plan::Plan;
use crate::filters::{cors, headers as header_filter};
use crate::io::{flush, write_all, ClientStream, Io};
use crate::local::{answer, body_failure};
use crate::policy::{self, UpstreamResult};
use crate::proxy::Outcome;
use crate::server::Client;
use crate::upstream::pick;
use crate::HttpHandler;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward<S: ClientStream>(
    h: &HttpHandler,
    c: &mut Client<S>,
    req: RequestHead,
    mut reader: BodyReader,
    rule: &RouteRule,
    cluster: &Arc<Cluster>,
    plan: Plan<'_>,
    start: Instant,
) -> Outcome {
    let none = Headers::default();
    let cl = Some(&**cluster);
    let Ok(_admission) = h.policy.admit_request(cluster) else {
        let (status, headers, body) = policy::overflow_response();
        return answer(h, c, &req, &reader, start, status, &headers, body, cl).await;
    };
    if req.expect_continue {
        c.wbuf.clear();
        c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if flush(&mut c.io.stream, &mut c.wbuf).await.is_err() {
            return Outcome::Close;
        }
    }
    let Some(request) = upstream_request(h, &req, c.peer.ip(), c.scheme) else {
        let text = "request cannot be sent over HTTP/2\n";
        return answer(h, c, &req, &reader, start, 400, &none, text, None).await;
    };
    if let Some(retry) = rule.retry.as_ref() {
        // Retries need the body whole: read it when it is small (from_h1_retry.rs).
        if let Some(body) = super::from_h1_retry::small_body(h, c, &req, &mut reader).await {
            let body = match body {
                Ok(b) => b,
                Err(e) => return body_failure(h, c, e, false).await,
            };
            let call = super::from_h1_retry::Call {
                request,
                body,
                retry,
                rule,
                cluster,
                start,
            };
            let (response, picked, sent) = match call.run(h, &req, c.peer.ip()).await {
                Ok(r) => r,
                Err((status, text)) => {
                    return answer(h, c, &req, &reader, start, status, &none, text, cl).await
                }
            };
            return reply(
                h, c, &req, &reader, response, picked, sent, &plan, cluster, start, true,
            )
            .await;
        }
    }
    let Some(picked) = pick::pick_for_request(h, cluster, &req, c.peer.ip()) else {
        let text = "no healthy upstream\n";
        return answer(h, c, &req, &reader, start, 503, &none, text, cl).await;
    };
    let addr = picked.addr;
    let sent = Instant::now();
    let deadline = match (rule.timeouts.backend_request, rule.timeouts.request) {
        (Some(p), Some(r)) => Some(sent + p.min(r)),
        (Some(p), None) => Some(sent + p),
        (None, Some(r)) => Some(start + r),
        (None, None) => None,
    };
    let end_stream = reader.is_done();
    let report = |result| h.policy.report(cluster, addr, result, Instant::now());
    let exchange = async {
        let (response, send) = open_stream(h, addr, request, end_stream).await?;
        let mut sending = pin!(async {
            match send {
                Some(send) => pump_request(&mut reader, &mut c.io, send).await,
                None => Ok(()),
            }
        });
        let mut response = pin!(response);
        // The body goes out while the response is awaited; a backend that
        // answers early ends the upload.
        let first = monoio::select! {
            r = &mut sending => Err(r),
            r = &mut response => Ok(r),
        };
        match first {
            Ok(r) => r.map(|r| (r, false)),
            Err(Err(e)) => Err(Failure::Client(e)),
            Err(Ok(())) => response.await.map(|r| (r, true)),
        }
    };
    let result = match deadline {
        Some(d) => monoio::time::timeout_at(d.into(), exchange)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => exchange.await,
    };
    let (response, body_sent) = match result {
        Ok(r) => r,
        Err(Failure::Client(e)) => {
            report(None);
            return body_failure(h, c, e, false).await;
        }
        Err(f) => {
            report(Some(f.result()));
            let (status, text) = f.answer();
            return answer(h, c, &req, &reader, start, status, &none, text, cl).await;
        }
    };
    report(Some(UpstreamResult::Status(response.status().as_u16())));
    reply(
        h, c, &req, &reader, response, picked, sent, &plan, cluster, start, body_sent,
    )
    .await
}

/// The backend's response back to the HTTP/1.1 client, decorated and filtered.
#[allow(clippy::too_many_arguments)]
async fn reply<S: ClientStream>(
    h: &HttpHandler,
    c: &mut Client<S>,
    req: &RequestHead,
    reader: &BodyReader,
    response: http::Response<RecvStream>,
    picked: policy::Picked,
    sent: Instant,
    plan: &Plan<'_>,
    cluster: &Arc<Cluster>,
    start: Instant,
    body_sent: bool,
) -> Outcome {
    let cl = Some(&**cluster);
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    let picked_addr = picked.addr;
    let mut headers = super::translate::headers_from_map(&parts.headers);
    policy::decorate_response(&mut headers, sent, picked.set_cookie);
    for m in &plan.response_modifiers {
        header_filter::apply(&mut headers, m);
    }
    if let Some(p) = plan.cors {
        cors::response_headers(p, req, &mut headers);
    }
    let keep = body_sent && reader.is_done() && req.keep_alive && !c.drain.is_draining();
    let copied = respond(c, req, status, &headers, body, keep).await;
    h.metrics
        .record_request_from(c.peer_identity.as_deref(), status, cl, start.elapsed());
    if let Some(mut log) = c.access.take() {
        log.upstream_host = Some(picked_addr);
        log.upstream_service_ms = Some(crate::access_log::service_time_of(&headers));
        log.emit(status, "-", 0, start);
    }
    if copied && keep {
        Outcome::KeepAlive
    } else {
        Outcome::Close
    }
}

/// The client's HTTP/1.1 request body onto the upstream stream.
async fn pump_request<S: ClientStream>(
    reader: &mut BodyReader,
    io: &mut Io<S>,
    mut send: SendStream<bytes::Bytes>,
) -> Result<(), BodyError> {
    loop {
        match reader.next(io).await {
            Ok(Some(chunk)) => {
                if send_all(&mut send, chunk).await.is_err() {
                    // The backend reset the stream: its answer says why.
                    return Ok(());
                }
            }
            Ok(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return Ok(());
            }
            Err(e) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(e);
            }
        }
    }
}

/// Writes the HTTP/1.1 response head and streams the body (and trailers).
/// False when the response could not be completed.
async fn respond<S: ClientStream>(
    c: &mut Client<S>,
    req: &RequestHead,
    status: u16,
    headers: &Headers,
    mut body: RecvStream,
    keep: bool,
) -> bool {
    let head_request = req.method_is("HEAD");
    let length = headers
        .get_str("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    let no_body = body.is_end_stream() || head_request || status == 204 || status == 304;
    let chunked = !no_body && length.is_none();
    let out = &mut c.wbuf;
    out.clear();
    write_status_line(out, status, reason_phrase(status).as_bytes());
    for hdr in headers.iter() {
        if hdr.is("content-length") || hdr.is("transfer-encoding") || hdr.is("connection") {
            continue;
        }
        write_header(out, &hdr.name, &hdr.value);
    }
    match length {
        Some(n) if !no_body || head_request => {
            out.extend_from_slice(b"content-length: ");
            write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ if !head_request && status != 204 && status != 304 => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if flush(&mut c.io.stream, &mut c.wbuf).await.is_err() {
        return false;
    }
    if no_body {
        return true;
    }
    let mut frame = BytesMut::new();
    loop {
        match next_data(&mut body).await {
            None => break,
            Some(Ok(data)) => {
                let n = data.len();
                if chunked {
                    chunked::write_chunk_header(&mut frame, n);
                    if flush(&mut c.io.stream, &mut frame).await.is_err() {
                        return false;
                    }
                }
                if write_all(&mut c.io.stream, data).await.is_err() {
                    return false;
                }
                if chunked {
                    frame.extend_from_slice(b"\r\n");
                }
                release(&mut body, n);
            }
            Some(Err(_)) => return false,
        }
    }
    if chunked {
        frame.extend_from_slice(b"0\r\n");
        if let Ok(Some(trailers)) = body.trailers().await {
            for (name, value) in &trailers {
                write_header(&mut frame, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        frame.extend_from_slice(b"\r\n");
    }
    flush(&mut c.io.stream, &mut frame).await.is_ok()
}
