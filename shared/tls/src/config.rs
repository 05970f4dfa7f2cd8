//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, no SNI, mutual authentication
//! with SPIFFE identities, and certificates that rotate without dropping connections.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::certs::{CertError, WorkloadCert};
use crate::identity::Identity;
use crate::verify::{ClientIdentityVerifier, ServerIdentityVerifier, TrustRoots};

/// The ALPN protocol HBONE negotiates.
pub const ALPN_H2: &[u8] = b"h2";

/// How many plaintext-encrypted bytes rustls may hold before the stream must write them out;
/// also the size of one batched socket write.
pub(crate) const TLS_WRITE_BATCH: usize = 256 * 1024;

/// The ring crypto provider. Passed explicitly everywhere so that no process-wide default is
/// needed (and aws-lc-rs, which needs cmake, is never pulled in).
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Error building a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("rustls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// The workload's current certificate. Rotating it changes what new handshakes present;
/// established connections keep their keys and continue.
#[derive(Clone)]
pub struct CertStore {
    current: Arc<ArcSwap<CertifiedKey>>,
    current_identity: Arc<ArcSwap<Identity>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("identity", &self.current_identity.load().to_string())
            .finish()
    }
}

impl CertStore {
    pub fn new(cert: &WorkloadCert, provider: Arc<CryptoProvider>) -> Result<Self, CertError> {
        let key = cert.certified_key(&provider)?;
        Ok(CertStore {
            current: Arc::new(ArcSwap::from(key)),
            current_identity: Arc::new(ArcSwap::from_pointee(cert.identity.clone())),
            provider,
        })
    }

    /// Installs a renewed certificate for the next handshakes.
    pub fn rotate(&self, cert: &WorkloadCert) -> Result<(), CertError> {
        let key = cert.certified_key(&self.provider)?;
        self.current.store(key);
        self.current_identity.store(Arc::new(cert.identity.clone()));
        Ok(())
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    pub fn identity(&self) -> Arc<Identity> {
        self.current_identity.load_full()
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CertResolver").field(&self.0).finish()
    }
}

/// Hands rustls whatever certificate the store holds at handshake time.
struct CertResolver(CertStore);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client configs are cached per expected-identity set: building one per connection costs
/// allocations, and the pool key already names the destination identity.
const CLIENT_CONFIG_CACHE_LIMIT: usize = 4096;

/// Everything a ztunnel/waypoint/gateway needs for HBONE TLS, shared by all workers.
pub struct HboneTls {
    provider: Arc<CryptoProvider>,
    roots: Arc<TrustRoots>,
    trust_domain: String,
    certs: CertStore,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<Vec<Identity>, Arc<ClientConfig>>>,
}

impl fmt::Debug for HboneTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneTls")
            .field("trust_domain", &self.trust_domain)
            .field("certs", &self.certs)
            .finish()
    }
}

impl HboneTls {
    /// `trust_domain` is what the server side accepts from clients.
    pub fn new(
        provider: Arc<CryptoProvider>,
        roots: TrustRoots,
        trust_domain: impl Into<String>,
        certs: CertStore,
    ) -> Result<Self, ConfigError> {
        let roots = Arc::new(roots);
        let trust_domain = trust_domain.into();
        let verifier = Arc::new(ClientIdentityVerifier::new(
            roots.clone(),
            &provider,
            trust_domain.clone(),
        ));
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CertResolver(certs.clone())));
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption: every connection proves its identity with a full handshake, and
        // tickets would be wasted bytes since pooled connections are long-lived.
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.max_fragment_size = None;
        Ok(HboneTls {
            provider,
            roots,
            trust_domain,
            certs,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Convenience: trust `roots_pem`, present `cert`, accept clients of `cert`'s trust domain.
    pub fn from_workload_cert(roots_pem: &str, cert: &WorkloadCert) -> Result<Self, ConfigError> {
        let provider = ring_provider();
        let roots = TrustRoots::from_pem(roots_pem)?;
        let store = CertStore::new(cert, provider.clone())?;
        let trust_domain = cert.identity.trust_domain().to_string();
        Self::new(provider, roots, trust_domain, store)
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A client config that accepts a server presenting any of `expected`.
    pub fn client_config(&self, expected: &[Identity]) -> Result<Arc<ClientConfig>, ConfigError> {
        let mut key = expected.to_vec();
        key.sort();
        key.dedup();
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = cache.get(&key) {
            return Ok(config.clone());
        }
        let config = Arc::new(self.build_client_config(key.clone())?);
        if cache.len() >= CLIENT_CONFIG_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, config.clone());
        Ok(config)
    }

    fn build_client_config(&self, expected: Vec<Identity>) -> Result<ClientConfig, ConfigError> {
        let verifier = Arc::new(ServerIdentityVerifier::new(
            self.roots.clone(),
            &self.provider,
            expected,
        ));
        let mut client = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous() // custom verifier: chain + SPIFFE URI SAN instead of DNS names
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CertResolver(self.certs.clone())));
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        client.enable_sni = false;
        client.resumption = Resumption::disabled();
        Ok(client)
    }

    /// Client handshake over `tcp`: the server must present one of `expected`.
    pub async fn connect(
        &self,
        tcp: monoio::net::TcpStream,
        expected: &[Identity],
    ) -> Result<crate::TlsStream, crate::TlsError> {
        let config = self
            .client_config(expected)
            .map_err(|e| crate::TlsError::Config(e.to_string()))?;
        crate::stream::connect(config, tcp).await
    }

    /// Server handshake over `tcp`: the client must present an identity of our trust domain.
    pub async fn accept(
        &self,
        tcp: monoio::net::TcpStream,
    ) -> Result<crate::TlsStream, crate::TlsError> {
        crate::stream::accept(self.server_config(), tcp).await
    }

    pub fn cert_store(&self) -> &CertStore {
        &self.certs
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &TrustRoots {
        &self.roots
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }
}
