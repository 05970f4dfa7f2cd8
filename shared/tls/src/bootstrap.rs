//! Standalone mode's certificates: the mesh CA shared through a folder
//! (`root-cert.pem`, `ca-key.pem`), workload certificates minted from it
//! in-process, and their renewal at half-life. ztunnel, the waypoint and
//! the gateway all start this way when they run without a controller.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{CaError, CertificateAuthority, ConfigError, HboneTls, Identity, WorkloadCert};

/// The CA certificate's file name in a CA folder (Istio's name).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The CA key's file name in a CA folder.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How often the renewal thread checks the certificates' half-life.
const RENEWAL_CHECK: Duration = Duration::from_secs(30);

/// Why the certificates could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot create the CA folder {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("CA in {path}: {source}")]
    Ca { path: String, source: Box<CaError> },
    #[error("certificate for {identity}: {source}")]
    Issue {
        identity: Identity,
        source: Box<CaError>,
    },
    #[error("TLS configuration for {identity}: {source}")]
    Config {
        identity: Identity,
        source: Box<ConfigError>,
    },
    #[error("cannot start the certificate renewal thread: {0}")]
    Thread(std::io::Error),
}

/// Loads the CA from `dir`, or generates one there (creating the folder)
/// for the other processes of the mesh to share.
pub fn load_ca_dir(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, BootstrapError> {
    std::fs::create_dir_all(dir).map_err(|source| BootstrapError::CreateDir {
        path: dir.display().to_string(),
        source,
    })?;
    CertificateAuthority::load_or_generate(
        &dir.join(ROOT_CERT_FILE),
        &dir.join(CA_KEY_FILE),
        trust_domain,
    )
    .map_err(|source| BootstrapError::Ca {
        path: dir.display().to_string(),
        source: Box::new(source),
    })
}

/// Workload certificates minted by an in-process CA, one per identity
/// (callers sharing an identity share its TLS settings).
pub struct LocalCertificates {
    ca: CertificateAuthority,
    issued: HashMap<Identity, (WorkloadCert, Arc<HboneTls>)>,
}

impl LocalCertificates {
    pub fn new(ca: CertificateAuthority) -> Self {
        Self {
            ca,
            issued: HashMap::new(),
        }
    }

    /// `load_ca_dir` then [`LocalCertificates::new`].
    pub fn from_ca_dir(dir: &Path, trust_domain: &str) -> Result<Self, BootstrapError> {
        Ok(Self::new(load_ca_dir(dir, trust_domain)?))
    }

    /// The HBONE TLS settings (certificate presented, mesh roots trusted)
    /// of `identity`, issued on first use.
    pub fn tls_for(&mut self, identity: &Identity) -> Result<Arc<HboneTls>, BootstrapError> {
        if let Some((_, tls)) = self.issued.get(identity) {
            return Ok(tls.clone());
        }
        let cert =
            self.ca
                .issue_workload_cert(identity)
                .map_err(|source| BootstrapError::Issue {
                    identity: identity.clone(),
                    source: Box::new(source),
                })?;
        let tls = HboneTls::from_workload_cert(self.ca.root_pem(), &cert).map_err(|source| {
            BootstrapError::Config {
                identity: identity.clone(),
                source: Box::new(source),
            }
        })?;
        let tls = Arc::new(tls);
        self.issued.insert(identity.clone(), (cert, tls.clone()));
        Ok(tls)
    }

    /// Renews every issued certificate at half-life on a thread of its
    /// own. Rotation changes what new handshakes present; established
    /// connections keep theirs.
    pub fn spawn_renewal(self, thread_name: &str) -> Result<(), BootstrapError> {
        let Self { ca, issued } = self;
        let mut issued: Vec<(WorkloadCert, Arc<HboneTls>)> = issued.into_values().collect();
        std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || loop {
                std::thread::sleep(RENEWAL_CHECK);
                renew_due(&ca, &mut issued, SystemTime::now());
            })
            .map_err(BootstrapError::Thread)?;
        Ok(())
    }
}

/// Renews the certificates past half-life at `now`; a failure is logged
/// and retried at the next check.
fn renew_due(
    ca: &CertificateAuthority,
    issued: &mut [(WorkloadCert, Arc<HboneTls>)],
    now: SystemTime,
) {
    for (cert, tls) in issued.iter_mut() {
        if !cert.should_renew(now) {
            continue;
        }
        let renewed = ca
            .issue_workload_cert(&cert.identity)
            .map_err(|e| e.to_string())
            .and_then(|new| {
                tls.cert_store().rotate(&new).map_err(|e| e.to_string())?;
                Ok(new)
            });
        match renewed {
            Ok(new) => {
                tracing::info!(identity = %new.identity, "workload certificate renewed");
                *cert = new;
            }
            Err(e) => {
                tracing::error!(identity = %cert.identity, error = %e, "certificate renewal failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mesh-tls-bootstrap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_ca_folder_is_generated_once_then_shared() {
        let dir = temp_dir("shared");
        let first = load_ca_dir(&dir.join("nested"), "cluster.local").unwrap();
        let second = load_ca_dir(&dir.join("nested"), "cluster.local").unwrap();
        assert_eq!(first.root_pem(), second.root_pem());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_certificate_per_identity() {
        let dir = temp_dir("identity");
        let mut certs = LocalCertificates::from_ca_dir(&dir, "cluster.local").unwrap();
        let gw: Identity = "spiffe://cluster.local/ns/infra/sa/edge-istio"
            .parse()
            .unwrap();
        let other: Identity = "spiffe://cluster.local/ns/apps/sa/echo".parse().unwrap();
        let a = certs.tls_for(&gw).unwrap();
        let b = certs.tls_for(&gw).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a.cert_store().identity(), gw);
        let c = certs.tls_for(&other).unwrap();
        assert_eq!(*c.cert_store().identity(), other);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_ca_is_an_error_naming_the_folder() {
        let dir = temp_dir("broken");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(ROOT_CERT_FILE), "not a certificate").unwrap();
        let Err(err) = load_ca_dir(&dir, "cluster.local") else {
            panic!("a broken CA file was accepted");
        };
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificates_past_half_life_are_renewed() {
        let dir = temp_dir("renew");
        let mut certs = LocalCertificates::from_ca_dir(&dir, "cluster.local").unwrap();
        let id: Identity = "spiffe://cluster.local/ns/apps/sa/echo".parse().unwrap();
        let tls = certs.tls_for(&id).unwrap();
        let before = tls.cert_store().current();
        let mut issued: Vec<_> = certs.issued.drain().map(|(_, v)| v).collect();
        let later = SystemTime::now() + Duration::from_secs(20 * 3600);
        renew_due(&certs.ca, &mut issued, later);
        assert!(!Arc::ptr_eq(&before, &tls.cert_store().current()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
