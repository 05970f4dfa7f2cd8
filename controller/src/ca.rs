//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Authorization rule: the request metadata Struct carries `node` (the node
//! the calling ztunnel runs on); the CSR must ask for exactly one SPIFFE
//! identity, and some pod on that node must run as it (per the current
//! registry).
//!
//! Caller authentication (Istio checks a Kubernetes service-account token
//! bound to the node; we use per-node bootstrap tokens): the gRPC metadata
//! must carry `authorization: Bearer <token>` equal to the token the config
//! Secret `istio-system/ringmesh-node-tokens` holds for the claimed node
//! (key = node name, value = token, in `stringData` or `data`). Without that
//! Secret every request is refused, unless the controller runs with
//! `--ca-allow-unauthenticated`.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mesh_api::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_api::prost_types::value::Kind;
use mesh_tls::{CaError, CertificateAuthority, Identity};
use tonic::{Request, Response, Status};

use crate::state::Controller;

/// The metadata field naming the caller's node.
pub const NODE_METADATA_FIELD: &str = "node";

/// How a caller proves it runs on the node it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerAuth {
    /// `authorization: Bearer <token>` matching the node's bootstrap token.
    NodeTokens,
    /// Anyone may claim any node (development only).
    Unauthenticated,
}

pub struct CaService {
    ca: Arc<CertificateAuthority>,
    controller: Arc<Controller>,
    auth: CallerAuth,
}

impl CaService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        controller: Arc<Controller>,
        auth: CallerAuth,
    ) -> Self {
        Self {
            ca,
            controller,
            auth,
        }
    }

    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    /// The decision and the signing, separate from the gRPC plumbing.
    /// `bearer`: the token of the caller's `authorization: Bearer` header.
    pub fn create(
        &self,
        request: &IstioCertificateRequest,
        bearer: Option<&str>,
    ) -> Result<Vec<String>, Status> {
        let node = request
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(NODE_METADATA_FIELD))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "request metadata must carry a string field `{NODE_METADATA_FIELD}` naming the caller's node"
                ))
            })?;
        if self.auth == CallerAuth::NodeTokens {
            self.authenticate(&node, bearer)?;
        }
        let requested = requested_identity(&request.csr).map_err(Status::invalid_argument)?;
        let identity: Identity = requested.parse().map_err(|e| {
            Status::invalid_argument(format!(
                "CSR identity {requested:?} is not a SPIFFE identity: {e}"
            ))
        })?;
        let registry = self.controller.state().registry.clone();
        let entitled = registry
            .workloads
            .values()
            .any(|w| w.node == node && w.identity == requested);
        if !entitled {
            return Err(Status::permission_denied(format!(
                "node {node:?} runs no pod with identity {requested}"
            )));
        }
        let lifetime = (request.validity_duration > 0)
            .then(|| Duration::from_secs(request.validity_duration as u64));
        let issued = self
            .ca
            .sign_csr(&request.csr, &identity, lifetime)
            .map_err(|e| match e {
                CaError::IdentityNotAuthorized { .. } => Status::permission_denied(e.to_string()),
                CaError::BadCsr(_) | CaError::UnsupportedKey => {
                    Status::invalid_argument(e.to_string())
                }
                other => Status::internal(other.to_string()),
            })?;
        tracing::info!(%node, identity = %requested, "certificate issued");
        Ok(issued.chain_pem)
    }
}

impl CaService {
    fn authenticate(&self, node: &str, bearer: Option<&str>) -> Result<(), Status> {
        let state = self.controller.state();
        let Some(tokens) = state.node_tokens.as_ref() else {
            return Err(Status::unauthenticated(format!(
                "no node tokens are configured (Secret {}/{}); the CA signs for nobody",
                NODE_TOKENS_SECRET.0, NODE_TOKENS_SECRET.1
            )));
        };
        let Some(presented) = bearer else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <node token>` metadata",
            ));
        };
        match tokens.get(node) {
            Some(expected) if constant_time_eq(expected.as_bytes(), presented.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated(format!(
                "the token presented is not node {node:?}'s"
            ))),
            None => Err(Status::permission_denied(format!(
                "node {node:?} has no bootstrap token"
            ))),
        }
    }
}

/// The Secret holding per-node bootstrap tokens: `(namespace, name)`.
pub const NODE_TOKENS_SECRET: (&str, &str) = ("istio-system", "ringmesh-node-tokens");

/// Compares without an early exit on the first differing byte (no timing hint).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Bearer <token>` → `<token>`.
fn bearer_token<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

/// The single URI SAN a CSR asks for.
fn requested_identity(csr_pem: &str) -> Result<String, String> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| format!("CSR cannot be parsed: {e}"))?;
    let uris: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            rcgen::SanType::URI(uri) => Ok(uri.as_str().to_string()),
            other => Err(format!("CSR asks for a non-URI SAN {other:?}")),
        })
        .collect::<Result<_, _>>()?;
    match uris.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("CSR asks for no identity (no URI SAN)".into()),
        _ => Err(format!(
            "CSR asks for several identities: {}",
            uris.join(", ")
        )),
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let cert_chain = self.create(request.get_ref(), bearer_token(&request))?;
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
