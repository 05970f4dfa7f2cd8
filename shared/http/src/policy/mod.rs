//! Traffic policy hooks (DestinationRule `trafficPolicy`, local rate
//! limits), shared by the HTTP/1.1 path (`proxy.rs`) and the HTTP/2 path
//! (`h2/`). Each hook is one call; the state lives in [`WorkerPolicy`], one
//! per worker inside `HttpHandler` (`h.policy`). See /work/notes/seams.md.
//!
//! Order on a request:
//! 1. `h.policy.pick(cluster, &view, now)` → [`Picked`] endpoint (load
//!    balancer, consistent-hash key from the request, ejected endpoints
//!    skipped); `None` = no endpoint (503).
//! 2. `h.policy.admit_http1(cluster, wait).await` (HTTP/1.1: a connection
//!    per request) or `h.policy.admit_request(cluster)` (HTTP/2 streams) →
//!    [`Admission`] held until the response is done; `Err(Overflow)` →
//!    answer [`overflow_response`] (503, `x-envoy-overloaded: true`).
//! 3. after each attempt: `h.policy.report(cluster, picked, result, now)`
//!    with [`UpstreamResult`] (status, connect failure, reset, timeout):
//!    feeds outlier detection and LEAST_REQUEST's in-flight counts.
//! 4. before a retry: `h.policy.retry_permit(cluster)` (retry budget: 20 %
//!    of requests in flight, at least 3; maxRetries).
//! 5. on the response: [`service_time_header`] and `picked.set_cookie`.

pub mod authz;
mod balance;
mod hash_key;
mod pool;
mod rate_limit;

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_registry::RouteRule;

use crate::codec::{Headers, ResponseHead};
use crate::upstream::exchange::AttemptError;

pub use balance::Picked;
pub use hash_key::RequestView;
pub use mesh_balance::{Overflow, UpstreamResult};
pub use pool::{overflow_response, Admission, RetryPermit};
pub use pool::{OVERFLOW_BODY, OVERLOADED_HEADER};
pub use rate_limit::{rate_limit, rate_limit_headers, rate_limited_response};

/// Per-worker policy state: balancers and outlier detectors per cluster name
/// (kept across snapshot reloads while the cluster keeps its name).
#[derive(Default)]
pub struct WorkerPolicy {
    clusters: RefCell<HashMap<String, balance::ClusterRuntime>>,
    /// Requests carried per pooled upstream socket (`maxRequestsPerConnection`).
    requests_per_connection: RefCell<HashMap<RawFd, u32>>,
}

/// The route's request deadline, else `start + fallback`: how long a
/// request may wait for a connection slot.
pub fn deadline_or(rule: &RouteRule, start: Instant, fallback: Duration) -> Instant {
    start + rule.timeouts.request.unwrap_or(fallback)
}

/// What an HTTP/1.1 attempt tells outlier detection; None when the failure
/// was the client's (its body broke).
pub(crate) fn attempt_result<T>(
    r: &Result<(T, ResponseHead), AttemptError>,
) -> Option<UpstreamResult> {
    match r {
        Ok((_, resp)) => Some(UpstreamResult::Status(resp.status)),
        Err(AttemptError::Connect) => Some(UpstreamResult::ConnectFailure),
        Err(AttemptError::Reset { .. }) => Some(UpstreamResult::Reset),
        Err(AttemptError::Timeout) => Some(UpstreamResult::Timeout),
        Err(AttemptError::BadResponse) => Some(UpstreamResult::Status(502)),
        Err(AttemptError::Client(_)) => None,
    }
}

/// Adds the policy's response headers: `x-envoy-upstream-service-time`
/// and a generated hash cookie.
pub fn decorate_response(headers: &mut Headers, sent: Instant, set_cookie: Option<String>) {
    let (name, value) = service_time_header(sent);
    headers.add(Bytes::from_static(name.as_bytes()), Bytes::from(value));
    if let Some(cookie) = set_cookie {
        headers.add(Bytes::from_static(b"set-cookie"), Bytes::from(cookie));
    }
}

/// `x-envoy-upstream-service-time`: milliseconds from sending the request
/// upstream to receiving the response head.
pub fn service_time_header(sent: Instant) -> (&'static str, String) {
    (
        "x-envoy-upstream-service-time",
        sent.elapsed().as_millis().to_string(),
    )
}
