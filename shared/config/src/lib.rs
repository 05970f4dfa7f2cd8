//! Configuration resources loaded from Kubernetes-style YAML.
//!
//! `load_path` reads a file or folder; each document becomes a typed object in
//! `Resources`, or a `ConfigError` naming the file, the object and the field.

mod destination_rule;
mod errors;
mod grpc_route;
mod kinds;
mod l4_routes;
mod load;
mod rate_limit_policy;
mod security;
pub mod virtual_service;

pub use destination_rule::*;
pub use errors::ConfigError;
pub use grpc_route::GrpcRouteSpec;
pub use kinds::*;
pub use l4_routes::{TcpRouteSpec, TlsRouteSpec};
pub use load::{load_path, load_str, load_strs};
pub use rate_limit_policy::*;
pub use virtual_service::{validate_virtual_service, VirtualServiceSpec};

/// Re-exported so that consumers use the very same spec types.
pub use gateway_api;
pub use k8s_openapi;

/// The result of loading: everything that parsed, and every rejected document.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub resources: Resources,
    pub errors: Vec<ConfigError>,
}
