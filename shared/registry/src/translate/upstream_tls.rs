//! DestinationRule `trafficPolicy.tls` toward backends, resolved once per
//! cluster at translation:
//! - `SIMPLE`: the rustls client settings are built here (so a bad CA file
//!   is a config error naming the rule, found before any request): roots
//!   from `caCertificates` (a PEM bundle file; the system bundle when
//!   unset), SNI = `sni`, else the rule's host; the certificate must match
//!   one of `subjectAltNames` when given, else the SNI name;
//!   `insecureSkipVerify` accepts any certificate. ALPN `http/1.1`.
//! - `DISABLE`, `ISTIO_MUTUAL`: nothing to build (the upstream connector
//!   picks plain TCP or HBONE with the mesh identity).
//! - `MUTUAL` (client certificates from files) is not supported: an error,
//!   and connections under it fail closed.
//!
//! A policy that cannot be applied keeps its `error`; the connector then
//! refuses the connection (503) instead of sending plaintext.

use std::sync::Arc;

use mesh_config::{ClientTlsSettings, TlsMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::snapshot::{ObjectRef, UpstreamTlsPolicy};

/// Where `caCertificates` points when a SIMPLE rule leaves it unset.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The settings of one rule's `tls` for a cluster of `host` (the rule's
/// host as resolved; a wildcard gives no default SNI).
pub fn upstream_tls(t: &ClientTlsSettings, host: &str, rule: &ObjectRef) -> UpstreamTlsPolicy {
    let mut policy = UpstreamTlsPolicy {
        mode: match t.mode {
            Some(TlsMode::Simple) => "SIMPLE",
            Some(TlsMode::Mutual) => "MUTUAL",
            Some(TlsMode::IstioMutual) => "ISTIO_MUTUAL",
            Some(TlsMode::Disable) | None => "DISABLE",
        }
        .to_string(),
        sni: t.sni.clone(),
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
        ..Default::default()
    };
    match t.mode {
        Some(TlsMode::Simple) => {
            let server_name = t
                .sni
                .clone()
                .filter(|s| !s.is_empty())
                .or_else(|| (!host.contains('*')).then(|| host.to_string()));
            match simple_client_config(t, server_name.as_deref()) {
                Ok(config) => policy.client_config = Some(config),
                Err(e) => policy.error = Some(format!("DestinationRule {rule}: tls: {e}")),
            }
            policy.server_name = server_name;
        }
        Some(TlsMode::Mutual) => {
            policy.error = Some(format!(
                "DestinationRule {rule}: tls.mode MUTUAL is not supported (use SIMPLE, or ISTIO_MUTUAL inside the mesh)"
            ));
        }
        _ => {}
    }
    policy
}

fn simple_client_config(
    t: &ClientTlsSettings,
    server_name: Option<&str>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if let Some(name) = server_name {
        ServerName::try_from(name.to_string())
            .map_err(|_| format!("sni {name:?} is not a DNS name or IP address"))?;
    }
    let verifier: Arc<dyn ServerCertVerifier> = if t.insecure_skip_verify == Some(true) {
        Arc::new(AcceptAnyCertificate(
            provider.signature_verification_algorithms,
        ))
    } else {
        let path = t.ca_certificates.as_deref().filter(|p| !p.is_empty());
        let roots = load_roots(path.unwrap_or(SYSTEM_CA_BUNDLE))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("caCertificates: {e}"))?;
        let mut names = Vec::new();
        for san in &t.subject_alt_names {
            names.push(ServerName::try_from(san.clone()).map_err(|_| {
                format!("subjectAltNames: {san:?} is not a DNS name or IP address")
            })?);
        }
        if names.is_empty() {
            webpki
        } else {
            Arc::new(AnyOfNames {
                inner: webpki,
                names,
            })
        }
    };
    let mut config = builder
        .dangerous() // our verifiers: subjectAltNames matching, insecureSkipVerify
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_roots(path: &str) -> Result<RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("caCertificates {path}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("caCertificates {path}: not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("caCertificates {path}: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("caCertificates {path}: holds no CERTIFICATE block"));
    }
    Ok(roots)
}

/// `subjectAltNames`: the chain is verified as usual, and the leaf must
/// be valid for one of the names (rather than the SNI name).
#[derive(Debug)]
struct AnyOfNames {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyOfNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = None;
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            {
                Ok(ok) => return Ok(ok),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subjectAltNames".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify: true`: any certificate is accepted (the handshake
/// signatures are still checked, so the peer holds the key it presents).
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> ObjectRef {
        ObjectRef {
            namespace: "apps".into(),
            name: "secure".into(),
        }
    }

    fn settings(yaml: &str) -> ClientTlsSettings {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("mesh-registry-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn simple_with_a_ca_bundle_builds_client_settings() {
        let ca = rcgen::generate_simple_self_signed(vec!["backend.example".into()]).unwrap();
        let path = temp_file("good-ca.pem", ca.cert.pem().as_bytes());
        let t = settings(&format!(
            "{{mode: SIMPLE, caCertificates: {}, sni: backend.example, subjectAltNames: [backend.example]}}",
            path.display()
        ));
        let p = upstream_tls(&t, "backend.apps.svc.cluster.local", &rule());
        assert_eq!(p.mode, "SIMPLE");
        assert!(p.error.is_none(), "{:?}", p.error);
        assert!(p.client_config.is_some());
        assert_eq!(p.server_name.as_deref(), Some("backend.example"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn sni_defaults_to_the_host() {
        let t = settings("{mode: SIMPLE, insecureSkipVerify: true}");
        let p = upstream_tls(&t, "api.example.com", &rule());
        assert_eq!(p.server_name.as_deref(), Some("api.example.com"));
        assert!(p.client_config.is_some());
        let p = upstream_tls(&t, "*.example.com", &rule());
        assert_eq!(p.server_name, None);
    }

    #[test]
    fn a_bad_ca_file_is_an_error_naming_the_rule() {
        let missing = settings("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}");
        let p = upstream_tls(&missing, "h.example", &rule());
        let e = p.error.expect("missing file");
        assert!(e.contains("DestinationRule apps/secure"), "{e}");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(p.client_config.is_none());

        let path = temp_file("garbage-ca.pem", b"not a certificate");
        let garbage = settings(&format!(
            "{{mode: SIMPLE, caCertificates: {}}}",
            path.display()
        ));
        let e = upstream_tls(&garbage, "h.example", &rule()).error.unwrap();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn mutual_is_refused_and_the_others_need_nothing_built() {
        let p = upstream_tls(&settings("{mode: MUTUAL}"), "h.example", &rule());
        assert!(p.error.unwrap().contains("MUTUAL is not supported"));
        for mode in ["DISABLE", "ISTIO_MUTUAL"] {
            let p = upstream_tls(&settings(&format!("{{mode: {mode}}}")), "h", &rule());
            assert_eq!(p.mode, mode);
            assert!(p.error.is_none() && p.client_config.is_none());
        }
    }
}
