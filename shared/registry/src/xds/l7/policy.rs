//! Traffic policy both ways: DestinationRule settings of a cluster
//! (`ClusterPolicy`), a rule's local rate limit, and durations.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::prost_types;
use mesh_api::ringmesh::l7::v1 as pb;
use mesh_balance::{HashKey, LbAlgorithm, LbConfig, OutlierConfig, PoolLimits};
use mesh_limits::{LimitKey, RateLimitConfig, TokenBucketConfig};

use crate::translate::destination_rules::upstream_tls::upstream_tls;

use mesh_config::Resources;

use crate::snapshot::{
    AbortStatus, Cluster, ClusterPolicy, FaultAbort, FaultDelay, FaultInjection, ObjectRef,
    UpstreamTlsPolicy,
};

pub fn duration(d: Duration) -> prost_types::Duration {
    // Saturates past ~292 billion years, which no configured duration reaches.
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

pub fn from_duration(d: &prost_types::Duration, field: &str) -> Result<Duration, String> {
    Duration::try_from(*d).map_err(|e| format!("{field}: invalid duration {d:?}: {e}"))
}

fn optional(d: &Option<prost_types::Duration>, field: &str) -> Result<Option<Duration>, String> {
    d.as_ref().map(|d| from_duration(d, field)).transpose()
}

fn required(d: &Option<prost_types::Duration>, field: &str) -> Result<Duration, String> {
    optional(d, field)?.ok_or_else(|| format!("{field} is missing"))
}

pub fn rate_limit(c: &RateLimitConfig) -> pb::RateLimit {
    pb::RateLimit {
        max_tokens: c.bucket.max_tokens,
        tokens_per_fill: c.bucket.tokens_per_fill,
        fill_interval: Some(duration(c.bucket.fill_interval)),
        key: match &c.key {
            LimitKey::None => None,
            LimitKey::Header(h) => Some(pb::rate_limit::Key::Header(h.clone())),
            LimitKey::ClientAddress => Some(pb::rate_limit::Key::ClientAddress(true)),
        },
        source: c.source.clone(),
    }
}

pub fn rate_limit_of(r: &pb::RateLimit) -> Result<RateLimitConfig, String> {
    let fill_interval = required(&r.fill_interval, "rate_limit.fill_interval")?;
    if fill_interval.is_zero() {
        return Err("rate_limit.fill_interval must be above zero".into());
    }
    Ok(RateLimitConfig {
        bucket: TokenBucketConfig {
            max_tokens: r.max_tokens,
            tokens_per_fill: r.tokens_per_fill,
            fill_interval,
        },
        key: match &r.key {
            None | Some(pb::rate_limit::Key::ClientAddress(false)) => LimitKey::None,
            Some(pb::rate_limit::Key::Header(h)) => LimitKey::Header(h.to_ascii_lowercase()),
            Some(pb::rate_limit::Key::ClientAddress(true)) => LimitKey::ClientAddress,
        },
        source: r.source.clone(),
    })
}

/// None when the cluster has no DestinationRule (the engine's defaults).
pub fn cluster_policy(p: &ClusterPolicy) -> Option<pb::ClusterPolicy> {
    let untouched = p.rule.is_none()
        && p.load_balancer.is_none()
        && p.connection_pool.is_none()
        && p.outlier_detection.is_none()
        && p.tls.is_none();
    if untouched {
        return None;
    }
    Some(pb::ClusterPolicy {
        rule: p.rule.as_ref().map(ToString::to_string).unwrap_or_default(),
        load_balancer: p.load_balancer.as_ref().map(load_balancer),
        connection_pool: p.connection_pool.as_ref().map(|c| pb::ConnectionPool {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_requests_per_connection: c.max_requests_per_connection,
            max_retries: c.max_retries,
            connect_timeout: c.connect_timeout.map(duration),
            idle_timeout: c.idle_timeout.map(duration),
        }),
        outlier_detection: p.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            interval: Some(duration(o.interval)),
            base_ejection_time: Some(duration(o.base_ejection_time)),
            max_ejection_time: Some(duration(o.max_ejection_time)),
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }),
        tls: p.tls.as_ref().map(|t| pb::UpstreamTls {
            mode: t.mode.clone(),
            sni: t.sni.clone().unwrap_or_default(),
            subject_alt_names: t.subject_alt_names.clone(),
            insecure_skip_verify: t.insecure_skip_verify,
            server_name: t.server_name.clone().unwrap_or_default(),
            error: t.error.clone().unwrap_or_default(),
            // Filled by the encoder, which has the DestinationRule.
            ca_certificates: String::new(),
        }),
    })
}

fn load_balancer(lb: &LbConfig) -> pb::LoadBalancer {
    use pb::load_balancer::{Algorithm, HashKey as Key};
    let (algorithm, minimum_ring_size, table_size) = match lb.algorithm {
        LbAlgorithm::RoundRobin => (Algorithm::RoundRobin, 0, 0),
        LbAlgorithm::LeastRequest => (Algorithm::LeastRequest, 0, 0),
        LbAlgorithm::Random => (Algorithm::Random, 0, 0),
        LbAlgorithm::RingHash { minimum_ring_size } => (Algorithm::RingHash, minimum_ring_size, 0),
        LbAlgorithm::Maglev { table_size } => (Algorithm::Maglev, 0, table_size),
    };
    pb::LoadBalancer {
        algorithm: algorithm as i32,
        minimum_ring_size,
        table_size,
        hash_key: lb.hash_key.as_ref().map(|k| match k {
            HashKey::Header(h) => Key::Header(h.clone()),
            HashKey::Cookie { name, path, ttl } => Key::Cookie(pb::HashCookie {
                name: name.clone(),
                path: path.clone().unwrap_or_default(),
                ttl: ttl.map(duration),
            }),
            HashKey::SourceIp => Key::SourceIp(true),
            HashKey::QueryParameter(q) => Key::QueryParameter(q.clone()),
        }),
    }
}

fn load_balancer_of(lb: &pb::LoadBalancer) -> Result<LbConfig, String> {
    use pb::load_balancer::{Algorithm, HashKey as Key};
    let algorithm = match Algorithm::try_from(lb.algorithm) {
        Ok(Algorithm::RoundRobin) => LbAlgorithm::RoundRobin,
        Ok(Algorithm::LeastRequest) => LbAlgorithm::LeastRequest,
        Ok(Algorithm::Random) => LbAlgorithm::Random,
        Ok(Algorithm::RingHash) => LbAlgorithm::RingHash {
            minimum_ring_size: lb
                .minimum_ring_size
                .clamp(1, mesh_balance::config::MAX_RING_SIZE),
        },
        Ok(Algorithm::Maglev) if lb.table_size > 0 => LbAlgorithm::Maglev {
            table_size: lb.table_size,
        },
        Ok(Algorithm::Maglev) => return Err("load_balancer: MAGLEV needs a table_size".into()),
        Err(_) => return Err(format!("load_balancer: unknown algorithm {}", lb.algorithm)),
    };
    let hash_key = match &lb.hash_key {
        None | Some(Key::SourceIp(false)) => None,
        Some(Key::Header(h)) => Some(HashKey::Header(h.to_ascii_lowercase())),
        Some(Key::Cookie(c)) => Some(HashKey::Cookie {
            name: c.name.clone(),
            path: (!c.path.is_empty()).then(|| c.path.clone()),
            ttl: optional(&c.ttl, "load_balancer.cookie.ttl")?,
        }),
        Some(Key::SourceIp(true)) => Some(HashKey::SourceIp),
        Some(Key::QueryParameter(q)) => Some(HashKey::QueryParameter(q.clone())),
    };
    Ok(LbConfig {
        algorithm,
        hash_key,
    })
}

/// The policy of a backend; `subsets` are resolved by the caller.
pub fn cluster_policy_of(
    p: Option<&pb::ClusterPolicy>,
    subsets: std::collections::BTreeMap<String, Arc<Cluster>>,
) -> Result<ClusterPolicy, String> {
    let Some(p) = p else {
        return Ok(ClusterPolicy {
            subsets,
            ..Default::default()
        });
    };
    let rule = if p.rule.is_empty() {
        None
    } else {
        Some(object_ref(&p.rule, "policy.rule")?)
    };
    let connection_pool = match &p.connection_pool {
        None => None,
        Some(c) => Some(PoolLimits {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_requests_per_connection: c.max_requests_per_connection,
            max_retries: c.max_retries,
            connect_timeout: optional(&c.connect_timeout, "connection_pool.connect_timeout")?,
            idle_timeout: optional(&c.idle_timeout, "connection_pool.idle_timeout")?,
        }),
    };
    let outlier_detection = match &p.outlier_detection {
        None => None,
        Some(o) => {
            let defaults = OutlierConfig::default();
            let or_default = |d: &Option<prost_types::Duration>, field, default| {
                optional(d, field).map(|d| d.unwrap_or(default))
            };
            Some(OutlierConfig {
                consecutive_5xx: o.consecutive_5xx,
                consecutive_gateway_errors: o.consecutive_gateway_errors,
                interval: or_default(&o.interval, "outlier.interval", defaults.interval)?,
                base_ejection_time: or_default(
                    &o.base_ejection_time,
                    "outlier.base_ejection_time",
                    defaults.base_ejection_time,
                )?,
                max_ejection_time: or_default(
                    &o.max_ejection_time,
                    "outlier.max_ejection_time",
                    defaults.max_ejection_time,
                )?,
                max_ejection_percent: o.max_ejection_percent.min(100),
                min_health_percent: o.min_health_percent.min(100),
            })
        }
    };
    let tls = p.tls.as_ref().map(|t| upstream_tls_of(t, rule.as_ref()));
    Ok(ClusterPolicy {
        rule,
        load_balancer: p.load_balancer.as_ref().map(load_balancer_of).transpose()?,
        connection_pool,
        outlier_detection,
        tls,
        subsets,
        counters: Default::default(),
    })
}

/// The `caCertificates` of the DestinationRule `tls` block that applies to
/// `cluster` (a subset's policy, then the rule's; port-level settings
/// first), as translation resolves it.
pub fn ca_certificates(resources: &Resources, cluster: &Cluster) -> Option<String> {
    let rule = cluster.policy.rule.as_ref()?;
    let dr = resources
        .destination_rules
        .get(&(rule.namespace.clone(), rule.name.clone()))?;
    // Subset clusters are named `BASE|SUBSET` by translation.
    let subset = cluster.name.rsplit_once('|').and_then(|(_, name)| {
        dr.spec
            .subsets
            .iter()
            .find(|s| s.name == name)?
            .traffic_policy
            .as_ref()
    });
    let port = u32::from(cluster.port);
    [subset, dr.spec.traffic_policy.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|p| {
            p.port_level_settings
                .iter()
                .find(|pl| pl.port.as_ref().is_some_and(|s| s.number == port))
                .and_then(|pl| pl.tls.as_ref())
                .or(p.tls.as_ref())
        })?
        .ca_certificates
        .clone()
}

/// SIMPLE's client settings are rebuilt here as translation builds them,
/// reading `ca_certificates` on this host (as Istio's proxies do): a CA
/// file that cannot be read is an `error` and connections fail closed.
fn upstream_tls_of(t: &pb::UpstreamTls, rule: Option<&ObjectRef>) -> UpstreamTlsPolicy {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if t.mode == "SIMPLE" && t.error.is_empty() {
        if let Some(rule) = rule {
            let settings = mesh_config::ClientTlsSettings {
                mode: Some(mesh_config::TlsMode::Simple),
                ca_certificates: non_empty(&t.ca_certificates),
                subject_alt_names: t.subject_alt_names.clone(),
                sni: non_empty(&t.sni),
                insecure_skip_verify: Some(t.insecure_skip_verify),
                ..Default::default()
            };
            // Without `sni`, translation sends (and verifies) the rule's host,
            // which arrives as `server_name`.
            return upstream_tls(&settings, &t.server_name, rule);
        }
    }
    UpstreamTlsPolicy {
        mode: t.mode.clone(),
        sni: non_empty(&t.sni),
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify,
        server_name: non_empty(&t.server_name),
        error: non_empty(&t.error).or_else(|| {
            (t.mode == "SIMPLE").then(|| "tls.mode SIMPLE without a DestinationRule".to_string())
        }),
        ..Default::default()
    }
}

/// `namespace/name`.
pub fn object_ref(text: &str, field: &str) -> Result<ObjectRef, String> {
    match text.split_once('/') {
        Some((namespace, name)) if !name.is_empty() && !name.contains('/') => Ok(ObjectRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        _ => Err(format!("{field}: expected namespace/name, got {text:?}")),
    }
}

pub fn fault(f: &FaultInjection) -> pb::Fault {
    use pb::fault_abort::Status;
    pb::Fault {
        delay: f.delay.as_ref().map(|d| pb::FaultDelay {
            duration: Some(duration(d.duration)),
            percent: d.percent,
        }),
        abort: f.abort.as_ref().map(|a| pb::FaultAbort {
            status: Some(match a.status {
                AbortStatus::Http(code) => Status::HttpStatus(u32::from(code)),
                AbortStatus::Grpc(code) => Status::GrpcStatus(code),
            }),
            percent: a.percent,
        }),
    }
}

fn percent(p: f64, field: &str) -> Result<f64, String> {
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{field}: {p} is not a percentage"))
    }
}

pub fn fault_of(f: &pb::Fault) -> Result<FaultInjection, String> {
    use pb::fault_abort::Status;
    let delay = match &f.delay {
        None => None,
        Some(d) => Some(FaultDelay {
            duration: required(&d.duration, "fault.delay.duration")?,
            percent: percent(d.percent, "fault.delay.percent")?,
        }),
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => Some(FaultAbort {
            status: match a.status {
                Some(Status::HttpStatus(code)) => AbortStatus::Http(
                    u16::try_from(code)
                        .ok()
                        .filter(|c| (200..=599).contains(c))
                        .ok_or_else(|| format!("fault.abort: HTTP status {code}"))?,
                ),
                Some(Status::GrpcStatus(code)) => AbortStatus::Grpc(code),
                None => return Err("fault.abort: no status".into()),
            },
            percent: percent(a.percent, "fault.abort.percent")?,
        }),
    };
    Ok(FaultInjection { delay, abort })
}
