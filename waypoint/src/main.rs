//! `waypoint`: the L7 proxy of the Services that opt in with
//! `istio.io/use-waypoint` (standalone mode). HBONE in on 15008 (mTLS with
//! the waypoint's own workload certificate), each CONNECT stream for a bound
//! Service `VIP:port` served by the shared L7 engine as HTTP/1.1 and routed
//! by that Service (GAMMA HTTPRoutes, else its endpoints), then HBONE out to
//! the chosen endpoint (`podIP:15008`, `:authority podIP:targetPort`).
//! Connected mode (`--xds`, src/connected.rs): the same from the controller.
//! Only flags and composition live here.

mod connected;
mod metrics;
mod tunnels;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::Parser;
use mesh_http::upstream::connect::{install_hbone_upstream, HboneUpstream};
use mesh_registry::workloads::{spiffe_identity, WorkloadRegistry, DEFAULT_TRUST_DOMAIN};
use mesh_registry::{ObjectRef, Snapshot};
use mesh_runtime::{IoDriver, RuntimeOptions, WorkerHandle};
use mesh_tls::{Identity, LocalCertificates};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// L7 proxy for Services that use a waypoint: HBONE in, the L7 engine, HBONE out.
#[derive(Parser, Debug)]
#[command(name = "waypoint", version)]
struct Args {
    /// YAML file or folder: the waypoint Gateway, Services, EndpointSlices,
    /// Pods, HTTPRoutes (parentRef Service), Namespaces (standalone mode).
    #[arg(long, required_unless_present = "xds")]
    config: Option<PathBuf>,
    /// Which waypoint this is: `NAMESPACE/NAME` of its Gateway.
    #[arg(long, value_parser = parse_name)]
    name: ObjectRef,
    /// CA folder (`root-cert.pem`, `ca-key.pem`) shared with the ztunnels:
    /// the waypoint mints its own certificate from it (standalone mode).
    #[arg(long, required_unless_present = "xds")]
    ca_dir: Option<PathBuf>,
    #[command(flatten)]
    connected: connected::ConnectedArgs,
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone_addr: SocketAddr,
    /// io_uring worker threads (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    ready_addr: SocketAddr,
    /// auto, io-uring or epoll.
    #[arg(long, default_value = "auto")]
    io_driver: IoDriver,
}

fn parse_name(s: &str) -> Result<ObjectRef, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectRef {
                namespace: ns.into(),
                name: name.into(),
            })
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waypoint: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// Config → (workload registry, the waypoint's snapshot).
fn load(
    path: &Path,
    name: &ObjectRef,
    trust_domain: &str,
) -> anyhow::Result<(WorkloadRegistry, Snapshot)> {
    let loaded = mesh_config::load_path(path)?;
    for error in &loaded.errors {
        tracing::warn!("config error: {error}");
    }
    let registry = WorkloadRegistry::build(&loaded.resources, trust_domain);
    if registry
        .waypoints
        .get(&name.namespace, &name.name)
        .is_none()
    {
        tracing::warn!(waypoint = %name, "no Gateway of class istio-waypoint/ringmesh-waypoint has this name; serving no Service");
    }
    let mut snapshot =
        mesh_registry::translate_waypoint(&loaded.resources, &registry.waypoints, name);
    snapshot.status.config_errors = loaded.errors.iter().map(ToString::to_string).collect();
    Ok((registry, snapshot))
}

/// Where the waypoint's configuration and certificate come from.
struct Sources {
    tls: Arc<mesh_tls::HboneTls>,
    registry: Arc<ArcSwap<WorkloadRegistry>>,
    /// Connected mode's `/metrics` series.
    xds_metrics: Option<Arc<connected::MetricsSource>>,
}

/// Connected mode: certificate, registry and snapshots from the controller.
fn connect(
    args: &Args,
    address: &str,
    snapshots: &mesh_registry::SnapshotHandle,
) -> anyhow::Result<Sources> {
    let node = args
        .connected
        .node
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--xds needs --node"))?;
    let started = connected::start(
        &args.connected,
        address,
        node,
        &args.name,
        &args.trust_domain,
        snapshots,
    )?;
    Ok(Sources {
        tls: started.tls,
        registry: started.registry,
        xds_metrics: Some(Arc::new(connected::MetricsSource(started.metrics))),
    })
}

/// Standalone mode: the config folder (watched) and a certificate minted from the CA folder.
fn standalone(
    args: &Args,
    config: &Path,
    ca_dir: &Path,
    snapshots: &mesh_registry::SnapshotHandle,
) -> anyhow::Result<Sources> {
    let (registry, snapshot) = load(config, &args.name, &args.trust_domain)?;
    tracing::info!(waypoint = %args.name, services = snapshot.services.by_vip.len(), "configuration loaded");

    // Our identity: the waypoint pods' service account, else Istio's
    // convention for waypoint deployments (the Gateway's name).
    let identity = registry
        .waypoints
        .get(&args.name.namespace, &args.name.name)
        .map(|w| w.identity.clone())
        .unwrap_or_else(|| {
            spiffe_identity(&args.trust_domain, &args.name.namespace, &args.name.name)
        });
    let identity: Identity = identity
        .parse()
        .map_err(|e| anyhow::anyhow!("waypoint identity {identity}: {e}"))?;
    let mut certs = LocalCertificates::from_ca_dir(ca_dir, &args.trust_domain)?;
    let tls = certs.tls_for(&identity)?;
    tracing::info!(%identity, "workload certificate issued");
    certs.spawn_renewal("waypoint-cert-renewal")?;
    mesh_runtime::publish(snapshots, snapshot);
    Ok(Sources {
        tls,
        registry: Arc::new(ArcSwap::from_pointee(registry)),
        xds_metrics: None,
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let snapshots = mesh_registry::new_handle(Snapshot::default());
    let sources = match (&args.connected.xds, &args.config, &args.ca_dir) {
        (Some(address), _, _) => connect(&args, address, &snapshots)?,
        (None, Some(config), Some(ca_dir)) => standalone(&args, config, ca_dir, &snapshots)?,
        _ => anyhow::bail!(
            "standalone mode needs --config and --ca-dir (or --xds for connected mode)"
        ),
    };
    let Sources {
        tls,
        registry,
        xds_metrics,
    } = sources;

    let options = RuntimeOptions {
        workers: args.workers.unwrap_or_else(mesh_runtime::default_workers),
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        ready_addr: args.ready_addr,
        io_driver: args.io_driver,
        ..RuntimeOptions::default()
    };
    let http_metrics = Arc::new(mesh_http::HttpMetrics::new(options.workers.max(1)));
    let metrics = Arc::new(metrics::WaypointMetrics::new(
        http_metrics.clone(),
        args.name.to_string(),
    ));
    let mut runtime = mesh_runtime::Runtime::new(options, snapshots.clone());
    runtime.add_metrics(metrics.clone());
    if let Some(xds_metrics) = xds_metrics {
        runtime.add_metrics(xds_metrics);
    }
    let dump_snapshots = snapshots.clone();
    runtime.set_config_dump(Arc::new(move || {
        serde_json::to_value(&dump_snapshots.load().services).unwrap_or_default()
    }));
    if let (None, Some(config)) = (&args.connected.xds, &args.config) {
        let reload = (config.clone(), args.name.clone(), args.trust_domain.clone());
        let reload_registry = registry.clone();
        runtime.watch_config(
            config.clone(),
            Box::new(move || {
                let (registry, snapshot) = load(&reload.0, &reload.1, &reload.2)?;
                reload_registry.store(Arc::new(registry));
                Ok(snapshot)
            }),
        );
    }

    let hbone_addr = args.hbone_addr;
    let http_options = mesh_http::HttpOptions::default();
    runtime.run(move |worker| {
        // Upstream connections of this worker go through HBONE, verifying
        // the identity the registry gives each endpoint IP.
        let lookup = registry.clone();
        install_hbone_upstream(HboneUpstream::new(
            tls.clone(),
            Box::new(move |ip| {
                lookup
                    .load()
                    .workload(ip)
                    .filter(|w| w.is_captured())
                    .map(|w| w.identity.as_str().into())
            }),
        ));
        let http = Rc::new(mesh_http::HttpHandler::new(
            snapshots.clone(),
            http_metrics.workers[worker % http_metrics.workers.len()].clone(),
            http_options.clone(),
        ));
        match WorkerHandle::current() {
            Some(handle) => {
                let w = Rc::new(tunnels::Worker {
                    http,
                    snapshots: snapshots.clone(),
                    tls: tls.clone(),
                    metrics: metrics.clone(),
                    handle,
                });
                if let Err(e) = tunnels::start(w, hbone_addr) {
                    tracing::error!(worker, addr = %hbone_addr, error = %e, "cannot listen for HBONE");
                } else if worker == 0 {
                    tracing::info!(addr = %hbone_addr, "listening for HBONE");
                }
            }
            None => tracing::error!(worker, "not on a runtime worker thread; no HBONE listener"),
        }
        NoPorts
    })
}

/// The runtime's per-port handler: the waypoint's only listener (HBONE) is
/// its own, bound per worker in `tunnels::start`.
struct NoPorts;

impl mesh_runtime::ConnectionHandler for NoPorts {
    #[allow(clippy::manual_async_fn)] // the trait's signature requires `+ 'static`
    fn handle(
        self: Rc<Self>,
        _conn: mesh_runtime::Accepted,
    ) -> impl std::future::Future<Output = ()> + 'static {
        async {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn name_is_namespace_slash_name() {
        let r = parse_name("apps/waypoint").unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("apps", "waypoint")
        );
        for bad in ["waypoint", "/w", "apps/", "a/b/c"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
