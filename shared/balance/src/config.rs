//! Traffic-policy settings after translation: Istio's DestinationRule
//! `trafficPolicy` fields with their defaults applied.

use std::time::Duration;

use serde::Serialize;

/// How a cluster's endpoints are chosen (`loadBalancer`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LbConfig {
    pub algorithm: LbAlgorithm,
    /// Consistent hash only: where the key comes from. None with a hash
    /// algorithm means every request hashes to nothing and is spread randomly.
    pub hash_key: Option<HashKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum LbAlgorithm {
    RoundRobin,
    /// Power of two choices: two random endpoints, the one with fewer
    /// requests in flight wins (Envoy's default `choice_count` 2).
    LeastRequest,
    Random,
    /// Envoy's ketama-style ring: `minimum_ring_size` points at least.
    RingHash {
        minimum_ring_size: u64,
    },
    /// Maglev lookup table of `table_size` entries (a prime).
    Maglev {
        table_size: u64,
    },
}

/// Istio's default simple policy is LEAST_REQUEST.
impl Default for LbAlgorithm {
    fn default() -> Self {
        LbAlgorithm::LeastRequest
    }
}

/// Envoy's defaults.
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

/// `consistentHash` key sources.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum HashKey {
    /// `httpHeaderName`, lower-case.
    Header(String),
    /// `httpCookie`: name, path and TTL (a TTL means: generate the cookie
    /// when the request has none).
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    /// `useSourceIp`.
    SourceIp,
    /// `httpQueryParameterName`.
    QueryParameter(String),
}

/// `outlierDetection` with Istio's defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierConfig {
    /// 5xx responses (and connect failures, resets, timeouts) in a row that
    /// eject an endpoint. None: disabled.
    pub consecutive_5xx: Option<u32>,
    /// 502/503/504 (and connect failures, resets, timeouts) in a row. None: disabled.
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejection multipliers decay (Envoy's analysis sweep).
    pub interval: Duration,
    /// An ejection lasts this times the endpoint's ejection count.
    pub base_ejection_time: Duration,
    /// Upper bound of an ejection (Envoy's `max_ejection_time`, 300 s).
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once (but always
    /// at least one may be, as in Envoy).
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, ejections are ignored and
    /// every endpoint takes traffic (Envoy's panic mode).
    pub min_health_percent: u32,
}

impl Default for OutlierConfig {
    /// Istio's documented defaults.
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// `connectionPool` with unset fields at Envoy's defaults (1024 for the
/// circuit breakers, unlimited for the rest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolLimits {
    /// `tcp.maxConnections`: upstream connections in use at once.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: requests in flight at once (any protocol).
    pub max_requests: u32,
    /// `http.maxRequestsPerConnection`: 0 = unlimited; 1 disables keep-alive.
    pub max_requests_per_connection: u32,
    /// `http.maxRetries`: retries in flight at once.
    pub max_retries: u32,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `http.idleTimeout`: idle upstream connections are closed after this.
    pub idle_timeout: Option<Duration>,
}

pub const DEFAULT_CIRCUIT_BREAKER_LIMIT: u32 = 1024;

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_CIRCUIT_BREAKER_LIMIT,
            max_pending_requests: DEFAULT_CIRCUIT_BREAKER_LIMIT,
            max_requests: DEFAULT_CIRCUIT_BREAKER_LIMIT,
            max_requests_per_connection: 0,
            max_retries: DEFAULT_CIRCUIT_BREAKER_LIMIT,
            connect_timeout: None,
            idle_timeout: None,
        }
    }
}
