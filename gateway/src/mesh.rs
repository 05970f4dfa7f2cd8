//! Ingress into the mesh: with `--ca-dir`, the gateway mints its own
//! workload certificate (standalone mode, the same CA folder as the
//! ztunnels and waypoints) and reaches mesh workloads over HBONE with that
//! identity, Services with `istio.io/ingress-use-waypoint` through their
//! waypoint; DestinationRule `tls` applies either way
//! (`mesh_http::upstream::transport`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use mesh_registry::workloads::{spiffe_identity, WorkloadRegistry, DEFAULT_TRUST_DOMAIN};
use mesh_registry::{ObjectRef, SnapshotHandle};
use mesh_tls::{HboneTls, Identity, LocalCertificates};

/// The mesh flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// CA folder (`root-cert.pem`, `ca-key.pem`) shared with the ztunnels
    /// and waypoints: the gateway mints its own certificate from it and
    /// reaches mesh workloads over HBONE. Without it, backends get plain
    /// TCP (or the TLS a DestinationRule asks for).
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// The mesh's trust domain.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN, value_name = "DOMAIN")]
    pub trust_domain: String,

    /// The gateway's service account, `NAMESPACE/NAME` [default: the
    /// Gateway's namespace and `<gateway name>-istio`, as Istio names the
    /// deployment it creates for a Gateway].
    #[arg(long, value_name = "NS/SA")]
    pub service_account: Option<String>,
}

impl MeshArgs {
    /// `spiffe://TD/ns/NS/sa/SA`.
    pub fn identity(&self, gateway: Option<&ObjectRef>) -> anyhow::Result<Identity> {
        let (namespace, account) = match (&self.service_account, gateway) {
            (Some(sa), _) => match sa.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    (ns.to_string(), name.to_string())
                }
                _ => anyhow::bail!("--service-account {sa:?} is not NAMESPACE/NAME"),
            },
            (None, Some(g)) => (g.namespace.clone(), format!("{}-istio", g.name)),
            (None, None) => anyhow::bail!(
                "--ca-dir needs the gateway's identity: --gateway NS/NAME or --service-account NS/SA"
            ),
        };
        let identity = spiffe_identity(&self.trust_domain, &namespace, &account);
        identity
            .parse()
            .map_err(|e| anyhow::anyhow!("gateway identity {identity}: {e}"))
    }
}

/// The gateway's mesh side: its certificate and the workload registry
/// (reloaded with the config) that says who is in the mesh.
pub struct Mesh {
    tls: Arc<HboneTls>,
    registry: Arc<ArcSwap<WorkloadRegistry>>,
    trust_domain: String,
}

impl Mesh {
    /// None without `--ca-dir`.
    pub fn start(
        args: &MeshArgs,
        gateway: Option<&ObjectRef>,
        config: &Path,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(ca_dir) = &args.ca_dir else {
            return Ok(None);
        };
        let identity = args.identity(gateway)?;
        let mut certs = LocalCertificates::from_ca_dir(ca_dir, &args.trust_domain)?;
        let tls = certs.tls_for(&identity)?;
        certs.spawn_renewal("gateway-cert-renewal")?;
        tracing::info!(%identity, "mesh identity: workload certificate issued");
        let mesh = Mesh {
            tls,
            registry: Arc::new(ArcSwap::from_pointee(WorkloadRegistry::default())),
            trust_domain: args.trust_domain.clone(),
        };
        mesh.reload(config)?;
        Ok(Some(Arc::new(mesh)))
    }

    /// Connected mode: the certificate comes from the controller's CA and
    /// the registry from its xDS pushes (src/connected.rs keeps both current).
    pub fn from_parts(
        tls: Arc<HboneTls>,
        registry: Arc<ArcSwap<WorkloadRegistry>>,
        trust_domain: &str,
    ) -> Arc<Self> {
        Arc::new(Mesh {
            tls,
            registry,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Rebuilds the workload registry from the config (mesh workloads,
    /// Services, waypoints). Config errors are reported by the snapshot's
    /// own load.
    pub fn reload(&self, config: &Path) -> anyhow::Result<()> {
        let loaded = mesh_config::load_path(config)
            .with_context(|| format!("mesh registry from {}", config.display()))?;
        self.registry.store(Arc::new(WorkloadRegistry::build(
            &loaded.resources,
            &self.trust_domain,
        )));
        Ok(())
    }
}

/// Sets up this worker's upstream connections: HBONE into the mesh when
/// `mesh` is given, DestinationRule TLS in any case.
pub fn install_upstream(mesh: Option<&Mesh>, snapshots: &SnapshotHandle) {
    use mesh_http::upstream::{connector, transport};
    let lookup = transport::gateway_transports(snapshots.clone(), mesh.map(|m| m.registry.clone()));
    connector::install_upstream_connector(connector::UpstreamConnector::with_transports(
        mesh.map(|m| m.tls.clone()),
        lookup,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        mesh: MeshArgs,
    }

    fn gateway() -> ObjectRef {
        ObjectRef {
            namespace: "infra".into(),
            name: "edge".into(),
        }
    }

    #[test]
    fn identity_defaults_to_istios_gateway_service_account() {
        let f = Flags::parse_from(["t", "--ca-dir", "/x"]);
        assert_eq!(
            f.mesh.identity(Some(&gateway())).unwrap().to_string(),
            "spiffe://cluster.local/ns/infra/sa/edge-istio"
        );
        assert!(f.mesh.identity(None).is_err());
        let f = Flags::parse_from([
            "t",
            "--service-account",
            "ingress/gw",
            "--trust-domain",
            "example.org",
        ]);
        assert_eq!(
            f.mesh.identity(None).unwrap().to_string(),
            "spiffe://example.org/ns/ingress/sa/gw"
        );
        let f = Flags::parse_from(["t", "--service-account", "gw"]);
        assert!(f.mesh.identity(Some(&gateway())).is_err());
    }
}
