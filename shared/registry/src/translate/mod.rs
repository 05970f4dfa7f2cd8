//! Translation: configuration resources → snapshot (+ status).
//!
//! Steps: pick the served Gateways and validate their listeners
//! (`listeners`), compile every HTTPRoute once (`routes`: matches, filters,
//! backends, timeouts, retry), attach routes to listeners through their
//! parentRefs (allowedRoutes, sectionName/port, hostname intersection), then
//! build per-port listener sets and per-listener host groups with entries in
//! precedence order (`precedence`), and the status report.

mod backends;
mod certificates;
mod conditions;
pub mod destination_rules;
mod duration;
mod filters;
mod grpc;
mod grpc_attach;
mod hostnames;
mod l4;
mod l4_listeners;
pub mod l7_authz;
mod listeners;
mod matches;
mod precedence;
pub mod rate_limits;
mod routes;
mod virtual_services;
mod virtual_services_apply;
mod virtual_services_match;
mod virtual_services_policy;
mod waypoint;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_config::{Loaded, Resources};

use crate::snapshot::{
    ListenerProtocol, ListenerSet, ObjectRef, PortConfig, RouteEntry, RouteTable, Snapshot,
    VirtualHosts,
};
use crate::status::{
    Condition, GatewayStatus, ListenerStatus, RouteParentStatus, RouteStatus, StatusReport,
};
use crate::tls::{PortTls, SniCertificates};
use backends::{BackendResolver, GATEWAY_GROUP};
use conditions::{condition, parent_status, route_parent_conditions, ParentAttachment};
pub use duration::parse_duration;
use hostnames::{intersect, HostKey};
use listeners::{GatewayCtx, ListenerCtx};
use precedence::precedence_key;
use routes::{compile_route, CompiledRoute};
pub use virtual_services_apply::mesh_statuses as mesh_virtual_service_statuses;
pub use waypoint::translate_waypoint;

#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// Serve Gateways of this class (`ringmesh` by default).
    pub gateway_class: String,
    /// Serve only this Gateway.
    pub gateway: Option<ObjectRef>,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            gateway_class: "ringmesh".into(),
            gateway: None,
        }
    }
}

/// Builds the snapshot for the selected Gateways. Never fails: problems become
/// status conditions and `status.config_errors`. `version` is left at 0 for
/// the publisher to set.
pub fn translate(resources: &Resources, options: &TranslateOptions) -> Snapshot {
    let mut gateways = listeners::collect(resources, options);
    let mut resolver = BackendResolver::for_ingress(resources);

    // Routes in (creationTimestamp, namespace/name) order: their index is the
    // precedence tie-break rank.
    let mut route_objects: Vec<_> = resources.http_routes.values().collect();
    route_objects.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
    let routes: Vec<CompiledRoute<'_>> = route_objects
        .into_iter()
        .enumerate()
        .map(|(rank, r)| compile_route(r, rank, &mut resolver))
        .collect();

    let gateway_index: HashMap<ObjectRef, usize> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (g.key.clone(), i))
        .collect();
    let mut route_statuses = Vec::new();
    for (ri, route) in routes.iter().enumerate() {
        let parents = attach_route(ri, route, &mut gateways, &gateway_index, resources);
        if !parents.is_empty() {
            route_statuses.push(RouteStatus {
                kind: "HTTPRoute".into(),
                route: route.key.clone(),
                parents,
            });
        }
    }

    // GRPCRoutes: their own order (precedence ties), attachment and status; then the
    // HTTPRoute/GRPCRoute hostname conflict rule on every listener.
    let mut grpc_objects: Vec<_> = resources.grpc_routes.values().collect();
    grpc_objects.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
    let grpc_routes: Vec<grpc::GrpcCompiledRoute<'_>> = grpc_objects
        .into_iter()
        .enumerate()
        .map(|(rank, r)| grpc::compile_grpc_route(r, rank, &mut resolver))
        .collect();
    route_statuses.extend(grpc_attach::attach_grpc_routes(
        &grpc_routes,
        &mut gateways,
        &gateway_index,
        resources,
    ));
    grpc_attach::resolve_kind_conflicts(&mut gateways, &routes, &grpc_routes, &mut route_statuses);

    // VirtualServices bound to served Gateways join their listeners' host groups.
    let virtual_services = virtual_services::compile_all(resources, &mut resolver);
    let mut vs_report = virtual_services_apply::VsReport::default();
    let vs_ctx = (&virtual_services[..], &mut vs_report, resources);
    let ports = build_ports(&gateways, &routes, &grpc_routes, vs_ctx);
    route_statuses.extend(vs_report.statuses(&virtual_services));
    // TLSRoute/TCPRoute: attach, fill the L4 ports' tables, add their status.
    let ports = l4::translate_l4(
        ports,
        &mut gateways,
        &gateway_index,
        resources,
        &mut resolver,
        &mut route_statuses,
    );
    let gateway_statuses = gateways.iter().map(gateway_status).collect();
    Snapshot {
        version: 0,
        ports,
        status: StatusReport {
            gateways: gateway_statuses,
            routes: route_statuses,
            config_errors: resolver.config_errors(),
        },
        ..Default::default()
    }
}

/// `translate` plus the loader's errors in `status.config_errors`.
pub fn translate_loaded(loaded: &Loaded, options: &TranslateOptions) -> Snapshot {
    let mut snapshot = translate(&loaded.resources, options);
    let translation_errors = std::mem::take(&mut snapshot.status.config_errors);
    snapshot.status.config_errors = loaded.errors.iter().map(|e| e.to_string()).collect();
    snapshot.status.config_errors.extend(translation_errors);
    snapshot
}

/// Attaches one route to the listeners its parentRefs select; returns the
/// route's parent statuses (only for parents that are Gateways we serve).
fn attach_route(
    ri: usize,
    route: &CompiledRoute<'_>,
    gateways: &mut [GatewayCtx<'_>],
    gateway_index: &HashMap<ObjectRef, usize>,
    resources: &Resources,
) -> Vec<RouteParentStatus> {
    let generation = route.object.meta.generation;
    let route_ns = route.key.namespace.as_str();
    // A route whose every rule is invalid is not accepted anywhere.
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
        // Not one of ours (other class, filtered, or absent): another
        // controller's business, so no status from us.
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
                || !l.allows_http_route
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
                l.attached.insert(route.key.clone());
                l.attachments.push((ri, hosts));
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

fn build_ports(
    gateways: &[GatewayCtx<'_>],
    routes: &[CompiledRoute<'_>],
    grpc_routes: &[grpc::GrpcCompiledRoute<'_>],
    (virtual_services, vs_report, resources): (
        &[virtual_services::CompiledVirtualService<'_>],
        &mut virtual_services_apply::VsReport,
        &Resources,
    ),
) -> BTreeMap<u16, Arc<PortConfig>> {
    let mut sets: BTreeMap<u16, ListenerSet> = BTreeMap::new();
    let mut protocols: BTreeMap<u16, ListenerProtocol> = BTreeMap::new();
    let mut certificates: BTreeMap<u16, (SniCertificates, Vec<String>)> = BTreeMap::new();
    for g in gateways {
        for l in g.listeners.iter().filter(|l| l.serves()) {
            // Conflicts (protocol, hostname) were resolved in `listeners::collect`.
            protocols.entry(l.port).or_insert(l.protocol);
            if let Some(Ok(key)) = &l.certificate {
                let (certs, names) = certificates.entry(l.port).or_default();
                let hostname = l.hostname.display();
                certs.add(hostname.as_deref(), key.clone());
                names.push(hostname.unwrap_or_else(|| "*".into()));
            }
            let mut vhosts = virtual_hosts(l, routes, grpc_routes);
            virtual_services_apply::add_to_listener(
                &mut vhosts,
                &g.key,
                l,
                &attached_route_names(l, routes, grpc_routes),
                virtual_services,
                vs_report,
                resources,
            );
            let listener = Arc::new(crate::snapshot::Listener {
                gateway: g.key.clone(),
                name: l.name.clone(),
                hostname: l.hostname.display(),
                routes: vhosts,
            });
            let set = sets.entry(l.port).or_default();
            // Conflicts were resolved in `listeners::collect`, so each slot is free.
            match &l.hostname {
                HostKey::Exact(h) => {
                    set.exact.insert(h.clone(), listener);
                }
                HostKey::Wildcard(s) => set.wildcard.push((s.clone(), listener)),
                HostKey::Any => set.any = Some(listener),
            }
        }
    }
    sets.into_iter()
        .map(|(port, mut listeners)| {
            listeners
                .wildcard
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
            let protocol = protocols
                .get(&port)
                .copied()
                .unwrap_or(ListenerProtocol::Http);
            let tls = certificates.remove(&port).and_then(|(certs, names)| {
                match PortTls::new(certs, names) {
                    Ok(tls) => Some(Arc::new(tls)),
                    Err(e) => {
                        tracing::error!(port, "TLS configuration: {e}");
                        None
                    }
                }
            });
            (
                port,
                Arc::new(PortConfig {
                    port,
                    protocol,
                    listeners,
                    tls,
                }),
            )
        })
        .collect()
}

/// `Kind ns/name` of the HTTPRoutes and GRPCRoutes attached to `l`, per
/// host group (what a VirtualService for that host loses to).
fn attached_route_names<'l>(
    l: &'l ListenerCtx,
    routes: &[CompiledRoute<'_>],
    grpc_routes: &[grpc::GrpcCompiledRoute<'_>],
) -> HashMap<&'l HostKey, Vec<String>> {
    let mut names: HashMap<&HostKey, Vec<String>> = HashMap::new();
    let http = l
        .attachments
        .iter()
        .map(|(ri, hosts)| (format!("HTTPRoute {}", routes[*ri].key), hosts));
    let grpc = l
        .grpc_attachments
        .iter()
        .map(|(ri, hosts)| (format!("GRPCRoute {}", grpc_routes[*ri].key), hosts));
    for (name, hosts) in http.chain(grpc) {
        for h in hosts {
            let list = names.entry(h).or_default();
            if !list.contains(&name) {
                list.push(name.clone());
            }
        }
    }
    names
}

/// Groups a listener's routes by intersected hostname. Every group also gets
/// the entries of the less specific groups that cover it (after its own, per
/// the hostname precedence), because a request is matched only in its most
/// specific group.
fn virtual_hosts(
    l: &ListenerCtx,
    routes: &[CompiledRoute<'_>],
    grpc_routes: &[grpc::GrpcCompiledRoute<'_>],
) -> VirtualHosts {
    // (is a GRPCRoute, index into its attachment list); only one kind survives in a
    // host group (`grpc_attach::resolve_kind_conflicts`), so keys never compete.
    let mut groups: HashMap<&HostKey, Vec<(bool, usize)>> = HashMap::new();
    for (ai, (_, hosts)) in l.attachments.iter().enumerate() {
        for h in hosts {
            groups.entry(h).or_default().push((false, ai));
        }
    }
    for (ai, (_, hosts)) in l.grpc_attachments.iter().enumerate() {
        for h in hosts {
            groups.entry(h).or_default().push((true, ai));
        }
    }
    // Only wildcard groups and the Any group can cover another group.
    let mut covering: Vec<&HostKey> = groups
        .keys()
        .copied()
        .filter(|k| !matches!(k, HostKey::Exact(_)))
        .collect();
    covering.sort();

    let mut vhosts = VirtualHosts::default();
    for (&key, own) in &groups {
        let mut sources: Vec<(&HostKey, &Vec<(bool, usize)>)> = vec![(key, own)];
        for &c in &covering {
            if c != key && c.covers(key) {
                sources.push((c, &groups[c]));
            }
        }
        let mut entries = Vec::new();
        for (source, members) in sources {
            for &(is_grpc, ai) in members {
                if is_grpc {
                    let route = &grpc_routes[l.grpc_attachments[ai].0];
                    for rule in &route.rules {
                        let r = &rule.compiled;
                        for (mi, m) in r.matchers.iter().enumerate() {
                            let k = grpc::grpc_precedence_key(
                                source,
                                rule.specificity[mi],
                                route.rank,
                                r.rule.rule_index,
                                mi,
                            );
                            entries.push((grpc::EntryKey::Grpc(k), m, &r.rule));
                        }
                    }
                    continue;
                }
                let route = &routes[l.attachments[ai].0];
                for rule in &route.rules {
                    for (mi, m) in rule.matchers.iter().enumerate() {
                        let k = precedence_key(source, m, route.rank, rule.rule.rule_index, mi);
                        entries.push((grpc::EntryKey::Http(k), m, &rule.rule));
                    }
                }
            }
        }
        entries.sort_unstable_by_key(|e| e.0);
        let table = Arc::new(RouteTable {
            entries: entries
                .into_iter()
                .map(|(_, m, rule)| RouteEntry {
                    matcher: m.clone(),
                    rule: rule.clone(),
                })
                .collect(),
        });
        match key {
            HostKey::Exact(h) => {
                vhosts.exact.insert(h.clone(), table);
            }
            HostKey::Wildcard(s) => vhosts.wildcard.push((s.clone(), table)),
            HostKey::Any => vhosts.any = Some(table),
        }
    }
    vhosts
        .wildcard
        .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    vhosts
}

fn gateway_status(g: &GatewayCtx<'_>) -> GatewayStatus {
    let generation = g.object.meta.generation;
    let listeners: Vec<ListenerStatus> = g
        .listeners
        .iter()
        .map(|l| listener_status(l, generation))
        .collect();
    let accepted_count = g.listeners.iter().filter(|l| l.accepted.is_ok()).count();
    let serving = g.listeners.iter().any(|l| l.serves());
    let accepted = if accepted_count == g.listeners.len() {
        condition("Accepted", true, "Accepted", "gateway accepted", generation)
    } else if accepted_count > 0 {
        condition(
            "Accepted",
            true,
            "ListenersNotValid",
            "some listeners are not valid",
            generation,
        )
    } else {
        condition(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid",
            generation,
        )
    };
    let programmed = if serving {
        condition(
            "Programmed",
            true,
            "Programmed",
            "gateway programmed",
            generation,
        )
    } else {
        condition(
            "Programmed",
            false,
            "Invalid",
            "no listener can be served",
            generation,
        )
    };
    GatewayStatus {
        gateway: g.key.clone(),
        conditions: vec![accepted, programmed],
        listeners,
    }
}

fn listener_status(l: &ListenerCtx, generation: i64) -> ListenerStatus {
    let from = |type_: &str, r: &Result<(), listeners::Problem>, ok_reason: &str| -> Condition {
        match r {
            Ok(()) => condition(type_, true, ok_reason, "", generation),
            Err((reason, message)) => condition(type_, false, reason, message.clone(), generation),
        }
    };
    let conflicted = match &l.conflicted {
        None => condition("Conflicted", false, "NoConflicts", "", generation),
        Some((reason, message)) => {
            condition("Conflicted", true, reason, message.clone(), generation)
        }
    };
    let programmed = if l.serves() {
        condition("Programmed", true, "Programmed", "", generation)
    } else {
        condition(
            "Programmed",
            false,
            "Invalid",
            "listener is not served",
            generation,
        )
    };
    ListenerStatus {
        name: l.name.clone(),
        attached_routes: l.attached.len() as u32,
        supported_kinds: l.supported_kinds.clone(),
        conditions: vec![
            from("Accepted", &l.accepted, "Accepted"),
            from("ResolvedRefs", &l.resolved_refs, "ResolvedRefs"),
            conflicted,
            programmed,
        ],
    }
}
