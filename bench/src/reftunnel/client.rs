//! Client side: plain TCP in, one CONNECT stream each over a single pooled
//! mTLS HTTP/2 connection (reconnected when it fails).

use super::pipe::pipe;
use super::{CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_SEND_BUFFER, STREAM_WINDOW};
use anyhow::{bail, Context};
use bytes::Bytes;
use h2::client::SendRequest;
use mesh_tls::rustls::pki_types::ServerName;
use mesh_tls::rustls::ClientConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

struct Pool {
    peer: SocketAddr,
    tls: TlsConnector,
    sender: Mutex<Option<SendRequest<Bytes>>>,
}

impl Pool {
    /// The pooled connection; the lock is held while connecting so that
    /// concurrent streams never open duplicate connections.
    async fn sender(&self) -> anyhow::Result<SendRequest<Bytes>> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref() {
            if let Ok(ready) = s.clone().ready().await {
                return Ok(ready);
            }
        }
        let fresh = self.connect().await?;
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Bytes>> {
        let tcp = TcpStream::connect(self.peer)
            .await
            .with_context(|| format!("connecting to {}", self.peer))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(self.peer.ip().into());
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .context("h2 handshake")?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!("h2 connection ended: {e}");
            }
        });
        Ok(sender.ready().await?)
    }
}

pub async fn run(
    listen: SocketAddr,
    peer: SocketAddr,
    target: SocketAddr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("reftunnel client listening on {}", listener.local_addr()?);
    let pool = Arc::new(Pool {
        peer,
        tls: TlsConnector::from(config),
        sender: Mutex::new(None),
    });
    loop {
        let (tcp, _) = listener.accept().await?;
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Err(e) = tunnel(&pool, tcp, target).await {
                tracing::warn!("tunnel to {target}: {e:#}");
            }
        });
    }
}

async fn tunnel(pool: &Pool, tcp: TcpStream, target: SocketAddr) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut sender = pool.sender().await?;
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.to_string())
        .body(())?;
    let (response, send) = sender.send_request(request, false)?;
    let response = response.await?;
    if response.status() != http::StatusCode::OK {
        bail!("CONNECT answered {}", response.status());
    }
    pipe(tcp, send, response.into_body()).await?;
    Ok(())
}
