//! Server side: mTLS HTTP/2, each CONNECT stream connected to its authority.

use super::pipe::pipe;
use super::{CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_SEND_BUFFER, STREAM_WINDOW};
use anyhow::Context;
use bytes::Bytes;
use h2::server::SendResponse;
use mesh_tls::rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub async fn run(listen: SocketAddr, config: Arc<ServerConfig>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("reftunnel server listening on {}", listener.local_addr()?);
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, from) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp).await {
                tracing::warn!("HBONE connection from {from}: {e:#}");
            }
        });
    }
}

async fn connection(acceptor: TlsAcceptor, tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await.context("TLS handshake")?;
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(tls)
        .await
        .context("h2 handshake")?;
    while let Some(accepted) = conn.accept().await {
        let (request, respond) = accepted?;
        tokio::spawn(async move {
            if let Err(e) = stream(request, respond).await {
                tracing::warn!("CONNECT stream: {e:#}");
            }
        });
    }
    Ok(())
}

async fn stream(
    request: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> anyhow::Result<()> {
    let authority = request.uri().authority().map(|a| a.to_string());
    let target = match (request.method(), authority) {
        (&http::Method::CONNECT, Some(a)) => a,
        _ => {
            let bad = http::Response::builder().status(400).body(())?;
            respond.send_response(bad, true)?;
            return Ok(());
        }
    };
    let tcp = match TcpStream::connect(&target).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let unavailable = http::Response::builder().status(503).body(())?;
            respond.send_response(unavailable, true)?;
            return Err(e).with_context(|| format!("connecting to {target}"));
        }
    };
    tcp.set_nodelay(true)?;
    let ok = http::Response::builder().status(200).body(())?;
    let send = respond.send_response(ok, false)?;
    pipe(tcp, send, request.into_body()).await?;
    Ok(())
}
