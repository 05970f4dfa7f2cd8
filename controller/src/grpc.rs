//! One tonic server carrying ADS and the CA service: plaintext (15010) or TLS (15012).

use std::future::Future;
use std::time::Duration;

use mesh_xds::XdsServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::ca::CaService;
pub use crate::serving_tls::{ServingIdentity, ServingTls, DEFAULT_SERVING_NAMES};

/// Serves until `shutdown` completes, then ends the ADS streams (they would
/// otherwise hold the graceful shutdown forever). With `tls` the handshakes are
/// [`ServingTls`]'s (a certificate renewed in place).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ServingTls>,
    xds: XdsServer,
    ca: CaService,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let closer = xds.clone();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(xds.service())
        .add_service(ca.into_server());
    let shutdown = async move {
        shutdown.await;
        closer.close_streams();
    };
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
                .await?
        }
        None => {
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?
        }
    }
    Ok(())
}
