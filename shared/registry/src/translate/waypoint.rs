//! The waypoint's snapshot: for every Service port bound to the waypoint
//! (label `istio.io/use-waypoint`), a route table chosen by destination
//! Service rather than by listener and Host (GAMMA):
//! - HTTPRoutes in the Service's namespace whose parentRef is the Service
//!   (`group: ""`, `kind: Service`, optional `port`), in Gateway API
//!   precedence order (hostnames are ignored: the destination is already known);
//! - otherwise one catch-all route to the Service port's own endpoints.
//!
//! AuthorizationPolicies whose `targetRefs` name the Service or the waypoint
//! are attached to each of the Service's ports (`l7_authz`).
//!
//! Rules and clusters are compiled by the same code as the gateway's
//! (`compile_route`, `BackendResolver`), so whatever traffic policy that code
//! attaches applies in the waypoint as well.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_config::gateway_api::experimental::httproutes::HttpRouteParentRefs;
use mesh_config::{HttpRouteSpec, Meta, Object, Resources};

use super::backends::BackendResolver;
use super::hostnames::HostKey;
use super::precedence::precedence_key;
use super::routes::{compile_route, CompiledRoute};
use crate::service_routes::{ServiceRoute, ServiceRoutes};
use crate::snapshot::{ObjectRef, RouteEntry, RouteTable, Snapshot};
use crate::workloads::{WaypointBinding, Waypoints};

/// Builds the snapshot of waypoint `waypoint` (`namespace/name`): only
/// `services` is filled. Never fails: a Service whose routes are all invalid
/// gets no entry (its requests are answered 404 by the engine).
pub fn translate_waypoint(
    resources: &Resources,
    waypoints: &Waypoints,
    waypoint: &ObjectRef,
) -> Snapshot {
    let mut resolver = BackendResolver::new(resources);
    let mut route_objects: Vec<_> = resources
        .http_routes
        .values()
        .filter(|r| service_parents(&r.spec).next().is_some())
        .collect();
    route_objects.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));
    let routes: Vec<CompiledRoute<'_>> = route_objects
        .into_iter()
        .enumerate()
        .map(|(rank, r)| compile_route(r, rank, &mut resolver))
        .collect();

    // Mesh VirtualServices: for Service ports no HTTPRoute takes (HTTPRoute wins).
    let virtual_services = super::virtual_services::compile_all(resources, &mut resolver);
    let mut vs_report = super::virtual_services_apply::VsReport::default();
    let mut by_vip = HashMap::new();
    for ((namespace, name), service) in &resources.services {
        let bound = matches!(
            waypoints.for_service(namespace, name),
            Some(WaypointBinding::Bound(w)) if w.namespace == waypoint.namespace && w.name == waypoint.name
        );
        if !bound {
            continue;
        }
        let Some(vip) = service
            .spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let authz = super::l7_authz::l7_authz_for(
            resources,
            waypoint,
            &ObjectRef {
                namespace: namespace.clone(),
                name: name.clone(),
            },
        )
        .map(Arc::new);
        for port in service.spec.ports.iter().flatten() {
            let Ok(port_number) = u16::try_from(port.port) else {
                continue;
            };
            let service_ref = ObjectRef {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            let gamma = gamma_table(&routes, &service_ref, port_number);
            let gamma_names = match gamma {
                Some(_) => super::virtual_services_apply::gamma_route_names(
                    resources,
                    &service_ref,
                    port_number,
                ),
                None => Vec::new(),
            };
            let vs_table = super::virtual_services_apply::service_table(
                waypoint,
                &service_ref,
                port_number,
                &gamma_names,
                &virtual_services,
                &mut vs_report,
            );
            let (table, from_routes) = match (gamma, vs_table) {
                (Some(table), _) | (None, Some(table)) => (table, true),
                (None, None) => (
                    default_table(&service_ref, port_number, &mut resolver),
                    false,
                ),
            };
            by_vip.insert(
                SocketAddr::new(vip, port_number),
                Arc::new(ServiceRoute {
                    service: service_ref,
                    port: port_number,
                    table: Arc::new(table),
                    from_routes,
                    authz: authz.clone(),
                }),
            );
        }
    }
    let mut snapshot = Snapshot {
        services: ServiceRoutes { by_vip },
        ..Default::default()
    };
    snapshot.status.routes = vs_report.statuses(&virtual_services);
    snapshot
}

/// parentRefs that name a Service (core group).
fn service_parents(spec: &HttpRouteSpec) -> impl Iterator<Item = &HttpRouteParentRefs> {
    spec.parent_refs.iter().flatten().filter(|p| {
        p.kind.as_deref() == Some("Service") && p.group.as_deref().is_none_or(str::is_empty)
    })
}

/// The entries of the (producer) routes attached to `service:port`, or None
/// when no valid route attaches.
fn gamma_table(routes: &[CompiledRoute<'_>], service: &ObjectRef, port: u16) -> Option<RouteTable> {
    let mut entries = Vec::new();
    for route in routes {
        // Producer routes only: a route in another namespace would be a
        // consumer route, which applies to that namespace's clients alone.
        if route.key.namespace != service.namespace {
            continue;
        }
        let attached = service_parents(&route.object.spec).any(|p| {
            p.name == service.name
                && p.namespace
                    .as_deref()
                    .is_none_or(|ns| ns == service.namespace)
                && p.port.is_none_or(|p| p == i32::from(port))
        });
        if !attached {
            continue;
        }
        for rule in &route.rules {
            for (mi, m) in rule.matchers.iter().enumerate() {
                let key = precedence_key(&HostKey::Any, m, route.rank, rule.rule.rule_index, mi);
                entries.push((key, m, &rule.rule));
            }
        }
    }
    if entries.is_empty() {
        return None;
    }
    entries.sort_unstable_by_key(|e| e.0);
    Some(RouteTable {
        entries: entries
            .into_iter()
            .map(|(_, m, rule)| RouteEntry {
                matcher: m.clone(),
                rule: rule.clone(),
            })
            .collect(),
    })
}

/// One catch-all rule to the Service port, compiled from an equivalent
/// HTTPRoute so that it gets exactly what a written route would.
fn default_table(service: &ObjectRef, port: u16, resolver: &mut BackendResolver<'_>) -> RouteTable {
    let spec: HttpRouteSpec = serde_json::from_value(serde_json::json!({
        "rules": [{"backendRefs": [{"name": service.name, "port": port}]}]
    }))
    .expect("a static HTTPRoute shape");
    let object = Object {
        meta: Meta {
            namespace: service.namespace.clone(),
            name: format!("{}-default", service.name),
            ..Default::default()
        },
        spec,
    };
    let compiled = compile_route(&object, 0, resolver);
    RouteTable {
        entries: compiled
            .rules
            .into_iter()
            .flat_map(|rule| {
                let r = rule.rule;
                rule.matchers.into_iter().map(move |m| RouteEntry {
                    matcher: m,
                    rule: r.clone(),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use mesh_config::load_str;

    use super::*;
    use crate::snapshot::{BackendTarget, Filter};
    use crate::workloads::{WorkloadRegistry, DEFAULT_TRUST_DOMAIN};

    const CONFIG: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{value: 10.0.0.50}]
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}, {name: alt, port: 81}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: apps, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: alt, port: 8081}]
endpoints: [{addresses: [10.0.1.2]}, {addresses: [10.0.2.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: unbound, namespace: apps}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-waypoint, value: "yes"}]}
    backendRefs: [{name: echo, port: 80}]
  - backendRefs: [{name: echo, port: 80, weight: 3}, {name: unbound, port: 80, weight: 1}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: elsewhere}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: apps}]
  rules: [{backendRefs: [{name: unbound, namespace: apps, port: 80}]}]
"#;

    fn snapshot() -> Snapshot {
        let loaded = load_str("w.yaml", CONFIG);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let registry = WorkloadRegistry::build(&loaded.resources, DEFAULT_TRUST_DOMAIN);
        let key = ObjectRef {
            namespace: "apps".into(),
            name: "waypoint".into(),
        };
        translate_waypoint(&loaded.resources, &registry.waypoints, &key)
    }

    fn cluster_names(entry: &RouteEntry) -> Vec<(String, u32)> {
        entry
            .rule
            .backends
            .iter()
            .map(|b| match &b.target {
                BackendTarget::Cluster(c) => (c.name.clone(), b.weight),
                BackendTarget::Invalid { reason } => (reason.clone(), b.weight),
            })
            .collect()
    }

    #[test]
    fn gamma_routes_by_service_port_in_precedence_order() {
        let s = snapshot();
        let route = s.services.get("10.96.0.1:80".parse().unwrap()).unwrap();
        assert!(route.from_routes);
        let entries = &route.table.entries;
        assert_eq!(entries.len(), 2, "producer route only: {entries:?}");
        assert!(matches!(&entries[0].matcher.path, crate::PathMatch::Prefix(p) if p == "/v2"));
        assert!(matches!(
            entries[0].rule.filters[0],
            Filter::RequestHeaders(_)
        ));
        assert_eq!(
            cluster_names(&entries[1]),
            vec![
                ("apps/echo:80".to_string(), 3),
                ("apps/unbound:80".to_string(), 1)
            ]
        );
    }

    #[test]
    fn a_port_without_routes_gets_the_default_route_to_its_endpoints() {
        let s = snapshot();
        let route = s.services.get("10.96.0.1:81".parse().unwrap()).unwrap();
        assert!(!route.from_routes);
        assert_eq!(route.table.entries.len(), 1);
        let BackendTarget::Cluster(c) = &route.table.entries[0].rule.backends[0].target else {
            panic!("default route must resolve");
        };
        assert_eq!(
            c.endpoints,
            vec![
                "10.0.1.2:8081".parse::<SocketAddr>().unwrap(),
                "10.0.2.2:8081".parse().unwrap()
            ]
        );
        assert!(
            s.services.get("10.96.0.2:80".parse().unwrap()).is_none(),
            "a Service without the label is not the waypoint's"
        );
        assert!(s.ports.is_empty());
        let json = serde_json::to_value(&s.services).unwrap();
        assert!(json["by_vip"]["10.96.0.1:81"].is_object(), "{json}");
    }
}
