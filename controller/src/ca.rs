//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Authorization rule: the request metadata Struct carries `node` (the node
//! the calling ztunnel runs on); the CSR must ask for exactly one SPIFFE
//! identity, and some pod on that node must run as it (per the current
//! registry). NOT YET DONE: authenticating the caller as that node (Istio
//! checks the ztunnel's own certificate or a Kubernetes JWT); today any caller
//! that can reach the port may claim any node.

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

pub struct CaService {
    ca: Arc<CertificateAuthority>,
    controller: Arc<Controller>,
}

impl CaService {
    pub fn new(ca: Arc<CertificateAuthority>, controller: Arc<Controller>) -> Self {
        Self { ca, controller }
    }

    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    /// The decision and the signing, separate from the gRPC plumbing.
    pub fn create(&self, request: &IstioCertificateRequest) -> Result<Vec<String>, Status> {
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
        let cert_chain = self.create(request.get_ref())?;
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
