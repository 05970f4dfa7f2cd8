//! `ringmesh.l7.v1.Proxy` → the gateway's Snapshot. Anything the gateway
//! cannot apply exactly is an error naming the field (the caller NACKs and
//! keeps its last snapshot).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::ringmesh::l7::v1 as pb;

use super::decode_parts::{header_modifier, matcher, non_empty, opt_duration, path_modifier};
use super::policy::{self, object_ref};
use crate::l4::{HostMap, L4Backend, L4Listener, L4Route, L4Routes};
use crate::snapshot::{
    BackendTarget, Cluster, CorsPolicy, Filter, Listener, ListenerProtocol, ListenerSet, Mirror,
    ObjectRef, PathModifier, PortConfig, Redirect, RetryPolicy, RouteEntry, RouteRule, RouteTable,
    Snapshot, Timeouts, UpstreamProtocol, UrlRewrite, VirtualHosts, WeightedBackend,
};
use crate::tls::{certified_key_from_pem, PortTls, SniCertificates};

/// The snapshot a gateway serves for `proxy`. `version` is left at 0 for the
/// publisher; `status` is empty (the controller reports status).
pub fn snapshot_of(proxy: &pb::Proxy) -> Result<Snapshot, String> {
    let gateway = ObjectRef {
        namespace: proxy.namespace.clone(),
        name: proxy.name.clone(),
    };
    let mut decoder = Decoder {
        backends: proxy
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b))
            .collect(),
        clusters: HashMap::new(),
        resolving: HashSet::new(),
    };
    if decoder.backends.len() != proxy.backends.len() {
        return Err("backends: duplicate backend names".into());
    }
    let rules = proxy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| decoder.rule(r).map_err(|e| format!("rules[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;

    if proxy.kind() == pb::ProxyKind::Waypoint {
        return decoder.waypoint(proxy, &rules);
    }
    let mut by_port: BTreeMap<u16, Vec<&pb::Listener>> = BTreeMap::new();
    for l in &proxy.listeners {
        let port = u16::try_from(l.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("listener {}: invalid port {}", l.name, l.port))?;
        by_port.entry(port).or_default().push(l);
    }
    let mut ports = BTreeMap::new();
    for (port, listeners) in by_port {
        let config = decoder
            .port(port, &listeners, &rules, &gateway)
            .map_err(|e| format!("port {port}: {e}"))?;
        ports.insert(port, Arc::new(config));
    }
    Ok(Snapshot {
        version: 0,
        ports,
        ..Default::default()
    })
}

struct Decoder<'p> {
    backends: HashMap<&'p str, &'p pb::Backend>,
    clusters: HashMap<String, Arc<Cluster>>,
    /// Backends being built (a subset naming its own ancestor is an error).
    resolving: HashSet<String>,
}

fn protocol_of(value: i32) -> Result<ListenerProtocol, String> {
    match pb::ListenerProtocol::try_from(value) {
        Ok(pb::ListenerProtocol::Http) => Ok(ListenerProtocol::Http),
        Ok(pb::ListenerProtocol::Https) => Ok(ListenerProtocol::Https),
        Ok(pb::ListenerProtocol::TlsPassthrough) => Ok(ListenerProtocol::TlsPassthrough),
        Ok(pb::ListenerProtocol::Tcp) => Ok(ListenerProtocol::Tcp),
        Ok(pb::ListenerProtocol::Hbone) => {
            Err("HBONE listeners are not served by a gateway".into())
        }
        Err(_) => Err(format!("unknown listener protocol {value}")),
    }
}

/// Where a hostname pattern goes in a host map: exact, wildcard suffix, or any.
enum HostSlot {
    Exact(String),
    Wildcard(String),
    Any,
}

fn host_slot(hostname: &str) -> HostSlot {
    let h = hostname.trim().to_ascii_lowercase();
    if h.is_empty() || h == "*" {
        HostSlot::Any
    } else if let Some(suffix) = h.strip_prefix('*') {
        HostSlot::Wildcard(suffix.to_string())
    } else {
        HostSlot::Exact(h)
    }
}

/// Inserts into (exact, wildcard, any); Err if the slot is taken.
fn place<T>(
    exact: &mut HashMap<String, T>,
    wildcard: &mut Vec<(String, T)>,
    any: &mut Option<T>,
    hostname: &str,
    value: T,
) -> Result<(), String> {
    let taken = match host_slot(hostname) {
        HostSlot::Exact(h) => exact.insert(h, value).is_some(),
        HostSlot::Wildcard(s) => {
            let taken = wildcard.iter().any(|(w, _)| *w == s);
            wildcard.push((s, value));
            taken
        }
        HostSlot::Any => any.replace(value).is_some(),
    };
    if taken {
        return Err(format!("hostname {hostname:?} appears twice"));
    }
    // Longest suffix first, then by name (as translation sorts them).
    wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    Ok(())
}

impl Decoder<'_> {
    /// A waypoint's Proxy: every listener is one Service port (HBONE), routed
    /// by its single host group.
    fn waypoint(
        &mut self,
        proxy: &pb::Proxy,
        rules: &[Arc<RouteRule>],
    ) -> Result<Snapshot, String> {
        let mut services = crate::service_routes::ServiceRoutes::default();
        for l in &proxy.listeners {
            let context = |e: String| format!("listener {}: {e}", l.name);
            if l.protocol != pb::ListenerProtocol::Hbone as i32 {
                return Err(context(
                    "a waypoint serves only HBONE (Service port) listeners".into(),
                ));
            }
            let service = object_ref(&l.name, "name").map_err(context)?;
            let ip: IpAddr = l
                .hostname
                .parse()
                .map_err(|_| context(format!("hostname {:?} is not a VIP", l.hostname)))?;
            let port = u16::try_from(l.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| context(format!("invalid port {}", l.port)))?;
            let [host] = l.virtual_hosts.as_slice() else {
                return Err(context("a Service port has exactly one host group".into()));
            };
            let hosts = self
                .virtual_hosts(std::slice::from_ref(host), rules)
                .map_err(context)?;
            let table = hosts
                .any
                .ok_or_else(|| context("the host group must match any host".into()))?;
            let vip = SocketAddr::new(ip, port);
            let route = crate::service_routes::ServiceRoute {
                service,
                port,
                table,
                from_routes: !l.default_service_route,
                authz: None,
            };
            if services.by_vip.insert(vip, Arc::new(route)).is_some() {
                return Err(context(format!("{vip} appears twice")));
            }
        }
        Ok(Snapshot {
            version: 0,
            services,
            ..Default::default()
        })
    }

    fn port(
        &mut self,
        port: u16,
        listeners: &[&pb::Listener],
        rules: &[Arc<RouteRule>],
        gateway: &ObjectRef,
    ) -> Result<PortConfig, String> {
        let protocol = protocol_of(listeners[0].protocol)?;
        if listeners
            .iter()
            .any(|l| l.protocol != listeners[0].protocol)
        {
            return Err("listeners with different protocols share the port".into());
        }
        let hostname = |l: &pb::Listener| (!l.hostname.is_empty()).then(|| l.hostname.clone());
        let mut set = ListenerSet::default();
        if matches!(
            protocol,
            ListenerProtocol::Tcp | ListenerProtocol::TlsPassthrough
        ) {
            let mut table = L4Routes::default();
            for l in listeners {
                let mut routes: HostMap<Arc<L4Route>> = HostMap::default();
                for r in &l.l4_routes {
                    let route = Arc::new(self.l4_route(r).map_err(|e| {
                        format!("listener {}: route {:?}: {e}", l.name, r.hostname)
                    })?);
                    place(
                        &mut routes.exact,
                        &mut routes.wildcard,
                        &mut routes.any,
                        &r.hostname,
                        route,
                    )
                    .map_err(|e| format!("listener {}: {e}", l.name))?;
                }
                let listener = Arc::new(L4Listener {
                    gateway: gateway.clone(),
                    name: l.name.clone(),
                    hostname: hostname(l),
                    routes,
                });
                let m = &mut table.listeners;
                place(
                    &mut m.exact,
                    &mut m.wildcard,
                    &mut m.any,
                    &l.hostname,
                    listener,
                )?;
            }
            set.l4 = Some(Arc::new(table));
            return Ok(PortConfig {
                port,
                protocol,
                listeners: set,
                tls: None,
            });
        }

        let mut certificates = SniCertificates::default();
        let mut names = Vec::new();
        for l in listeners {
            if protocol == ListenerProtocol::Https {
                let c = l
                    .certificate
                    .as_ref()
                    .ok_or_else(|| format!("HTTPS listener {} has no certificate", l.name))?;
                let key = certified_key_from_pem(&c.cert_chain, &c.private_key)
                    .map_err(|e| format!("listener {} certificate ({}): {e}", l.name, c.source))?;
                certificates.add(hostname(l).as_deref(), key);
                names.push(hostname(l).unwrap_or_else(|| "*".into()));
            }
            let routes = self
                .virtual_hosts(&l.virtual_hosts, rules)
                .map_err(|e| format!("listener {}: {e}", l.name))?;
            let listener = Arc::new(Listener {
                gateway: gateway.clone(),
                name: l.name.clone(),
                hostname: hostname(l),
                routes,
            });
            place(
                &mut set.exact,
                &mut set.wildcard,
                &mut set.any,
                &l.hostname,
                listener,
            )?;
        }
        let tls = if protocol == ListenerProtocol::Https {
            Some(Arc::new(PortTls::new(certificates, names)?))
        } else {
            None
        };
        Ok(PortConfig {
            port,
            protocol,
            listeners: set,
            tls,
        })
    }

    fn virtual_hosts(
        &mut self,
        hosts: &[pb::VirtualHost],
        rules: &[Arc<RouteRule>],
    ) -> Result<VirtualHosts, String> {
        let mut out = VirtualHosts::default();
        for h in hosts {
            let entries = h
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let rule = rules
                        .get(e.rule as usize)
                        .ok_or_else(|| format!("entries[{i}]: no rule {}", e.rule))?
                        .clone();
                    let matcher =
                        matcher(e.r#match.as_ref()).map_err(|m| format!("entries[{i}]: {m}"))?;
                    Ok(RouteEntry { matcher, rule })
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| format!("host {:?}: {e}", h.hostname))?;
            place(
                &mut out.exact,
                &mut out.wildcard,
                &mut out.any,
                &h.hostname,
                Arc::new(RouteTable { entries }),
            )?;
        }
        Ok(out)
    }

    fn rule(&mut self, r: &pb::RouteRule) -> Result<Arc<RouteRule>, String> {
        let route = object_ref(&r.route, "route")?;
        let filters = self.filters(&r.filters)?;
        let backends = r
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(WeightedBackend {
                    weight: b.weight,
                    target: self.target(b).map_err(|e| format!("backends[{i}]: {e}"))?,
                    filters: self
                        .filters(&b.filters)
                        .map_err(|e| format!("backends[{i}].{e}"))?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let total_weight = backends
            .iter()
            .try_fold(0u32, |sum, b| sum.checked_add(b.weight))
            .ok_or("backend weights overflow")?;
        let timeouts = Timeouts {
            request: opt_duration(&r.request_timeout, "request_timeout")?,
            backend_request: opt_duration(&r.backend_request_timeout, "backend_request_timeout")?,
        };
        let retry = match &r.retry {
            None => None,
            Some(retry) => Some(RetryPolicy {
                codes: retry
                    .retry_on_status
                    .iter()
                    .map(|&c| {
                        u16::try_from(c)
                            .ok()
                            .filter(|c| (100..=599).contains(c))
                            .ok_or_else(|| format!("retry: {c} is not an HTTP status"))
                    })
                    .collect::<Result<_, _>>()?,
                grpc_codes: retry.retry_on_grpc_status.clone(),
                on_connect_failure: retry.on_connect_failure,
                on_reset: retry.on_reset,
                attempts: retry.attempts,
                backoff: opt_duration(&retry.backoff, "retry.backoff")?,
            }),
        };
        let rate_limit = match &r.rate_limit {
            None => None,
            Some(l) => Some(Arc::new(mesh_limits::RateLimiter::new(
                policy::rate_limit_of(l)?,
            ))),
        };
        Ok(Arc::new(RouteRule {
            route,
            rule_index: r.rule_index as usize,
            filters,
            backends,
            total_weight,
            timeouts,
            retry,
            rate_limit,
        }))
    }

    fn target(&mut self, b: &pb::WeightedBackend) -> Result<BackendTarget, String> {
        if b.backend.is_empty() {
            let reason = if b.invalid.is_empty() {
                "backend not set".to_string()
            } else {
                b.invalid.clone()
            };
            return Ok(BackendTarget::Invalid { reason });
        }
        Ok(BackendTarget::Cluster(self.cluster(&b.backend)?))
    }

    fn cluster(&mut self, name: &str) -> Result<Arc<Cluster>, String> {
        if let Some(c) = self.clusters.get(name) {
            return Ok(c.clone());
        }
        let b = *self
            .backends
            .get(name)
            .ok_or_else(|| format!("unknown backend {name:?}"))?;
        if !self.resolving.insert(name.to_string()) {
            return Err(format!("backend {name:?} is its own subset"));
        }
        let built = self
            .build_cluster(b)
            .map_err(|e| format!("backend {name:?}: {e}"));
        self.resolving.remove(name);
        let cluster = Arc::new(built?);
        self.clusters.insert(name.to_string(), cluster.clone());
        Ok(cluster)
    }

    fn build_cluster(&mut self, b: &pb::Backend) -> Result<Cluster, String> {
        let port = u16::try_from(b.port).map_err(|_| format!("invalid port {}", b.port))?;
        let endpoints = b
            .endpoints
            .iter()
            .filter(|e| e.healthy)
            .map(|e| {
                let ip = match e.address.len() {
                    4 => {
                        IpAddr::from(<[u8; 4]>::try_from(e.address.as_slice()).unwrap_or_default())
                    }
                    16 => {
                        IpAddr::from(<[u8; 16]>::try_from(e.address.as_slice()).unwrap_or_default())
                    }
                    n => return Err(format!("endpoint address of {n} bytes")),
                };
                let port = u16::try_from(e.port)
                    .map_err(|_| format!("invalid endpoint port {}", e.port))?;
                Ok(SocketAddr::new(ip, port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let protocol = match pb::BackendProtocol::try_from(b.protocol) {
            Ok(pb::BackendProtocol::Http1) => UpstreamProtocol::Http1,
            Ok(pb::BackendProtocol::Http2) => UpstreamProtocol::H2c,
            _ => return Err(format!("unsupported backend protocol {}", b.protocol)),
        };
        let mut subsets = BTreeMap::new();
        for (subset, backend) in &b.subsets {
            subsets.insert(subset.clone(), self.cluster(backend)?);
        }
        Ok(Cluster {
            name: b.name.clone(),
            service: object_ref(&b.service, "service")?,
            port,
            endpoints,
            protocol,
            policy: Arc::new(policy::cluster_policy_of(b.policy.as_ref(), subsets)?),
        })
    }

    fn l4_route(&mut self, r: &pb::L4Route) -> Result<L4Route, String> {
        let kind = match pb::RouteKind::try_from(r.kind) {
            Ok(pb::RouteKind::TlsRoute) => "TLSRoute",
            Ok(pb::RouteKind::TcpRoute) => "TCPRoute",
            _ => return Err(format!("route kind {} is not an L4 route", r.kind)),
        };
        let backends = r
            .backends
            .iter()
            .map(|b| {
                Ok(L4Backend {
                    weight: b.weight,
                    target: self.target(b)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let total_weight = backends
            .iter()
            .try_fold(0u32, |sum, b| sum.checked_add(b.weight))
            .ok_or("backend weights overflow")?;
        Ok(L4Route {
            kind,
            route: object_ref(&r.route, "route")?,
            backends,
            total_weight,
        })
    }

    fn filters(&mut self, filters: &[pb::Filter]) -> Result<Vec<Filter>, String> {
        filters
            .iter()
            .enumerate()
            .map(|(i, f)| self.filter(f).map_err(|e| format!("filters[{i}]: {e}")))
            .collect()
    }

    fn filter(&mut self, f: &pb::Filter) -> Result<Filter, String> {
        use pb::filter::Kind;
        Ok(match f.kind.as_ref().ok_or("empty filter")? {
            Kind::RequestHeaderModifier(m) => Filter::RequestHeaders(header_modifier(m)),
            Kind::ResponseHeaderModifier(m) => Filter::ResponseHeaders(header_modifier(m)),
            Kind::RequestRedirect(r) => Filter::Redirect(Redirect {
                scheme: non_empty(&r.scheme),
                hostname: non_empty(&r.hostname),
                path: r.path_modifier.as_ref().map(path_modifier).transpose()?,
                port: match r.port {
                    0 => None,
                    p => Some(u16::try_from(p).map_err(|_| format!("redirect port {p}"))?),
                },
                status: match r.status_code {
                    0 => 302,
                    s @ (301 | 302 | 303 | 307 | 308) => s as u16,
                    s => return Err(format!("redirect status {s}")),
                },
            }),
            Kind::UrlRewrite(r) => Filter::UrlRewrite(UrlRewrite {
                hostname: non_empty(&r.hostname),
                path: r.path.as_ref().map(|p| match p {
                    pb::url_rewrite::Path::ReplaceFullPath(s) => {
                        PathModifier::ReplaceFullPath(s.clone())
                    }
                    pb::url_rewrite::Path::ReplacePrefixMatch(s) => {
                        PathModifier::ReplacePrefixMatch(s.clone())
                    }
                }),
            }),
            Kind::RequestMirror(m) => Filter::Mirror(Mirror {
                target: self.cluster(&m.backend)?,
                percent: if m.percent.is_finite() {
                    m.percent.clamp(0.0, 100.0)
                } else {
                    return Err(format!("mirror percent {}", m.percent));
                },
            }),
            Kind::Cors(c) => Filter::Cors(Arc::new(CorsPolicy {
                allow_origins: c.allow_origins.clone(),
                allow_credentials: c.allow_credentials,
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                max_age_seconds: c.max_age_seconds,
            })),
            Kind::Fault(fault) => Filter::Fault(Arc::new(policy::fault_of(fault)?)),
        })
    }
}
