//! The workload CA: a self-signed ECDSA P-256 root that signs workload CSRs.
//!
//! Issued leaves follow Istio: URI SAN only (the identity), empty subject, 24 h by default,
//! digitalSignature + keyEncipherment, serverAuth + clientAuth, chain `[leaf, root]`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::certs::{cert_info, cert_to_pem, certs_from_pem, CertError, WorkloadCert};
use crate::csr::generate_key_and_csr;
use crate::identity::Identity;

/// Default (and maximum) lifetime of an issued workload certificate.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issued certificates start this far in the past so that peers whose clocks lag a little
/// still accept them.
const BACKDATE: Duration = Duration::from_secs(60);

/// Why the CA could not load, store or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pem(#[from] CertError),
    #[error("CA key: {0}")]
    BadKey(String),
    #[error("CA certificate is not a CA (basicConstraints cA is not set)")]
    NotACa,
    #[error("CA certificate does not match the CA key")]
    KeyMismatch,
    #[error("CSR cannot be parsed: {0}")]
    BadCsr(String),
    #[error("CSR asks for {requested}, but the caller is only entitled to {authorized}")]
    IdentityNotAuthorized {
        requested: String,
        authorized: Identity,
    },
    #[error("CSR key is not ECDSA P-256")]
    UnsupportedKey,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// An issued chain, leaf first, root last.
#[derive(Debug, Clone)]
pub struct IssuedChain {
    pub chain: Vec<CertificateDer<'static>>,
    /// The same chain as PEM blocks (what the Istio CA API returns).
    pub chain_pem: Vec<String>,
    pub not_after: SystemTime,
}

/// The signing CA.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
    key_pem: String,
    max_lifetime: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and non-zero leading byte: a 128-bit serial that DER encodes without padding.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

impl CertificateAuthority {
    /// Generates a new self-signed ECDSA P-256 root for `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::BadKey(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "ringmesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + ROOT_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let root_der = cert.der().clone();
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority {
            root_pem: cert_to_pem(&root_der),
            root_der,
            key_pem,
            issuer: Issuer::new(params, key),
            max_lifetime: DEFAULT_CERT_LIFETIME,
        })
    }

    /// Loads a CA from its certificate and key PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let root_der = certs_from_pem(cert_pem, "CA certificate")?
            .into_iter()
            .next()
            .expect("certs_from_pem returns at least one certificate");
        let info = cert_info(&root_der).map_err(|detail| CertError::BadCertificate {
            what: "CA certificate".into(),
            detail,
        })?;
        if !info.is_ca {
            return Err(CaError::NotACa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadKey(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_der(&root_der, key).map_err(|e| CaError::BadKey(e.to_string()))?;
        if !spki_matches(&root_der, issuer.key()) {
            return Err(CaError::KeyMismatch);
        }
        Ok(CertificateAuthority {
            root_pem: cert_to_pem(&root_der),
            root_der,
            key_pem: key_pem.to_string(),
            issuer,
            max_lifetime: DEFAULT_CERT_LIFETIME,
        })
    }

    /// Loads a CA from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
    }

    /// Loads the CA from the files if the certificate file exists, otherwise generates one and
    /// writes it there so that other processes (peers) can share it.
    pub fn load_or_generate(
        cert_path: &Path,
        key_path: &Path,
        trust_domain: &str,
    ) -> Result<Self, CaError> {
        if cert_path.exists() {
            return Self::load(cert_path, key_path);
        }
        let ca = Self::generate(trust_domain)?;
        ca.write(cert_path, key_path)?;
        Ok(ca)
    }

    /// Writes the root certificate and the key (mode 0600) as PEM.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
        let write_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| CaError::Write { path, source }
        };
        write_private(key_path, self.key_pem.as_bytes()).map_err(write_err(key_path))?;
        std::fs::write(cert_path, self.root_pem.as_bytes()).map_err(write_err(cert_path))?;
        Ok(())
    }

    /// Caps the lifetime of issued certificates (default 24 h).
    pub fn with_max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Signs `csr_pem` for `authorized` — the identity the caller proved (for the CA service:
    /// the identity of the caller's own certificate or token). The CSR must ask for exactly
    /// that identity and nothing else. `lifetime` defaults to, and is capped at, the CA's
    /// maximum lifetime.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        authorized: &Identity,
        lifetime: Option<Duration>,
    ) -> Result<IssuedChain, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested.len() != 1 || requested[0] != authorized.to_string() {
            return Err(CaError::IdentityNotAuthorized {
                requested: if requested.is_empty() {
                    "no identity".to_string()
                } else {
                    requested.join(", ")
                },
                authorized: authorized.clone(),
            });
        }
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::UnsupportedKey);
        }
        let lifetime = lifetime.unwrap_or(self.max_lifetime).min(self.max_lifetime);
        let now = SystemTime::now();
        let not_after = now + lifetime;
        // Build the leaf from our own parameters: nothing else the CSR asked for is copied.
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| CaError::Sign(e.to_string()))?;
        let chain = vec![leaf.der().clone(), self.root_der.clone()];
        Ok(IssuedChain {
            chain_pem: chain.iter().map(cert_to_pem).collect(),
            chain,
            // X.509 times have one-second resolution; report what the certificate says.
            not_after: truncate_to_secs(not_after),
        })
    }

    /// A serving certificate for a control-plane endpoint (the controller's 15012): the
    /// SPIFFE `identity` plus the DNS names and IPs its clients verify, with a fresh
    /// ECDSA P-256 key. Returns the chain (leaf first, root last) and the key as PEM.
    pub fn issue_serving_cert(
        &self,
        identity: &Identity,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(IssuedChain, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::BadKey(e.to_string()))?;
        let now = SystemTime::now();
        let not_after = now + self.max_lifetime;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for name in dns_names {
            let dns = name
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(format!("DNS name {name:?}: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let chain = vec![leaf.der().clone(), self.root_der.clone()];
        Ok((
            IssuedChain {
                chain_pem: chain.iter().map(cert_to_pem).collect(),
                chain,
                not_after: truncate_to_secs(not_after),
            },
            key.serialize_pem(),
        ))
    }

    /// In-process issuance (standalone mode): generates a key and CSR for `identity` and
    /// signs it.
    pub fn issue_workload_cert(&self, identity: &Identity) -> Result<WorkloadCert, CaError> {
        let request = generate_key_and_csr(identity).map_err(|e| CaError::Sign(e.to_string()))?;
        let issued = self.sign_csr(&request.csr_pem, identity, None)?;
        Ok(WorkloadCert::new(
            request.key,
            issued.chain,
            Some(identity),
        )?)
    }
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

fn spki_matches(cert_der: &[u8], key: &KeyPair) -> bool {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    match X509Certificate::from_der(cert_der) {
        Ok((_, cert)) => cert.public_key().subject_public_key.data.as_ref() == key.der_bytes(),
        Err(_) => false,
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)
}
