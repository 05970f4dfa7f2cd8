//! What every connected data-plane proxy (gateway, waypoint) does on its control side, the
//! same way: a tokio runtime on a thread of its own (the data plane's workers run monoio),
//! the controller's address and TLS settings, the workload certificate from the controller's
//! CA fetched before the xDS stream opens (over TLS the controller gives a proxy its L7
//! config only when the stream presents that certificate), its renewal at half-life, and the
//! start-up wait for the first push.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_tls::{HboneTls, Identity, WorkloadCert};

use crate::{CaClient, CaClientConfig, ClientIdentity, ClientStats, ClientTlsConfig, IssuedCert};

/// How often the renewal task looks at the certificate's age.
pub const RENEW_CHECK: Duration = Duration::from_secs(5);

/// Starts a current-thread tokio runtime on a thread named `thread_name`; tasks are spawned
/// on the returned handle and run for the life of the process.
pub fn spawn_control_runtime(thread_name: &str) -> Result<tokio::runtime::Handle, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("control runtime: {e}"))?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(|e| format!("cannot start the {thread_name} thread: {e}"))?;
    Ok(handle)
}

/// `HOST:PORT` gets `https://` with TLS, `http://` without; URLs are kept.
pub fn normalize_address(address: &str, tls: bool) -> String {
    if address.contains("://") {
        address.to_string()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

/// TLS to the controller when a root is given: verified against `root_pem_path` by
/// `server_name`.
pub fn client_tls(
    root_pem_path: Option<&Path>,
    server_name: &str,
) -> Result<Option<ClientTlsConfig>, String> {
    let Some(path) = root_pem_path else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the controller's root {}: {e}", path.display()))?;
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(crate::Certificate::from_pem(pem))
            .domain_name(server_name.to_string()),
    ))
}

/// The node bootstrap token in `path` (trimmed).
pub fn read_token(path: Option<&Path>) -> Result<Option<String>, String> {
    path.map(|path| {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read the node token {}: {e}", path.display()))
    })
    .transpose()
}

/// Asks the controller's CA for `identity`'s certificate and waits for it (start-up: nothing
/// can be served without it). The client is returned for renewals.
pub fn issue_blocking(
    handle: &tokio::runtime::Handle,
    config: CaClientConfig,
    identity: &Identity,
) -> Result<(CaClient, IssuedCert), String> {
    // The lazy channel spawns its connection task: it must be made inside the runtime.
    let ca = {
        let _runtime = handle.enter();
        CaClient::new(config)?
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (client, wanted) = (ca.clone(), identity.clone());
    handle.spawn(async move {
        let _ = tx.send(client.issue(&wanted).await);
    });
    let issued = rx
        .recv()
        .map_err(|_| "the control thread stopped".to_string())?
        .map_err(|e| format!("certificate for {identity} from the controller's CA: {e}"))?;
    Ok((ca, issued))
}

/// Counts what [`renew`] did (the proxies' `/metrics`).
pub trait RenewalObserver: Send + Sync + 'static {
    fn renewed(&self);
    fn failed(&self);
}

/// Renews at half-life through the controller's CA, forever: new HBONE handshakes use the new
/// certificate (established connections keep theirs) and the xDS channel presents it from its
/// next stream on. A failed renewal is retried at the next check.
pub async fn renew(
    ca: CaClient,
    mut cert: WorkloadCert,
    tls: Arc<HboneTls>,
    xds_identity: ClientIdentity,
    observer: Arc<dyn RenewalObserver>,
) {
    loop {
        tokio::time::sleep(RENEW_CHECK).await;
        if !cert.should_renew(std::time::SystemTime::now()) {
            continue;
        }
        let renewed = ca.issue(&cert.identity).await.and_then(|issued| {
            tls.cert_store()
                .rotate(&issued.cert)
                .map_err(|e| e.to_string())?;
            xds_identity.set_issued(&issued);
            Ok(issued.cert)
        });
        match renewed {
            Ok(new) => {
                tracing::info!(identity = %new.identity, "certificate renewed by the controller's CA");
                observer.renewed();
                cert = new;
            }
            Err(e) => {
                observer.failed();
                tracing::error!(identity = %cert.identity, error = %e, "certificate renewal failed; retrying");
            }
        }
    }
}

/// Gets `identity`'s certificate from the controller's CA (blocking, as [`issue_blocking`]),
/// hands it to the xDS channel, and keeps it renewed at half-life on `handle`. Returns the
/// HBONE TLS settings holding it.
pub fn mesh_certificate(
    handle: &tokio::runtime::Handle,
    config: CaClientConfig,
    identity: &Identity,
    xds_identity: &ClientIdentity,
    metrics: Arc<XdsMetrics>,
) -> Result<Arc<HboneTls>, String> {
    let (ca, issued) = issue_blocking(handle, config, identity)?;
    let tls = HboneTls::from_workload_cert(&issued.root_pem, &issued.cert)
        .map_err(|e| format!("certificate for {identity}: {e}"))?;
    let tls = Arc::new(tls);
    tracing::info!(%identity, "mesh identity: certificate issued by the controller's CA");
    metrics.certificates.store(1, Ordering::Relaxed);
    xds_identity.set_issued(&issued);
    handle.spawn(renew(
        ca,
        issued.cert,
        tls.clone(),
        xds_identity.clone(),
        metrics,
    ));
    Ok(tls)
}

/// The `/metrics` series of a connected proxy, named `ringmesh_<program>_...`.
pub struct XdsMetrics {
    program: &'static str,
    stats: Arc<ClientStats>,
    /// L7 configuration pushes applied.
    pub pushes: AtomicU64,
    /// Workload registry pushes applied.
    pub registry_pushes: AtomicU64,
    certificates: AtomicU64,
    renewals: AtomicU64,
    renewal_failures: AtomicU64,
}

impl XdsMetrics {
    pub fn new(program: &'static str, stats: Arc<ClientStats>) -> Self {
        Self {
            program,
            stats,
            pushes: AtomicU64::new(0),
            registry_pushes: AtomicU64::new(0),
            certificates: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            renewal_failures: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Prometheus text lines, appended to `out`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let (p, s) = (self.program, &self.stats);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, value) in [
            ("xds_connected", u64::from(s.connected())),
            ("xds_streams_opened_total", s.connects()),
            ("xds_responses_total", s.responses()),
            ("xds_acks_total", s.acks()),
            ("xds_nacks_total", s.nacks()),
            ("xds_pushes_applied_total", load(&self.pushes)),
            (
                "xds_registry_pushes_applied_total",
                load(&self.registry_pushes),
            ),
            ("certificates", load(&self.certificates)),
            ("certificate_renewals_total", load(&self.renewals)),
            (
                "certificate_renewal_failures_total",
                load(&self.renewal_failures),
            ),
        ] {
            let _ = writeln!(out, "ringmesh_{p}_{name} {value}");
        }
    }
}

impl RenewalObserver for XdsMetrics {
    fn renewed(&self) {
        self.renewals.fetch_add(1, Ordering::Relaxed);
    }
    fn failed(&self) {
        self.renewal_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Blocks until `synced()` holds; with a controller that stays connected for a second
/// without that happening (it has nothing for this proxy, or withholds it), returns anyway so
/// the proxy starts with what it has. Waits as long as the controller is unreachable,
/// logging every 5 s.
pub fn wait_initial_sync(stats: &ClientStats, what: &str, synced: impl Fn() -> bool) {
    let mut last_log = Instant::now();
    let mut connected_since: Option<Instant> = None;
    loop {
        if synced() {
            return;
        }
        if stats.connected() {
            connected_since.get_or_insert_with(Instant::now);
        } else {
            connected_since = None;
        }
        if connected_since.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            tracing::warn!(resource = %what, "the controller sent no configuration for this proxy yet; starting without it");
            return;
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::warn!(
                error = stats.last_error().unwrap_or_default(),
                "still waiting for the controller"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_after_the_program() {
        let metrics = XdsMetrics::new("waypoint", Arc::new(ClientStats::default()));
        metrics.pushes.fetch_add(2, Ordering::Relaxed);
        metrics.renewed();
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains("ringmesh_waypoint_xds_pushes_applied_total 2\n"),
            "{out}"
        );
        assert!(
            out.contains("ringmesh_waypoint_certificate_renewals_total 1\n"),
            "{out}"
        );
        assert!(out.contains("ringmesh_waypoint_xds_connected 0\n"), "{out}");
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(
            normalize_address("127.0.0.1:15010", false),
            "http://127.0.0.1:15010"
        );
        assert_eq!(normalize_address("c:15012", true), "https://c:15012");
        assert_eq!(normalize_address("https://c:1", false), "https://c:1");
    }
}
