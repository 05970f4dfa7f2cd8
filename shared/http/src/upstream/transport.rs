//! The gateway's transport per upstream address (north-south into the mesh):
//!
//! 1. DestinationRule `tls` of the cluster the address belongs to:
//!    settings that cannot be applied (bad CA bundle, MUTUAL) → refused;
//!    `SIMPLE` → TLS we originate with the rule's settings (built at
//!    translation); `ISTIO_MUTUAL` → HBONE, which needs the address to be
//!    a mesh workload (else refused: we would not know whom to verify);
//!    `DISABLE` → no TLS from us (the mesh rules below still apply).
//! 2. A mesh workload (a captured pod, the registry's HBONE workloads) →
//!    HBONE to `podIP:15008` verifying its identity, presenting ours.
//! 3. A Service VIP:port (a cluster of a Service whose ingress goes through
//!    its waypoint, see `mesh_registry`'s `mesh_ingress`) → HBONE to the
//!    waypoint (round robin over its addresses) with the VIP as
//!    `:authority`; a waypoint that does not exist → refused (fail closed).
//! 4. Anything else → plain TCP.
//!
//! The HTTP/1.1 pool is keyed by address, so the transport must be a
//! function of the address too: the clusters' TLS settings are indexed by
//! endpoint once per snapshot and worker; an address in two clusters with
//! different settings (one with a rule's `tls`, one without included) takes
//! the first cluster's, in route order.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_registry::workloads::{WaypointBinding, WorkloadRegistry};
use mesh_registry::{
    BackendTarget, Cluster, Filter, ListenerSet, RouteRule, Snapshot, SnapshotHandle,
    UpstreamTlsPolicy, VirtualHosts,
};
use mesh_tls::rustls::pki_types::ServerName;

use super::connect::HBONE_PORT;
use super::connector::{Transport, TransportLookup};

/// The lookup a gateway worker installs. `mesh`: the workload registry
/// when the gateway has a mesh identity (`--ca-dir`); without it nothing
/// goes over HBONE.
pub fn gateway_transports(
    snapshots: SnapshotHandle,
    mesh: Option<Arc<ArcSwap<WorkloadRegistry>>>,
) -> TransportLookup {
    let index: RefCell<Option<(u64, TlsIndex)>> = RefCell::new(None);
    let next_waypoint = Cell::new(0usize);
    Box::new(move |addr| {
        let snapshot = snapshots.load();
        let mut index = index.borrow_mut();
        if index.as_ref().is_none_or(|(v, _)| *v != snapshot.version) {
            *index = Some((snapshot.version, TlsIndex::build(&snapshot)));
        }
        let tls = index.as_ref().and_then(|(_, i)| i.get(addr));
        let registry = mesh.as_ref().map(|m| m.load_full());
        let turn = next_waypoint.get();
        next_waypoint.set(turn.wrapping_add(1));
        decide(addr, tls, registry.as_deref(), turn)
    })
}

/// The transport of `addr` given its cluster's TLS settings and the mesh
/// (None: no mesh identity). `turn` spreads connections over a waypoint's
/// addresses.
pub fn decide(
    addr: SocketAddr,
    tls: Option<&UpstreamTlsPolicy>,
    mesh: Option<&WorkloadRegistry>,
    turn: usize,
) -> Transport {
    let refuse = |reason: String| Transport::Refuse(reason.into());
    if let Some(tls) = tls {
        if let Some(error) = &tls.error {
            return refuse(error.clone());
        }
        match tls.mode.as_str() {
            "SIMPLE" => return simple(addr, tls),
            "ISTIO_MUTUAL" => {
                let Some(mesh) = mesh else {
                    return refuse(format!(
                        "tls.mode ISTIO_MUTUAL toward {addr}, but this proxy has no mesh identity (--ca-dir)"
                    ));
                };
                return in_mesh(addr, mesh, turn).unwrap_or_else(|| {
                    refuse(format!(
                        "tls.mode ISTIO_MUTUAL toward {addr}, which is no mesh workload"
                    ))
                });
            }
            _ => {}
        }
    }
    mesh.and_then(|mesh| in_mesh(addr, mesh, turn))
        .unwrap_or(Transport::Tcp)
}

fn simple(addr: SocketAddr, tls: &UpstreamTlsPolicy) -> Transport {
    let Some(config) = tls.client_config.clone() else {
        return Transport::Refuse(
            format!("tls.mode SIMPLE toward {addr} has no client settings").into(),
        );
    };
    let server_name = tls
        .server_name
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    Transport::Tls {
        config,
        server_name,
    }
}

/// HBONE when `addr` is a mesh workload or a Service VIP bound to a
/// waypoint; None when the mesh does not know it.
fn in_mesh(addr: SocketAddr, mesh: &WorkloadRegistry, turn: usize) -> Option<Transport> {
    if let Some(workload) = mesh.workload(addr.ip()).filter(|w| w.is_captured()) {
        return Some(Transport::Hbone {
            via: SocketAddr::new(addr.ip(), HBONE_PORT),
            identity: workload.identity.as_str().into(),
        });
    }
    let service = mesh.service(addr)?;
    match mesh.waypoint_of(service)? {
        WaypointBinding::Bound(waypoint) => {
            let ip = waypoint.addresses[turn % waypoint.addresses.len()];
            Some(Transport::Hbone {
                via: SocketAddr::new(ip, HBONE_PORT),
                identity: waypoint.identity.as_str().into(),
            })
        }
        WaypointBinding::Missing { namespace, name } => Some(Transport::Refuse(
            format!(
                "Service {}/{} uses waypoint {namespace}/{name}, which does not exist (fail closed)",
                service.namespace, service.name
            )
            .into(),
        )),
    }
}

/// Endpoint → the TLS settings of its cluster, for the clusters the
/// snapshot's routes reach.
#[derive(Default)]
struct TlsIndex(HashMap<SocketAddr, Arc<Cluster>>);

impl TlsIndex {
    fn build(snapshot: &Snapshot) -> Self {
        let mut index = TlsIndex::default();
        for port in snapshot.ports.values() {
            index.add_listeners(&port.listeners);
        }
        index
    }

    fn get(&self, addr: SocketAddr) -> Option<&UpstreamTlsPolicy> {
        self.0.get(&addr)?.policy.tls.as_ref()
    }

    fn add_listeners(&mut self, set: &ListenerSet) {
        let listeners = set
            .exact
            .values()
            .chain(set.wildcard.iter().map(|(_, l)| l))
            .chain(set.any.iter());
        for listener in listeners {
            self.add_hosts(&listener.routes);
        }
    }

    fn add_hosts(&mut self, hosts: &VirtualHosts) {
        let tables = hosts
            .exact
            .values()
            .chain(hosts.wildcard.iter().map(|(_, t)| t))
            .chain(hosts.any.iter());
        for table in tables {
            for entry in &table.entries {
                self.add_rule(&entry.rule);
            }
        }
    }

    fn add_rule(&mut self, rule: &RouteRule) {
        let mut filters: Vec<&Filter> = rule.filters.iter().collect();
        for backend in &rule.backends {
            filters.extend(&backend.filters);
            if let BackendTarget::Cluster(cluster) = &backend.target {
                self.add_cluster(cluster);
            }
        }
        for filter in filters {
            if let Filter::Mirror(m) = filter {
                self.add_cluster(&m.target);
            }
        }
    }

    fn add_cluster(&mut self, cluster: &Arc<Cluster>) {
        for ep in &cluster.endpoints {
            match self.0.get(ep) {
                None => {
                    self.0.insert(*ep, cluster.clone());
                }
                Some(first)
                    if !same_tls(first.policy.tls.as_ref(), cluster.policy.tls.as_ref()) =>
                {
                    tracing::debug!(
                        endpoint = %ep,
                        kept = %first.name,
                        ignored = %cluster.name,
                        "an endpoint of two clusters with different DestinationRule tls: the first cluster's applies"
                    );
                }
                Some(_) => {}
            }
        }
        for subset in cluster.policy.subsets.values() {
            self.add_cluster(subset);
        }
    }
}

fn same_tls(a: Option<&UpstreamTlsPolicy>, b: Option<&UpstreamTlsPolicy>) -> bool {
    let key = |p: Option<&UpstreamTlsPolicy>| {
        p.map(|p| {
            (
                p.mode.clone(),
                p.server_name.clone(),
                p.subject_alt_names.clone(),
                p.insecure_skip_verify,
                p.error.clone(),
            )
        })
    };
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Pod
metadata: {name: wp, namespace: apps, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {serviceAccountName: waypoint, containers: []}
status: {podIP: 10.0.2.9}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: apps, annotations: {ringmesh.io/netns: /run/netns/x}}
spec: {serviceAccountName: echo, containers: []}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: apps}
spec: {containers: []}
status: {podIP: 10.0.1.4}
---
apiVersion: v1
kind: Service
metadata: {name: bound, namespace: apps, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lost, namespace: apps, labels: {istio.io/use-waypoint: nowhere}}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
"#;

    fn mesh() -> WorkloadRegistry {
        let loaded = mesh_config::load_str("mesh.yaml", MESH);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        WorkloadRegistry::build(&loaded.resources, "cluster.local")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tls(mode: &str) -> UpstreamTlsPolicy {
        UpstreamTlsPolicy {
            mode: mode.into(),
            ..Default::default()
        }
    }

    #[test]
    fn mesh_workloads_get_hbone_with_their_identity() {
        let m = mesh();
        match decide(addr("10.0.1.3:8080"), None, Some(&m), 0) {
            Transport::Hbone { via, identity } => {
                assert_eq!(via, addr("10.0.1.3:15008"));
                assert_eq!(&*identity, "spiffe://cluster.local/ns/apps/sa/echo");
            }
            other => panic!("{other:?}"),
        }
        // Not captured, or no mesh identity: plain TCP.
        assert!(matches!(
            decide(addr("10.0.1.4:8080"), None, Some(&m), 0),
            Transport::Tcp
        ));
        assert!(matches!(
            decide(addr("10.0.1.3:8080"), None, None, 0),
            Transport::Tcp
        ));
    }

    #[test]
    fn a_vip_bound_to_a_waypoint_goes_to_the_waypoint_or_fails_closed() {
        let m = mesh();
        match decide(addr("10.96.0.10:80"), None, Some(&m), 3) {
            Transport::Hbone { via, identity } => {
                assert_eq!(via, addr("10.0.2.9:15008"));
                assert_eq!(&*identity, "spiffe://cluster.local/ns/apps/sa/waypoint");
            }
            other => panic!("{other:?}"),
        }
        match decide(addr("10.96.0.11:80"), None, Some(&m), 0) {
            Transport::Refuse(why) => assert!(why.contains("apps/nowhere"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_index_gives_each_endpoint_its_clusters_tls() {
        let loaded = mesh_config::load_str(
            "edge.yaml",
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec: {gatewayClassName: ringmesh, listeners: [{name: http, port: 8080, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /secure}}]
    backendRefs: [{name: secure, port: 443}]
  - backendRefs: [{name: plain, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: default}
spec: {ports: [{port: 443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: secure-1, namespace: default, labels: {kubernetes.io/service-name: secure}}
addressType: IPv4
ports: [{port: 8443}]
endpoints: [{addresses: [192.0.2.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: plain-1, namespace: default, labels: {kubernetes.io/service-name: plain}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [192.0.2.2]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure, namespace: default}
spec: {host: secure, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, sni: s.example}}}
"#,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let snapshot = mesh_registry::translate(&loaded.resources, &Default::default());
        let index = TlsIndex::build(&snapshot);
        let secure = index.get(addr("192.0.2.1:8443")).expect("the rule's tls");
        assert_eq!(secure.mode, "SIMPLE");
        assert_eq!(secure.server_name.as_deref(), Some("s.example"));
        assert!(index.get(addr("192.0.2.2:8080")).is_none());
        match decide(addr("192.0.2.1:8443"), Some(secure), None, 0) {
            Transport::Tls { server_name, .. } => assert_eq!(server_name.to_str(), "s.example"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn destination_rule_modes() {
        let m = mesh();
        // ISTIO_MUTUAL: HBONE to mesh workloads, refused elsewhere.
        assert!(matches!(
            decide(
                addr("10.0.1.3:8080"),
                Some(&tls("ISTIO_MUTUAL")),
                Some(&m),
                0
            ),
            Transport::Hbone { .. }
        ));
        assert!(matches!(
            decide(
                addr("10.0.1.4:8080"),
                Some(&tls("ISTIO_MUTUAL")),
                Some(&m),
                0
            ),
            Transport::Refuse(_)
        ));
        assert!(matches!(
            decide(addr("10.0.1.3:8080"), Some(&tls("ISTIO_MUTUAL")), None, 0),
            Transport::Refuse(_)
        ));
        // DISABLE: no TLS of ours; outside the mesh that is plain TCP.
        assert!(matches!(
            decide(addr("10.0.1.4:8080"), Some(&tls("DISABLE")), Some(&m), 0),
            Transport::Tcp
        ));
        // SIMPLE without settings, or settings with an error: refused, never plaintext.
        assert!(matches!(
            decide(addr("192.0.2.1:443"), Some(&tls("SIMPLE")), None, 0),
            Transport::Refuse(_)
        ));
        let broken = UpstreamTlsPolicy {
            error: Some("DestinationRule apps/x: tls: caCertificates /nope: not found".into()),
            ..tls("SIMPLE")
        };
        match decide(addr("192.0.2.1:443"), Some(&broken), None, 0) {
            Transport::Refuse(why) => assert!(why.contains("apps/x"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
