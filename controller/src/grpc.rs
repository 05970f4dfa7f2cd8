//! One tonic server carrying ADS and the CA service: plaintext (15010) or TLS (15012).

use std::future::Future;
use std::time::Duration;

use mesh_tls::{CertificateAuthority, Identity};
use mesh_xds::XdsServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::ca::CaService;

/// Serves until `shutdown` completes, then ends the ADS streams (they would
/// otherwise hold the graceful shutdown forever).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    xds: XdsServer,
    ca: CaService,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let closer = xds.clone();
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(xds.service())
        .add_service(ca.into_server())
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            closer.close_streams();
        })
        .await?;
    Ok(())
}

/// DNS names always in the serving certificate (the in-cluster Service name).
pub const DEFAULT_SERVING_NAMES: &[&str] = &[
    "ringmesh-controller.istio-system.svc",
    "ringmesh-controller.istio-system.svc.cluster.local",
    "localhost",
];

/// The controller's serving identity on 15012, issued by its own CA (client certificates
/// from the same CA are accepted and verified, not required):
/// `spiffe://TD/ns/istio-system/sa/ringmesh-controller` plus
/// [`DEFAULT_SERVING_NAMES`] and `extra_sans` (each an IP or a DNS name), so
/// clients holding the mesh root can verify it by name or address.
pub fn serving_tls(
    ca: &CertificateAuthority,
    trust_domain: &str,
    extra_sans: &[String],
) -> anyhow::Result<ServerTlsConfig> {
    let identity = Identity::new(trust_domain, "istio-system", "ringmesh-controller")?;
    let mut dns: Vec<String> = DEFAULT_SERVING_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    for san in extra_sans {
        match san.parse::<std::net::IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.clone()),
        }
    }
    let (issued, key_pem) = ca.issue_serving_cert(&identity, &dns, &ips)?;
    let chain = issued.chain_pem.concat();
    // Client certificates are optional (a proxy asks the CA for its first one on this port)
    // but verified against the mesh root when presented: xds_access ties Proxy resources to
    // the identity they carry.
    Ok(ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, key_pem))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.root_pem()))
        .client_auth_optional(true))
}
