//! The workload side of issuance: a fresh ECDSA P-256 key and a CSR naming the identity.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::identity::Identity;

/// A private key and the PEM CSR to send to the CA for it.
pub struct WorkloadKeyAndCsr {
    pub key: PrivateKeyDer<'static>,
    pub key_pem: String,
    pub csr_pem: String,
}

/// Error creating a key or CSR (only fails if the crypto backend does).
#[derive(Debug, thiserror::Error)]
#[error("cannot create a CSR for {identity}: {detail}")]
pub struct CsrError {
    pub identity: String,
    pub detail: String,
}

/// Generates an ECDSA P-256 key and a CSR whose only SAN is `identity` (a URI SAN) and whose
/// subject is empty, as Istio's workloads send.
pub fn generate_key_and_csr(identity: &Identity) -> Result<WorkloadKeyAndCsr, CsrError> {
    let err = |detail: String| CsrError {
        identity: identity.to_string(),
        detail,
    };
    let key_pair =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(e.to_string()))?;
    let csr_pem = csr_pem_for(&key_pair, identity).map_err(err)?;
    Ok(WorkloadKeyAndCsr {
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der())),
        key_pem: key_pair.serialize_pem(),
        csr_pem,
    })
}

/// A PEM CSR for `key_pair` naming `identity` as its only (URI) SAN.
pub(crate) fn csr_pem_for(key_pair: &KeyPair, identity: &Identity) -> Result<String, String> {
    csr_pem_with_sans(key_pair, &[identity.to_string()])
}

/// A PEM CSR with arbitrary URI SANs (tests use it to ask for identities they don't own).
pub fn csr_pem_with_sans(key_pair: &KeyPair, uris: &[String]) -> Result<String, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for uri in uris {
        let ia5 = uri
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| e.to_string())?;
        params.subject_alt_names.push(SanType::URI(ia5));
    }
    params
        .serialize_request(key_pair)
        .and_then(|csr| csr.pem())
        .map_err(|e| e.to_string())
}
