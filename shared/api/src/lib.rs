//! Wire types for ringmesh's control plane, generated from `proto/` at build time.
//!
//! - [`istio::workload`]: Istio's ztunnel `Address` (Workload | Service) — field numbers are
//!   Istio's, so istiod can program our ztunnel and our controller can program Istio's.
//! - [`istio::security`]: Istio's ztunnel L4 `Authorization`.
//! - [`istio::v1::auth`]: the CA service (`IstioCertificateService/CreateCertificate`).
//! - [`envoy::service::discovery::v3`]: Delta ADS messages and the tonic client/server.
//! - [`ringmesh::l7::v1`]: our own L7 config for gateways and waypoints.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod istio {
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    }
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
    pub mod v1 {
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
}

pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

pub mod ringmesh {
    pub mod l7 {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ringmesh.l7.v1.rs"));
        }
    }
}

/// Re-exported so users need no direct prost dependency to encode/decode.
pub use prost;
pub use prost_types;

/// Type URLs as Istio's ztunnel subscribes to them.
pub mod type_url {
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
    /// ringmesh's gateway/waypoint L7 config (one resource per proxy).
    pub const L7_PROXY: &str = "type.googleapis.com/ringmesh.l7.v1.Proxy";
}

/// Wraps a message in `google.protobuf.Any` with the given type URL.
pub fn to_any<M: prost::Message>(type_url: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

/// Decodes an `Any` after checking its type URL, so a resource of the wrong type is an error
/// rather than garbage.
pub fn from_any<M: prost::Message + Default>(
    expected_type_url: &str,
    any: &prost_types::Any,
) -> Result<M, DecodeError> {
    if any.type_url != expected_type_url {
        return Err(DecodeError::WrongType {
            expected: expected_type_url.to_string(),
            got: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(DecodeError::Malformed)
}

#[derive(Debug)]
pub enum DecodeError {
    WrongType { expected: String, got: String },
    Malformed(prost::DecodeError),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::WrongType { expected, got } => {
                write!(f, "resource type {got:?}, expected {expected:?}")
            }
            DecodeError::Malformed(e) => write!(f, "malformed resource: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Istio's xDS resource name for a Workload (its uid) and a Service (`namespace/hostname`).
pub fn address_resource_name(address: &istio::workload::Address) -> Option<String> {
    use istio::workload::address::Type;
    match address.r#type.as_ref()? {
        Type::Workload(w) => Some(w.uid.clone()),
        Type::Service(s) => Some(format!("{}/{}", s.namespace, s.hostname)),
    }
}

/// Istio's xDS resource name for an Authorization: `namespace/name`.
pub fn authorization_resource_name(policy: &istio::security::Authorization) -> String {
    format!("{}/{}", policy.namespace, policy.name)
}
