//! GRPCRoutes on listeners: attachment through parentRefs (the HTTPRoute rules:
//! allowedRoutes kinds and namespaces, sectionName/port, hostname intersection), the
//! HTTPRoute/GRPCRoute conflict rule, and their RouteParentStatus.
//!
//! Conflict rule (GRPCRouteSpec.hostnames): when a listener has an HTTPRoute and a
//! GRPCRoute whose hostnames intersect, exactly one is accepted there: the oldest by
//! creationTimestamp, then the first by `namespace/name`. The other is detached from
//! that listener, and its parentRef gets Accepted=False once no listener it selects
//! still carries it.

use std::collections::HashMap;

use mesh_config::Resources;

use super::backends::GATEWAY_GROUP;
use super::conditions::{condition, parent_status, route_parent_conditions, ParentAttachment};
use super::grpc::GrpcCompiledRoute;
use super::hostnames::{intersect, HostKey};
use super::listeners::{GatewayCtx, ListenerCtx};
use super::routes::CompiledRoute;
use crate::snapshot::ObjectRef;
use crate::status::{ParentRefStatus, RouteParentStatus, RouteStatus};

pub const GRPC_ROUTE: &str = "GRPCRoute";

/// The key a GRPCRoute has in `ListenerCtx::attached` (the set behind
/// `attachedRoutes`), distinct from an HTTPRoute of the same namespace/name.
pub fn attached_key(route: &ObjectRef) -> ObjectRef {
    ObjectRef {
        namespace: route.namespace.clone(),
        name: format!("{GRPC_ROUTE}/{}", route.name),
    }
}

/// Attaches every GRPCRoute and returns their statuses (only for routes with a
/// parent we serve).
pub fn attach_grpc_routes(
    routes: &[GrpcCompiledRoute<'_>],
    gateways: &mut [GatewayCtx<'_>],
    gateway_index: &HashMap<ObjectRef, usize>,
    resources: &Resources,
) -> Vec<RouteStatus> {
    let mut statuses = Vec::new();
    for (ri, route) in routes.iter().enumerate() {
        let parents = attach_grpc_route(ri, route, gateways, gateway_index, resources);
        if !parents.is_empty() {
            statuses.push(RouteStatus {
                kind: GRPC_ROUTE.into(),
                route: route.key.clone(),
                parents,
            });
        }
    }
    statuses
}

fn attach_grpc_route(
    ri: usize,
    route: &GrpcCompiledRoute<'_>,
    gateways: &mut [GatewayCtx<'_>],
    gateway_index: &HashMap<ObjectRef, usize>,
    resources: &Resources,
) -> Vec<RouteParentStatus> {
    let generation = route.object.meta.generation;
    let route_ns = route.key.namespace.as_str();
    let rules_ok = route.total_rules == 0 || !route.rules.is_empty();
    let mut parents = Vec::new();
    for pref in route.object.spec.parent_refs.iter().flatten() {
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
        let (mut matched, mut allowed, mut attached) = (false, false, false);
        for l in gateway.listeners.iter_mut() {
            if pref.section_name.as_deref().is_some_and(|s| s != l.name)
                || pref.port.is_some_and(|p| p != i32::from(l.port))
            {
                continue;
            }
            matched = true;
            if !l.serves()
                || !l.allows_grpc_route
                || !l.allows_namespace(&gateway.key.namespace, route_ns, resources)
            {
                continue;
            }
            allowed = true;
            let hosts = intersect(&l.hostname, &route.hostnames);
            if hosts.is_empty() {
                continue;
            }
            attached = true;
            if rules_ok {
                l.attached.insert(attached_key(&route.key));
                l.grpc_attachments.push((ri, hosts));
            }
        }
        let conditions = route_parent_conditions(
            ParentAttachment {
                matched,
                allowed,
                attached,
            },
            rules_ok,
            &route.invalid_rules,
            &route.ref_problems,
            generation,
        );
        parents.push(parent_status(
            gw_key,
            pref.section_name.clone(),
            pref.port,
            conditions,
        ));
    }
    parents
}

/// One route attached to a listener, of either kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attached {
    Http(usize),
    Grpc(usize),
}

/// Applies the HTTPRoute/GRPCRoute conflict rule on every listener and marks the
/// losing parentRefs Accepted=False in `statuses`.
pub fn resolve_kind_conflicts(
    gateways: &mut [GatewayCtx<'_>],
    http: &[CompiledRoute<'_>],
    grpc: &[GrpcCompiledRoute<'_>],
    statuses: &mut [RouteStatus],
) {
    if grpc.is_empty() {
        return;
    }
    let age = |a: Attached| match a {
        Attached::Http(i) => http[i].object.meta.age_key(),
        Attached::Grpc(i) => grpc[i].object.meta.age_key(),
    };
    // (kind, route, gateway, loser of a conflict with this route).
    let mut losers: Vec<(Attached, ObjectRef, String)> = Vec::new();
    for g in gateways.iter_mut() {
        for l in g.listeners.iter_mut() {
            if l.grpc_attachments.is_empty() || l.attachments.is_empty() {
                continue;
            }
            let mut all: Vec<(Attached, &Vec<HostKey>)> = l
                .attachments
                .iter()
                .map(|(i, h)| (Attached::Http(*i), h))
                .chain(
                    l.grpc_attachments
                        .iter()
                        .map(|(i, h)| (Attached::Grpc(*i), h)),
                )
                .collect();
            all.sort_by(|a, b| age(a.0).cmp(&age(b.0)));
            let mut kept: Vec<(Attached, &Vec<HostKey>)> = Vec::new();
            let mut rejected: Vec<(Attached, Attached)> = Vec::new();
            for (route, hosts) in all {
                let winner = kept.iter().find(|(other, other_hosts)| {
                    matches!(
                        (route, *other),
                        (Attached::Http(_), Attached::Grpc(_))
                            | (Attached::Grpc(_), Attached::Http(_))
                    ) && hosts_intersect(hosts, other_hosts)
                });
                match winner {
                    Some((w, _)) => rejected.push((route, *w)),
                    None => kept.push((route, hosts)),
                }
            }
            for (loser, winner) in rejected {
                let (key, winner_name) =
                    (route_key(loser, http, grpc), describe(winner, http, grpc));
                match loser {
                    Attached::Http(i) => {
                        l.attachments.retain(|(x, _)| *x != i);
                        l.attached.remove(&key);
                    }
                    Attached::Grpc(i) => {
                        l.grpc_attachments.retain(|(x, _)| *x != i);
                        l.attached.remove(&attached_key(&key));
                    }
                }
                let why = format!(
                    "listener {}: hostnames intersect those of the older {winner_name}",
                    l.name
                );
                losers.push((loser, key, why));
            }
        }
    }
    for (loser, key, why) in losers {
        let kind = match loser {
            Attached::Http(_) => "HTTPRoute",
            Attached::Grpc(_) => GRPC_ROUTE,
        };
        let Some(status) = statuses
            .iter_mut()
            .find(|s| s.kind == kind && s.route == key)
        else {
            continue;
        };
        for parent in status.parents.iter_mut() {
            let gw = ObjectRef {
                namespace: parent.parent_ref.namespace.clone(),
                name: parent.parent_ref.name.clone(),
            };
            let Some(g) = gateways.iter().find(|g| g.key == gw) else {
                continue;
            };
            let still_attached = g.listeners.iter().any(|l| {
                selects(&parent.parent_ref, l)
                    && match loser {
                        Attached::Http(i) => l.attachments.iter().any(|(x, _)| *x == i),
                        Attached::Grpc(i) => l.grpc_attachments.iter().any(|(x, _)| *x == i),
                    }
            });
            if still_attached {
                continue;
            }
            for c in parent.conditions.iter_mut() {
                if c.type_ == "Accepted" && c.status == "True" {
                    *c = condition(
                        "Accepted",
                        false,
                        "NotAllowedByListeners",
                        why.clone(),
                        c.observed_generation,
                    );
                }
            }
        }
    }
}

fn selects(parent: &ParentRefStatus, l: &ListenerCtx) -> bool {
    parent.section_name.as_deref().is_none_or(|s| s == l.name)
        && parent.port.is_none_or(|p| p == l.port)
}

fn hosts_intersect(a: &[HostKey], b: &[HostKey]) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.covers(y) || y.covers(x)))
}

fn route_key(a: Attached, http: &[CompiledRoute<'_>], grpc: &[GrpcCompiledRoute<'_>]) -> ObjectRef {
    match a {
        Attached::Http(i) => http[i].key.clone(),
        Attached::Grpc(i) => grpc[i].key.clone(),
    }
}

fn describe(a: Attached, http: &[CompiledRoute<'_>], grpc: &[GrpcCompiledRoute<'_>]) -> String {
    match a {
        Attached::Http(i) => format!("HTTPRoute {}", http[i].key),
        Attached::Grpc(i) => format!("{GRPC_ROUTE} {}", grpc[i].key),
    }
}
