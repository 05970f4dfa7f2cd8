//! Load balancing, outlier detection and connection-pool limits: the
//! per-worker state behind a DestinationRule's `trafficPolicy`.
//!
//! Pingora-style split: everything here is pure (no I/O, no clock reads, no
//! globals). Callers pass the time (`Instant`) and the random generator, so
//! every decision is reproducible in a unit test.
//!
//! - [`config`]: the settings as translation resolved them (Istio semantics).
//! - [`Balancer`]: ROUND_ROBIN, LEAST_REQUEST (power of two choices),
//!   RANDOM, ring hash (Envoy's ketama-style ring) and Maglev, over a list of
//!   endpoints given by index; `available` lets the caller skip ejected ones.
//! - [`OutlierDetector`]: consecutive 5xx / gateway errors, ejection for
//!   `baseEjectionTime × ejections`, `maxEjectionPercent`, `minHealthPercent`.
//! - [`PoolCounters`]: circuit-breaker counters (atomics, shared by workers)
//!   checked against [`config::PoolLimits`].

pub mod balancer;
pub mod config;
pub mod hash;
pub mod maglev;
pub mod outlier;
pub mod pool;
pub mod ring;

pub use balancer::Balancer;
pub use config::{HashKey, LbAlgorithm, LbConfig, OutlierConfig, PoolLimits};
pub use outlier::{OutlierDetector, UpstreamResult};
pub use pool::{Overflow, PoolCounters, PoolGuard};
