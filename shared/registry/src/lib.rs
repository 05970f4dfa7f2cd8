//! The registry: the immutable snapshot data-plane workers read, and the
//! translation from configuration resources to it.

pub mod l4;
pub mod service_routes;
pub mod snapshot;
pub mod status;
pub mod tls;
pub mod translate;
pub mod workloads;
pub mod xds;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use l4::{HostMap, L4Backend, L4Listener, L4Route, L4Routes};
pub use service_routes::{ServiceRoute, ServiceRoutes};
pub use snapshot::*;
pub use translate::l7_authz::L7Authz;
pub use translate::{translate, translate_loaded, translate_waypoint, TranslateOptions};

/// Shared handle through which the control thread publishes snapshots and
/// workers read them (`load()` per connection or request).
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

pub fn new_handle(snapshot: Snapshot) -> SnapshotHandle {
    Arc::new(ArcSwap::from_pointee(snapshot))
}
