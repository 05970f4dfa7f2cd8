//! TLSRoute and TCPRoute → the L4 routing tables of TLS passthrough and TCP
//! ports ([`crate::l4`]), and the routes' status.
//!
//! Rules: a TLSRoute attaches only to `protocol: TLS` listeners
//! (`tls.mode: Passthrough`) and a TCPRoute only to `protocol: TCP`
//! listeners, subject to allowedRoutes (kinds and namespaces) and
//! sectionName/port. TLSRoute hostnames are intersected with the listener's
//! hostname like HTTPRoute's; when several routes claim one hostname on a
//! listener, the oldest route (creationTimestamp, then namespace/name) gets
//! it. L4 rules have no matches, so a route's backendRefs (of all its rules)
//! form one weighted set; an invalid backendRef refuses the share of
//! connections its weight gives it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_config::{Meta, Resources};

use super::backends::{BackendRef, BackendResolver, RefProblem, GATEWAY_GROUP, ISTIO_GROUP};
use super::conditions::{
    condition, no_matching_listener_hostname, no_matching_parent, parent_status, resolved_refs,
    route_accepted,
};
use super::hostnames::{intersect, HostKey};
use super::l4_listeners::{TCP_ROUTE_KIND, TLS_ROUTE_KIND};
use super::listeners::GatewayCtx;
use crate::l4::{HostMap, L4Backend, L4Listener, L4Route, L4Routes};
use crate::snapshot::{BackendTarget, ListenerProtocol, ObjectRef, PortConfig};
use crate::status::{RouteParentStatus, RouteStatus};

/// A parentRef, the same for both route kinds.
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    section_name: Option<String>,
    port: Option<i32>,
}

/// A backendRef, the same for both route kinds.
struct L4BackendRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    weight: Option<i32>,
}

/// (gateway index, listener index) → (route index, hostnames), oldest route first.
type Attachments = HashMap<(usize, usize), Vec<(usize, Vec<HostKey>)>>;

struct CompiledL4<'a> {
    meta: &'a Meta,
    key: ObjectRef,
    /// The listener protocol this kind attaches to.
    protocol: ListenerProtocol,
    /// `gateway.networking.k8s.io/TLSRoute` or `.../TCPRoute` (supportedKinds).
    supported_kind: &'static str,
    parent_refs: Vec<ParentRef>,
    /// TLSRoute hostnames; empty (any) for TCPRoute.
    hostnames: Vec<HostKey>,
    route: Arc<L4Route>,
    ref_problems: Vec<RefProblem>,
}

/// Attaches every TLSRoute and TCPRoute, fills the L4 tables of the TLS
/// passthrough and TCP ports in `ports` (built by `build_ports` for every
/// served listener), and returns the routes' status.
pub fn translate_l4(
    mut ports: BTreeMap<u16, Arc<PortConfig>>,
    gateways: &mut [GatewayCtx<'_>],
    gateway_index: &HashMap<ObjectRef, usize>,
    resources: &Resources,
    resolver: &mut BackendResolver<'_>,
    route_statuses: &mut Vec<RouteStatus>,
) -> BTreeMap<u16, Arc<PortConfig>> {
    let routes = compile_all(resources, resolver);
    let mut attachments = Attachments::new();
    for (ri, route) in routes.iter().enumerate() {
        let parents = attach(
            ri,
            route,
            gateways,
            gateway_index,
            resources,
            &mut attachments,
        );
        if !parents.is_empty() {
            route_statuses.push(RouteStatus {
                kind: route.route.kind.into(),
                route: route.key.clone(),
                parents,
            });
        }
    }

    let mut tables: BTreeMap<u16, L4Routes> = BTreeMap::new();
    for (gi, g) in gateways.iter().enumerate() {
        for (li, l) in g.listeners.iter().enumerate() {
            if !l.serves() || !super::l4_listeners::is_l4(l.protocol) {
                continue;
            }
            let mut listener_routes: HostMap<Arc<L4Route>> = HostMap::default();
            for (ri, hosts) in attachments.get(&(gi, li)).into_iter().flatten() {
                for host in hosts {
                    let route = &routes[*ri].route;
                    // Oldest route first: a later claim on the same hostname loses.
                    match host {
                        HostKey::Exact(h) => {
                            listener_routes
                                .exact
                                .entry(h.clone())
                                .or_insert_with(|| route.clone());
                        }
                        HostKey::Wildcard(s) => {
                            if !listener_routes.wildcard.iter().any(|(w, _)| w == s) {
                                listener_routes.wildcard.push((s.clone(), route.clone()));
                            }
                        }
                        HostKey::Any => {
                            listener_routes.any.get_or_insert_with(|| route.clone());
                        }
                    }
                }
            }
            listener_routes.sort();
            // TCP listeners have no hostname (the field is ignored for TCP).
            let hostname = match l.protocol {
                ListenerProtocol::Tcp => HostKey::Any,
                _ => l.hostname.clone(),
            };
            let listener = Arc::new(L4Listener {
                gateway: g.key.clone(),
                name: l.name.clone(),
                hostname: hostname.display(),
                routes: listener_routes,
            });
            // Hostname and protocol conflicts were resolved in `listeners::collect`.
            let table = &mut tables.entry(l.port).or_default().listeners;
            match hostname {
                HostKey::Exact(h) => {
                    table.exact.entry(h).or_insert(listener);
                }
                HostKey::Wildcard(s) => table.wildcard.push((s, listener)),
                HostKey::Any => {
                    table.any.get_or_insert(listener);
                }
            }
        }
    }

    for (port, mut table) in tables {
        table.listeners.sort();
        let Some(config) = ports.get_mut(&port) else {
            tracing::error!(port, "L4 listener without a port entry; not served");
            continue;
        };
        match Arc::get_mut(config) {
            Some(config) => {
                // The HTTP listener set `build_ports` made for these listeners
                // has no routes and is never used on an L4 port.
                config.listeners.exact.clear();
                config.listeners.wildcard.clear();
                config.listeners.any = None;
                config.listeners.l4 = Some(Arc::new(table));
            }
            None => tracing::error!(port, "L4 port configuration is shared; not served"),
        }
    }
    ports
}

fn compile_all<'a>(
    resources: &'a Resources,
    resolver: &mut BackendResolver<'_>,
) -> Vec<CompiledL4<'a>> {
    let mut out = Vec::new();
    for r in resources.tls_routes.values() {
        let parents = r.spec.parent_refs.iter().flatten().map(|p| ParentRef {
            group: p.group.clone(),
            kind: p.kind.clone(),
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            section_name: p.section_name.clone(),
            port: p.port,
        });
        let backends = r.spec.rules.iter().flat_map(|rule| {
            rule.backend_refs.iter().map(|b| L4BackendRef {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
                weight: b.weight,
            })
        });
        let hostnames = r.spec.hostnames.iter().map(|h| HostKey::parse(h)).collect();
        out.push(compile(
            &r.meta,
            "TLSRoute",
            parents.collect(),
            hostnames,
            backends,
            resources,
            resolver,
        ));
    }
    for r in resources.tcp_routes.values() {
        let parents = r.spec.parent_refs.iter().flatten().map(|p| ParentRef {
            group: p.group.clone(),
            kind: p.kind.clone(),
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            section_name: p.section_name.clone(),
            port: p.port,
        });
        let backends = r.spec.rules.iter().flat_map(|rule| {
            rule.backend_refs.iter().map(|b| L4BackendRef {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
                weight: b.weight,
            })
        });
        out.push(compile(
            &r.meta,
            "TCPRoute",
            parents.collect(),
            Vec::new(),
            backends,
            resources,
            resolver,
        ));
    }
    // Oldest first: the order in which routes claim hostnames.
    out.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
    out
}

fn compile<'a, 'b>(
    meta: &'a Meta,
    kind: &'static str,
    parent_refs: Vec<ParentRef>,
    hostnames: Vec<HostKey>,
    backend_refs: impl Iterator<Item = L4BackendRef<'b>>,
    resources: &Resources,
    resolver: &mut BackendResolver<'_>,
) -> CompiledL4<'a> {
    let key = ObjectRef {
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
    };
    let mut ref_problems = Vec::new();
    let mut backends = Vec::new();
    for b in backend_refs {
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        let target = match resolve(kind, &key.namespace, &b, resources, resolver) {
            Ok(cluster) => BackendTarget::Cluster(cluster),
            Err(problem) => {
                let reason = format!("{}: {}", problem.reason(), problem.message());
                ref_problems.push(problem);
                BackendTarget::Invalid { reason }
            }
        };
        backends.push(L4Backend { weight, target });
    }
    let total_weight = backends.iter().map(|b| b.weight).sum();
    let (protocol, supported_kind) = match kind {
        "TLSRoute" => (ListenerProtocol::TlsPassthrough, TLS_ROUTE_KIND),
        _ => (ListenerProtocol::Tcp, TCP_ROUTE_KIND),
    };
    CompiledL4 {
        meta,
        route: Arc::new(L4Route {
            kind,
            route: key.clone(),
            backends,
            total_weight,
        }),
        key,
        protocol,
        supported_kind,
        parent_refs,
        hostnames,
        ref_problems,
    }
}

/// A backendRef, with a cross-namespace reference checked against
/// ReferenceGrants *from this route kind* (the shared resolver only knows
/// HTTPRoute grants, so a granted reference is resolved as if local).
fn resolve(
    route_kind: &str,
    route_ns: &str,
    b: &L4BackendRef<'_>,
    resources: &Resources,
    resolver: &mut BackendResolver<'_>,
) -> Result<Arc<crate::snapshot::Cluster>, RefProblem> {
    let group = b.group.unwrap_or("");
    let kind = b.kind.unwrap_or("Service");
    let target_ns = b.namespace.unwrap_or(route_ns);
    let known = matches!(
        (group, kind),
        ("", "Service") | (ISTIO_GROUP, "ServiceEntry") | (ISTIO_GROUP, "Hostname")
    );
    let resolve_in = if target_ns == route_ns || !known || kind == "Hostname" {
        route_ns
    } else if granted(
        resources, route_kind, route_ns, target_ns, group, kind, b.name,
    ) {
        target_ns
    } else {
        return Err(RefProblem::NotPermitted(format!(
            "reference to {kind} {target_ns}/{} from {route_kind} in namespace {route_ns} is not permitted by any ReferenceGrant",
            b.name
        )));
    };
    resolver.resolve(
        resolve_in,
        BackendRef {
            group: b.group,
            kind: b.kind,
            name: b.name,
            namespace: b.namespace,
            port: b.port,
        },
    )
}

fn granted(
    resources: &Resources,
    route_kind: &str,
    from_ns: &str,
    to_ns: &str,
    group: &str,
    kind: &str,
    name: &str,
) -> bool {
    resources
        .reference_grants
        .values()
        .filter(|g| g.meta.namespace == to_ns)
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == GATEWAY_GROUP && f.kind == route_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == group
                        && t.kind == kind
                        && t.name.as_deref().is_none_or(|n| n.is_empty() || n == name)
                })
        })
}

/// Attaches one route through its parentRefs; returns its parent statuses
/// (only for Gateways we serve).
fn attach(
    ri: usize,
    route: &CompiledL4<'_>,
    gateways: &mut [GatewayCtx<'_>],
    gateway_index: &HashMap<ObjectRef, usize>,
    resources: &Resources,
    attachments: &mut Attachments,
) -> Vec<RouteParentStatus> {
    let generation = route.meta.generation;
    let route_ns = route.key.namespace.as_str();
    let mut parents = Vec::new();
    for pref in &route.parent_refs {
        if pref.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
            || pref.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gw_key = ObjectRef {
            namespace: pref
                .namespace
                .clone()
                .unwrap_or_else(|| route_ns.to_string()),
            name: pref.name.clone(),
        };
        let Some(&gi) = gateway_index.get(&gw_key) else {
            continue;
        };
        let gateway = &mut gateways[gi];
        let (mut matched, mut kind_ok, mut allowed, mut attached) = (false, false, false, false);
        for (li, l) in gateway.listeners.iter_mut().enumerate() {
            if pref.section_name.as_deref().is_some_and(|s| s != l.name)
                || pref.port.is_some_and(|p| p != i32::from(l.port))
            {
                continue;
            }
            matched = true;
            if !l.serves()
                || l.protocol != route.protocol
                || !l.supported_kinds.iter().any(|k| k == route.supported_kind)
            {
                continue;
            }
            kind_ok = true;
            if !l.allows_namespace(&gateway.key.namespace, route_ns, resources) {
                continue;
            }
            allowed = true;
            let hosts = match route.protocol {
                ListenerProtocol::Tcp => vec![HostKey::Any],
                _ => intersect(&l.hostname, &route.hostnames),
            };
            if hosts.is_empty() {
                continue;
            }
            attached = true;
            l.attached.insert(route.key.clone());
            attachments.entry((gi, li)).or_default().push((ri, hosts));
        }
        let accepted = if !matched {
            no_matching_parent(generation)
        } else if !kind_ok {
            condition(
                "Accepted",
                false,
                "NotAllowedByListeners",
                format!(
                    "no matching listener accepts {} (a {} needs a {} listener)",
                    route.route.kind,
                    route.route.kind,
                    if route.protocol == ListenerProtocol::Tcp {
                        "TCP"
                    } else {
                        "TLS Passthrough"
                    }
                ),
                generation,
            )
        } else if !allowed {
            condition(
                "Accepted",
                false,
                "NotAllowedByListeners",
                "no matching listener allows routes from this namespace",
                generation,
            )
        } else if !attached {
            no_matching_listener_hostname(generation)
        } else {
            route_accepted(generation)
        };
        parents.push(parent_status(
            gw_key,
            pref.section_name.clone(),
            pref.port,
            vec![accepted, resolved_refs(&route.ref_problems, generation)],
        ));
    }
    parents
}

#[cfg(test)]
#[path = "l4_tests.rs"]
mod tests;
