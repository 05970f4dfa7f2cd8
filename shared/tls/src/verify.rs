//! Peer verification for HBONE: the peer's chain must lead to one of our trust roots, and its
//! URI SAN must be an acceptable SPIFFE identity.
//!
//! rustls' `WebPkiServerVerifier` checks DNS names/IPs, never URI SANs, so both verifiers here
//! run rustls-webpki for the chain and then check the SPIFFE identity themselves.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as RustlsError, OtherError,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::certs::{certs_from_pem, CertError};
use crate::identity::{Identity, IdentityError};

/// The CA certificates we trust (normally the one mesh root; several during a root rotation).
#[derive(Debug, Clone)]
pub struct TrustRoots {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustRoots {
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        let anchors = certs
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| CertError::BadCertificate {
                        what: "trust root".to_string(),
                        detail: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustRoots { certs, anchors })
    }

    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::new(certs_from_pem(pem, "trust roots")?)
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

/// Why a peer certificate was refused. Carried inside rustls' error as
/// `Error::InvalidCertificate(CertificateError::Other(..))`; [`crate::TlsError`] extracts it.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("peer certificate does not chain to a trusted root: {0}")]
    Chain(webpki::Error),
    #[error("peer certificate identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("peer identity {found} is not in trust domain {expected}")]
    WrongTrustDomain { found: Identity, expected: String },
    #[error("peer identity {found} is not one of the expected identities [{}]",
        expected.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))]
    UnexpectedIdentity {
        found: Identity,
        expected: Vec<Identity>,
    },
}

impl From<VerifyError> for RustlsError {
    fn from(e: VerifyError) -> Self {
        RustlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// Shared by both verifiers: chain check and identity extraction.
#[derive(Debug)]
struct ChainChecker {
    roots: Arc<TrustRoots>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ChainChecker {
    fn new(roots: Arc<TrustRoots>, provider: &CryptoProvider) -> Self {
        ChainChecker {
            roots,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<Identity, VerifyError> {
        let cert = EndEntityCert::try_from(end_entity).map_err(VerifyError::Chain)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(VerifyError::Chain)?;
        Ok(Identity::from_certificate(end_entity)?)
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

/// Client side: the server must chain to our roots and present one of `expected`.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    checker: ChainChecker,
    expected: Vec<Identity>,
}

impl ServerIdentityVerifier {
    pub fn new(roots: Arc<TrustRoots>, provider: &CryptoProvider, expected: Vec<Identity>) -> Self {
        ServerIdentityVerifier {
            checker: ChainChecker::new(roots, provider),
            expected,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>, // HBONE sends no SNI; identity is checked instead
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        let found = self
            .checker
            .verify(end_entity, intermediates, now, KeyUsage::server_auth())?;
        if !self.expected.contains(&found) {
            return Err(VerifyError::UnexpectedIdentity {
                found,
                expected: self.expected.clone(),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.checker.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.checker.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checker.algorithms.supported_schemes()
    }
}

/// Server side: a client certificate is required, must chain to our roots and carry an
/// identity of our trust domain. Which identity may do what is policy, decided later.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    checker: ChainChecker,
    trust_domain: String,
}

impl ClientIdentityVerifier {
    pub fn new(roots: Arc<TrustRoots>, provider: &CryptoProvider, trust_domain: String) -> Self {
        ClientIdentityVerifier {
            checker: ChainChecker::new(roots, provider),
            trust_domain,
        }
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Clients have exactly one certificate; hints would only cost bytes.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        let found = self
            .checker
            .verify(end_entity, intermediates, now, KeyUsage::client_auth())?;
        if found.trust_domain() != self.trust_domain {
            return Err(VerifyError::WrongTrustDomain {
                found,
                expected: self.trust_domain.clone(),
            }
            .into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.checker.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.checker.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checker.algorithms.supported_schemes()
    }
}

/// The verification error inside a rustls error, if the handshake failed in our verifier.
pub fn verify_error_of(err: &RustlsError) -> Option<&VerifyError> {
    match err {
        RustlsError::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<VerifyError>()
        }
        _ => None,
    }
}
