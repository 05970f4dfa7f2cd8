//! Connection-pool limits (circuit breakers) at request admission.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_balance::{Overflow, PoolGuard};
use mesh_limits::RetryBudget;
use mesh_registry::Cluster;

use super::WorkerPolicy;
use crate::codec::Headers;
use crate::io::Io;

/// How often a request waiting for a connection slot looks again. Slots are
/// freed by any worker, so there is no local waker to wait on; waiting is
/// bounded by `http1MaxPendingRequests` and the caller's deadline.
const PENDING_POLL: Duration = Duration::from_millis(1);

/// A retry in flight: counted against the budget and `maxRetries` until dropped.
#[derive(Debug)]
pub struct RetryPermit {
    _pool: Option<PoolGuard>,
    retries: Rc<Cell<u32>>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.retries.set(self.retries.get().saturating_sub(1));
    }
}

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

    /// A retry may start: within the retry budget (20 % of this worker's
    /// requests in flight to the cluster, at least 3 retries) and within
    /// `maxRetries` (retries in flight, all workers). Hold the permit for
    /// the retry's duration.
    pub fn retry_permit(&self, cluster: &Arc<Cluster>) -> Result<RetryPermit, Overflow> {
        let budget = RetryBudget::default();
        let retries = self.with_runtime(cluster, |rt| {
            budget
                .allows(rt.in_flight(), rt.retries.get())
                .then(|| rt.retries.clone())
        });
        let Some(retries) = retries else {
            return Err(Overflow::Retries);
        };
        let pool = match cluster.policy.connection_pool.as_ref() {
            Some(limits) => Some(cluster.policy.counters.try_retry(limits)?),
            None => None,
        };
        retries.set(retries.get() + 1);
        Ok(RetryPermit {
            _pool: pool,
            retries,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_registry::{ClusterPolicy, ObjectRef};

    fn cluster(policy: ClusterPolicy) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: "ns/c:80".into(),
            service: ObjectRef {
                namespace: "ns".into(),
                name: "c".into(),
            },
            port: 80,
            endpoints: vec![([127, 0, 0, 1], 1).into()],
            protocol: Default::default(),
            policy: Arc::new(policy),
        })
    }

    #[test]
    fn retry_budget_allows_three_concurrent_retries_when_quiet() {
        let p = WorkerPolicy::default();
        let c = cluster(ClusterPolicy::default());
        let permits: Vec<_> = (0..3).map(|_| p.retry_permit(&c).unwrap()).collect();
        assert_eq!(p.retry_permit(&c).unwrap_err(), Overflow::Retries);
        drop(permits);
        assert!(p.retry_permit(&c).is_ok());
    }

    #[test]
    fn max_retries_caps_retries_in_flight() {
        let p = WorkerPolicy::default();
        let c = cluster(ClusterPolicy {
            connection_pool: Some(mesh_balance::PoolLimits {
                max_retries: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let first = p.retry_permit(&c).unwrap();
        assert_eq!(p.retry_permit(&c).unwrap_err(), Overflow::Retries);
        drop(first);
        assert!(p.retry_permit(&c).is_ok());
    }

    #[test]
    fn admission_without_limits_always_passes_and_max_requests_refuses() {
        let p = WorkerPolicy::default();
        assert!(p.admit_request(&cluster(ClusterPolicy::default())).is_ok());
        let c = cluster(ClusterPolicy {
            connection_pool: Some(mesh_balance::PoolLimits {
                max_requests: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let a = p.admit_request(&c).unwrap();
        assert_eq!(p.admit_request(&c).unwrap_err(), Overflow::Requests);
        drop(a);
        assert!(p.admit_request(&c).is_ok());
    }
}
