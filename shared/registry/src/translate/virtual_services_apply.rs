//! Where compiled VirtualServices go: host groups of a gateway's listeners,
//! route tables of a waypoint's Service ports, and their status. The
//! precedence rule with HTTPRoute is documented in
//! [`virtual_services`](super::virtual_services).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mesh_config::Resources;

use super::conditions::{condition, parent_status, resolved_refs};
use super::hostnames::{intersect, HostKey};
use super::listeners::ListenerCtx;
use super::virtual_services::CompiledVirtualService;
use crate::snapshot::{ListenerProtocol, ObjectRef, RouteEntry, RouteTable, VirtualHosts};
use crate::status::RouteStatus;

/// How one VirtualService fared on one proxy (a Gateway or a waypoint).
#[derive(Default)]
struct Outcome {
    /// Hosts it serves there.
    served: usize,
    /// `host: HTTPRoute ns/name[, ...]` for every host an HTTPRoute took.
    overridden: Vec<String>,
    /// A listener's allowedRoutes.namespaces kept it out.
    not_allowed: bool,
}

/// Outcomes by (VirtualService index, proxy), for status.
#[derive(Default)]
pub struct VsReport {
    outcomes: BTreeMap<(usize, ObjectRef), Outcome>,
}

impl VsReport {
    fn outcome(&mut self, vs: usize, proxy: &ObjectRef) -> &mut Outcome {
        self.outcomes.entry((vs, proxy.clone())).or_default()
    }

    /// One status entry per VirtualService that applies somewhere.
    pub fn statuses(&self, vss: &[CompiledVirtualService<'_>]) -> Vec<RouteStatus> {
        let mut by_vs: BTreeMap<usize, Vec<_>> = BTreeMap::new();
        for ((vi, proxy), outcome) in &self.outcomes {
            let vs = &vss[*vi];
            let generation = vs.object.meta.generation;
            let mut conditions = Vec::new();
            let accepted = if vs.rules.is_empty() && !vs.invalid.is_empty() {
                condition(
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    vs.invalid.join("; "),
                    generation,
                )
            } else if outcome.served == 0 && !outcome.overridden.is_empty() {
                overridden_condition("Accepted", false, &outcome.overridden, generation)
            } else if outcome.served == 0 && outcome.not_allowed {
                condition(
                    "Accepted",
                    false,
                    "NotAllowedByListeners",
                    "the Gateway's listeners do not allow routes from this namespace",
                    generation,
                )
            } else if outcome.served == 0 {
                condition(
                    "Accepted",
                    false,
                    "NoMatchingListenerHostname",
                    "no listener hostname of this Gateway intersects the hosts",
                    generation,
                )
            } else {
                condition("Accepted", true, "Accepted", "", generation)
            };
            let partly_overridden = outcome.served > 0 && !outcome.overridden.is_empty();
            conditions.push(accepted);
            conditions.push(resolved_refs(&vs.ref_problems, generation));
            if partly_overridden {
                conditions.push(overridden_condition(
                    "Overridden",
                    true,
                    &outcome.overridden,
                    generation,
                ));
            }
            if !vs.rules.is_empty() && !vs.invalid.is_empty() {
                conditions.push(condition(
                    "PartiallyInvalid",
                    true,
                    "UnsupportedValue",
                    format!("dropped invalid http routes: {}", vs.invalid.join("; ")),
                    generation,
                ));
            }
            by_vs.entry(*vi).or_default().push(parent_status(
                proxy.clone(),
                None,
                None,
                conditions,
            ));
        }
        by_vs
            .into_iter()
            .map(|(vi, parents)| RouteStatus {
                kind: "VirtualService".into(),
                route: vss[vi].key.clone(),
                parents,
            })
            .collect()
    }
}

fn overridden_condition(
    type_: &str,
    status: bool,
    overridden: &[String],
    generation: i64,
) -> crate::status::Condition {
    condition(
        type_,
        status,
        "OverriddenByHTTPRoute",
        format!(
            "an HTTPRoute for the same host wins over a VirtualService: {}",
            overridden.join("; ")
        ),
        generation,
    )
}

/// Adds the VirtualServices bound to `gateway` to the host groups of
/// listener `l` (HTTP and HTTPS listeners whose `allowedRoutes.namespaces`
/// admits the VirtualService's namespace, as for routes). `route_names`
/// gives the HTTPRoutes/GRPCRoutes attached to `l` per host group.
pub fn add_to_listener(
    vhosts: &mut VirtualHosts,
    gateway: &ObjectRef,
    l: &ListenerCtx,
    route_names: &HashMap<&HostKey, Vec<String>>,
    vss: &[CompiledVirtualService<'_>],
    report: &mut VsReport,
    resources: &Resources,
) {
    if !l.serves() || !matches!(l.protocol, ListenerProtocol::Http | ListenerProtocol::Https) {
        return;
    }
    let scope = gateway.to_string();
    let mut groups: Vec<(HostKey, Vec<RouteEntry>)> = Vec::new();
    for (vi, vs) in vss.iter().enumerate() {
        if !vs.on_gateway(gateway) {
            continue;
        }
        let hosts: Vec<HostKey> = vs
            .object
            .spec
            .hosts
            .iter()
            .map(|h| HostKey::parse(h))
            .collect();
        let outcome = report.outcome(vi, gateway);
        if !l.allows_namespace(&gateway.namespace, &vs.key.namespace, resources) {
            outcome.not_allowed = true;
            continue;
        }
        for host in intersect(&l.hostname, &hosts) {
            if let Some(names) = route_names.get(&host) {
                let shown = host.display().unwrap_or_else(|| "*".into());
                outcome.overridden.push(format!(
                    "{shown} on listener {}: {}",
                    l.name,
                    names.join(", ")
                ));
                continue;
            }
            outcome.served += 1;
            let entries = entries(vs, Some(l.port), &scope);
            match groups.iter_mut().find(|(h, _)| *h == host) {
                Some((_, list)) => list.extend(entries),
                None => groups.push((host, entries)),
            }
        }
    }
    for (host, entries) in groups {
        let table = Arc::new(RouteTable { entries });
        match host {
            HostKey::Exact(h) => {
                vhosts.exact.insert(h, table);
            }
            HostKey::Wildcard(s) => vhosts.wildcard.push((s, table)),
            HostKey::Any => vhosts.any = Some(table),
        }
    }
    vhosts
        .wildcard
        .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
}

/// A VirtualService's entries for one proxy: matches restricted to another
/// port or other gateways are left out.
fn entries(vs: &CompiledVirtualService<'_>, port: Option<u16>, scope: &str) -> Vec<RouteEntry> {
    vs.rules
        .iter()
        .flat_map(|r| r.matchers.iter())
        .filter(|(m, _)| m.port.is_none() || m.port == port)
        .filter(|(m, _)| m.gateways.is_empty() || m.gateways.iter().any(|g| g == scope))
        .map(|(m, rule)| RouteEntry {
            matcher: m.matcher.clone(),
            rule: rule.clone(),
        })
        .collect()
}

/// The waypoint's table for Service `service` port `port` from mesh
/// VirtualServices, when no HTTPRoute took it (`gamma_routes`: names of the
/// HTTPRoutes attached to it; they win). None: no VirtualService applies.
pub fn service_table(
    waypoint: &ObjectRef,
    service: &ObjectRef,
    port: u16,
    gamma_routes: &[String],
    vss: &[CompiledVirtualService<'_>],
    report: &mut VsReport,
) -> Option<RouteTable> {
    let fqdn = format!(
        "{}.{}.{}",
        service.name,
        service.namespace,
        super::destination_rules::CLUSTER_DOMAIN
    );
    let mut all = Vec::new();
    for (vi, vs) in vss.iter().enumerate() {
        if !vs.in_mesh() || !vs.serves_service(&fqdn) {
            continue;
        }
        let outcome = report.outcome(vi, waypoint);
        if !gamma_routes.is_empty() {
            outcome
                .overridden
                .push(format!("{fqdn}:{port}: {}", gamma_routes.join(", ")));
            continue;
        }
        let entries = entries(vs, Some(port), "mesh");
        if !entries.is_empty() {
            outcome.served += 1;
        }
        all.extend(entries);
    }
    (!all.is_empty()).then_some(RouteTable { entries: all })
}

/// `HTTPRoute ns/name` for every HTTPRoute whose parentRef is the Service
/// (its port or all ports), in the Service's namespace (producer routes).
pub fn gamma_route_names(resources: &Resources, service: &ObjectRef, port: u16) -> Vec<String> {
    resources
        .http_routes
        .values()
        .filter(|r| r.meta.namespace == service.namespace)
        .filter(|r| {
            r.spec.parent_refs.iter().flatten().any(|p| {
                p.kind.as_deref() == Some("Service")
                    && p.group.as_deref().is_none_or(str::is_empty)
                    && p.name == service.name
                    && p.namespace
                        .as_deref()
                        .is_none_or(|ns| ns == service.namespace)
                    && p.port.is_none_or(|p| p == i32::from(port))
            })
        })
        .map(|r| format!("HTTPRoute {}/{}", r.meta.namespace, r.meta.name))
        .collect()
}

/// The status of mesh VirtualServices on every waypoint (what each
/// waypoint's own snapshot reports), for the controller's status: one parent
/// per waypoint a Service of their hosts is bound to.
pub fn mesh_statuses(
    resources: &Resources,
    waypoints: &crate::workloads::Waypoints,
) -> Vec<RouteStatus> {
    if resources.virtual_services.is_empty() {
        return Vec::new();
    }
    let mut resolver = super::backends::BackendResolver::new(resources);
    let vss = super::virtual_services::compile_all(resources, &mut resolver);
    if !vss.iter().any(CompiledVirtualService::in_mesh) {
        return Vec::new();
    }
    let mut report = VsReport::default();
    for ((namespace, name), service) in &resources.services {
        let Some(crate::workloads::WaypointBinding::Bound(w)) =
            waypoints.for_service(namespace, name)
        else {
            continue;
        };
        let waypoint = ObjectRef {
            namespace: w.namespace.clone(),
            name: w.name.clone(),
        };
        let service_ref = ObjectRef {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        for port in service.spec.ports.iter().flatten() {
            let Ok(port) = u16::try_from(port.port) else {
                continue;
            };
            let gamma = gamma_route_names(resources, &service_ref, port);
            service_table(&waypoint, &service_ref, port, &gamma, &vss, &mut report);
        }
    }
    report.statuses(&vss)
}
