//! `ztunnel`: the per-node L4 proxy (standalone mode). For every pod of its
//! node that the config marks as captured (annotation `ringmesh.io/netns`),
//! it listens inside the pod's network namespace on 15001 (outbound),
//! 15006 (inbound plaintext) and 15008 (HBONE), carries pod-to-pod traffic in
//! HBONE (mTLS with workload identities minted by the mesh CA) and enforces
//! L4 AuthorizationPolicy. Only flags and composition live here.
//! Connected mode (`--xds ADDR`, `connected.rs`) takes the registry and the
//! certificates from the controller instead.

mod connected;
mod copy;
mod dump;
mod inbound;
mod inbound_plaintext;
mod metrics;
mod netns;
mod outbound;
mod proxy;
mod sockets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::Parser;
use mesh_registry::workloads::{WorkloadRegistry, DEFAULT_TRUST_DOMAIN};
use mesh_registry::Snapshot;
use mesh_runtime::{IoDriver, RuntimeOptions};
use mesh_tls::{CertificateAuthority, Identity, LocalCertificates};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Per-node L4 proxy: in-pod capture, HBONE between pods, L4 authorization.
#[derive(Parser, Debug)]
#[command(name = "ztunnel", version)]
struct Args {
    /// YAML file or folder: Pods, Services, EndpointSlices, AuthorizationPolicy, PeerAuthentication.
    #[arg(long)]
    config: PathBuf,
    /// This node's name: pods with `spec.nodeName` equal to it are served.
    #[arg(long)]
    node: String,
    /// CA folder (`root-cert.pem`, `ca-key.pem`): loaded, or generated and
    /// written there for the other ztunnels to share. Without it, a
    /// throw-away CA is generated (only this node's pods trust it).
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
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
    /// Also serve `/config_dump` (the workload registry as JSON, as on the
    /// admin port) on this address.
    #[arg(long)]
    config_dump_addr: Option<SocketAddr>,
    /// Connect to apps from the pod's own address instead of the client's.
    #[arg(long)]
    no_preserve_source: bool,
    #[command(flatten)]
    connected: connected::ConnectedArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ztunnel: {e:#}");
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

fn load_registry(path: &Path, trust_domain: &str) -> anyhow::Result<WorkloadRegistry> {
    let loaded = mesh_config::load_path(path)?;
    for error in &loaded.errors {
        tracing::warn!("config error: {error}");
    }
    Ok(WorkloadRegistry::build(&loaded.resources, trust_domain))
}

fn load_ca(args: &Args) -> anyhow::Result<LocalCertificates> {
    match &args.ca_dir {
        Some(dir) => Ok(LocalCertificates::from_ca_dir(dir, &args.trust_domain)?),
        None => {
            tracing::warn!(
                "no --ca-dir: using a throw-away CA; other ztunnels will not trust this one"
            );
            Ok(LocalCertificates::new(CertificateAuthority::generate(
                &args.trust_domain,
            )?))
        }
    }
}

/// The registry, captured pods and extra metrics a mode starts with.
struct Started {
    registry: Arc<ArcSwap<WorkloadRegistry>>,
    pods: Vec<proxy::CapturedPod>,
    metrics: Option<Arc<dyn mesh_runtime::MetricsSource>>,
}

/// Standalone mode: the registry from `--config`, certificates from the
/// in-process CA.
fn start_standalone(args: &Args) -> anyhow::Result<Started> {
    let registry = load_registry(&args.config, &args.trust_domain)?;
    // One certificate per identity (pods sharing a service account share it).
    let mut certs = load_ca(args)?;
    let mut pods = Vec::new();
    for workload in registry.captured_on_node(&args.node) {
        let netns_path = workload.netns.clone().expect("captured pods have a netns");
        let netns = match netns::NetNs::open(&netns_path) {
            Ok(ns) => Arc::new(ns),
            Err(e) => {
                tracing::error!(pod = %workload.uid, error = %e, "pod not captured");
                continue;
            }
        };
        let identity: Identity = workload
            .identity
            .parse()
            .map_err(|e| anyhow::anyhow!("pod {}: {e}", workload.uid))?;
        let tls = certs.tls_for(&identity)?;
        pods.push(proxy::CapturedPod {
            workload,
            netns,
            tls,
        });
    }
    certs.spawn_renewal("ztunnel-cert-renewal")?;
    Ok(Started {
        registry: Arc::new(ArcSwap::from_pointee(registry)),
        pods,
        metrics: None,
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let Started {
        registry,
        pods,
        metrics: mode_metrics,
    } = match &args.connected.xds {
        Some(address) => {
            let started = connected::start(
                &args.connected,
                address,
                &args.config,
                &args.node,
                &args.trust_domain,
            )?;
            Started {
                registry: started.registry,
                pods: started.pods,
                metrics: Some(started.metrics),
            }
        }
        None => start_standalone(&args)?,
    };
    tracing::info!(node = %args.node, pods = pods.len(), "captured pods on this node");

    let options = RuntimeOptions {
        workers: args.workers.unwrap_or_else(mesh_runtime::default_workers),
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        ready_addr: args.ready_addr,
        io_driver: args.io_driver,
        ..RuntimeOptions::default()
    };
    let uring = match args.io_driver {
        IoDriver::Epoll => false,
        IoDriver::IoUring => true,
        IoDriver::Auto => monoio::utils::detect_uring(),
    };
    let metrics = Arc::new(metrics::Metrics::new(options.workers));
    if let Some(addr) = args.config_dump_addr {
        dump::spawn(addr, args.node.clone(), registry.clone())?;
    }
    let shared = Arc::new(proxy::Shared {
        registry: registry.clone(),
        pods,
        metrics: metrics.clone(),
        uring,
        preserve_source: !args.no_preserve_source,
    });

    // The runtime serves admin/metrics/ready and drives the workers; its
    // port listeners stay empty (ztunnel's listeners live in pod namespaces).
    let snapshots = mesh_registry::new_handle(Snapshot::default());
    mesh_runtime::publish(&snapshots, Snapshot::default());
    let mut runtime = mesh_runtime::Runtime::new(options, snapshots);
    runtime.add_metrics(metrics);
    if let Some(extra) = mode_metrics {
        runtime.add_metrics(extra);
    }
    let dump_registry = registry.clone();
    let node = args.node.clone();
    runtime.set_config_dump(Arc::new(move || dump::render(&node, &dump_registry)));
    if args.connected.xds.is_none() {
        let reload_path = args.config.clone();
        let trust_domain = args.trust_domain.clone();
        runtime.watch_config(
            args.config.clone(),
            Box::new(move || {
                // Policies and endpoints change live; the set of captured pods is
                // fixed at start-up.
                registry.store(Arc::new(load_registry(&reload_path, &trust_domain)?));
                Ok(Snapshot::default())
            }),
        );
    }
    runtime.run(move |worker| {
        proxy::start_worker(&shared, worker);
        NoPorts
    })
}

/// The runtime's per-port handler: ztunnel has no runtime-managed ports.
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
