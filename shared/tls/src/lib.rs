//! SPIFFE identities, the workload CA, rustls configs for HBONE and the TLS stream on monoio.
//!
//! - [`Identity`] — `spiffe://TD/ns/NS/sa/SA`.
//! - [`CertificateAuthority`] — signs workload CSRs (ECDSA P-256, URI SAN only, 24 h).
//! - [`generate_key_and_csr`], [`WorkloadCert`] — the workload side, renewal at half-life.
//! - [`HboneTls`] — rustls configs (TLS 1.3, ALPN h2, no SNI, mTLS with SPIFFE identities) and
//!   the rotating [`CertStore`].
//! - [`load_ca_dir`], [`LocalCertificates`] — standalone mode: the CA shared through a folder,
//!   workload certificates minted in-process and renewed at half-life.
//! - [`connect`], [`accept`], [`TlsStream`] — the TLS stream on monoio with tokio's I/O traits.

pub mod bootstrap;
pub mod ca;
pub mod certs;
pub mod config;
pub mod csr;
pub mod identity;
pub mod stream;
pub mod verify;

pub use bootstrap::{load_ca_dir, BootstrapError, LocalCertificates};
pub use ca::{CaError, CertificateAuthority, IssuedChain, DEFAULT_CERT_LIFETIME};
pub use certs::{
    cert_info, cert_to_pem, certs_from_pem, key_from_pem, CertError, CertInfo, WorkloadCert,
};
pub use config::{ring_provider, CertStore, ConfigError, HboneTls, ALPN_H2};
pub use csr::{generate_key_and_csr, CsrError, WorkloadKeyAndCsr};
pub use identity::{Identity, IdentityError};
pub use stream::{accept, accept_plain, connect, connect_plain, TlsError, TlsStream};
pub use verify::{TrustRoots, VerifyError};

pub use rustls;
