//! L4 ports: TLS passthrough (routed by the ClientHello's SNI, never
//! decrypted) and TCP (routed to the port's route). Each connection picks a
//! backend by weight, an endpoint at random, connects, and then copies bytes
//! both ways until both sides closed.

mod copy;
pub mod metrics;
mod passthrough;
mod tcp;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry::{
    BackendTarget, Cluster, L4Route, ListenerProtocol, PortConfig, SnapshotHandle,
};
use mesh_runtime::Accepted;
use monoio::net::TcpStream;

use metrics::{ConnLabels, WorkerL4Metrics};

#[derive(Debug, Clone)]
pub struct L4Options {
    /// A passthrough connection's ClientHello must arrive within this.
    pub client_hello_timeout: Duration,
    /// Connecting to one backend endpoint.
    pub connect_timeout: Duration,
}

impl Default for L4Options {
    fn default() -> Self {
        Self {
            client_hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl L4Options {
    /// The ClientHello gets as long as an HTTPS handshake (10 s, or the
    /// request header timeout if shorter); connects use the HTTP engine's timeout.
    pub fn from_http(http: &mesh_http::HttpOptions) -> Self {
        Self {
            client_hello_timeout: mesh_http::tls::TLS_HANDSHAKE_TIMEOUT
                .min(http.request_header_timeout),
            connect_timeout: http.connect_timeout,
        }
    }
}

/// One per worker: the L4 side of [`crate::handler::GatewayHandler`].
pub struct L4Handler {
    snapshots: SnapshotHandle,
    metrics: Arc<WorkerL4Metrics>,
    options: L4Options,
    /// xorshift state for the weighted and endpoint picks (per worker, no locks).
    rng: Cell<u64>,
}

impl L4Handler {
    pub fn new(
        snapshots: SnapshotHandle,
        metrics: Arc<WorkerL4Metrics>,
        options: L4Options,
        worker: usize,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            snapshots,
            metrics,
            options,
            rng: Cell::new((seed ^ (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1),
        }
    }

    /// The port's configuration when it is a TLS passthrough or TCP port in
    /// the current snapshot (read once per connection).
    pub fn l4_port(&self, port: u16) -> Option<Arc<PortConfig>> {
        self.snapshots
            .load()
            .ports
            .get(&port)
            .filter(|p| p.listeners.l4.is_some())
            .cloned()
    }

    pub async fn handle(self: Rc<Self>, conn: Accepted, port: Arc<PortConfig>) {
        let Some(routes) = port.listeners.l4.as_deref() else {
            return;
        };
        match port.protocol {
            ListenerProtocol::TlsPassthrough => passthrough::serve(&self, conn, routes).await,
            _ => tcp::serve(&self, conn, routes).await,
        }
    }

    fn random(&self) -> u64 {
        // xorshift64*: fast, and good enough to spread connections by weight.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Picks a backend by weight and connects to one of its endpoints
    /// (trying up to three on connect failure). Err: the response flag for
    /// the metrics (`NR`, `UH`, `UF`) and the cluster, if one was chosen.
    async fn connect(
        &self,
        route: Option<&L4Route>,
        peer: SocketAddr,
    ) -> Result<(TcpStream, Arc<Cluster>), (&'static str, Option<Arc<Cluster>>)> {
        let Some(route) = route else {
            return Err(("NR", None));
        };
        let cluster = match route.pick(self.random()).map(|b| &b.target) {
            Some(BackendTarget::Cluster(c)) => c.clone(),
            Some(BackendTarget::Invalid { reason }) => {
                tracing::debug!(%peer, route = %route.route, "invalid backend: {reason}");
                return Err(("NR", None));
            }
            None => return Err(("NR", None)),
        };
        let endpoints = &cluster.endpoints;
        if endpoints.is_empty() {
            return Err(("UH", Some(cluster)));
        }
        let start = (self.random() % endpoints.len() as u64) as usize;
        for i in 0..endpoints.len().min(3) {
            let addr = endpoints[(start + i) % endpoints.len()];
            match monoio::time::timeout(self.options.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, cluster));
                }
                Ok(Err(e)) => tracing::debug!(%peer, backend = %addr, "connect failed: {e}"),
                Err(_) => tracing::debug!(%peer, backend = %addr, "connect timed out"),
            }
        }
        Err(("UF", Some(cluster)))
    }

    /// Connects, writes `prefix` (the ClientHello already read), copies both
    /// ways, and records the connection.
    async fn proxy(
        &self,
        protocol: &'static str,
        client: TcpStream,
        peer: SocketAddr,
        route: Option<&L4Route>,
        prefix: Vec<u8>,
    ) {
        let (mut backend, cluster) = match self.connect(route, peer).await {
            Ok(ok) => ok,
            Err((flags, cluster)) => {
                let labels = ConnLabels::new(protocol, cluster.as_deref(), flags);
                self.metrics.opened(&labels);
                self.metrics.closed(&labels, 0, 0);
                tracing::debug!(%peer, flags, "L4 connection refused");
                return; // dropping the client socket closes it
            }
        };
        let labels = ConnLabels::new(protocol, Some(&cluster), "");
        self.metrics.opened(&labels);
        let prefix_len = prefix.len() as u64;
        if !prefix.is_empty() {
            if let Err(e) = copy::write_prefix(&mut backend, prefix).await {
                tracing::debug!(%peer, "writing the ClientHello to the backend failed: {e}");
                self.metrics.closed(&labels, 0, 0);
                return;
            }
        }
        let copied = copy::bidirectional(client, backend).await;
        self.metrics
            .closed(&labels, copied.sent + prefix_len, copied.received);
    }
}
