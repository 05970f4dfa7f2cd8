//! Envoy's local rate limit token bucket: `max_tokens` capacity, refilled
//! by `tokens_per_fill` every `fill_interval` (whole fills, like Envoy's
//! timer, so `reset` is exact).

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenBucketConfig {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// What one request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `x-ratelimit-limit`.
    pub limit: u32,
    /// `x-ratelimit-remaining`, after this request.
    pub remaining: u32,
    /// `x-ratelimit-reset`: seconds (rounded up) until the next fill.
    pub reset_seconds: u64,
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: u32,
    /// Start of the current fill interval.
    filled_at: Instant,
}

impl TokenBucket {
    /// A new bucket starts full.
    pub fn new(config: &TokenBucketConfig, now: Instant) -> Self {
        Self {
            tokens: config.max_tokens,
            filled_at: now,
        }
    }

    fn refill(&mut self, config: &TokenBucketConfig, now: Instant) {
        let interval = config.fill_interval.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(self.filled_at);
        let fills = (elapsed.as_nanos() / interval.as_nanos()) as u64;
        if fills > 0 {
            let added = fills.saturating_mul(u64::from(config.tokens_per_fill));
            self.tokens = (u64::from(self.tokens) + added).min(u64::from(config.max_tokens)) as u32;
            self.filled_at += interval * fills.min(u64::from(u32::MAX)) as u32;
        }
    }

    pub fn try_take(&mut self, config: &TokenBucketConfig, now: Instant) -> Decision {
        self.refill(config, now);
        let allowed = self.tokens > 0;
        if allowed {
            self.tokens -= 1;
        }
        let interval = config.fill_interval.max(Duration::from_millis(1));
        let next_fill = (self.filled_at + interval).saturating_duration_since(now);
        Decision {
            allowed,
            limit: config.max_tokens,
            remaining: self.tokens,
            reset_seconds: next_fill.as_millis().div_ceil(1000) as u64,
        }
    }

    /// Full and idle: the keyed map may forget it (a new one starts full too).
    pub fn is_full(&mut self, config: &TokenBucketConfig, now: Instant) -> bool {
        self.refill(config, now);
        self.tokens >= config.max_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TokenBucketConfig {
        TokenBucketConfig {
            max_tokens: 3,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn empties_then_refills_by_whole_intervals() {
        let c = config();
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&c, t0);
        let d: Vec<(bool, u32)> = (0..4)
            .map(|_| b.try_take(&c, t0))
            .map(|d| (d.allowed, d.remaining))
            .collect();
        assert_eq!(d, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        let d = b.try_take(&c, t0 + Duration::from_millis(9_999));
        assert!(!d.allowed);
        assert_eq!(d.reset_seconds, 1);
        assert_eq!(d.limit, 3);
        // One fill adds two tokens.
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.try_take(&c, t1).allowed);
        assert!(b.try_take(&c, t1).allowed);
        assert!(!b.try_take(&c, t1).allowed);
        assert_eq!(b.try_take(&c, t1).reset_seconds, 10);
        // Long idle: capped at max_tokens.
        let t2 = t1 + Duration::from_secs(1000);
        assert!(b.is_full(&c, t2));
        assert_eq!(b.try_take(&c, t2).remaining, 2);
    }
}
