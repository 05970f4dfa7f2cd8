//! Retries for an HTTP/1.1 client's request to an h2c (gRPC) backend: a
//! body that fits in `max_buffered_body_bytes` is read whole, then sent on
//! a new stream per try until the answer is final (the same decision as for
//! HTTP/2 clients, `replay::retriable_response`). Larger or chunked bodies
//! stream once, unretried (`from_h1.rs`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use http::Response;
use mesh_registry::{Cluster, RetryPolicy, RouteRule};

use super::body::send_all;
use super::replay::retriable_response;
use super::to_h2::{open_stream, Failure};
use crate::body::{BodyError, BodyReader};
use crate::codec::{BodyKind, RequestHead};
use crate::io::ClientStream;
use crate::policy::{Picked, UpstreamResult};
use crate::retry::pause_before_retry;
use crate::server::Client;
use crate::upstream::pick;
use crate::HttpHandler;

/// The whole request body when it is small enough to keep for a retry;
/// None: it streams (no retries).
pub(super) async fn small_body<S: ClientStream>(
    h: &HttpHandler,
    c: &mut Client<S>,
    req: &RequestHead,
    reader: &mut BodyReader,
) -> Option<Result<Bytes, BodyError>> {
    let limit = h.options.max_buffered_body_bytes;
    match req.body {
        BodyKind::None => Some(Ok(Bytes::new())),
        BodyKind::Length(n) if n <= limit as u64 => Some(reader.read_all(&mut c.io, limit).await),
        _ => None,
    }
}

/// One request with its retry policy.
pub(super) struct Call<'a> {
    pub request: (http::Method, http::Uri, http::HeaderMap),
    pub body: Bytes,
    pub retry: &'a RetryPolicy,
    pub rule: &'a RouteRule,
    pub cluster: &'a Arc<Cluster>,
    pub start: Instant,
}

impl Call<'_> {
    /// Tries until an answer is final: the response, the endpoint that gave
    /// it and when it was sent; or the proxy's own answer (status, text).
    pub(super) async fn run(
        self,
        h: &HttpHandler,
        req: &RequestHead,
        client_ip: std::net::IpAddr,
    ) -> Result<(Response<RecvStream>, Picked, Instant), (u16, &'static str)> {
        let cluster = self.cluster;
        let request_deadline = self.rule.timeouts.request.map(|r| self.start + r);
        let max_tries = 1 + self.retry.attempts;
        let mut tries = 0;
        let mut _retry_permit = None;
        loop {
            tries += 1;
            let Some(picked) = pick::pick_for_request(h, cluster, req, client_ip) else {
                return Err((503, "no healthy upstream\n"));
            };
            let addr = picked.addr;
            let sent = Instant::now();
            let deadline = match (self.rule.timeouts.backend_request, request_deadline) {
                (Some(p), Some(d)) => Some((sent + p).min(d)),
                (Some(p), None) => Some(sent + p),
                (None, d) => d,
            };
            let exchange = async {
                let end_stream = self.body.is_empty();
                let (response, send) =
                    open_stream(h, addr, self.request.clone(), end_stream).await?;
                if let Some(mut send) = send {
                    let body = self.body.clone();
                    monoio::spawn(async move {
                        if send_all(&mut send, body).await.is_ok() {
                            let _ = send.send_data(Bytes::new(), true);
                        }
                    });
                }
                response.await
            };
            let outcome = match deadline {
                Some(d) => monoio::time::timeout_at(d.into(), exchange)
                    .await
                    .unwrap_or(Err(Failure::Timeout)),
                None => exchange.await,
            };
            let result = match &outcome {
                Ok(r) => UpstreamResult::Status(r.status().as_u16()),
                Err(f) => f.result(),
            };
            h.policy.report(cluster, addr, Some(result), Instant::now());
            let wanted = match &outcome {
                Ok(r) => retriable_response(
                    self.retry,
                    r.status().as_u16(),
                    r.headers(),
                    r.body().is_end_stream(),
                ),
                Err(Failure::Connect) => self.retry.on_connect_failure,
                Err(Failure::Reset | Failure::Timeout) => self.retry.on_reset,
                Err(Failure::Client(_)) => false,
            };
            let expired = request_deadline.is_some_and(|d| Instant::now() >= d);
            let permit = (wanted && tries < max_tries && !expired)
                .then(|| h.policy.retry_permit(cluster).ok())
                .flatten();
            match outcome {
                Ok(r) if permit.is_none() => return Ok((r, picked, sent)),
                Err(f) if permit.is_none() => return Err(f.answer()),
                _ => {}
            }
            _retry_permit = permit;
            if !pause_before_retry(h, Some(self.retry), tries, request_deadline).await {
                return Err((504, "upstream request timeout\n"));
            }
        }
    }
}
