//! Inbound plaintext (15006, inside the pod's namespace): connections from
//! outside the mesh, redirected by the pod's capture rules. PeerAuthentication
//! STRICT refuses them; otherwise AuthorizationPolicy applies (with no peer
//! identity) and the bytes are relayed to the app from the client's address.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mesh_config::MtlsMode;
use mesh_registry::workloads::{AuthzDecision, ConnectionAttrs};
use monoio::net::TcpStream;

use crate::copy;
use crate::metrics::{AccessLog, ConnLabels};
use crate::proxy::PodProxy;
use crate::sockets;

pub async fn handle(proxy: Rc<PodProxy>, stream: TcpStream, peer: SocketAddr) {
    let start = Instant::now();
    let target = match sockets::original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(pod = %proxy.workload.uid, error = %e, "inbound plaintext connection without an original destination; closing");
            return;
        }
    };
    let registry = proxy.shared.registry.load();
    let source = registry.workload(peer.ip()).cloned();
    let workload = registry
        .workload(proxy.workload.ip)
        .cloned()
        .unwrap_or_else(|| proxy.workload.clone());
    let labels = |flags: &'static str| ConnLabels {
        reporter: "destination",
        source_workload: source.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
        source_workload_namespace: source
            .as_ref()
            .map(|w| w.namespace.clone())
            .unwrap_or_default(),
        source_principal: String::new(),
        destination_workload: workload.name.clone(),
        destination_workload_namespace: workload.namespace.clone(),
        destination_principal: workload.identity.clone(),
        destination_service: String::new(),
        connection_security_policy: "none",
        response_flags: flags,
    };
    let refusal = if target.ip() != workload.ip {
        Some((
            "UNKNOWN_WORKLOAD",
            format!("{} is not this pod", target.ip()),
        ))
    } else if registry.policies.mtls_mode(&workload) == MtlsMode::Strict {
        Some((
            "DENY",
            "PeerAuthentication STRICT refuses plaintext".to_string(),
        ))
    } else {
        let attrs = ConnectionAttrs {
            source_ip: peer.ip(),
            source_identity: None,
            destination_port: target.port(),
        };
        match registry.policies.authorize(&workload, &attrs) {
            AuthzDecision::Allow => None,
            AuthzDecision::Deny(reason) => Some(("DENY", reason)),
        }
    };
    drop(registry);
    let log = |labels: &ConnLabels, sent, received, error: Option<String>| {
        AccessLog {
            direction: "inbound_plaintext",
            labels,
            source: peer,
            destination: target,
            sent,
            received,
            duration: start.elapsed(),
            error,
        }
        .emit()
    };
    if let Some((flags, reason)) = refusal {
        let labels = labels(flags);
        proxy.metrics.opened(&labels);
        proxy.metrics.closed(&labels, 0, 0);
        log(&labels, 0, 0, Some(reason));
        return;
    }
    match proxy.connect_app(target, peer.ip()).await {
        Ok(app) => {
            let labels = labels("");
            proxy.metrics.opened(&labels);
            let copied = copy::bidirectional(stream, app).await;
            proxy.metrics.closed(&labels, copied.a_to_b, copied.b_to_a);
            log(
                &labels,
                copied.a_to_b,
                copied.b_to_a,
                copied.error.map(|e| e.to_string()),
            );
        }
        Err(e) => {
            let labels = labels("CONNECT");
            proxy.metrics.opened(&labels);
            proxy.metrics.closed(&labels, 0, 0);
            log(
                &labels,
                0,
                0,
                Some(format!("cannot connect to the app: {e}")),
            );
        }
    }
}
