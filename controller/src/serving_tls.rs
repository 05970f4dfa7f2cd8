//! The 15012 listener's TLS: a serving certificate from the controller's own CA, renewed at
//! half-life without dropping anything. tonic's `ServerTlsConfig` is fixed at start, so the
//! handshake is ours (tokio-rustls) with a certificate resolver whose key is swapped; open
//! connections keep the session they negotiated, new handshakes get the new certificate.
//! Client certificates are optional (a proxy asks the CA for its first one on this port) but
//! verified against the mesh root when presented; tonic exposes them to the services
//! (`xds_access` ties Proxy resources to the identity they carry).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mesh_tls::{CertificateAuthority, Identity};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// DNS names always in the serving certificate (the in-cluster Service name).
pub const DEFAULT_SERVING_NAMES: &[&str] = &[
    "ringmesh-controller.istio-system.svc",
    "ringmesh-controller.istio-system.svc.cluster.local",
    "localhost",
];

/// A handshake that does not finish in this time is dropped (it holds no stream yet).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serving certificates issued so far (the first one included), for `/metrics`.
pub static SERVING_CERTS_ISSUED: AtomicU64 = AtomicU64::new(0);

/// What the serving certificate names and who signs it.
pub struct ServingIdentity {
    ca: Arc<CertificateAuthority>,
    identity: Identity,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl ServingIdentity {
    /// `spiffe://TD/ns/istio-system/sa/ringmesh-controller` plus [`DEFAULT_SERVING_NAMES`],
    /// 127.0.0.1 and `extra_sans` (each an IP or a DNS name), so clients holding the mesh
    /// root can verify it by name or address.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        trust_domain: &str,
        extra_sans: &[String],
    ) -> anyhow::Result<Self> {
        let identity = Identity::new(trust_domain, "istio-system", "ringmesh-controller")?;
        let mut dns: Vec<String> = DEFAULT_SERVING_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        for san in extra_sans {
            match san.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(san.clone()),
            }
        }
        Ok(Self {
            ca,
            identity,
            dns,
            ips,
        })
    }

    /// A fresh certificate and when it expires.
    fn issue(&self) -> anyhow::Result<(Arc<CertifiedKey>, SystemTime)> {
        let (issued, key_pem) = self
            .ca
            .issue_serving_cert(&self.identity, &self.dns, &self.ips)?;
        let key = mesh_tls::key_from_pem(&key_pem, "serving key")?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| anyhow::anyhow!("serving key: {e}"))?;
        SERVING_CERTS_ISSUED.fetch_add(1, Ordering::Relaxed);
        Ok((
            Arc::new(CertifiedKey::new(issued.chain, signer)),
            issued.not_after,
        ))
    }
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The acceptor of 15012 and the task renewing its certificate.
pub struct ServingTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ServingTls {
    /// Issues the first certificate and spawns its renewal (on the current tokio runtime).
    pub fn start(serving: ServingIdentity) -> anyhow::Result<Self> {
        let (first, not_after) = serving.issue()?;
        let current = Arc::new(CurrentCert(ArcSwap::new(first)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(serving.ca.root_der().clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio::spawn(renew(serving, current, not_after));
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// TLS streams accepted on `listener`, for tonic's `serve_with_incoming`. Each handshake
    /// runs on its own task so a slow client delays nobody.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "15012 accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Replaces the certificate at half its remaining life, forever; a failed issuance is
/// retried a minute later (the current certificate keeps serving meanwhile).
async fn renew(serving: ServingIdentity, current: Arc<CurrentCert>, mut not_after: SystemTime) {
    loop {
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(left / 2).await;
        match serving.issue() {
            Ok((next, expires)) => {
                current.0.store(next);
                not_after = expires;
                tracing::info!("15012 serving certificate renewed");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the 15012 serving certificate; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }
}
