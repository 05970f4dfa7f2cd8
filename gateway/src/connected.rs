//! Connected mode (`--xds ADDR --gateway NS/NAME`): the gateway's listeners
//! and routes come from the controller as one `ringmesh.l7.v1.Proxy`
//! resource named `NS/NAME` (Delta ADS, subscribed by name).
//!
//! - A `gateway-xds` thread runs a small tokio runtime with
//!   `mesh_xds::XdsClient` (mesh-runtime's control thread does not lend its
//!   runtime). Each push is turned into a snapshot
//!   (`mesh_registry::xds::l7::snapshot_of`) and published through the same
//!   handle the file watcher uses in standalone mode, so listeners bind and
//!   drain live.
//! - A Proxy the gateway cannot apply (bad regex, certificate, address...)
//!   is NACKed with the reason; the last good snapshot keeps serving.
//! - The controller unreachable: nothing changes. Open and new connections
//!   use the last snapshot; the client reconnects with jittered backoff (at
//!   most 5 s) and resumes with `initial_resource_versions`, so a restarted
//!   controller re-sends nothing the gateway already holds.
//! - Start-up waits for the controller and the first push (logging every
//!   5 s). A controller that has no such Gateway: after a second on a live
//!   stream the gateway starts with no listeners and picks the Gateway up
//!   when it appears.
//! - Into the mesh (`--node NAME`): the gateway's workload certificate
//!   (`spiffe://TD/ns/GW_NS/sa/<gateway>-istio`, or `--service-account`)
//!   comes from the controller's CA (`metadata.node`, `--node-token-file`
//!   bearer token; the CA's rule wants a pod of that identity on that node),
//!   renewed at half-life; the workload registry that says which backends
//!   are mesh workloads comes from the same stream (wildcard
//!   `istio.workload.Address` and `istio.security.Authorization`, as a
//!   ztunnel subscribes). Upstreams then work as with `--ca-dir` in
//!   standalone mode (src/mesh.rs).
//! - The controller gives a Proxy over TLS only to the identity that runs it,
//!   so over TLS `--node` is required: the certificate is fetched first and
//!   the xDS stream presents it (`mesh_xds::ClientIdentity`; reconnects after
//!   a renewal present the new one). Over plaintext a Proxy with private keys
//!   is withheld by the controller.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_api::type_url;
use mesh_registry::workloads::WorkloadRegistry;
use mesh_registry::xds::{l7, proxy_registry};
use mesh_registry::{ObjectRef, Snapshot, SnapshotHandle};
use mesh_xds::connected::{self as control, XdsMetrics};
use mesh_xds::{CaClientConfig, ClientConfig, ClientIdentity, ResourceSet, XdsClient};

use crate::mesh::{Mesh, MeshArgs};

/// Flags of connected mode.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectedArgs {
    /// Connected mode: the controller's xDS address (`HOST:PORT`,
    /// `http://HOST:15010`, or `https://HOST:15012` with --xds-root-cert).
    /// Needs --gateway; replaces --config.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "config",
        requires = "gateway"
    )]
    pub xds: Option<String>,

    /// PEM root the controller's serving certificate chains to (TLS on 15012).
    #[arg(long, value_name = "PEM", requires = "xds")]
    pub xds_root_cert: Option<PathBuf>,

    /// DNS name expected in the controller's serving certificate.
    #[arg(
        long,
        default_value = "ringmesh-controller.istio-system.svc",
        value_name = "NAME"
    )]
    pub xds_server_name: String,

    /// This gateway's pod address, for its xDS node id
    /// (`router~IP~NAME.NS~NS.svc.cluster.local`, as Istio's gateways).
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub pod_ip: std::net::IpAddr,

    /// Into the mesh in connected mode: the node this gateway runs on. Its
    /// certificate then comes from the controller's CA (which checks that a
    /// pod of the gateway's identity runs there) and the workload registry
    /// from the controller.
    #[arg(long, value_name = "NAME", requires = "xds")]
    pub node: Option<String>,

    /// File holding the node's bootstrap token (sent to the CA as a bearer token).
    #[arg(long, value_name = "FILE", requires = "node")]
    pub node_token_file: Option<PathBuf>,
}

/// What connected mode hands to the data plane.
pub struct Started {
    pub metrics: Arc<XdsMetrics>,
    /// With `--node`: the mesh side (certificate and registry).
    pub mesh: Option<Arc<Mesh>>,
}

/// The longest gap between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Subscribes to the Gateway's Proxy (and, with `--node`, to the workload
/// registry) and blocks until the first snapshot is published (or the
/// controller confirmed it has none); with `--node`, gets the gateway's
/// certificate from the controller's CA.
pub fn start(
    args: &ConnectedArgs,
    address: &str,
    gateway: &ObjectRef,
    mesh_args: &MeshArgs,
    snapshots: &SnapshotHandle,
) -> anyhow::Result<Started> {
    let tls = control::client_tls(args.xds_root_cert.as_deref(), &args.xds_server_name)
        .map_err(anyhow::Error::msg)?;
    if tls.is_some() && args.node.is_none() {
        anyhow::bail!(
            "--xds over TLS needs --node (and --node-token-file): the controller gives a \
             Gateway's configuration over TLS only to a caller presenting the Gateway's mesh \
             certificate, which comes from its CA"
        );
    }
    let address = control::normalize_address(address, tls.is_some());
    let name = l7::resource_name(gateway);
    let node_id = format!(
        "router~{}~{}.{ns}~{ns}.svc.cluster.local",
        args.pod_ip,
        gateway.name,
        ns = gateway.namespace
    );
    let client_identity = ClientIdentity::default();
    let mut config = ClientConfig::new(address.clone(), node_id.clone())
        .named(type_url::L7_PROXY, [name.clone()]);
    let registry = args
        .node
        .as_ref()
        .map(|_| Arc::new(ArcSwap::from_pointee(WorkloadRegistry::default())));
    if registry.is_some() {
        config = config
            .wildcard(type_url::ADDRESS)
            .wildcard(type_url::AUTHORIZATION);
    }
    config.tls = tls.clone();
    config.client_identity = Some(client_identity.clone());
    config.max_backoff = MAX_BACKOFF;
    let client = XdsClient::new(config);
    let handle = control::spawn_control_runtime("gateway-xds").map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(XdsMetrics::new("gateway", client.stats()));

    // With --node the certificate comes first: over TLS it is what entitles this gateway
    // to its Proxy (the controller checks its identity against the Gateway's).
    let hbone = match &args.node {
        Some(node) => {
            let mut ca_config = CaClientConfig::new(address.clone(), node);
            ca_config.tls = tls.clone();
            ca_config.token =
                control::read_token(args.node_token_file.as_deref()).map_err(anyhow::Error::msg)?;
            let identity = mesh_args.identity(Some(gateway))?;
            let hbone = control::mesh_certificate(
                &handle,
                ca_config,
                &identity,
                &client_identity,
                metrics.clone(),
            )
            .map_err(anyhow::Error::msg)?;
            Some(hbone)
        }
        None => None,
    };

    spawn_client(
        &handle,
        client,
        Subscribed {
            name: name.clone(),
            snapshots: snapshots.clone(),
            registry: registry.clone(),
            trust_domain: mesh_args.trust_domain.clone(),
        },
        metrics.clone(),
    );
    tracing::info!(%address, %node_id, resource = %name, "connected mode: waiting for the controller");
    let wants_registry = registry.is_some();
    control::wait_initial_sync(metrics.stats(), &name, || {
        metrics.pushes.load(Ordering::Relaxed) > 0
            && (!wants_registry || metrics.registry_pushes.load(Ordering::Relaxed) > 0)
    });
    Ok(Started {
        metrics,
        mesh: match (hbone, registry) {
            (Some(hbone), Some(registry)) => {
                Some(Mesh::from_parts(hbone, registry, &mesh_args.trust_domain))
            }
            _ => None,
        },
    })
}

/// Where pushes go.
struct Subscribed {
    name: String,
    snapshots: SnapshotHandle,
    registry: Option<Arc<ArcSwap<WorkloadRegistry>>>,
    trust_domain: String,
}

fn spawn_client(
    handle: &tokio::runtime::Handle,
    client: XdsClient,
    to: Subscribed,
    metrics: Arc<XdsMetrics>,
) {
    handle.spawn(client.run(move |delta, all| {
                if delta.type_url == type_url::L7_PROXY {
                    let snapshot = snapshot_of(all, &to.name)?;
                    let version = mesh_runtime::publish(&to.snapshots, snapshot);
                    metrics.pushes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(resource = %to.name, version, "configuration received from the controller");
                } else if let Some(registry) = &to.registry {
                    let held =
                        |t: &str| all.get(t).into_iter().flatten().map(|(n, r)| (n, &r.resource));
                    let next = proxy_registry(
                        held(type_url::ADDRESS),
                        held(type_url::AUTHORIZATION),
                        &to.trust_domain,
                    )?;
                    registry.store(Arc::new(next));
                    metrics.registry_pushes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
}

/// The snapshot for the full resource set; `Err` names what cannot be used
/// (NACK). No resource (the controller deleted the Gateway): no listeners.
pub fn snapshot_of(all: &ResourceSet, name: &str) -> Result<Snapshot, String> {
    let Some(held) = all.get(type_url::L7_PROXY).and_then(|m| m.get(name)) else {
        tracing::warn!(resource = %name, "the controller has no such Gateway: serving no listeners");
        return Ok(Snapshot::default());
    };
    let proxy = l7::decode(name, &held.resource)?;
    l7::snapshot_of(&proxy).map_err(|e| format!("{name}: {e}"))
}

/// Connected mode's `/metrics` series, as the admin server reads them.
pub struct MetricsSource(pub Arc<XdsMetrics>);

impl mesh_runtime::MetricsSource for MetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_xds::VersionedResource;

    fn set_with(name: &str, resource: mesh_api::prost_types::Any) -> ResourceSet {
        let held = [(
            name.to_string(),
            VersionedResource {
                version: "1".into(),
                resource,
            },
        )]
        .into_iter()
        .collect();
        ResourceSet::from([(type_url::L7_PROXY.to_string(), held)])
    }

    #[test]
    fn a_missing_resource_is_an_empty_snapshot_and_garbage_an_error() {
        let empty = snapshot_of(&ResourceSet::new(), "infra/gw").unwrap();
        assert!(empty.ports.is_empty());
        let garbage = set_with(
            "infra/gw",
            mesh_api::prost_types::Any {
                type_url: type_url::L7_PROXY.into(),
                value: vec![0xff, 0xff],
            },
        );
        assert!(snapshot_of(&garbage, "infra/gw")
            .unwrap_err()
            .contains("infra/gw"));
        let bad_port = mesh_api::ringmesh::l7::v1::Proxy {
            name: "gw".into(),
            namespace: "infra".into(),
            listeners: vec![mesh_api::ringmesh::l7::v1::Listener {
                name: "http".into(),
                port: 70000,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err =
            snapshot_of(&set_with("infra/gw", l7::to_any(&bad_port)), "infra/gw").unwrap_err();
        assert!(err.contains("invalid port 70000"), "{err}");
    }
}
