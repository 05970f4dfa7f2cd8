//! Istio `DestinationRule` (networking.istio.io v1/v1beta1/v1alpha3).
//!
//! Our own serde types: the crates that exist for Istio's CRDs
//! (kcr_networking_istio_io, istio-api-rs) are kopium output built on kube-rs.
//! Field names are Istio's (camelCase) and every struct rejects unknown
//! fields, so a typo is an error naming the field instead of a silently
//! ignored setting. Fields we parse but do not apply are listed in the
//! registry's translation (`translate/destination_rules.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// A Service (`reviews`, `reviews.ns`, `reviews.ns.svc.cluster.local`) or
    /// a ServiceEntry host.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<crate::WorkloadSelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default)]
    pub tunnel: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub proxy_protocol: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default)]
    pub simple: Option<SimpleLb>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashLb>,
    #[serde(default)]
    pub locality_lb_setting: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
    #[serde(default)]
    pub warmup: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    #[serde(default)]
    pub maglev: Option<Maglev>,
    /// Deprecated: use `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub attributes: Vec<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    #[serde(default)]
    pub table_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub tcp_keepalive: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    #[serde(default)]
    pub min_health_percent: Option<u32>,
    /// Deprecated: use consecutive5xxErrors / consecutiveGatewayErrors.
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default)]
    pub mode: Option<TlsMode>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub ca_crl: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub min_retry_concurrency: Option<u32>,
}

/// A protobuf/Go duration as Istio writes them: `10s`, `1.5s`, `100ms`,
/// `1h30m`, `250us`. At least one `<number><unit>` group, nothing else.
pub fn parse_istio_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("not a duration (like 10s, 100ms, 1h30m): {text:?}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Checks what serde cannot: one hash key, prime Maglev tables, percents,
/// durations, subset names. Errors name the field (`spec.` prefixed).
pub fn validate_destination_rule(spec: &DestinationRuleSpec) -> Result<(), (String, String)> {
    if spec.host.trim().is_empty() {
        return Err(("spec.host".into(), "required".into()));
    }
    if let Some(p) = &spec.traffic_policy {
        validate_policy(p, "spec.trafficPolicy")?;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            return Err((format!("{at}.name"), "required".into()));
        }
        if !names.insert(s.name.as_str()) {
            return Err((
                format!("{at}.name"),
                format!("duplicate subset {:?}", s.name),
            ));
        }
        if let Some(p) = &s.traffic_policy {
            validate_policy(p, &format!("{at}.trafficPolicy"))?;
        }
    }
    Ok(())
}

fn validate_policy(p: &TrafficPolicy, at: &str) -> Result<(), (String, String)> {
    validate_settings(
        p.load_balancer.as_ref(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
        at,
    )?;
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        match &pl.port {
            Some(port) if (1..=65535).contains(&port.number) => {}
            _ => {
                return Err((
                    format!("{at}.port.number"),
                    "a port 1-65535 is required".into(),
                ))
            }
        }
        validate_settings(
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            &at,
        )?;
    }
    Ok(())
}

fn duration_field(value: &Option<String>, at: String) -> Result<(), (String, String)> {
    match value {
        Some(v) => parse_istio_duration(v).map(|_| ()).map_err(|e| (at, e)),
        None => Ok(()),
    }
}

fn validate_settings(
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    at: &str,
) -> Result<(), (String, String)> {
    if let Some(lb) = lb {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            return Err((
                format!("{at}.loadBalancer"),
                "set either simple or consistentHash, not both".into(),
            ));
        }
        if let Some(ch) = &lb.consistent_hash {
            let at = format!("{at}.loadBalancer.consistentHash");
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                return Err((
                    at,
                    "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required".into(),
                ));
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                return Err((at, "set either ringHash or maglev, not both".into()));
            }
            if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size) {
                if !is_prime(size) {
                    return Err((
                        format!("{at}.maglev.tableSize"),
                        format!("{size} is not a prime"),
                    ));
                }
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    return Err((format!("{at}.httpCookie.name"), "required".into()));
                }
                duration_field(&c.ttl, format!("{at}.httpCookie.ttl"))?;
            }
        }
    }
    if let Some(pool) = pool {
        if let Some(tcp) = &pool.tcp {
            duration_field(
                &tcp.connect_timeout,
                format!("{at}.connectionPool.tcp.connectTimeout"),
            )?;
            duration_field(
                &tcp.idle_timeout,
                format!("{at}.connectionPool.tcp.idleTimeout"),
            )?;
        }
        if let Some(http) = &pool.http {
            duration_field(
                &http.idle_timeout,
                format!("{at}.connectionPool.http.idleTimeout"),
            )?;
        }
    }
    if let Some(o) = outlier {
        let at = format!("{at}.outlierDetection");
        duration_field(&o.interval, format!("{at}.interval"))?;
        duration_field(&o.base_ejection_time, format!("{at}.baseEjectionTime"))?;
        for (name, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if v.is_some_and(|v| v > 100) {
                return Err((format!("{at}.{name}"), "a percentage 0-100".into()));
            }
        }
    }
    Ok(())
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_istio_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            parse_istio_duration("1.5s"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_istio_duration("100ms"),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(parse_istio_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "10", "s", "10x", "-1s", "1s2", "ten s"] {
            assert!(parse_istio_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(2));
        assert!(!is_prime(65536));
        assert!(!is_prime(1));
    }
}

#[cfg(test)]
mod load_tests {
    use crate::load_str;

    const RULE: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
        maglev: {tableSize: 65537}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 100, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s}
    outlierDetection:
      consecutive5xxErrors: 3
      consecutiveGatewayErrors: 2
      interval: 5s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
      minHealthPercent: 10
    tls: {mode: ISTIO_MUTUAL, sni: reviews.shop}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
"#;

    #[test]
    fn a_full_rule_loads_with_istio_field_names() {
        let loaded = load_str("dr.yaml", RULE);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let dr = &loaded.resources.destination_rules[&("shop".into(), "reviews".into())];
        let p = dr.spec.traffic_policy.as_ref().unwrap();
        let ch = p
            .load_balancer
            .as_ref()
            .unwrap()
            .consistent_hash
            .as_ref()
            .unwrap();
        assert_eq!(ch.http_header_name.as_deref(), Some("x-user"));
        assert_eq!(ch.maglev.as_ref().unwrap().table_size, Some(65537));
        let o = p.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx_errors, Some(3));
        assert_eq!(o.min_health_percent, Some(10));
        let http = p.connection_pool.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(http.http1_max_pending_requests, Some(5));
        assert_eq!(p.port_level_settings[0].port.as_ref().unwrap().number, 9080);
        assert_eq!(dr.spec.subsets.len(), 2);
        for version in ["v1beta1", "v1alpha3"] {
            let text = RULE.replace(
                "networking.istio.io/v1",
                &format!("networking.istio.io/{version}"),
            );
            assert!(load_str("dr.yaml", &text).errors.is_empty());
        }
    }

    #[test]
    fn mistakes_are_rejected_naming_the_field() {
        for (bad, field) in [
            (
                "consecutive5xxErrors: 3",
                "spec.trafficPolicy.outlierDetection",
            ),
            (
                "tableSize: 65537",
                "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize",
            ),
            (
                "interval: 5s",
                "spec.trafficPolicy.outlierDetection.interval",
            ),
            (
                "maxEjectionPercent: 50",
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            ),
            (
                "simple: ROUND_ROBIN",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple",
            ),
            (
                "httpHeaderName: x-user",
                "spec.trafficPolicy.loadBalancer.consistentHash",
            ),
        ] {
            let replacement = match bad {
                "consecutive5xxErrors: 3" => "consecutive5xxErrorz: 3",
                "tableSize: 65537" => "tableSize: 65536",
                "interval: 5s" => "interval: 5 seconds",
                "maxEjectionPercent: 50" => "maxEjectionPercent: 150",
                "simple: ROUND_ROBIN" => "simple: FASTEST",
                _ => "useSourceIp: true\n        httpHeaderName: x-user",
            };
            let loaded = load_str("dr.yaml", &RULE.replacen(bad, replacement, 1));
            assert_eq!(loaded.errors.len(), 1, "{bad}: {:?}", loaded.errors);
            let e = &loaded.errors[0];
            assert!(
                e.field.as_deref().is_some_and(|f| f.starts_with(field)),
                "{bad}: {e:?}"
            );
            assert!(loaded.resources.destination_rules.is_empty());
        }
        let no_host = RULE.replace("  host: reviews\n", "");
        let loaded = load_str("dr.yaml", &no_host);
        assert_eq!(loaded.errors[0].field.as_deref(), Some("spec.host"));
    }
}
