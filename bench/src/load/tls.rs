//! TLS for `bench load`: the rustls client configuration (verification by a CA
//! file, or off with `--insecure`) and the connect (TLS handshake over monoio's
//! poll-io TCP stream, with tokio-rustls driving rustls from tokio's I/O traits,
//! which h2 needs anyway).
//!
//! Session resumption is disabled: with `--new-conn` every request pays a full
//! handshake, which is what "one new TLS connection per request" measures.

use anyhow::{anyhow, bail, Context};
use monoio::io::IntoPollIo;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStreamPoll>;

pub const ALPN_HTTP1: &[u8] = b"http/1.1";
pub const ALPN_H2: &[u8] = b"h2";

/// How to trust the server.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Accept any certificate (the handshake signature is still checked).
    pub insecure: bool,
    /// Trust the CA certificates in this PEM file.
    pub ca_file: Option<PathBuf>,
    /// Server name to send (SNI) and verify; default: the URL's host.
    pub server_name: Option<String>,
}

/// A ready-to-use client side: config plus the name to present.
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    /// The ALPN protocol the connection must negotiate (h2), if any.
    required_alpn: Option<&'static [u8]>,
}

impl TlsClient {
    /// `alpn`: the single protocol offered; h2 is then required of the server.
    pub fn new(host: &str, options: &TlsOptions, alpn: &'static [u8]) -> anyhow::Result<TlsClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let mut config = match (&options.ca_file, options.insecure) {
            (Some(_), true) => bail!("--cacert and --insecure exclude each other"),
            (Some(path), false) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut roots = RootCertStore::empty();
                for cert in mesh_tls::certs_from_pem(&pem, &path.display().to_string())? {
                    roots
                        .add(cert)
                        .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
            (None, false) => bail!(
                "https:// needs --cacert FILE (the server's CA) or --insecure (no certificate verification)"
            ),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let name = options.server_name.as_deref().unwrap_or(host).to_string();
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| anyhow!("bad TLS server name {name:?}"))?;
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            required_alpn: (alpn == ALPN_H2).then_some(ALPN_H2),
        })
    }

    /// TLS handshake over a connected TCP stream.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream> {
        let io = tcp.into_poll_io()?;
        let tls = self.connector.connect(self.server_name.clone(), io).await?;
        if let Some(want) = self.required_alpn {
            if tls.get_ref().1.alpn_protocol() != Some(want) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "server did not negotiate ALPN h2",
                ));
            }
        }
        Ok(tls)
    }
}

/// `--insecure`: any certificate chain is accepted, like `curl -k`; the
/// handshake signature is still verified, so the client does the same crypto
/// work as a verifying client minus the chain walk.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
