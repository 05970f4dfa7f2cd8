//! Local rate limits (token buckets per route, optionally keyed) and retry
//! budgets: the limits that protect a backend from its callers.
//!
//! Pure: callers pass the time. A [`RateLimiter`] is shared by every worker
//! (one per route in the snapshot): see the README for why shared buckets
//! rather than per-worker buckets with the limit split.

pub mod bucket;
pub mod budget;
pub mod limiter;

pub use bucket::{Decision, TokenBucket, TokenBucketConfig};
pub use budget::RetryBudget;
pub use limiter::{LimitKey, RateLimitConfig, RateLimiter};
