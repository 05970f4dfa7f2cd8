//! Snapshot of one Gateway → `ringmesh.l7.v1.Proxy`.
//!
//! Everything is written in a deterministic order (ports ascending, host
//! groups by name, rules and backends in first-use order), so an unchanged
//! Gateway encodes to the same bytes and the controller's content-hash
//! version does not change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_api::ringmesh::l7::v1 as pb;
use mesh_config::Resources;

use super::policy;
use crate::l4::{HostMap, L4Listener};
use crate::snapshot::{
    BackendTarget, Cluster, Filter, ListenerProtocol, ObjectRef, PathMatch, PathModifier,
    PortConfig, RequestMatcher, RouteRule, Snapshot, StringMatch, UpstreamProtocol, VirtualHosts,
    WeightedBackend,
};

/// The Proxy resource for `gateway`, from the snapshot that
/// `translate(.., TranslateOptions { gateway: Some(gateway) })` built.
/// `resources` supplies the PEM of HTTPS certificates (the snapshot holds
/// only the parsed keys). Err: an HTTPS listener whose certificate cannot be
/// found again (translation served it, so this means inconsistent input).
pub fn proxy_of(
    snapshot: &Snapshot,
    gateway: &ObjectRef,
    resources: &Resources,
) -> Result<pb::Proxy, String> {
    let mut encoder = Encoder {
        resources,
        gateway,
        rules: Vec::new(),
        rule_ids: HashMap::new(),
        backends: Vec::new(),
        backend_ids: HashMap::new(),
    };
    let mut listeners = Vec::new();
    for (&port, config) in &snapshot.ports {
        encoder.port(port, config, &mut listeners)?;
    }
    Ok(pb::Proxy {
        name: gateway.name.clone(),
        namespace: gateway.namespace.clone(),
        kind: pb::ProxyKind::Gateway as i32,
        listeners,
        backends: encoder.backends,
        policies: Vec::new(),
        rules: encoder.rules,
    })
}

/// The Proxy resource for waypoint `waypoint`, from the snapshot that
/// `translate_waypoint` built: one HBONE listener per bound Service port
/// (name `NS/SERVICE`, hostname the VIP, port the Service port) whose single
/// host group is that port's route table. Err: something a connected
/// waypoint could not enforce exactly (L7 AuthorizationPolicies are not
/// carried yet, so such a waypoint is not published rather than served
/// without its policies).
pub fn waypoint_proxy_of(
    snapshot: &Snapshot,
    waypoint: &ObjectRef,
    resources: &Resources,
) -> Result<pb::Proxy, String> {
    let mut encoder = Encoder {
        resources,
        gateway: waypoint,
        rules: Vec::new(),
        rule_ids: HashMap::new(),
        backends: Vec::new(),
        backend_ids: HashMap::new(),
    };
    let mut routes: Vec<_> = snapshot.services.by_vip.iter().collect();
    routes.sort_by_key(|(vip, _)| **vip);
    let mut listeners = Vec::new();
    for (vip, route) in routes {
        if route.authz.is_some() {
            return Err(format!(
                "Service {}/{} port {}: L7 AuthorizationPolicies are not carried over xDS yet",
                route.service.namespace, route.service.name, route.port
            ));
        }
        let entries = encoder.route_entries(&route.table);
        listeners.push(pb::Listener {
            name: format!("{}/{}", route.service.namespace, route.service.name),
            port: u32::from(vip.port()),
            protocol: pb::ListenerProtocol::Hbone as i32,
            hostname: vip.ip().to_string(),
            virtual_hosts: vec![pb::VirtualHost {
                hostname: String::new(),
                entries,
            }],
            default_service_route: !route.from_routes,
            ..Default::default()
        });
    }
    Ok(pb::Proxy {
        name: waypoint.name.clone(),
        namespace: waypoint.namespace.clone(),
        kind: pb::ProxyKind::Waypoint as i32,
        listeners,
        backends: encoder.backends,
        policies: Vec::new(),
        rules: encoder.rules,
    })
}

struct Encoder<'a> {
    resources: &'a Resources,
    gateway: &'a ObjectRef,
    rules: Vec<pb::RouteRule>,
    /// Rules are shared by listeners and host groups: one entry each.
    rule_ids: HashMap<*const RouteRule, u32>,
    backends: Vec<pb::Backend>,
    backend_ids: HashMap<String, usize>,
}

fn protocol_of(protocol: ListenerProtocol) -> pb::ListenerProtocol {
    match protocol {
        ListenerProtocol::Http => pb::ListenerProtocol::Http,
        ListenerProtocol::Https => pb::ListenerProtocol::Https,
        ListenerProtocol::TlsPassthrough => pb::ListenerProtocol::TlsPassthrough,
        ListenerProtocol::Tcp => pb::ListenerProtocol::Tcp,
    }
}

/// `(hostname pattern as written, value)` in a stable order: exact names
/// sorted, wildcards longest first (as stored), then the catch-all.
fn host_entries<'m, T>(
    exact: &'m HashMap<String, T>,
    wildcard: &'m [(String, T)],
    any: Option<&'m T>,
) -> Vec<(String, &'m T)> {
    let mut out: Vec<(String, &T)> = exact.iter().map(|(h, v)| (h.clone(), v)).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(wildcard.iter().map(|(suffix, v)| (format!("*{suffix}"), v)));
    out.extend(any.map(|v| (String::new(), v)));
    out
}

impl Encoder<'_> {
    fn port(
        &mut self,
        port: u16,
        config: &PortConfig,
        out: &mut Vec<pb::Listener>,
    ) -> Result<(), String> {
        let protocol = protocol_of(config.protocol) as i32;
        if let Some(l4) = &config.listeners.l4 {
            let m = &l4.listeners;
            for (_, listener) in host_entries(&m.exact, &m.wildcard, m.any.as_ref()) {
                out.push(self.l4_listener(port, protocol, listener));
            }
            return Ok(());
        }
        let set = &config.listeners;
        let mut listeners: Vec<_> = host_entries(&set.exact, &set.wildcard, set.any.as_ref())
            .into_iter()
            .map(|(_, l)| l.clone())
            .collect();
        if let Some(tls) = &config.tls {
            // Certificates go back in the order translation added them: the
            // first one is the port's default certificate.
            let rank = |l: &crate::snapshot::Listener| {
                let name = l.hostname.clone().unwrap_or_else(|| "*".into());
                tls.hostnames
                    .iter()
                    .position(|h| *h == name)
                    .unwrap_or(usize::MAX)
            };
            listeners.sort_by_key(|l| rank(l));
        }
        for l in listeners {
            let certificate = match config.protocol {
                ListenerProtocol::Https => Some(self.certificate(&l.name)?),
                _ => None,
            };
            let certificate_refs = certificate
                .as_ref()
                .map(|c| vec![c.source.clone()])
                .unwrap_or_default();
            let virtual_hosts = self.virtual_hosts(&l.routes);
            out.push(pb::Listener {
                name: l.name.clone(),
                port: u32::from(port),
                protocol,
                hostname: l.hostname.clone().unwrap_or_default(),
                certificate_refs,
                routes: Vec::new(),
                certificate,
                virtual_hosts,
                l4_routes: Vec::new(),
                default_service_route: false,
            });
        }
        Ok(())
    }

    fn l4_listener(&mut self, port: u16, protocol: i32, l: &L4Listener) -> pb::Listener {
        let routes: &HostMap<_> = &l.routes;
        let l4_routes = host_entries(&routes.exact, &routes.wildcard, routes.any.as_ref())
            .into_iter()
            .map(|(hostname, route)| pb::L4Route {
                hostname,
                kind: match route.kind {
                    "TLSRoute" => pb::RouteKind::TlsRoute,
                    _ => pb::RouteKind::TcpRoute,
                } as i32,
                route: route.route.to_string(),
                backends: route
                    .backends
                    .iter()
                    .map(|b| {
                        let (backend, invalid) = self.target(&b.target);
                        pb::WeightedBackend {
                            backend,
                            weight: b.weight,
                            filters: Vec::new(),
                            invalid,
                        }
                    })
                    .collect(),
            })
            .collect();
        pb::Listener {
            name: l.name.clone(),
            port: u32::from(port),
            protocol,
            hostname: l.hostname.clone().unwrap_or_default(),
            l4_routes,
            ..Default::default()
        }
    }

    fn virtual_hosts(&mut self, hosts: &VirtualHosts) -> Vec<pb::VirtualHost> {
        host_entries(&hosts.exact, &hosts.wildcard, hosts.any.as_ref())
            .into_iter()
            .map(|(hostname, table)| pb::VirtualHost {
                hostname,
                entries: self.route_entries(table),
            })
            .collect()
    }

    fn route_entries(&mut self, table: &crate::snapshot::RouteTable) -> Vec<pb::RouteEntry> {
        table
            .entries
            .iter()
            .map(|e| pb::RouteEntry {
                r#match: Some(route_match(&e.matcher)),
                rule: self.rule(&e.rule),
            })
            .collect()
    }

    fn rule(&mut self, rule: &Arc<RouteRule>) -> u32 {
        if let Some(&id) = self.rule_ids.get(&Arc::as_ptr(rule)) {
            return id;
        }
        let encoded = pb::RouteRule {
            route: rule.route.to_string(),
            rule_index: rule.rule_index as u32,
            filters: rule.filters.iter().map(|f| self.filter(f)).collect(),
            backends: rule.backends.iter().map(|b| self.weighted(b)).collect(),
            request_timeout: rule.timeouts.request.map(policy::duration),
            backend_request_timeout: rule.timeouts.backend_request.map(policy::duration),
            retry: rule.retry.as_ref().map(|r| pb::Retry {
                attempts: r.attempts,
                retry_on_status: r.codes.iter().map(|&c| u32::from(c)).collect(),
                per_try_timeout_ms: 0,
                backoff: r.backoff.map(policy::duration),
                retry_on_grpc_status: r.grpc_codes.clone(),
                on_connect_failure: r.on_connect_failure,
                on_reset: r.on_reset,
            }),
            rate_limit: rule
                .rate_limit
                .as_ref()
                .map(|l| policy::rate_limit(&l.config)),
            ..Default::default()
        };
        let id = self.rules.len() as u32;
        self.rules.push(encoded);
        self.rule_ids.insert(Arc::as_ptr(rule), id);
        id
    }

    fn weighted(&mut self, b: &WeightedBackend) -> pb::WeightedBackend {
        let (backend, invalid) = self.target(&b.target);
        pb::WeightedBackend {
            backend,
            weight: b.weight,
            filters: b.filters.iter().map(|f| self.filter(f)).collect(),
            invalid,
        }
    }

    /// `(backend name, invalid reason)`.
    fn target(&mut self, target: &BackendTarget) -> (String, String) {
        match target {
            BackendTarget::Cluster(c) => (self.cluster(c), String::new()),
            BackendTarget::Invalid { reason } => (String::new(), reason.clone()),
        }
    }

    /// Adds the cluster (and its subsets) once; returns its name.
    fn cluster(&mut self, c: &Cluster) -> String {
        if self.backend_ids.contains_key(&c.name) {
            return c.name.clone();
        }
        // Reserve the slot first: subsets are added after their parent.
        let slot = self.backends.len();
        self.backend_ids.insert(c.name.clone(), slot);
        self.backends.push(pb::Backend::default());
        let subsets: BTreeMap<String, String> = c
            .policy
            .subsets
            .iter()
            .map(|(name, subset)| (name.clone(), self.cluster(subset)))
            .collect();
        self.backends[slot] = pb::Backend {
            name: c.name.clone(),
            hostname: String::new(),
            port: u32::from(c.port),
            endpoints: c
                .endpoints
                .iter()
                .map(|ep| pb::Endpoint {
                    address: crate::xds::ip_bytes(ep.ip()),
                    port: u32::from(ep.port()),
                    weight: 1,
                    healthy: true,
                })
                .collect(),
            protocol: match c.protocol {
                UpstreamProtocol::Http1 => pb::BackendProtocol::Http1,
                UpstreamProtocol::H2c => pb::BackendProtocol::Http2,
            } as i32,
            service: c.service.to_string(),
            policy: policy::cluster_policy(&c.policy).map(|mut p| {
                if let Some(tls) = p.tls.as_mut() {
                    tls.ca_certificates =
                        policy::ca_certificates(self.resources, c).unwrap_or_default();
                }
                p
            }),
            subsets,
        };
        c.name.clone()
    }

    fn filter(&mut self, f: &Filter) -> pb::Filter {
        use pb::filter::Kind;
        let kind = match f {
            Filter::RequestHeaders(m) => Kind::RequestHeaderModifier(header_modifier(m)),
            Filter::ResponseHeaders(m) => Kind::ResponseHeaderModifier(header_modifier(m)),
            Filter::Redirect(r) => Kind::RequestRedirect(pb::Redirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: String::new(),
                port: r.port.map_or(0, u32::from),
                status_code: u32::from(r.status),
                path_modifier: r.path.as_ref().map(path_modifier),
            }),
            Filter::UrlRewrite(r) => Kind::UrlRewrite(pb::UrlRewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| match p {
                    PathModifier::ReplaceFullPath(s) => {
                        pb::url_rewrite::Path::ReplaceFullPath(s.clone())
                    }
                    PathModifier::ReplacePrefixMatch(s) => {
                        pb::url_rewrite::Path::ReplacePrefixMatch(s.clone())
                    }
                }),
            }),
            Filter::Mirror(m) => Kind::RequestMirror(pb::Mirror {
                backend: self.cluster(&m.target),
                percent: m.percent,
            }),
            Filter::Cors(c) => Kind::Cors(pb::Cors {
                allow_origins: c.allow_origins.clone(),
                allow_credentials: c.allow_credentials,
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                max_age_seconds: c.max_age_seconds,
            }),
            Filter::Fault(fault) => Kind::Fault(policy::fault(fault)),
        };
        pb::Filter { kind: Some(kind) }
    }

    /// The PEM of the listener's first certificateRef (the one translation serves).
    fn certificate(&self, listener: &str) -> Result<pb::Certificate, String> {
        let gw = self.gateway;
        let object = self
            .resources
            .gateways
            .get(&(gw.namespace.clone(), gw.name.clone()))
            .ok_or_else(|| format!("Gateway {gw} not found"))?;
        let reference = object
            .spec
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .and_then(|l| l.tls.as_ref())
            .and_then(|t| t.certificate_refs.as_ref())
            .and_then(|refs| refs.first())
            .ok_or_else(|| format!("Gateway {gw} listener {listener}: no certificateRef"))?;
        let namespace = reference.namespace.clone().unwrap_or(gw.namespace.clone());
        let secret = self
            .resources
            .secrets
            .get(&(namespace.clone(), reference.name.clone()))
            .ok_or_else(|| format!("Secret {namespace}/{} not found", reference.name))?;
        let field = |key: &str| -> Option<Vec<u8>> {
            let s = &secret.spec;
            // stringData wins over data, as in translation.
            s.string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.as_bytes().to_vec())
                .or_else(|| {
                    s.data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|v| v.0.clone())
                })
        };
        let source = format!("{namespace}/{}", reference.name);
        Ok(pb::Certificate {
            cert_chain: field("tls.crt")
                .ok_or_else(|| format!("Secret {source} has no tls.crt"))?,
            private_key: field("tls.key")
                .ok_or_else(|| format!("Secret {source} has no tls.key"))?,
            source,
        })
    }
}

fn header_modifier(m: &crate::snapshot::HeaderModifier) -> pb::HeaderModifier {
    let values = |v: &[(String, String)]| {
        v.iter()
            .map(|(name, value)| pb::HeaderValue {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: values(&m.set),
        add: values(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_modifier(p: &PathModifier) -> pb::PathModifier {
    use pb::path_modifier::Kind;
    pb::PathModifier {
        kind: Some(match p {
            PathModifier::ReplaceFullPath(s) => Kind::ReplaceFullPath(s.clone()),
            PathModifier::ReplacePrefixMatch(s) => Kind::ReplacePrefixMatch(s.clone()),
        }),
    }
}

fn route_match(m: &RequestMatcher) -> pb::RouteMatch {
    use pb::path_match::Kind;
    let (kind, value) = match &m.path {
        PathMatch::Exact(p) => (Kind::Exact, p.clone()),
        PathMatch::Prefix(p) => (Kind::Prefix, p.clone()),
        // Already anchored by translation: `^(?:...)$`.
        PathMatch::Regex(re) => (Kind::Regex, re.as_str().to_string()),
        PathMatch::StringPrefix(p) => (Kind::StringPrefix, p.clone()),
    };
    let string_match = |v: &StringMatch| match v {
        StringMatch::Exact(s) => (0, s.clone()),
        StringMatch::Regex(re) => (1, re.as_str().to_string()),
    };
    pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: kind as i32,
            value,
        }),
        headers: m
            .headers
            .iter()
            .map(|h| {
                let (kind, value) = string_match(&h.value);
                pb::HeaderMatch {
                    kind,
                    name: h.name.clone(),
                    value,
                }
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| {
                let (kind, value) = string_match(&q.value);
                pb::QueryMatch {
                    kind,
                    name: q.name.clone(),
                    value,
                }
            })
            .collect(),
        method: m.method.clone().unwrap_or_default(),
    }
}
