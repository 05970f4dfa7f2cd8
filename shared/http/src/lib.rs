//! The L7 engine: HTTP/1.1 server and client, routing, filters, traffic
//! policy and per-worker upstream pools.
//!
//! One [`HttpHandler`] per worker serves every connection that worker
//! accepts: it reads requests (httparse), routes them against the current
//! snapshot (one `load` per request), applies the route's filters, forwards
//! to a backend endpoint over a per-worker keep-alive pool and streams the
//! response back. Bodies stream in both directions, never buffered whole.
//! The worker's runtime must have its timer enabled (`enable_timer()`).

pub mod access_log;
pub mod body;
pub mod codec;
pub mod filters;
pub mod h2;
pub mod io;
mod local;
pub mod metrics;
pub mod policy;
mod proxy;
mod retry;
pub mod route;
mod server;
pub mod tls;
mod tunnel;
pub mod upstream;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mesh_registry::SnapshotHandle;
use mesh_runtime::{Accepted, ConnectionHandler};
use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use metrics::{HttpMetrics, WorkerMetrics};

/// Limits and timeouts of the HTTP server side.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// A request's header block must arrive within this (slowloris guard): 408.
    pub request_header_timeout: Duration,
    /// Largest request header block: 431 beyond.
    pub max_request_header_bytes: usize,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// Largest request body accepted (413 beyond). None: no limit.
    pub max_request_body_bytes: Option<u64>,
    /// Request bodies up to this size (with a known length) are read whole
    /// before forwarding, which makes them replayable for retries and mirrors.
    pub max_buffered_body_bytes: usize,
    /// Largest upstream response header block (502 beyond).
    pub max_response_header_bytes: usize,
    /// Idle upstream connections kept per endpoint per worker.
    pub max_idle_per_endpoint: usize,
    /// Establishing an upstream connection (502 on expiry unless a route
    /// timeout is shorter).
    pub connect_timeout: Duration,
    /// Upper bound for a mirrored request, whose response is discarded.
    pub mirror_timeout: Duration,
    /// A body (request or response) that makes no progress for this long is
    /// abandoned: 408 for a request body, the connection is closed otherwise.
    pub body_idle_timeout: Duration,
    /// HTTP/2 toward clients (ALPN h2 on HTTPS, h2c on HTTP listeners).
    pub h2: h2::H2Options,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            request_header_timeout: Duration::from_secs(30),
            max_request_header_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(300),
            max_request_body_bytes: None,
            max_buffered_body_bytes: 64 * 1024,
            max_response_header_bytes: 64 * 1024,
            max_idle_per_endpoint: 64,
            connect_timeout: Duration::from_secs(5),
            mirror_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(300),
            h2: h2::H2Options::default(),
        }
    }
}

/// One per worker: serves every HTTP connection that worker accepts.
pub struct HttpHandler {
    pub(crate) snapshots: SnapshotHandle,
    pub(crate) metrics: Arc<WorkerMetrics>,
    pub(crate) options: HttpOptions,
    pub(crate) pool: upstream::pool::Pool,
    /// h2c upstream connections (clusters with appProtocol h2c/grpc).
    pub(crate) h2_pool: upstream::h2pool::H2Pool,
    pub(crate) rng: RefCell<SmallRng>,
    /// Round-robin position per cluster name.
    pub(crate) round_robin: RefCell<HashMap<String, usize>>,
    /// Traffic policy state (balancers, outlier detection, pool limits, rate limits).
    pub(crate) policy: policy::WorkerPolicy,
}

impl HttpHandler {
    pub fn new(
        snapshots: SnapshotHandle,
        metrics: Arc<WorkerMetrics>,
        options: HttpOptions,
    ) -> Self {
        Self {
            snapshots,
            metrics,
            pool: upstream::pool::Pool::new(options.max_idle_per_endpoint),
            h2_pool: upstream::h2pool::H2Pool::new(),
            options,
            rng: RefCell::new(SmallRng::from_os_rng()),
            round_robin: RefCell::new(HashMap::new()),
            policy: Default::default(),
        }
    }
}

impl HttpHandler {
    /// Serves HTTP/1.1 over any stream (e.g. TLS-terminated: `scheme` "https").
    /// `port` is the listener port the connection arrived on.
    pub fn serve_stream<S: io::ClientStream>(
        self: Rc<Self>,
        stream: S,
        peer: std::net::SocketAddr,
        port: u16,
        drain: mesh_runtime::Drain,
        scheme: &'static str,
    ) -> impl std::future::Future<Output = ()> + 'static {
        server::serve_stream(self, stream, peer, port, drain, scheme)
    }

    /// Waypoint: serves HTTP/1.1 over a tunnel that was opened for the
    /// Service `service` (`VIP:port`, the HBONE `:authority`). Requests are
    /// routed with that Service's table ([`mesh_registry::ServiceRoutes`]),
    /// not by port and Host. `peer`: the original client.
    pub fn serve_service_stream<S: io::ClientStream>(
        self: Rc<Self>,
        stream: S,
        peer: std::net::SocketAddr,
        service: std::net::SocketAddr,
        drain: mesh_runtime::Drain,
    ) -> impl std::future::Future<Output = ()> + 'static {
        server::serve_service_stream(self, stream, peer, service, None, drain)
    }

    /// [`HttpHandler::serve_service_stream`] for a tunnel whose HBONE peer
    /// proved `peer_identity` (SPIFFE URI): the Service's L7
    /// AuthorizationPolicies see it as `source.principal`.
    pub fn serve_service_stream_from<S: io::ClientStream>(
        self: Rc<Self>,
        stream: S,
        peer: std::net::SocketAddr,
        service: std::net::SocketAddr,
        peer_identity: Option<Rc<str>>,
        drain: mesh_runtime::Drain,
    ) -> impl std::future::Future<Output = ()> + 'static {
        server::serve_service_stream(self, stream, peer, service, peer_identity, drain)
    }
}

impl HttpHandler {
    /// Serves HTTP/2 over any stream with tokio's I/O traits that starts with
    /// the client preface (e.g. a TLS stream that negotiated ALPN h2, or an
    /// HBONE tunnel carrying gRPC). `scheme` as for [`HttpHandler::serve_stream`].
    pub fn serve_h2<S>(
        self: Rc<Self>,
        io: S,
        peer: std::net::SocketAddr,
        port: u16,
        drain: mesh_runtime::Drain,
        scheme: &'static str,
    ) -> impl std::future::Future<Output = ()> + 'static
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let conn = h2::server::Conn {
            peer,
            port,
            scheme,
            sni: None,
            drain,
            active: Default::default(),
            service: None,
            peer_identity: None,
        };
        h2::server::serve(self, io, conn, true)
    }
}

impl ConnectionHandler for HttpHandler {
    fn handle(self: Rc<Self>, conn: Accepted) -> impl std::future::Future<Output = ()> + 'static {
        server::serve(self, conn)
    }
}
