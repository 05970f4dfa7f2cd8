//! The L7 engine: HTTP/1.1 server and client, routing, filters, traffic
//! policy and per-worker upstream pools.

pub mod metrics;

use std::rc::Rc;
use std::sync::Arc;

use mesh_registry::SnapshotHandle;
use mesh_runtime::{Accepted, ConnectionHandler};

pub use metrics::{HttpMetrics, WorkerMetrics};

/// Limits and timeouts of the HTTP server side.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// A request's header block must arrive within this (slowloris guard): 408.
    pub request_header_timeout: std::time::Duration,
    /// Largest request header block: 431 beyond.
    pub max_request_header_bytes: usize,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: std::time::Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            request_header_timeout: std::time::Duration::from_secs(30),
            max_request_header_bytes: 64 * 1024,
            idle_timeout: std::time::Duration::from_secs(300),
        }
    }
}

/// One per worker: serves every HTTP connection that worker accepts.
pub struct HttpHandler {
    #[allow(dead_code)]
    snapshots: SnapshotHandle,
    #[allow(dead_code)]
    metrics: Arc<WorkerMetrics>,
    #[allow(dead_code)]
    options: HttpOptions,
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
            options,
        }
    }
}

impl ConnectionHandler for HttpHandler {
    fn handle(self: Rc<Self>, conn: Accepted) -> impl std::future::Future<Output = ()> + 'static {
        async move {
            drop(conn);
        }
    }
}
