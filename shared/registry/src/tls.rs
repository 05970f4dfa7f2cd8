//! HTTPS listeners: certificates from PEM, the SNI certificate choice and the
//! per-port rustls `ServerConfig`, built once at translation so that a worker
//! only clones an `Arc` per accepted connection.
//!
//! Certificate choice follows listener isolation: the listener whose hostname
//! matches the SNI most specifically (exact, then the longest wildcard, then the
//! listener without a hostname) supplies the certificate; a ClientHello without
//! SNI, or with a name no listener matches, gets the port's default certificate.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::snapshot::wildcard_matches;

/// ALPN protocols offered on HTTPS listeners, preferred first: HTTP/2
/// (served by mesh-http's h2 server), then HTTP/1.1. A client offering
/// neither (or no ALPN) gets HTTP/1.1.
pub const HTTPS_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A certificate chain and its key, checked to belong together.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("tls.crt holds no CERTIFICATE block".into());
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("tls.crt: the first certificate cannot be parsed: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => "tls.key holds no PRIVATE KEY block".into(),
        other => format!("tls.key is not valid PEM: {other}"),
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: unsupported or malformed private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not match the certificate in tls.crt: {e}"))?;
    Ok(Arc::new(certified))
}

/// The certificates of the HTTPS listeners sharing one port, by listener hostname.
#[derive(Default)]
pub struct SniCertificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(suffix including the leading dot, certificate)`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    any: Option<Arc<CertifiedKey>>,
    /// For ClientHellos without SNI or with a name no listener matches: the
    /// no-hostname listener's certificate, else the first listener's.
    default: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for SniCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniCertificates")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field(
                "wildcard",
                &self.wildcard.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .field("any", &self.any.is_some())
            .finish()
    }
}

impl SniCertificates {
    /// Adds the certificate of the listener with `hostname` (`None`: no hostname;
    /// `*.example.com` for a wildcard). The first certificate added is the
    /// default unless a no-hostname listener exists.
    pub fn add(&mut self, hostname: Option<&str>, key: Arc<CertifiedKey>) {
        if self.default.is_none() {
            self.default = Some(key.clone());
        }
        match hostname.map(|h| h.trim().to_ascii_lowercase()) {
            None => {
                self.default = Some(key.clone());
                self.any = Some(key);
            }
            Some(h) if h.is_empty() || h == "*" => {
                self.default = Some(key.clone());
                self.any = Some(key);
            }
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => {
                    self.wildcard.push((suffix.to_string(), key));
                    self.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
                }
                None => {
                    self.exact.insert(h, key);
                }
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none()
    }

    /// The certificate for `sni` (lower-case): the most specific listener match,
    /// else the default.
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.strip_suffix('.').unwrap_or(name);
            if let Some(k) = self.exact.get(name) {
                return Some(k);
            }
            if let Some((_, k)) = self
                .wildcard
                .iter()
                .find(|(suffix, _)| wildcard_matches(suffix, name))
            {
                return Some(k);
            }
        }
        self.any.as_ref().or(self.default.as_ref())
    }
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|n| n.to_ascii_lowercase());
        self.select(sni.as_deref()).cloned()
    }
}

/// TLS termination settings of one HTTPS port.
pub struct PortTls {
    pub server_config: Arc<ServerConfig>,
    /// Listener hostnames with a certificate ("*" for the no-hostname listener).
    pub hostnames: Vec<String>,
}

impl std::fmt::Debug for PortTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortTls")
            .field("hostnames", &self.hostnames)
            .finish()
    }
}

impl PortTls {
    /// TLS 1.2 and 1.3, ALPN [`HTTPS_ALPN`], no client certificates.
    pub fn new(certificates: SniCertificates, hostnames: Vec<String>) -> Result<PortTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certificates));
        config.alpn_protocols = HTTPS_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(PortTls {
            server_config: Arc::new(config),
            hostnames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        assert!(certified_key_from_pem(b"nonsense", b"nonsense").is_err());
        let fake = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = certified_key_from_pem(fake, b"").unwrap_err();
        assert!(err.contains("tls.crt"), "{err}");
    }
}
