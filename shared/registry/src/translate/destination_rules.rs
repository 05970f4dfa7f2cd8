//! DestinationRule → `ClusterPolicy` on the clusters of the host it names.
//!
//! - Host: a dotless name is a Service in the rule's namespace
//!   (`reviews` → `reviews.<ns>.svc.cluster.local`, Istio's short-name rule);
//!   anything else is compared as written (FQDN of a Service, or a
//!   ServiceEntry host); `*.suffix` wildcards match too. An exact host wins
//!   over a wildcard; among equals, a rule in the Service's namespace, then
//!   the oldest.
//! - Policy precedence per field (loadBalancer, connectionPool,
//!   outlierDetection, tls): subset port-level > subset > rule port-level >
//!   rule. Istio's defaults fill unset fields (circuit breakers at 2^32-1,
//!   outlier detection 5 × 5xx / 10 s / 30 s / 10 %).
//! - Subsets become clusters of their own (`<cluster>|<subset>`) holding the
//!   endpoints whose pod has all the subset's labels (EndpointSlice
//!   `targetRef` → Pod labels, else the Pod with that IP).
//!
//! Parsed but not applied: exportTo, workloadSelector, localityLbSetting,
//! warmup, tcpKeepalive, maxConnectionDuration, h2UpgradePolicy,
//! useClientProtocol, tunnel, proxyProtocol, splitExternalLocalOriginErrors,
//! consecutiveLocalOriginFailures. tls: `upstream_tls` (SIMPLE's client
//! settings built here; the upstream connector applies the mode).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh_balance::config::{DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE};
use mesh_balance::{HashKey, LbAlgorithm, LbConfig, OutlierConfig, PoolLimits};
use mesh_config::{
    parse_istio_duration, ConnectionPoolSettings, DestinationRuleSpec, LoadBalancerSettings,
    Object, OutlierDetection, PortTrafficPolicy, Resources, SimpleLb, TrafficPolicy,
};

use crate::snapshot::{Cluster, ClusterPolicy, ObjectRef};

pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Rules indexed by the host they name, and pod labels by IP.
pub struct DestinationRules<'a> {
    /// (host as resolved, rule), exact hosts.
    exact: HashMap<String, Vec<&'a Object<DestinationRuleSpec>>>,
    /// (suffix with leading dot, rule) for `*.suffix` hosts.
    wildcard: Vec<(String, &'a Object<DestinationRuleSpec>)>,
    pod_labels: HashMap<IpAddr, &'a BTreeMap<String, String>>,
}

/// Istio's short-name rule: only a dotless host is qualified with the
/// rule's namespace.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.contains('.') || host == "*" {
        host
    } else {
        format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

impl<'a> DestinationRules<'a> {
    pub fn new(resources: &'a Resources) -> Self {
        let mut exact: HashMap<String, Vec<&Object<DestinationRuleSpec>>> = HashMap::new();
        let mut wildcard = Vec::new();
        for dr in resources.destination_rules.values() {
            let host = resolve_host(&dr.spec.host, &dr.meta.namespace);
            match host.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_string(), dr)),
                None => exact.entry(host).or_default().push(dr),
            }
        }
        // Longest suffix first: the most specific wildcard wins.
        wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        DestinationRules {
            exact,
            wildcard,
            pod_labels: pod_labels(resources),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The rule for one of `hosts` (the first that has one), preferring a
    /// rule in `namespace`, then the oldest.
    fn rule_for(
        &self,
        hosts: &[String],
        namespace: &str,
    ) -> Option<&'a Object<DestinationRuleSpec>> {
        let best = |rules: &mut dyn Iterator<Item = &'a Object<DestinationRuleSpec>>| {
            rules.min_by(|a, b| {
                (a.meta.namespace != namespace, a.meta.age_key())
                    .cmp(&(b.meta.namespace != namespace, b.meta.age_key()))
            })
        };
        for host in hosts {
            if let Some(rules) = self.exact.get(host) {
                return best(&mut rules.iter().copied());
            }
        }
        for host in hosts {
            let len = self
                .wildcard
                .iter()
                .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                .map(|(s, _)| s.len());
            if let Some(len) = len {
                let mut same = self
                    .wildcard
                    .iter()
                    .filter(|(s, _)| s.len() == len && host.ends_with(s.as_str()))
                    .map(|(_, r)| *r);
                return best(&mut same);
            }
        }
        None
    }

    /// The policy of a Service's cluster. `base` is the cluster as built
    /// without a policy (its name, endpoints and protocol are reused).
    pub fn service_policy(
        &self,
        namespace: &str,
        name: &str,
        base: &Cluster,
    ) -> Arc<ClusterPolicy> {
        if self.is_empty() {
            return Arc::default();
        }
        let fqdn = format!("{name}.{namespace}.{CLUSTER_DOMAIN}");
        self.policy_for(&[fqdn], namespace, base)
    }

    /// The policy of a ServiceEntry's cluster (matched by its hosts).
    pub fn service_entry_policy(
        &self,
        namespace: &str,
        hosts: &[String],
        base: &Cluster,
    ) -> Arc<ClusterPolicy> {
        if self.is_empty() {
            return Arc::default();
        }
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        self.policy_for(&hosts, namespace, base)
    }

    fn policy_for(&self, hosts: &[String], namespace: &str, base: &Cluster) -> Arc<ClusterPolicy> {
        let Some(dr) = self.rule_for(hosts, namespace) else {
            return Arc::default();
        };
        let rule_ref = ObjectRef {
            namespace: dr.meta.namespace.clone(),
            name: dr.meta.name.clone(),
        };
        let top = dr.spec.traffic_policy.as_ref();
        // SIMPLE TLS without `sni` verifies (and sends) the cluster's host.
        let host = hosts.first().map_or("", String::as_str);
        let mut subsets = BTreeMap::new();
        for subset in &dr.spec.subsets {
            let endpoints: Vec<SocketAddr> = base
                .endpoints
                .iter()
                .copied()
                .filter(|ep| {
                    self.pod_labels.get(&ep.ip()).is_some_and(|labels| {
                        subset.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                })
                .collect();
            let policy = resolve(
                &[subset.traffic_policy.as_ref(), top],
                base.port,
                host,
                Some(rule_ref.clone()),
            );
            subsets.insert(
                subset.name.clone(),
                Arc::new(Cluster {
                    name: format!("{}|{}", base.name, subset.name),
                    service: base.service.clone(),
                    port: base.port,
                    endpoints,
                    protocol: base.protocol,
                    policy: Arc::new(policy),
                }),
            );
        }
        let mut policy = resolve(&[top], base.port, host, Some(rule_ref));
        policy.subsets = subsets;
        Arc::new(policy)
    }
}

/// Per field, the first setting found walking `chain` (most specific
/// first), port-level before the policy's own.
fn resolve(
    chain: &[Option<&TrafficPolicy>],
    port: u16,
    host: &str,
    rule: Option<ObjectRef>,
) -> ClusterPolicy {
    let lb = first(
        chain,
        port,
        |p| p.load_balancer.as_ref(),
        |p| p.load_balancer.as_ref(),
    );
    let pool = first(
        chain,
        port,
        |p| p.connection_pool.as_ref(),
        |p| p.connection_pool.as_ref(),
    );
    let outlier = first(
        chain,
        port,
        |p| p.outlier_detection.as_ref(),
        |p| p.outlier_detection.as_ref(),
    );
    let tls = first(chain, port, |p| p.tls.as_ref(), |p| p.tls.as_ref());
    let tls = match (tls, &rule) {
        (Some(t), Some(r)) => Some(upstream_tls::upstream_tls(t, host, r)),
        _ => None,
    };
    ClusterPolicy {
        rule,
        // A rule without loadBalancer still means Istio's default: LEAST_REQUEST.
        load_balancer: Some(lb.map(load_balancer).unwrap_or_default()),
        connection_pool: pool.map(connection_pool),
        outlier_detection: outlier.and_then(outlier_detection),
        tls,
        ..Default::default()
    }
}

fn first<'p, T>(
    chain: &[Option<&'p TrafficPolicy>],
    port: u16,
    own: impl Fn(&'p TrafficPolicy) -> Option<&'p T>,
    at_port: impl Fn(&'p PortTrafficPolicy) -> Option<&'p T>,
) -> Option<&'p T> {
    chain
        .iter()
        .flatten()
        .find_map(|p| port_level(p, port).and_then(&at_port).or_else(|| own(p)))
}

fn port_level(p: &TrafficPolicy, port: u16) -> Option<&PortTrafficPolicy> {
    p.port_level_settings.iter().find(|pl| {
        pl.port
            .as_ref()
            .is_some_and(|s| s.number == u32::from(port))
    })
}

fn duration(value: &Option<String>) -> Option<Duration> {
    // Validated at load; an unparsable value cannot reach here.
    value.as_deref().and_then(|v| parse_istio_duration(v).ok())
}

pub fn load_balancer(lb: &LoadBalancerSettings) -> LbConfig {
    if let Some(ch) = &lb.consistent_hash {
        let algorithm = match (&ch.maglev, &ch.ring_hash) {
            (Some(m), _) => LbAlgorithm::Maglev {
                table_size: m.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
            },
            (None, r) => LbAlgorithm::RingHash {
                minimum_ring_size: r
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .filter(|s| *s > 0)
                    .unwrap_or(DEFAULT_MINIMUM_RING_SIZE),
            },
        };
        let hash_key = if let Some(h) = &ch.http_header_name {
            Some(HashKey::Header(h.to_ascii_lowercase()))
        } else if let Some(c) = &ch.http_cookie {
            Some(HashKey::Cookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: duration(&c.ttl).filter(|d| !d.is_zero()),
            })
        } else if ch.use_source_ip == Some(true) {
            Some(HashKey::SourceIp)
        } else {
            ch.http_query_parameter_name
                .as_ref()
                .map(|q| HashKey::QueryParameter(q.clone()))
        };
        return LbConfig {
            algorithm,
            hash_key,
        };
    }
    let algorithm = match lb.simple {
        Some(SimpleLb::RoundRobin) => LbAlgorithm::RoundRobin,
        Some(SimpleLb::Random) => LbAlgorithm::Random,
        // PASSTHROUGH (original destination) has no meaning for a cluster
        // of known endpoints: Istio's default stands in.
        _ => LbAlgorithm::LeastRequest,
    };
    LbConfig {
        algorithm,
        hash_key: None,
    }
}

/// Istio: unset (or 0) circuit breakers mean 2^32-1.
pub fn connection_pool(p: &ConnectionPoolSettings) -> PoolLimits {
    let limit = |v: Option<u32>| v.filter(|v| *v > 0).unwrap_or(u32::MAX);
    let tcp = p.tcp.as_ref();
    let http = p.http.as_ref();
    PoolLimits {
        max_connections: limit(tcp.and_then(|t| t.max_connections)),
        max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: limit(http.and_then(|h| h.http2_max_requests)),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .unwrap_or(0),
        max_retries: limit(http.and_then(|h| h.max_retries)),
        connect_timeout: tcp.and_then(|t| duration(&t.connect_timeout)),
        idle_timeout: http.and_then(|h| duration(&h.idle_timeout)),
    }
}

/// None when the settings turn detection off (both error counts 0).
pub fn outlier_detection(o: &OutlierDetection) -> Option<OutlierConfig> {
    let defaults = OutlierConfig::default();
    let consecutive_5xx = match o.consecutive_5xx_errors {
        Some(0) => None,
        Some(n) => Some(n),
        None => defaults.consecutive_5xx,
    };
    let consecutive_gateway_errors = o
        .consecutive_gateway_errors
        .or(o.consecutive_errors)
        .filter(|n| *n > 0);
    if consecutive_5xx.is_none() && consecutive_gateway_errors.is_none() {
        return None;
    }
    Some(OutlierConfig {
        consecutive_5xx,
        consecutive_gateway_errors,
        interval: duration(&o.interval).unwrap_or(defaults.interval),
        base_ejection_time: duration(&o.base_ejection_time).unwrap_or(defaults.base_ejection_time),
        max_ejection_time: defaults.max_ejection_time,
        max_ejection_percent: o
            .max_ejection_percent
            .unwrap_or(defaults.max_ejection_percent),
        min_health_percent: o.min_health_percent.unwrap_or(defaults.min_health_percent),
    })
}

/// Pod labels by IP: EndpointSlice targetRefs name the pod behind an
/// address; pods' own IPs cover the rest.
fn pod_labels(resources: &Resources) -> HashMap<IpAddr, &BTreeMap<String, String>> {
    let mut out = HashMap::new();
    for pod in resources.pods.values() {
        let status = pod.spec.status.as_ref();
        let ips = status
            .and_then(|s| s.pod_ip.iter().next().cloned())
            .into_iter()
            .chain(
                status
                    .and_then(|s| s.pod_ips.clone())
                    .into_iter()
                    .flatten()
                    .map(|p| p.ip),
            );
        for ip in ips {
            if let Ok(ip) = ip.parse() {
                out.insert(ip, &pod.meta.labels);
            }
        }
    }
    for slice in resources.endpoint_slices.values() {
        for ep in &slice.spec.endpoints {
            let Some(target) = ep.target_ref.as_ref() else {
                continue;
            };
            if target.kind.as_deref().is_some_and(|k| k != "Pod") {
                continue;
            }
            let (Some(name), ns) = (target.name.as_ref(), target.namespace.as_ref()) else {
                continue;
            };
            let ns = ns.cloned().unwrap_or_else(|| slice.meta.namespace.clone());
            if let Some(pod) = resources.pods.get(&(ns, name.clone())) {
                for addr in &ep.addresses {
                    if let Ok(ip) = addr.parse() {
                        out.insert(ip, &pod.meta.labels);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "destination_rules_tests.rs"]
mod tests;

#[path = "upstream_tls.rs"]
pub mod upstream_tls;
