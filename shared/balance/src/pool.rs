//! Connection-pool limits as Envoy's circuit breakers: counters shared by
//! every worker (atomics), checked before a request may proceed. A request
//! that would exceed a limit is refused (`Overflow`, 503 with
//! `x-envoy-overloaded: true`), never queued without bound.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::config::PoolLimits;

#[derive(Debug, Default)]
pub struct PoolCounters {
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Which limit refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Connection,
    Pending,
    Request,
    Retry,
}

/// Holds one unit of a counter; releases it on drop.
#[derive(Debug)]
pub struct PoolGuard {
    counters: Arc<PoolCounters>,
    slot: Slot,
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        self.counters
            .counter(self.slot)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl PoolCounters {
    fn counter(&self, slot: Slot) -> &AtomicU32 {
        match slot {
            Slot::Connection => &self.connections,
            Slot::Pending => &self.pending,
            Slot::Request => &self.requests,
            Slot::Retry => &self.retries,
        }
    }

    fn acquire(
        self: &Arc<Self>,
        slot: Slot,
        limit: u32,
        overflow: Overflow,
    ) -> Result<PoolGuard, Overflow> {
        let c = self.counter(slot);
        let mut cur = c.load(Ordering::Acquire);
        loop {
            if cur >= limit {
                return Err(overflow);
            }
            match c.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Ok(PoolGuard {
                        counters: self.clone(),
                        slot,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// A request in flight (`http2MaxRequests`, any protocol).
    pub fn try_request(self: &Arc<Self>, l: &PoolLimits) -> Result<PoolGuard, Overflow> {
        self.acquire(Slot::Request, l.max_requests, Overflow::Requests)
    }

    /// An upstream connection in use (`tcp.maxConnections`).
    pub fn try_connection(self: &Arc<Self>, l: &PoolLimits) -> Result<PoolGuard, Overflow> {
        self.acquire(Slot::Connection, l.max_connections, Overflow::Connections)
    }

    /// A request waiting for a connection (`http1MaxPendingRequests`).
    pub fn try_pending(self: &Arc<Self>, l: &PoolLimits) -> Result<PoolGuard, Overflow> {
        self.acquire(
            Slot::Pending,
            l.max_pending_requests,
            Overflow::PendingRequests,
        )
    }

    /// A retry in flight (`maxRetries`).
    pub fn try_retry(self: &Arc<Self>, l: &PoolLimits) -> Result<PoolGuard, Overflow> {
        self.acquire(Slot::Retry, l.max_retries, Overflow::Retries)
    }

    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Acquire)
    }

    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PoolLimits {
        PoolLimits {
            max_connections: 2,
            max_pending_requests: 1,
            max_requests: 3,
            max_retries: 1,
            ..PoolLimits::default()
        }
    }

    #[test]
    fn limits_refuse_and_guards_release() {
        let c = Arc::new(PoolCounters::default());
        let l = limits();
        let a = c.try_connection(&l).unwrap();
        let _b = c.try_connection(&l).unwrap();
        assert_eq!(c.try_connection(&l).unwrap_err(), Overflow::Connections);
        let p = c.try_pending(&l).unwrap();
        assert_eq!(c.try_pending(&l).unwrap_err(), Overflow::PendingRequests);
        drop(a);
        assert_eq!(c.connections(), 1);
        let _a2 = c.try_connection(&l).unwrap();
        drop(p);
        assert_eq!(c.pending(), 0);
        let r: Vec<_> = (0..3).map(|_| c.try_request(&l).unwrap()).collect();
        assert_eq!(c.try_request(&l).unwrap_err(), Overflow::Requests);
        drop(r);
        assert_eq!(c.requests(), 0);
        let _r = c.try_retry(&l).unwrap();
        assert_eq!(c.try_retry(&l).unwrap_err(), Overflow::Retries);
    }

    #[test]
    fn counters_are_exact_across_threads() {
        let c = Arc::new(PoolCounters::default());
        let l = PoolLimits {
            max_requests: 100,
            ..PoolLimits::default()
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                let l = l.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        if let Ok(g) = c.try_request(&l) {
                            held.push(g);
                        }
                    }
                    held.len()
                })
            })
            .collect();
        // Guards are dropped when each thread ends, so count while held is
        // the sum of what threads got: exactly the limit.
        let got: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(got >= 100, "{got}");
        assert_eq!(c.requests(), 0);
    }
}
