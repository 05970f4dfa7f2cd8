//! Istio VirtualService `http` routes → the engine's route rules, the same
//! `RouteRule`s HTTPRoutes compile to (so every traffic policy the engine
//! applies, DestinationRule included, applies to them as well).
//!
//! Where a VirtualService applies ([`virtual_services_apply`](super::virtual_services_apply)):
//! - in a waypoint, for `hosts` that are mesh Services bound to it, when
//!   `gateways` is empty or lists `mesh` (Istio ambient);
//! - in the gateway, on every HTTP/HTTPS listener of a Gateway that
//!   `gateways` names (`namespace/name`, or `name` in the VirtualService's
//!   namespace) whose `allowedRoutes.namespaces` admits the VirtualService's
//!   namespace, for the listener hostnames its `hosts` intersect.
//!
//! Order: routes in the order written, first match wins; several
//! VirtualServices for one host are concatenated oldest first
//! (creationTimestamp, then namespace/name).
//!
//! **Precedence with HTTPRoute** (one rule, never undefined): when an
//! HTTPRoute (or GRPCRoute) and a VirtualService target the same host on the
//! same proxy — the same listener host on a gateway, the same Service port
//! in a waypoint (an HTTPRoute whose parentRef is the Service) — the
//! HTTPRoute wins and serves that host alone. The VirtualService gets the
//! status condition `Accepted=False`, reason `OverriddenByHTTPRoute`
//! (`Overridden=True` with that reason when it still serves other hosts),
//! whose message names the HTTPRoute. Distinct hosts never mix: a request is
//! routed by the most specific host group, HTTPRoute or VirtualService.
//!
//! Mapping (Istio → engine):
//! - match: `uri` exact/prefix (a plain string prefix)/regex, `ignoreUriCase`
//!   (exact and prefix), `method` exact, `authority`, `headers` and
//!   `queryParams` exact/prefix/regex, `port` (listener port or Service
//!   port), `gateways`. Refused (the http route is dropped and reported,
//!   never widened): `withoutHeaders`, `sourceLabels`, `sourceNamespace`,
//!   `scheme`, a non-exact `method`.
//! - route: `destination.host` → a Service (short name in the
//!   VirtualService's namespace, `name.ns`, `name.ns.svc[.cluster.local]`)
//!   or a ServiceEntry host; `port.number` (optional when the Service has one
//!   port); `subset` → the DestinationRule subset's cluster; `weight`;
//!   per-destination `headers`.
//! - `timeout` → request timeout; `retries`: `attempts` (default 2),
//!   `perTryTimeout`, `retryOn` (`5xx`, `gateway-error`, `connect-failure`,
//!   `reset`, `retriable-4xx`, status codes, gRPC `cancelled`,
//!   `deadline-exceeded`, `resource-exhausted`, `unavailable`, `internal`;
//!   default Istio's `connect-failure,refused-stream,unavailable,cancelled,503`).
//!   Without `retries` nothing is retried (Istio would add 2 default
//!   retries; ringmesh retries only what is configured).
//! - `fault` delay/abort with percentages; `mirror` + `mirrorPercentage`
//!   and `mirrors`; `rewrite.uri` (replaces the matched prefix, else the
//!   path) and `rewrite.authority`; `redirect`; `headers` request/response
//!   set/add/remove; `corsPolicy` with exact origins (or `.*`).
//! - Refused: `directResponse`, `delegate`, `rewrite.uriRegexRewrite`,
//!   prefix/regex CORS origins; `tcp`/`tls` sections are ignored;
//!   `exportTo` is not applied.

use std::sync::Arc;

use mesh_config::virtual_service::{Destination, HttpRoute, HttpRouteDestination};
use mesh_config::{parse_istio_duration, Object, Resources, VirtualServiceSpec};

use super::backends::{BackendRef, BackendResolver, RefProblem, ISTIO_GROUP};
use super::destination_rules::{resolve_host, CLUSTER_DOMAIN};
use super::virtual_services_match::compile_match;
use super::virtual_services_policy::{cors, fault, header_modifier, retry_policy};
use crate::snapshot::{
    BackendTarget, Cluster, Filter, Mirror, ObjectRef, PathMatch, PathModifier, Redirect,
    RequestMatcher, RouteRule, Timeouts, UrlRewrite, WeightedBackend,
};

/// One match of a compiled http route, with the VirtualService-only
/// conditions the engine's matcher does not carry.
pub struct VsMatcher {
    pub matcher: RequestMatcher,
    /// `match.port`: only on this listener port (gateway) or Service port (waypoint).
    pub port: Option<u16>,
    /// `match.gateways`: only where one of these applies (`mesh` or `ns/name`).
    pub gateways: Vec<String>,
}

pub struct VsRule {
    pub matchers: Vec<(VsMatcher, Arc<RouteRule>)>,
}

pub struct CompiledVirtualService<'a> {
    pub object: &'a Object<VirtualServiceSpec>,
    pub key: ObjectRef,
    /// Valid http routes, in order.
    pub rules: Vec<VsRule>,
    /// `http[i]: message` for every dropped route.
    pub invalid: Vec<String>,
    pub ref_problems: Vec<RefProblem>,
}

impl CompiledVirtualService<'_> {
    /// `gateways` of the VirtualService resolved to `mesh` / `ns/name`.
    pub fn scopes(&self) -> Vec<String> {
        scopes(&self.object.spec.gateways, &self.key.namespace)
    }

    /// Applies in waypoints (`gateways` empty or listing `mesh`).
    pub fn in_mesh(&self) -> bool {
        let s = self.scopes();
        s.is_empty() || s.iter().any(|g| g == "mesh")
    }

    /// Applies on the Gateway `gateway`.
    pub fn on_gateway(&self, gateway: &ObjectRef) -> bool {
        self.scopes().contains(&gateway.to_string())
    }

    /// Whether it serves `fqdn` (a Service's `name.ns.svc.cluster.local`) in the mesh.
    pub fn serves_service(&self, fqdn: &str) -> bool {
        self.object.spec.hosts.iter().any(|h| {
            let host = resolve_host(h, &self.key.namespace);
            host == "*"
                || host == fqdn
                || host
                    .strip_prefix('*')
                    .is_some_and(|s| fqdn.len() > s.len() && fqdn.ends_with(s))
        })
    }
}

/// `mesh` stays `mesh`; `name` becomes `namespace/name`.
pub(super) fn scopes(gateways: &[String], namespace: &str) -> Vec<String> {
    gateways
        .iter()
        .map(|g| {
            let g = g.trim();
            if g == "mesh" || g.contains('/') {
                g.to_string()
            } else {
                format!("{namespace}/{g}")
            }
        })
        .collect()
}

/// Every VirtualService compiled once, oldest first.
pub fn compile_all<'a>(
    resources: &'a Resources,
    resolver: &mut BackendResolver<'_>,
) -> Vec<CompiledVirtualService<'a>> {
    let mut objects: Vec<_> = resources.virtual_services.values().collect();
    objects.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
    objects
        .into_iter()
        .map(|o| compile_virtual_service(o, resources, resolver))
        .collect()
}

pub fn compile_virtual_service<'a>(
    object: &'a Object<VirtualServiceSpec>,
    resources: &Resources,
    resolver: &mut BackendResolver<'_>,
) -> CompiledVirtualService<'a> {
    let key = ObjectRef {
        namespace: object.meta.namespace.clone(),
        name: object.meta.name.clone(),
    };
    let mut out = CompiledVirtualService {
        object,
        key,
        rules: Vec::new(),
        invalid: Vec::new(),
        ref_problems: Vec::new(),
    };
    for (index, route) in object.spec.http.iter().enumerate() {
        let ctx = Ctx {
            vs: &out.key,
            resources,
        };
        match compile_http_route(&ctx, index, route, resolver, &mut out.ref_problems) {
            Ok(rule) => out.rules.push(rule),
            Err(message) => out.invalid.push(format!("http[{index}]: {message}")),
        }
    }
    out
}

/// What destination lookups need: the VirtualService and every resource.
struct Ctx<'r> {
    vs: &'r ObjectRef,
    resources: &'r Resources,
}

fn compile_http_route(
    ctx: &Ctx<'_>,
    index: usize,
    route: &HttpRoute,
    resolver: &mut BackendResolver<'_>,
    ref_problems: &mut Vec<RefProblem>,
) -> Result<VsRule, String> {
    let vs = ctx.vs;
    for (what, unsupported) in [
        ("directResponse", route.direct_response.is_some()),
        ("delegate", route.delegate.is_some()),
        (
            "rewrite.uriRegexRewrite",
            route
                .rewrite
                .as_ref()
                .is_some_and(|r| r.uri_regex_rewrite.is_some()),
        ),
    ] {
        if unsupported {
            return Err(format!("{what} is not supported"));
        }
    }
    let matchers: Vec<VsMatcher> = if route.matches.is_empty() {
        vec![VsMatcher {
            matcher: RequestMatcher {
                path: PathMatch::StringPrefix("/".into()),
                method: None,
                headers: Vec::new(),
                query_params: Vec::new(),
            },
            port: None,
            gateways: Vec::new(),
        }]
    } else {
        route
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| compile_match(m, &vs.namespace).map_err(|e| format!("match[{i}].{e}")))
            .collect::<Result<_, _>>()?
    };

    let mut filters = Vec::new();
    if let Some(h) = &route.headers {
        if let Some(req) = &h.request {
            filters.push(Filter::RequestHeaders(header_modifier(req)));
        }
        if let Some(resp) = &h.response {
            filters.push(Filter::ResponseHeaders(header_modifier(resp)));
        }
    }
    if let Some(r) = &route.redirect {
        filters.push(Filter::Redirect(Redirect {
            scheme: r.scheme.clone(),
            hostname: r.authority.clone(),
            path: r.uri.clone().map(PathModifier::ReplaceFullPath),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            // Istio's default redirect status is 301.
            status: r
                .redirect_code
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
        }));
    }
    let mut mirrors: Vec<(&Destination, f64)> = Vec::new();
    if let Some(m) = &route.mirror {
        let percent = route
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(route.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        mirrors.push((m, percent));
    }
    for m in &route.mirrors {
        mirrors.push((
            &m.destination,
            m.percentage.as_ref().map_or(100.0, |p| p.value),
        ));
    }
    for (i, (dest, percent)) in mirrors.into_iter().enumerate() {
        match destination_cluster(ctx, dest, resolver) {
            Ok(target) => filters.push(Filter::Mirror(Mirror { target, percent })),
            Err(problem) => {
                tracing::debug!(%vs, "mirror {i}: {}", problem.message());
                ref_problems.push(problem);
            }
        }
    }
    if let Some(c) = &route.cors_policy {
        filters.push(Filter::Cors(Arc::new(cors(c)?)));
    }
    if let Some(f) = &route.fault {
        filters.push(Filter::Fault(Arc::new(fault(f)?)));
    }

    let mut backends = Vec::new();
    for (i, d) in route.route.iter().enumerate() {
        backends
            .push(backend(ctx, d, resolver, ref_problems).map_err(|e| format!("route[{i}].{e}"))?);
    }
    let total_weight = backends.iter().map(|b| b.weight).sum();
    let mut timeouts = Timeouts::default();
    if let Some(t) = &route.timeout {
        timeouts.request = nonzero(parse_istio_duration(t).map_err(|e| format!("timeout: {e}"))?);
    }
    let mut retry = None;
    if let Some(r) = &route.retries {
        if let Some(t) = &r.per_try_timeout {
            timeouts.backend_request = nonzero(
                parse_istio_duration(t).map_err(|e| format!("retries.perTryTimeout: {e}"))?,
            );
        }
        retry = retry_policy(r)?;
    }

    // The rewrite depends on how the path matched: prefix matches have their
    // prefix replaced, other matches the whole path. One rule per match then.
    let rewrite = route.rewrite.as_ref();
    let make_rule = |path: Option<&PathMatch>| {
        let mut filters = filters.clone();
        if let Some(rw) = rewrite {
            let modifier = rw.uri.clone().map(|uri| match path {
                Some(PathMatch::StringPrefix(_) | PathMatch::Prefix(_)) => {
                    PathModifier::ReplacePrefixMatch(uri)
                }
                _ => PathModifier::ReplaceFullPath(uri),
            });
            if modifier.is_some() || rw.authority.is_some() {
                filters.push(Filter::UrlRewrite(UrlRewrite {
                    hostname: rw.authority.clone(),
                    path: modifier,
                }));
            }
        }
        Arc::new(RouteRule {
            route: vs.clone(),
            rule_index: index,
            filters,
            backends: backends
                .iter()
                .map(|b: &WeightedBackend| WeightedBackend {
                    weight: b.weight,
                    target: match &b.target {
                        BackendTarget::Cluster(c) => BackendTarget::Cluster(c.clone()),
                        BackendTarget::Invalid { reason } => BackendTarget::Invalid {
                            reason: reason.clone(),
                        },
                    },
                    filters: b.filters.clone(),
                })
                .collect(),
            total_weight,
            timeouts,
            retry: retry.clone(),
            rate_limit: None,
        })
    };
    let per_match = rewrite.is_some_and(|r| r.uri.is_some());
    let shared = (!per_match).then(|| make_rule(None));
    let matchers = matchers
        .into_iter()
        .map(|m| {
            let rule = match &shared {
                Some(r) => r.clone(),
                None => make_rule(Some(&m.matcher.path)),
            };
            (m, rule)
        })
        .collect();
    Ok(VsRule { matchers })
}

fn nonzero(d: std::time::Duration) -> Option<std::time::Duration> {
    (!d.is_zero()).then_some(d)
}

fn backend(
    ctx: &Ctx<'_>,
    d: &HttpRouteDestination,
    resolver: &mut BackendResolver<'_>,
    ref_problems: &mut Vec<RefProblem>,
) -> Result<WeightedBackend, String> {
    // A lone destination without a weight takes everything.
    let weight = u32::try_from(d.weight.unwrap_or(100)).map_err(|_| "weight: negative")?;
    let target = match destination_cluster(ctx, &d.destination, resolver) {
        Ok(c) => BackendTarget::Cluster(c),
        Err(problem) => {
            let reason = format!("{}: {}", problem.reason(), problem.message());
            ref_problems.push(problem);
            BackendTarget::Invalid { reason }
        }
    };
    let mut filters = Vec::new();
    if let Some(h) = &d.headers {
        if let Some(req) = &h.request {
            filters.push(Filter::RequestHeaders(header_modifier(req)));
        }
        if let Some(resp) = &h.response {
            filters.push(Filter::ResponseHeaders(header_modifier(resp)));
        }
    }
    Ok(WeightedBackend {
        weight,
        target,
        filters,
    })
}

/// The Service (or ServiceEntry host) a destination names, its port, and
/// its DestinationRule subset. No ReferenceGrant is needed (Istio has none).
fn destination_cluster(
    ctx: &Ctx<'_>,
    d: &Destination,
    resolver: &mut BackendResolver<'_>,
) -> Result<Arc<Cluster>, RefProblem> {
    let vs = ctx.vs;
    let host = resolve_host(&d.host, &vs.namespace);
    let port = d.port.as_ref().and_then(|p| i32::try_from(p.number).ok());
    let service = service_of_host(&host, ctx.resources);
    let cluster = match service {
        Some((namespace, name)) => {
            // Istio: the port may be left out when the Service has only one.
            let port = port.or_else(|| {
                let svc = ctx
                    .resources
                    .services
                    .get(&(namespace.clone(), name.clone()))?;
                match svc.spec.ports.as_deref() {
                    Some([only]) => Some(only.port),
                    _ => None,
                }
            });
            let r = BackendRef {
                group: None,
                kind: None,
                name: &name,
                namespace: None,
                port,
            };
            resolver.resolve(&namespace, r)?
        }
        None => {
            let r = BackendRef {
                group: Some(ISTIO_GROUP),
                kind: Some("Hostname"),
                name: &host,
                namespace: None,
                port,
            };
            resolver.resolve(&vs.namespace, r).map_err(|_| {
                RefProblem::NotFound(format!(
                    "destination host {} is neither a Service nor a ServiceEntry host",
                    d.host
                ))
            })?
        }
    };
    match &d.subset {
        None => Ok(cluster),
        Some(subset) => cluster.policy.subsets.get(subset).cloned().ok_or_else(|| {
            RefProblem::NotFound(format!(
                "subset {subset:?} of {} is not defined by a DestinationRule",
                d.host
            ))
        }),
    }
}

/// `name.ns.svc.cluster.local`, `name.ns.svc` or `name.ns` → (ns, name)
/// when such a Service exists.
fn service_of_host(host: &str, resources: &Resources) -> Option<(String, String)> {
    let trimmed = host
        .strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))
        .or_else(|| host.strip_suffix(&format!(".{CLUSTER_DOMAIN}")))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let (name, namespace) = trimmed.split_once('.')?;
    if namespace.contains('.') {
        return None;
    }
    let key = (namespace.to_string(), name.to_string());
    resources.services.contains_key(&key).then_some(key)
}

#[cfg(test)]
#[path = "virtual_services_tests.rs"]
mod tests;
