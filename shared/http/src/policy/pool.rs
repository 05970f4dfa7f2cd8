//! Connection-pool limits (circuit breakers) at request admission.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_balance::{Overflow, PoolGuard};
use mesh_registry::Cluster;

use super::WorkerPolicy;
use crate::codec::Headers;
use crate::io::Io;

/// How often a request waiting for a connection slot looks again. Slots are
/// freed by any worker, so there is no local waker to wait on; waiting is
/// bounded by `http1MaxPendingRequests` and the caller's deadline.
const PENDING_POLL: Duration = Duration::from_millis(1);

/// Slots held while a request is in flight; released on drop.
#[derive(Debug, Default)]
pub struct Admission {
    _request: Option<PoolGuard>,
    _connection: Option<PoolGuard>,
}

/// Envoy marks its answer to an open circuit breaker with this header.
pub const OVERLOADED_HEADER: (&str, &str) = ("x-envoy-overloaded", "true");
pub const OVERFLOW_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow\n";

/// 503 with `x-envoy-overloaded: true` (HTTP/1.1 answer).
pub fn overflow_response() -> (u16, Headers, &'static str) {
    let mut headers = Headers::default();
    headers.add(OVERLOADED_HEADER.0, OVERLOADED_HEADER.1);
    (503, headers, OVERFLOW_BODY)
}

impl WorkerPolicy {
    /// HTTP/1.1: one request needs one upstream connection. Beyond
    /// `maxConnections` a request waits (at most `http1MaxPendingRequests`
    /// of them, each until `wait_until`); beyond that, or beyond
    /// `http2MaxRequests`, it overflows.
    pub async fn admit_http1(
        &self,
        cluster: &Arc<Cluster>,
        wait_until: Instant,
    ) -> Result<Admission, Overflow> {
        let Some(limits) = cluster.policy.connection_pool.as_ref() else {
            return Ok(Admission::default());
        };
        let counters = &cluster.policy.counters;
        let request = counters.try_request(limits)?;
        let connection = match counters.try_connection(limits) {
            Ok(c) => c,
            Err(_) => {
                let _pending = counters.try_pending(limits)?;
                loop {
                    if Instant::now() >= wait_until {
                        return Err(Overflow::PendingRequests);
                    }
                    monoio::time::sleep(PENDING_POLL).await;
                    if let Ok(c) = counters.try_connection(limits) {
                        break c;
                    }
                }
            }
        };
        Ok(Admission {
            _request: Some(request),
            _connection: Some(connection),
        })
    }

    /// HTTP/2 streams: only `http2MaxRequests` applies per request.
    pub fn admit_request(&self, cluster: &Arc<Cluster>) -> Result<Admission, Overflow> {
        let Some(limits) = cluster.policy.connection_pool.as_ref() else {
            return Ok(Admission::default());
        };
        Ok(Admission {
            _request: Some(cluster.policy.counters.try_request(limits)?),
            _connection: None,
        })
    }

    /// A retry may start (`maxRetries` retries in flight); hold the guard
    /// for the retry's duration.
    pub fn retry_permit(&self, cluster: &Arc<Cluster>) -> Result<Option<PoolGuard>, Overflow> {
        match cluster.policy.connection_pool.as_ref() {
            Some(limits) => cluster.policy.counters.try_retry(limits).map(Some),
            None => Ok(None),
        }
    }

    /// `maxRequestsPerConnection`: counts a finished request on this
    /// upstream connection; false when it must now be closed instead of
    /// pooled. Counted by socket, so a connection the pool dropped leaves a
    /// count that a new socket with the same number inherits: it may close
    /// early, never late.
    pub fn keep_connection<S: AsRawFd>(&self, cluster: &Cluster, up: &Io<S>) -> bool {
        let Some(max) = cluster
            .policy
            .connection_pool
            .as_ref()
            .map(|l| l.max_requests_per_connection)
            .filter(|m| *m > 0)
        else {
            return true;
        };
        let fd = up.stream.as_raw_fd();
        let mut counts = self.requests_per_connection.borrow_mut();
        let n = counts.entry(fd).or_insert(0);
        *n += 1;
        if *n >= max {
            counts.remove(&fd);
            return false;
        }
        true
    }
}
