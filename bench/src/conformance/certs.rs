//! The test certificate HTTPS listeners serve: self-signed, covering every listener
//! hostname of the environment (the vectors name the Secret, not its content), and
//! the TLS client config probes use, trusting exactly that certificate.

use std::sync::Arc;

use anyhow::Context;

/// Secret the environment's HTTPS listeners reference (`_environment.yaml`).
pub const TEST_CERT_SECRET: &str = "tls-validity-checks-certificate";
/// Names every test certificate covers besides the listener hostnames: the hosts
/// the HTTPS cases send.
const EXTRA_NAMES: &[&str] = &[
    "example.org",
    "*.example.org",
    "example.com",
    "*.example.com",
];

pub struct TestCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_config: Arc<rustls::ClientConfig>,
}

impl TestCertificate {
    pub fn generate(hostnames: &[String]) -> anyhow::Result<TestCertificate> {
        let mut names: Vec<String> = EXTRA_NAMES.iter().map(|s| s.to_string()).collect();
        for h in hostnames {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        let key = rcgen::KeyPair::generate().context("generating the test key")?;
        let mut params = rcgen::CertificateParams::new(names).context("test certificate names")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringmesh conformance");
        let cert = params.self_signed(&key).context("self-signing")?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(cert.der().clone())
            .context("trusting the test certificate")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TestCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_config: Arc::new(config),
        })
    }
}

static TEST_CERTIFICATE: std::sync::OnceLock<Result<TestCertificate, String>> =
    std::sync::OnceLock::new();

/// The run's test certificate, generated on first use for `hostnames`.
pub fn test_certificate(hostnames: &[String]) -> Result<&'static TestCertificate, String> {
    TEST_CERTIFICATE
        .get_or_init(|| TestCertificate::generate(hostnames).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Clone::clone)
}
