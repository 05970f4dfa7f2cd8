//! Inbound HBONE (15008, inside the destination pod's namespace): mTLS with
//! the pod's certificate (clients must present a mesh identity), then each
//! CONNECT stream is checked — the authority must be this pod, the
//! AuthorizationPolicy must allow the peer — and piped to the app, connected
//! from the client's address when IP_TRANSPARENT allows it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mesh_hbone::{
    ConnectHandler, ConnectRequest, ConnectionInfo, H2Stream, PipeOutcome, Refusal, Server,
    ServerConfig, TunnelOutcome,
};
use mesh_registry::workloads::{AuthzDecision, ConnectionAttrs, WorkloadRegistry};
use monoio::net::TcpStream;

use crate::metrics::{AccessLog, ConnLabels};
use crate::proxy::PodProxy;

pub async fn handle(proxy: Rc<PodProxy>, stream: TcpStream, peer: SocketAddr) {
    let tls = match mesh_tls::accept(proxy.tls.server_config(), stream).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::info!(pod = %proxy.workload.uid, %peer, error = %e, "HBONE TLS handshake refused");
            return;
        }
    };
    let identity: Arc<str> = tls.peer_identity().to_string().into();
    proxy
        .metrics
        .hbone_connections_accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let server = Server::new(
        ServerConfig::default(),
        Inbound {
            proxy: proxy.clone(),
            peer,
            streams: RefCell::new(HashMap::new()),
        },
    );
    let info = ConnectionInfo {
        peer_identity: Some(identity),
        peer_addr: Some(peer),
        local_addr: None,
    };
    // On shutdown: GOAWAY (no new streams), open streams finish.
    let drain = proxy.worker.drain().clone();
    let serving = server.serve(tls, info);
    let mut serving = std::pin::pin!(serving);
    let result = monoio::select! {
        result = &mut serving => result,
        _ = drain.signaled() => {
            server.shutdown();
            serving.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(pod = %proxy.workload.uid, %peer, error = %e, "HBONE connection ended");
    }
}

/// When an allowed stream started, and its metric labels.
type OpenStream = (Instant, ConnLabels);

struct Inbound {
    proxy: Rc<PodProxy>,
    /// The TCP peer of the HBONE connection (in-pod mode: the source pod).
    peer: SocketAddr,
    /// Open streams by client address (several when a client sends no
    /// `forwarded`): start time and labels.
    streams: RefCell<HashMap<Option<SocketAddr>, Vec<OpenStream>>>,
}

impl Inbound {
    /// The source for policy and for the app: the HBONE connection's peer,
    /// which in in-pod mode is the source pod itself. `forwarded` is only
    /// logged: an authenticated peer could put any address there.
    fn source_ip(&self, _request: &ConnectRequest) -> IpAddr {
        self.peer.ip()
    }

    fn labels(
        &self,
        registry: &WorkloadRegistry,
        request: &ConnectRequest,
        flags: &'static str,
    ) -> ConnLabels {
        let source = registry.workload(self.source_ip(request));
        let destination = &self.proxy.workload;
        ConnLabels {
            reporter: "destination",
            source_workload: source.map(|w| w.name.clone()).unwrap_or_default(),
            source_workload_namespace: source.map(|w| w.namespace.clone()).unwrap_or_default(),
            source_principal: request.peer_identity.as_deref().unwrap_or("").to_string(),
            destination_workload: destination.name.clone(),
            destination_workload_namespace: destination.namespace.clone(),
            destination_principal: destination.identity.clone(),
            destination_service: String::new(),
            connection_security_policy: "mutual_tls",
            response_flags: flags,
        }
    }

    fn refuse(&self, request: &ConnectRequest, labels: ConnLabels, refusal: Refusal) -> Refusal {
        self.proxy.metrics.opened(&labels);
        self.proxy.metrics.closed(&labels, 0, 0);
        AccessLog {
            direction: "inbound",
            labels: &labels,
            source: request.forwarded_for.unwrap_or(self.peer),
            destination: request.authority,
            sent: 0,
            received: 0,
            duration: Default::default(),
            error: Some(refusal.to_string()),
        }
        .emit();
        refusal
    }
}

impl ConnectHandler for Inbound {
    type Upstream = TcpStream;

    async fn connect(&self, request: &ConnectRequest) -> Result<TcpStream, Refusal> {
        let start = Instant::now();
        let registry = self.proxy.shared.registry.load();
        if request.authority.ip() != self.proxy.workload.ip {
            let labels = self.labels(&registry, request, "UNKNOWN_WORKLOAD");
            return Err(self.refuse(
                request,
                labels,
                Refusal::Unavailable(format!("{} is not this pod", request.authority.ip())),
            ));
        }
        // Policy from the current registry: a config change applies to new streams.
        let workload = registry
            .workload(self.proxy.workload.ip)
            .cloned()
            .unwrap_or_else(|| self.proxy.workload.clone());
        let attrs = ConnectionAttrs {
            source_ip: self.source_ip(request),
            source_identity: request.peer_identity.as_deref(),
            destination_port: request.authority.port(),
        };
        if let AuthzDecision::Deny(reason) = registry.policies.authorize(&workload, &attrs) {
            let labels = self.labels(&registry, request, "DENY");
            return Err(self.refuse(request, labels, Refusal::Denied(reason)));
        }
        match self
            .proxy
            .connect_app(request.authority, self.source_ip(request))
            .await
        {
            Ok(stream) => {
                let labels = self.labels(&registry, request, "");
                self.proxy.metrics.opened(&labels);
                self.streams
                    .borrow_mut()
                    .entry(request.forwarded_for)
                    .or_default()
                    .push((start, labels));
                Ok(stream)
            }
            Err(e) => {
                let labels = self.labels(&registry, request, "CONNECT");
                Err(self.refuse(
                    request,
                    labels,
                    Refusal::Unavailable(format!("cannot connect to the app: {e}")),
                ))
            }
        }
    }

    async fn serve_tunnel(
        &self,
        _request: &ConnectRequest,
        tunnel: H2Stream,
        upstream: TcpStream,
    ) -> PipeOutcome {
        tunnel.pipe_tcp(upstream).await
    }

    fn finished(&self, request: &ConnectRequest, outcome: &TunnelOutcome) {
        let TunnelOutcome::Piped(piped) = outcome else {
            return;
        };
        let entry = {
            let mut streams = self.streams.borrow_mut();
            let entry = streams
                .get_mut(&request.forwarded_for)
                .and_then(|open| open.pop());
            if streams
                .get(&request.forwarded_for)
                .is_some_and(|open| open.is_empty())
            {
                streams.remove(&request.forwarded_for);
            }
            entry
        };
        let Some((start, labels)) = entry else {
            return;
        };
        // Into the tunnel = read from the app; out of it = written to the app.
        self.proxy
            .metrics
            .closed(&labels, piped.out_of_tunnel, piped.into_tunnel);
        AccessLog {
            direction: "inbound",
            labels: &labels,
            source: request.forwarded_for.unwrap_or(self.peer),
            destination: request.authority,
            sent: piped.out_of_tunnel,
            received: piped.into_tunnel,
            duration: start.elapsed(),
            error: piped.result.as_ref().err().map(|e| e.to_string()),
        }
        .emit();
    }
}
