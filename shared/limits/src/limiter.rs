//! A route's rate limit: one bucket, or one per key (header value or
//! client address), shared by every worker behind a mutex.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::bucket::{Decision, TokenBucket, TokenBucketConfig};

/// What separates callers into buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LimitKey {
    /// One bucket for the whole route.
    None,
    /// One bucket per value of this (lower-case) header; requests without
    /// it share one bucket.
    Header(String),
    /// One bucket per client IP.
    ClientAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    pub bucket: TokenBucketConfig,
    pub key: LimitKey,
    /// Where the limit came from (`namespace/name` of the policy), for logs.
    pub source: String,
}

/// Keyed buckets never grow past this; full (idle) buckets are dropped
/// first, and if none is full the map is cleared (a burst of distinct keys
/// must not exhaust memory).
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
pub struct RateLimiter {
    pub config: RateLimitConfig,
    buckets: Mutex<HashMap<Vec<u8>, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for the caller identified by `key` (empty for
    /// `LimitKey::None`).
    pub fn check(&self, key: &[u8], now: Instant) -> Decision {
        let config = &self.config.bucket;
        // A poisoned lock only means another worker panicked mid-update;
        // the buckets are still consistent enough to keep limiting.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            buckets.retain(|_, b| !b.is_full(config, now));
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        buckets
            .entry(key.to_vec())
            .or_insert_with(|| TokenBucket::new(config, now))
            .try_take(config, now)
    }

    pub fn keys(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

/// A snapshot dump shows the configuration, not the buckets.
impl Serialize for RateLimiter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.config.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn limiter(max: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            bucket: TokenBucketConfig {
                max_tokens: max,
                tokens_per_fill: max,
                fill_interval: Duration::from_secs(60),
            },
            key: LimitKey::ClientAddress,
            source: "ns/p".into(),
        })
    }

    #[test]
    fn keys_have_their_own_buckets() {
        let l = limiter(2);
        let t = Instant::now();
        assert!(l.check(b"10.0.0.1", t).allowed);
        assert!(l.check(b"10.0.0.1", t).allowed);
        assert!(!l.check(b"10.0.0.1", t).allowed);
        assert!(l.check(b"10.0.0.2", t).allowed);
        assert_eq!(l.keys(), 2);
    }

    #[test]
    fn shared_buckets_are_exact_across_threads() {
        let l = Arc::new(limiter(1000));
        let t = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..500).filter(|_| l.check(b"k", t).allowed).count())
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 1000);
    }
}
