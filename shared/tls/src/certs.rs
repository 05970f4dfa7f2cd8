//! Certificate parsing helpers and the workload's own certificate (`WorkloadCert`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, IdentityError};

/// Errors reading PEM material or a workload certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{what}: no PEM block of type {label} found")]
    NoPem { what: String, label: &'static str },
    #[error("{what}: invalid PEM: {detail}")]
    BadPem { what: String, detail: String },
    #[error("{what}: invalid certificate: {detail}")]
    BadCertificate { what: String, detail: String },
    #[error("certificate identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("certificate is for {found}, expected {expected}")]
    WrongIdentity {
        expected: Box<Identity>,
        found: Box<Identity>,
    },
    #[error("private key is not usable for TLS: {0}")]
    BadKey(String),
}

/// Reads every `CERTIFICATE` block of `pem`; `what` names the input in errors.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoPem {
            what: what.to_string(),
            label: "CERTIFICATE",
        });
    }
    for cert in &certs {
        parse_x509(cert).map_err(|detail| CertError::BadCertificate {
            what: what.to_string(),
            detail,
        })?;
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, SEC1 or PKCS#1) of `pem`.
pub fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoPem {
            what: what.to_string(),
            label: "PRIVATE KEY",
        },
        other => CertError::BadPem {
            what: what.to_string(),
            detail: other.to_string(),
        },
    })
}

/// PEM text of one DER certificate.
pub fn cert_to_pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64_encode(der.as_ref());
    let mut out = String::with_capacity(b64.len() + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        ));
    }
    Ok(cert)
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let cert = parse_x509(der)?;
    let san = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Validity window and serial number of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Big-endian serial number bytes.
    pub serial: Vec<u8>,
    pub is_ca: bool,
}

/// Reads validity, serial and CA flag of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let cert = parse_x509(der)?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    Ok(CertInfo {
        not_before: to_system(cert.validity().not_before),
        not_after: to_system(cert.validity().not_after),
        serial: cert.raw_serial().to_vec(),
        is_ca: cert.is_ca(),
    })
}

/// A workload's key and certificate chain (leaf first), as issued by the CA.
pub struct WorkloadCert {
    pub key: PrivateKeyDer<'static>,
    /// `[leaf, ..., root]`.
    pub chain: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        WorkloadCert {
            key: self.key.clone_key(),
            chain: self.chain.clone(),
            identity: self.identity.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl WorkloadCert {
    /// Assembles a workload certificate from a key and an issued chain (leaf first), checking
    /// that the leaf is for `expected` (when given).
    pub fn new(
        key: PrivateKeyDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        expected: Option<&Identity>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or_else(|| CertError::NoPem {
            what: "certificate chain".to_string(),
            label: "CERTIFICATE",
        })?;
        let identity = Identity::from_certificate(leaf)?;
        if let Some(expected) = expected {
            if *expected != identity {
                return Err(CertError::WrongIdentity {
                    expected: Box::new(expected.clone()),
                    found: Box::new(identity),
                });
            }
        }
        let info = cert_info(leaf).map_err(|detail| CertError::BadCertificate {
            what: "leaf certificate".to_string(),
            detail,
        })?;
        Ok(WorkloadCert {
            key,
            chain,
            identity,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Same as [`WorkloadCert::new`] from PEM text (key PEM, chain PEM leaf first).
    pub fn from_pem(
        key_pem: &str,
        chain_pem: &str,
        expected: Option<&Identity>,
    ) -> Result<Self, CertError> {
        let key = key_from_pem(key_pem, "workload key")?;
        let chain = certs_from_pem(chain_pem, "workload certificate chain")?;
        Self::new(key, chain, expected)
    }

    /// When to renew: half-way through the certificate's lifetime (Istio's rule).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 2
    }

    /// True once half of the lifetime has passed.
    pub fn should_renew(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    /// Serial number of the leaf (big-endian bytes).
    pub fn serial(&self) -> Vec<u8> {
        self.chain
            .first()
            .and_then(|leaf| cert_info(leaf).ok())
            .map(|info| info.serial)
            .unwrap_or_default()
    }

    /// The key and chain in the form rustls serves, signing with `provider`.
    pub fn certified_key(&self, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, CertError> {
        let signing_key = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| CertError::BadKey(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), signing_key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn garbage_pem_gives_clear_errors() {
        let err = certs_from_pem("hello", "root cert")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root cert: no PEM block of type CERTIFICATE"),
            "{err}"
        );
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = certs_from_pem(bad, "root cert").unwrap_err().to_string();
        assert!(err.contains("root cert: invalid certificate"), "{err}");
        let err = key_from_pem("nothing", "ca key").unwrap_err().to_string();
        assert!(
            err.contains("ca key: no PEM block of type PRIVATE KEY"),
            "{err}"
        );
    }
}
