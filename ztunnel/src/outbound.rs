//! Outbound (15001): a connection the pod's app made, redirected here by the
//! pod's capture rules. SO_ORIGINAL_DST says where it was going:
//! - a Service VIP whose Service (or Namespace) uses a waypoint: HBONE to the
//!   waypoint (`waypointIP:15008`, `:authority VIP:port`); when the named
//!   waypoint does not exist, the connection is refused (fail closed). A
//!   waypoint's own connections are never sent back to a waypoint;
//! - a Service VIP: pick a ready endpoint (round robin);
//! - an endpoint (or a pod IP dialled directly) that is a captured workload:
//!   HBONE to `endpointIP:15008` with `:authority endpointIP:targetPort`;
//! - anything else: plain TCP passthrough from inside the pod.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mesh_hbone::{PoolKey, TunnelRequest};
use mesh_registry::workloads::{MeshService, Waypoint, WaypointBinding, Workload};
use monoio::net::TcpStream;

use crate::copy;
use crate::metrics::{AccessLog, ConnLabels};
use crate::proxy::{PodProxy, HBONE_PORT};
use crate::sockets;

pub async fn handle(proxy: Rc<PodProxy>, stream: TcpStream, peer: SocketAddr) {
    let start = Instant::now();
    let original = match sockets::original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(pod = %proxy.workload.uid, error = %e, "outbound connection without an original destination; closing");
            return;
        }
    };
    let registry = proxy.shared.registry.load();
    let service = registry.service(original).cloned();
    // A waypoint's own traffic goes to the endpoints it picked, never back to a waypoint.
    let from_waypoint = registry.waypoints.at(proxy.workload.ip).is_some();
    let binding = match &service {
        Some(svc) if !from_waypoint => registry.waypoint_of(svc).cloned(),
        _ => None,
    };
    match (binding, &service) {
        (Some(WaypointBinding::Bound(waypoint)), Some(svc)) => {
            drop(registry);
            return to_waypoint(&proxy, stream, peer, original, &waypoint, svc, start).await;
        }
        (Some(WaypointBinding::Missing { namespace, name }), Some(svc)) => {
            let labels = labels(&proxy, None, Some(svc), "none", WAYPOINT_MISSING);
            tracing::warn!(
                pod = %proxy.workload.uid,
                service = %format!("{}/{}", svc.namespace, svc.name),
                waypoint = %format!("{namespace}/{name}"),
                "refusing a connection: the Service uses a waypoint that does not exist (fail closed)"
            );
            refused(
                &proxy,
                &labels,
                peer,
                original,
                start,
                &format!("waypoint {namespace}/{name} does not exist"),
            );
            return;
        }
        _ => {}
    }
    let target = match &service {
        Some(svc) if svc.endpoints.is_empty() => {
            let labels = labels(&proxy, None, Some(svc), "none", "NO_HEALTHY_UPSTREAM");
            refused(
                &proxy,
                &labels,
                peer,
                original,
                start,
                "service has no ready endpoint",
            );
            return;
        }
        Some(svc) => {
            let i = proxy.next_endpoint.get();
            proxy.next_endpoint.set(i.wrapping_add(1));
            svc.endpoints[i % svc.endpoints.len()]
        }
        None => original,
    };
    let destination = registry
        .workload(target.ip())
        .filter(|w| w.is_captured())
        .cloned();
    drop(registry);
    match destination {
        Some(workload) => {
            hbone(
                &proxy,
                stream,
                peer,
                target,
                &workload,
                service.as_deref(),
                start,
            )
            .await
        }
        None => passthrough(&proxy, stream, peer, target, service.as_deref(), start).await,
    }
}

async fn hbone(
    proxy: &PodProxy,
    stream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    destination: &Workload,
    service: Option<&MeshService>,
    start: Instant,
) {
    let key = PoolKey::new(
        Some(proxy.workload.identity.as_str().into()),
        Some(destination.identity.as_str().into()),
        SocketAddr::new(target.ip(), HBONE_PORT),
    );
    let mut request = TunnelRequest::new(key, target);
    request.forwarded_for = Some(peer);
    match proxy.pool.connect(&request).await {
        Ok(tunnel) => {
            let labels = labels(proxy, Some(destination), service, "mutual_tls", "");
            proxy.metrics.opened(&labels);
            let outcome = tunnel.pipe_tcp(stream).await;
            proxy
                .metrics
                .closed(&labels, outcome.into_tunnel, outcome.out_of_tunnel);
            AccessLog {
                direction: "outbound",
                labels: &labels,
                source: peer,
                destination: target,
                sent: outcome.into_tunnel,
                received: outcome.out_of_tunnel,
                duration: start.elapsed(),
                error: outcome.result.err().map(|e| e.to_string()),
            }
            .emit();
        }
        Err(e) => {
            let flags = match e.status().map(|s| s.as_u16()) {
                Some(401) => "DENY",
                Some(503) => "UPSTREAM_FAILURE",
                _ => "CONNECT",
            };
            let labels = labels(proxy, Some(destination), service, "mutual_tls", flags);
            refused(proxy, &labels, peer, target, start, &e.to_string());
        }
    }
}

/// `response_flags` of a connection refused because its Service's waypoint is missing.
pub const WAYPOINT_MISSING: &str = "WAYPOINT_MISSING";

/// HBONE to the Service's waypoint, which does the L7 work and picks the
/// endpoint: `:authority` is the address the app dialled (VIP:port).
async fn to_waypoint(
    proxy: &PodProxy,
    stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
    waypoint: &Waypoint,
    service: &MeshService,
    start: Instant,
) {
    let i = proxy.next_endpoint.get();
    proxy.next_endpoint.set(i.wrapping_add(1));
    let address = waypoint.addresses[i % waypoint.addresses.len()];
    let key = PoolKey::new(
        Some(proxy.workload.identity.as_str().into()),
        Some(waypoint.identity.as_str().into()),
        SocketAddr::new(address, HBONE_PORT),
    );
    let mut request = TunnelRequest::new(key, original);
    request.forwarded_for = Some(peer);
    let waypoint_labels = |flags: &'static str| {
        let mut l = labels(proxy, None, Some(service), "mutual_tls", flags);
        l.destination_workload = waypoint.name.clone();
        l.destination_workload_namespace = waypoint.namespace.clone();
        l.destination_principal = waypoint.identity.clone();
        l
    };
    match proxy.pool.connect(&request).await {
        Ok(tunnel) => {
            let labels = waypoint_labels("");
            proxy.metrics.opened(&labels);
            let outcome = tunnel.pipe_tcp(stream).await;
            proxy
                .metrics
                .closed(&labels, outcome.into_tunnel, outcome.out_of_tunnel);
            AccessLog {
                direction: "outbound",
                labels: &labels,
                source: peer,
                destination: original,
                sent: outcome.into_tunnel,
                received: outcome.out_of_tunnel,
                duration: start.elapsed(),
                error: outcome.result.err().map(|e| e.to_string()),
            }
            .emit();
        }
        Err(e) => {
            let flags = match e.status().map(|s| s.as_u16()) {
                Some(401) => "DENY",
                Some(503) => "UPSTREAM_FAILURE",
                _ => "CONNECT",
            };
            let labels = waypoint_labels(flags);
            refused(proxy, &labels, peer, original, start, &e.to_string());
        }
    }
}

async fn passthrough(
    proxy: &PodProxy,
    stream: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    service: Option<&MeshService>,
    start: Instant,
) {
    match sockets::connect_in(&proxy.sockets, proxy.upstream(target, None)).await {
        Ok(upstream) => {
            let labels = labels(proxy, None, service, "none", "");
            proxy.metrics.opened(&labels);
            let copied = copy::bidirectional(stream, upstream).await;
            proxy.metrics.closed(&labels, copied.a_to_b, copied.b_to_a);
            AccessLog {
                direction: "outbound",
                labels: &labels,
                source: peer,
                destination: target,
                sent: copied.a_to_b,
                received: copied.b_to_a,
                duration: start.elapsed(),
                error: copied.error.map(|e| e.to_string()),
            }
            .emit();
        }
        Err(e) => {
            let labels = labels(proxy, None, service, "none", "CONNECT");
            refused(proxy, &labels, peer, target, start, &e.to_string());
        }
    }
}

fn refused(
    proxy: &PodProxy,
    labels: &ConnLabels,
    peer: SocketAddr,
    target: SocketAddr,
    start: Instant,
    error: &str,
) {
    proxy.metrics.opened(labels);
    proxy.metrics.closed(labels, 0, 0);
    AccessLog {
        direction: "outbound",
        labels,
        source: peer,
        destination: target,
        sent: 0,
        received: 0,
        duration: start.elapsed(),
        error: Some(error.to_string()),
    }
    .emit();
}

fn labels(
    proxy: &PodProxy,
    destination: Option<&Workload>,
    service: Option<&MeshService>,
    security: &'static str,
    flags: &'static str,
) -> ConnLabels {
    let source = &proxy.workload;
    ConnLabels {
        reporter: "source",
        source_workload: source.name.clone(),
        source_workload_namespace: source.namespace.clone(),
        source_principal: source.identity.clone(),
        destination_workload: destination.map(|w| w.name.clone()).unwrap_or_default(),
        destination_workload_namespace: destination
            .map(|w| w.namespace.clone())
            .unwrap_or_default(),
        destination_principal: destination.map(|w| w.identity.clone()).unwrap_or_default(),
        destination_service: service
            .map(|s| format!("{}.{}.svc.cluster.local", s.name, s.namespace))
            .unwrap_or_default(),
        connection_security_policy: security,
        response_flags: flags,
    }
}
