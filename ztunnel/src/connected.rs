//! Connected mode (`--xds ADDR`): the workload registry comes from the
//! controller over Delta ADS and workload certificates from its CA.
//!
//! - One thread (`ztunnel-xds`) runs a small tokio runtime with the xDS client
//!   and the certificate renewal task (mesh-runtime's control thread does not
//!   lend its runtime). The client subscribes the way Istio's ztunnel does:
//!   one Delta stream, node id `ztunnel~IP~POD.NS~NS.svc.cluster.local`,
//!   wildcard `istio.workload.Address` and `istio.security.Authorization`.
//!   Each push rebuilds the registry from the full resource set
//!   (`WorkloadRegistry::from_xds`) and publishes it with arc-swap; a push it
//!   cannot use is NACKed and the last registry keeps serving. While the
//!   controller is unreachable nothing changes (the client reconnects with
//!   backoff and resumes from `initial_resource_versions`).
//! - Network namespace paths are node-local and never come from the
//!   controller: they are read once from the ztunnel's own `--config` (Pods
//!   with `ringmesh.io/netns`, matched by namespace/name). A pod is captured
//!   when the controller marks it HBONE, it runs on this node, and a local
//!   path is known for it.
//! - Certificates: `CreateCertificate` per identity (metadata `node`, optional
//!   bearer node token), renewed at half-life; the trust root is the last
//!   element of the returned chain.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::Address;
use mesh_api::type_url;
use mesh_registry::workloads::WorkloadRegistry;
use mesh_registry::xds::{decode_all, LocalNetns};
use mesh_tls::{HboneTls, Identity, WorkloadCert};
use mesh_xds::{CaClient, CaClientConfig, ClientConfig, ClientStats, ResourceSet, XdsClient};

use crate::{netns, proxy};

/// Flags of connected mode.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectedArgs {
    /// Connected mode: the controller's xDS + CA address (`HOST:PORT`,
    /// `http://HOST:15010`, or `https://HOST:15012` with --xds-root-cert).
    /// `--config` then only supplies the netns paths of this node's pods.
    #[arg(long)]
    pub xds: Option<String>,
    /// PEM root the controller's serving certificate chains to (TLS on 15012).
    #[arg(long)]
    pub xds_root_cert: Option<PathBuf>,
    /// DNS name expected in the controller's serving certificate.
    #[arg(long, default_value = "ringmesh-controller.istio-system.svc")]
    pub xds_server_name: String,
    /// File holding this node's bootstrap token (sent to the CA as a bearer token).
    #[arg(long)]
    pub node_token_file: Option<PathBuf>,
    /// This ztunnel's own pod, for its xDS node id (Istio's INSTANCE_IP, POD_NAME, POD_NAMESPACE).
    #[arg(long, default_value = "0.0.0.0")]
    pub pod_ip: IpAddr,
    #[arg(long)]
    pub pod_name: Option<String>,
    #[arg(long, default_value = "istio-system")]
    pub pod_namespace: String,
}

/// What connected mode hands to the data plane.
pub struct Started {
    pub registry: Arc<ArcSwap<WorkloadRegistry>>,
    pub pods: Vec<proxy::CapturedPod>,
    pub metrics: Arc<XdsMetrics>,
}

/// How long start-up waits for more pushes after the first Address push
/// (Authorization comes in a separate response right behind it).
const SETTLE: Duration = Duration::from_millis(150);
const RENEW_CHECK: Duration = Duration::from_secs(5);

pub fn start(
    args: &ConnectedArgs,
    address: &str,
    config: &Path,
    node: &str,
    trust_domain: &str,
) -> anyhow::Result<Started> {
    let local = local_netns(config)?;
    let tls = client_tls(args)?;
    let address = normalize_address(address, tls.is_some());
    let pod_name = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("ztunnel-{node}"));
    let node_id = mesh_xds::ztunnel_node_id(args.pod_ip, &pod_name, &args.pod_namespace);
    let mut xds_config = ClientConfig::new(address.clone(), node_id.clone())
        .wildcard(type_url::ADDRESS)
        .wildcard(type_url::AUTHORIZATION);
    xds_config.tls = tls.clone();
    xds_config.max_backoff = Duration::from_secs(5);
    let mut ca_config = CaClientConfig::new(address.clone(), node);
    ca_config.tls = tls;
    ca_config.token = match &args.node_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the node token {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };

    let registry = Arc::new(ArcSwap::from_pointee(WorkloadRegistry::default()));
    let metrics = Arc::new(XdsMetrics::default());
    let client = XdsClient::new(xds_config);
    let stats = client.stats();
    let handle = spawn_xds_thread(
        client,
        registry.clone(),
        metrics.clone(),
        local,
        trust_domain,
    )?;
    tracing::info!(%address, %node_id, "connected mode: waiting for the controller");
    wait_initial_sync(&stats, &metrics);
    *metrics.stats.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);

    // The lazy channel spawns its connection task: it must be made inside the runtime.
    let ca = {
        let _runtime = handle.enter();
        CaClient::new(ca_config).map_err(anyhow::Error::msg)?
    };
    let current = registry.load_full();
    let mut tls_by_identity: HashMap<String, Arc<HboneTls>> = HashMap::new();
    let mut renewals = Vec::new();
    let mut pods = Vec::new();
    for workload in current.captured_on_node(node) {
        let Some(path) = workload.netns.clone().filter(|p| !p.as_os_str().is_empty()) else {
            tracing::warn!(pod = %workload.uid, "captured on this node by the controller, but --config gives no ringmesh.io/netns path: not captured");
            continue;
        };
        let netns = match netns::NetNs::open(&path) {
            Ok(ns) => Arc::new(ns),
            Err(e) => {
                tracing::error!(pod = %workload.uid, error = %e, "pod not captured");
                continue;
            }
        };
        let tls = match tls_by_identity.get(&workload.identity) {
            Some(tls) => tls.clone(),
            None => {
                let identity: Identity = workload
                    .identity
                    .parse()
                    .map_err(|e| anyhow::anyhow!("pod {}: {e}", workload.uid))?;
                let issued = issue_blocking(&handle, &ca, identity)?;
                let tls = Arc::new(HboneTls::from_workload_cert(
                    &issued.root_pem,
                    &issued.cert,
                )?);
                tls_by_identity.insert(workload.identity.clone(), tls.clone());
                renewals.push((issued.cert, tls.clone()));
                tls
            }
        };
        pods.push(proxy::CapturedPod {
            workload,
            netns,
            tls,
        });
    }
    metrics
        .certificates
        .store(renewals.len() as u64, Ordering::Relaxed);
    handle.spawn(renew(ca, renewals, metrics.clone()));
    Ok(Started {
        registry,
        pods,
        metrics,
    })
}

/// `ringmesh.io/netns` paths of the Pods in the local `--config`.
fn local_netns(config: &Path) -> anyhow::Result<LocalNetns> {
    let loaded = mesh_config::load_path(config)
        .with_context(|| format!("local pod list {}", config.display()))?;
    for error in &loaded.errors {
        tracing::warn!("config error: {error}");
    }
    Ok(loaded
        .resources
        .pods
        .values()
        .filter_map(|pod| {
            let path = pod
                .spec
                .metadata
                .annotations
                .as_ref()?
                .get(mesh_config::NETNS_ANNOTATION)?;
            Some((
                (pod.meta.namespace.clone(), pod.meta.name.clone()),
                PathBuf::from(path),
            ))
        })
        .collect())
}

fn client_tls(args: &ConnectedArgs) -> anyhow::Result<Option<mesh_xds::ClientTlsConfig>> {
    let Some(path) = &args.xds_root_cert else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --xds-root-cert {}", path.display()))?;
    Ok(Some(
        mesh_xds::ClientTlsConfig::new()
            .ca_certificate(mesh_xds::Certificate::from_pem(pem))
            .domain_name(args.xds_server_name.clone()),
    ))
}

fn normalize_address(address: &str, tls: bool) -> String {
    if address.contains("://") {
        address.to_string()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

fn spawn_xds_thread(
    client: XdsClient,
    registry: Arc<ArcSwap<WorkloadRegistry>>,
    metrics: Arc<XdsMetrics>,
    local: LocalNetns,
    trust_domain: &str,
) -> anyhow::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("xDS runtime")?;
    let handle = runtime.handle().clone();
    let trust_domain = trust_domain.to_string();
    std::thread::Builder::new()
        .name("ztunnel-xds".into())
        .spawn(move || {
            runtime.block_on(client.run(move |_delta, all| {
                let next = registry_of(all, &trust_domain, &local)?;
                registry.store(Arc::new(next));
                metrics.pushes.fetch_add(1, Ordering::Relaxed);
                if all.get(type_url::ADDRESS).is_some() {
                    metrics.has_addresses.store(true, Ordering::Relaxed);
                }
                Ok(())
            }))
        })
        .context("cannot start the xDS thread")?;
    Ok(handle)
}

/// The full resource set → a registry; `Err` names what cannot be used (NACK).
pub fn registry_of(
    all: &ResourceSet,
    trust_domain: &str,
    local: &LocalNetns,
) -> Result<WorkloadRegistry, String> {
    let addresses: Vec<Address> = match all.get(type_url::ADDRESS) {
        Some(held) => decode_all(
            type_url::ADDRESS,
            held.iter().map(|(n, r)| (n, &r.resource)),
        )?,
        None => Vec::new(),
    };
    let authorizations: Vec<Authorization> = match all.get(type_url::AUTHORIZATION) {
        Some(held) => decode_all(
            type_url::AUTHORIZATION,
            held.iter().map(|(n, r)| (n, &r.resource)),
        )?,
        None => Vec::new(),
    };
    WorkloadRegistry::from_xds(&addresses, &authorizations, trust_domain, local)
}

/// Blocks until the first Address push was applied and pushes stopped
/// arriving for [`SETTLE`] (or, with an empty controller, a second passed on
/// a live stream without any push). Waits as long as the controller is unreachable.
fn wait_initial_sync(stats: &ClientStats, metrics: &XdsMetrics) {
    let mut last_log = Instant::now();
    let mut connected_since: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if stats.connected() {
            connected_since.get_or_insert_with(Instant::now);
        } else {
            connected_since = None;
        }
        let pushes = metrics.pushes.load(Ordering::Relaxed);
        if metrics.has_addresses.load(Ordering::Relaxed) {
            let mut seen = pushes;
            loop {
                std::thread::sleep(SETTLE);
                let now = metrics.pushes.load(Ordering::Relaxed);
                if now == seen {
                    return;
                }
                seen = now;
            }
        }
        if connected_since.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            tracing::warn!("the controller sent no workloads; starting with an empty registry");
            return;
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::warn!(
                error = stats.last_error().unwrap_or_default(),
                "still waiting for the controller"
            );
        }
    }
}

fn issue_blocking(
    handle: &tokio::runtime::Handle,
    ca: &CaClient,
    identity: Identity,
) -> anyhow::Result<mesh_xds::IssuedCert> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ca = ca.clone();
    handle.spawn(async move {
        let _ = tx.send(ca.issue(&identity).await);
    });
    rx.recv()
        .context("the xDS thread stopped")?
        .map_err(anyhow::Error::msg)
}

/// Renews each certificate at half-life through the controller's CA.
/// Rotation swaps the certificate new handshakes use; established
/// connections keep theirs. A failed renewal is retried at the next check.
async fn renew(
    ca: CaClient,
    mut certs: Vec<(WorkloadCert, Arc<HboneTls>)>,
    metrics: Arc<XdsMetrics>,
) {
    loop {
        tokio::time::sleep(RENEW_CHECK).await;
        let now = std::time::SystemTime::now();
        for (cert, tls) in certs.iter_mut() {
            if !cert.should_renew(now) {
                continue;
            }
            let renewed = ca.issue(&cert.identity).await.and_then(|issued| {
                tls.cert_store()
                    .rotate(&issued.cert)
                    .map_err(|e| e.to_string())?;
                Ok(issued.cert)
            });
            match renewed {
                Ok(new) => {
                    tracing::info!(identity = %new.identity, "workload certificate renewed by the controller's CA");
                    metrics.renewals.fetch_add(1, Ordering::Relaxed);
                    *cert = new;
                }
                Err(e) => {
                    metrics.renewal_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(identity = %cert.identity, error = %e, "certificate renewal failed; retrying")
                }
            }
        }
    }
}

/// `/metrics` series of connected mode.
#[derive(Default)]
pub struct XdsMetrics {
    pushes: AtomicU64,
    has_addresses: AtomicBool,
    certificates: AtomicU64,
    renewals: AtomicU64,
    renewal_failures: AtomicU64,
    stats: std::sync::Mutex<Option<Arc<ClientStats>>>,
}

impl mesh_runtime::MetricsSource for XdsMetrics {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut line = |name: &str, value: u64| {
            let _ = writeln!(out, "{name} {value}");
        };
        line(
            "ringmesh_ztunnel_xds_pushes_applied_total",
            self.pushes.load(Ordering::Relaxed),
        );
        if let Some(stats) = stats {
            line(
                "ringmesh_ztunnel_xds_connected",
                u64::from(stats.connected()),
            );
            line(
                "ringmesh_ztunnel_xds_streams_opened_total",
                stats.connects(),
            );
            line("ringmesh_ztunnel_xds_responses_total", stats.responses());
            line("ringmesh_ztunnel_xds_acks_total", stats.acks());
            line("ringmesh_ztunnel_xds_nacks_total", stats.nacks());
        }
        line(
            "ringmesh_ztunnel_certificates",
            self.certificates.load(Ordering::Relaxed),
        );
        line(
            "ringmesh_ztunnel_certificate_renewals_total",
            self.renewals.load(Ordering::Relaxed),
        );
        line(
            "ringmesh_ztunnel_certificate_renewal_failures_total",
            self.renewal_failures.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::istio::workload::{address, Workload};
    use mesh_xds::VersionedResource;

    fn set_with(addresses: Vec<(&str, mesh_api::prost_types::Any)>) -> ResourceSet {
        let held = addresses
            .into_iter()
            .map(|(name, resource)| {
                (
                    name.to_string(),
                    VersionedResource {
                        version: "1".into(),
                        resource,
                    },
                )
            })
            .collect();
        ResourceSet::from([(type_url::ADDRESS.to_string(), held)])
    }

    fn workload(name: &str, address: Vec<u8>) -> mesh_api::prost_types::Any {
        mesh_api::to_any(
            type_url::ADDRESS,
            &Address {
                r#type: Some(address::Type::Workload(Workload {
                    uid: format!("Kubernetes//Pod/apps/{name}"),
                    name: name.into(),
                    namespace: "apps".into(),
                    addresses: vec![address],
                    node: "node1".into(),
                    tunnel_protocol: mesh_api::istio::workload::TunnelProtocol::Hbone as i32,
                    ..Default::default()
                })),
            },
        )
    }

    #[test]
    fn a_usable_set_becomes_a_registry_with_local_netns() {
        let local = LocalNetns::from([(("apps".into(), "a".into()), "/run/netns/a".into())]);
        let set = set_with(vec![("a", workload("a", vec![10, 0, 0, 1]))]);
        let registry = registry_of(&set, "cluster.local", &local).unwrap();
        let captured = registry.captured_on_node("node1");
        assert_eq!(captured.len(), 1);
        assert_eq!(
            captured[0].netns.as_deref(),
            Some(Path::new("/run/netns/a"))
        );
        assert_eq!(
            captured[0].identity,
            "spiffe://cluster.local/ns/apps/sa/default"
        );
    }

    #[test]
    fn an_unusable_resource_is_an_error_naming_it() {
        let set = set_with(vec![
            ("a", workload("a", vec![10, 0, 0, 1])),
            ("b", workload("b", vec![1, 2])),
        ]);
        let err = registry_of(&set, "cluster.local", &LocalNetns::new()).unwrap_err();
        assert!(err.contains("apps/b") && err.contains("2 bytes"), "{err}");
        let garbage = set_with(vec![(
            "junk",
            mesh_api::prost_types::Any {
                type_url: type_url::ADDRESS.into(),
                value: vec![0xff, 0xff, 0xff],
            },
        )]);
        let err = registry_of(&garbage, "cluster.local", &LocalNetns::new()).unwrap_err();
        assert!(err.contains("junk"), "{err}");
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(
            normalize_address("10.0.0.1:15010", false),
            "http://10.0.0.1:15010"
        );
        assert_eq!(
            normalize_address("10.0.0.1:15012", true),
            "https://10.0.0.1:15012"
        );
        assert_eq!(normalize_address("https://c:1", false), "https://c:1");
    }
}
