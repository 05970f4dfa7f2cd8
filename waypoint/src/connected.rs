//! Connected mode (`--xds ADDR --name NS/NAME --node NAME`): everything comes
//! from the controller, nothing from files.
//!
//! - The certificate first: `spiffe://TD/ns/NS/sa/NAME` (Istio's account for a
//!   waypoint) from the controller's CA (`metadata.node`, the
//!   `--node-token-file` bearer token; the CA wants a pod of that identity on
//!   that node), renewed at half-life. Over TLS (15012) the xDS stream presents
//!   it: the controller gives a waypoint's Proxy only to that identity.
//! - One Delta ADS stream: `ringmesh.l7.v1.Proxy` `NS/NAME` (kind WAYPOINT:
//!   one HBONE listener per bound Service port with its route table, the
//!   clusters with their endpoints and DestinationRule policy), turned into
//!   the same snapshot `translate_waypoint` builds in standalone mode; and,
//!   wildcard, the workload registry (`istio.workload.Address`,
//!   `istio.security.Authorization`), which says which endpoints are mesh
//!   workloads and their identities.
//! - A push that cannot be applied is NACKed with the reason; the controller
//!   unreachable changes nothing (the last snapshot serves, the client
//!   reconnects and resumes with `initial_resource_versions`).
//!
//! The control-side steps are the gateway's (`mesh_xds::connected`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_api::type_url;
use mesh_registry::workloads::{spiffe_identity, WorkloadRegistry};
use mesh_registry::xds::{l7, proxy_registry};
use mesh_registry::{ObjectRef, Snapshot, SnapshotHandle};
use mesh_tls::{HboneTls, Identity};
use mesh_xds::connected::{self as control, XdsMetrics};
use mesh_xds::{CaClientConfig, ClientConfig, ClientIdentity, ResourceSet, XdsClient};

/// Flags of connected mode.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectedArgs {
    /// Connected mode: the controller's xDS address (`HOST:PORT`,
    /// `http://HOST:15010`, or `https://HOST:15012` with --xds-root-cert).
    /// Replaces --config and --ca-dir; needs --node.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["config", "ca_dir"], requires = "node")]
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

    /// The node this waypoint runs on (the CA signs only identities of pods on it).
    #[arg(long, value_name = "NAME", requires = "xds")]
    pub node: Option<String>,

    /// File holding the node's bootstrap token (sent to the CA as a bearer token).
    #[arg(long, value_name = "FILE", requires = "node")]
    pub node_token_file: Option<PathBuf>,

    /// This waypoint's pod address, for its xDS node id
    /// (`router~IP~NAME.NS~NS.svc.cluster.local`).
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub pod_ip: IpAddr,
}

/// What connected mode hands to the data plane.
pub struct Started {
    pub tls: Arc<HboneTls>,
    pub registry: Arc<ArcSwap<WorkloadRegistry>>,
    pub metrics: Arc<XdsMetrics>,
}

/// Gets the certificate, subscribes, and blocks until the first Proxy and
/// registry pushes are applied (or the controller confirmed it has none).
pub fn start(
    args: &ConnectedArgs,
    address: &str,
    node: &str,
    waypoint: &ObjectRef,
    trust_domain: &str,
    snapshots: &SnapshotHandle,
) -> anyhow::Result<Started> {
    let tls = control::client_tls(args.xds_root_cert.as_deref(), &args.xds_server_name)
        .map_err(anyhow::Error::msg)?;
    let address = control::normalize_address(address, tls.is_some());
    let handle = control::spawn_control_runtime("waypoint-xds").map_err(anyhow::Error::msg)?;

    let identity = spiffe_identity(trust_domain, &waypoint.namespace, &waypoint.name);
    let identity: Identity = identity
        .parse()
        .map_err(|e| anyhow::anyhow!("waypoint identity {identity}: {e}"))?;
    let mut ca_config = CaClientConfig::new(address.clone(), node);
    ca_config.tls = tls.clone();
    ca_config.token =
        control::read_token(args.node_token_file.as_deref()).map_err(anyhow::Error::msg)?;
    let client_identity = ClientIdentity::default();

    let name = l7::resource_name(waypoint);
    let node_id = format!(
        "router~{}~{}.{ns}~{ns}.svc.cluster.local",
        args.pod_ip,
        waypoint.name,
        ns = waypoint.namespace
    );
    let mut config = ClientConfig::new(address.clone(), node_id.clone())
        .named(type_url::L7_PROXY, [name.clone()])
        .wildcard(type_url::ADDRESS)
        .wildcard(type_url::AUTHORIZATION);
    config.tls = tls;
    config.client_identity = Some(client_identity.clone());
    config.max_backoff = std::time::Duration::from_secs(5);
    let client = XdsClient::new(config);
    let metrics = Arc::new(XdsMetrics::new("waypoint", client.stats()));
    // Over TLS the certificate is what entitles this waypoint to its Proxy: it comes first.
    let hbone = control::mesh_certificate(
        &handle,
        ca_config,
        &identity,
        &client_identity,
        metrics.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let registry = Arc::new(ArcSwap::from_pointee(WorkloadRegistry::default()));
    let (to, counters) = (
        (name.clone(), snapshots.clone(), registry.clone()),
        metrics.clone(),
    );
    let trust_domain = trust_domain.to_string();
    handle.spawn(client.run(move |delta, all| {
        if delta.type_url == type_url::L7_PROXY {
            let snapshot = snapshot_of(all, &to.0)?;
            let services = snapshot.services.by_vip.len();
            let version = mesh_runtime::publish(&to.1, snapshot);
            counters.pushes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(resource = %to.0, version, services, "configuration received from the controller");
        } else {
            let held = |t: &str| all.get(t).into_iter().flatten().map(|(n, r)| (n, &r.resource));
            let registry = proxy_registry(
                held(type_url::ADDRESS),
                held(type_url::AUTHORIZATION),
                &trust_domain,
            )?;
            to.2.store(Arc::new(registry));
            counters.registry_pushes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }));
    tracing::info!(%address, %node_id, resource = %name, "connected mode: waiting for the controller");
    control::wait_initial_sync(metrics.stats(), &name, || {
        metrics.pushes.load(Ordering::Relaxed) > 0
            && metrics.registry_pushes.load(Ordering::Relaxed) > 0
    });
    Ok(Started {
        tls: hbone,
        registry,
        metrics,
    })
}

/// The snapshot for the full resource set; `Err` names what cannot be used
/// (NACK). No resource (the waypoint was deleted): no Service is served.
fn snapshot_of(all: &ResourceSet, name: &str) -> Result<Snapshot, String> {
    let Some(held) = all.get(type_url::L7_PROXY).and_then(|m| m.get(name)) else {
        tracing::warn!(resource = %name, "the controller has no such waypoint: serving no Service");
        return Ok(Snapshot::default());
    };
    let proxy = l7::decode(name, &held.resource)?;
    if proxy.kind() != mesh_api::ringmesh::l7::v1::ProxyKind::Waypoint {
        return Err(format!("{name}: not a waypoint's Proxy"));
    }
    l7::snapshot_of(&proxy).map_err(|e| format!("{name}: {e}"))
}

/// Connected mode's `/metrics` series, as the admin server reads them.
pub struct MetricsSource(pub Arc<XdsMetrics>);

impl mesh_runtime::MetricsSource for MetricsSource {
    fn render(&self, out: &mut String) {
        self.0.render(out);
    }
}
