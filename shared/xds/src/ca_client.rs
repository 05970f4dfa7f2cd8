//! The data-plane side of the controller's CA: `istio.v1.auth.IstioCertificateService/
//! CreateCertificate` over the same gRPC endpoint as xDS (15010 plaintext, 15012 TLS).
//!
//! Lives here, not in mesh-tls, because it is a tonic client like [`crate::XdsClient`] and
//! shares its channel settings; mesh-tls stays free of gRPC. Per identity: a fresh ECDSA
//! P-256 key and CSR ([`mesh_tls::generate_key_and_csr`]), metadata `node=<node name>` (the
//! controller only signs identities of pods on that node) and, when configured,
//! `authorization: Bearer <node token>` (the controller checks it belongs to that node).
//! The returned chain is leaf first; its last element is the root the caller trusts.
//! Renewal is the caller's loop: [`mesh_tls::WorkloadCert::should_renew`] is half-life.

use std::time::Duration;

use mesh_api::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_api::istio::v1::auth::IstioCertificateRequest;
use mesh_api::prost_types::{value::Kind, Struct, Value};
use mesh_tls::{Identity, WorkloadCert};

/// The request metadata field naming the caller's node (the controller's rule).
pub const NODE_METADATA_FIELD: &str = "node";

#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// gRPC endpoint, e.g. `http://127.0.0.1:15010` or `https://controller:15012`.
    pub address: String,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// This proxy's node name.
    pub node: String,
    /// Node bootstrap token sent as `authorization: Bearer …`.
    pub token: Option<String>,
    /// Requested lifetime; the CA caps it (24 h).
    pub lifetime: Option<Duration>,
    pub timeout: Duration,
}

impl CaClientConfig {
    pub fn new(address: impl Into<String>, node: impl Into<String>) -> Self {
        CaClientConfig {
            address: address.into(),
            tls: None,
            node: node.into(),
            token: None,
            lifetime: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A certificate issued by the controller and the root it chains to.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert: WorkloadCert,
    /// The last element of the returned chain (PEM): the mesh's trust root.
    pub root_pem: String,
    /// The chain as returned (PEM, leaf first) and the private key (PKCS#8 PEM), for a
    /// client certificate on the xDS channel ([`crate::ClientIdentity`]).
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("IssuedCert")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct CaClient {
    config: CaClientConfig,
    channel: tonic::transport::Channel,
}

impl CaClient {
    /// Connects lazily: the first [`CaClient::issue`] opens the connection and a broken one
    /// is re-opened by the channel.
    pub fn new(config: CaClientConfig) -> Result<Self, String> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(config.address.clone())
            .map_err(|e| format!("bad CA address {:?}: {e}", config.address))?
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("CA TLS config: {e}"))?;
        }
        Ok(CaClient {
            channel: endpoint.connect_lazy(),
            config,
        })
    }

    /// Asks the controller for a certificate for `identity`.
    pub async fn issue(&self, identity: &Identity) -> Result<IssuedCert, String> {
        let key_and_csr = mesh_tls::generate_key_and_csr(identity).map_err(|e| e.to_string())?;
        let metadata = Struct {
            fields: [(
                NODE_METADATA_FIELD.to_string(),
                Value {
                    kind: Some(Kind::StringValue(self.config.node.clone())),
                },
            )]
            .into_iter()
            .collect(),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: key_and_csr.csr_pem,
            validity_duration: self
                .config
                .lifetime
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            metadata: Some(metadata),
        });
        if let Some(token) = &self.config.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the node token is not a valid header value".to_string())?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = IstioCertificateServiceClient::new(self.channel.clone())
            .create_certificate(request)
            .await
            .map_err(|s| {
                format!(
                    "CreateCertificate for {identity}: {:?}: {}",
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
        let chain_pem = response.cert_chain.concat();
        let chain =
            mesh_tls::certs_from_pem(&chain_pem, "issued chain").map_err(|e| e.to_string())?;
        let root = chain
            .last()
            .ok_or_else(|| "the CA returned an empty chain".to_string())?;
        let root_pem = mesh_tls::cert_to_pem(root);
        let cert = WorkloadCert::new(key_and_csr.key, chain, Some(identity))
            .map_err(|e| format!("certificate for {identity}: {e}"))?;
        Ok(IssuedCert {
            cert,
            root_pem,
            chain_pem,
            key_pem: key_and_csr.key_pem,
        })
    }
}
