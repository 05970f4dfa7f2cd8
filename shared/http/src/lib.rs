//! The L7 engine: HTTP/1.1 server and client, routing, filters, traffic
//! policy and per-worker upstream pools.

pub mod metrics;

use std::rc::Rc;
use std::sync::Arc;

use mesh_registry::SnapshotHandle;
use mesh_runtime::{Accepted, ConnectionHandler};

pub use metrics::{HttpMetrics, WorkerMetrics};

/// One per worker: serves every HTTP connection that worker accepts.
pub struct HttpHandler {
    #[allow(dead_code)]
    snapshots: SnapshotHandle,
    #[allow(dead_code)]
    metrics: Arc<WorkerMetrics>,
}

impl HttpHandler {
    pub fn new(snapshots: SnapshotHandle, metrics: Arc<WorkerMetrics>) -> Self {
        Self { snapshots, metrics }
    }
}

impl ConnectionHandler for HttpHandler {
    fn handle(self: Rc<Self>, conn: Accepted) -> impl std::future::Future<Output = ()> + 'static {
        async move {
            drop(conn);
        }
    }
}
