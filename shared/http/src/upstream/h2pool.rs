//! Per-worker HTTP/2 upstream connections (h2c with prior knowledge on TCP
//! or inside an HBONE tunnel to a mesh pod, or TLS with ALPN h2 under a
//! DestinationRule `tls.mode: SIMPLE`): one connection
//! per endpoint carries many concurrent streams; a connection the backend
//! closed (or that failed) is replaced on next use.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use mesh_tls::rustls::pki_types::ServerName;
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;

use super::connector::Transport;

/// Our receive windows toward backends (gRPC streams are often long-lived
/// and bulky; the sizes that reached full speed for HBONE).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 64 * 1024;

struct Conn {
    send: SendRequest<Bytes>,
    /// Cleared when the connection task ends.
    alive: Rc<Cell<bool>>,
}

#[derive(Default)]
pub struct H2Pool {
    conns: RefCell<HashMap<SocketAddr, Conn>>,
}

impl H2Pool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle ready to open a stream to `addr`: the pooled connection, or
    /// a new one. `fresh`: do not reuse (the pooled one just failed).
    pub async fn ready(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        fresh: bool,
    ) -> io::Result<SendRequest<Bytes>> {
        let pooled = if fresh {
            None
        } else {
            self.conns
                .borrow()
                .get(&addr)
                .filter(|c| c.alive.get())
                .map(|c| c.send.clone())
        };
        let send = match pooled {
            Some(send) => send,
            None => self.connect(addr, connect_timeout).await?,
        };
        send.ready().await.map_err(io::Error::other)
    }

    /// Forgets `addr`'s connection (it refused new streams or broke).
    pub fn discard(&self, addr: SocketAddr) {
        self.conns.borrow_mut().remove(&addr);
    }

    /// Open connections (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns
            .borrow()
            .values()
            .filter(|c| c.alive.get())
            .count()
    }

    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<SendRequest<Bytes>> {
        // What the worker's connector says about this address: HTTP/2 inside
        // an HBONE tunnel (a mesh pod, a waypoint), TLS with ALPN h2
        // (DestinationRule SIMPLE), or h2c on TCP; a refusal never turns
        // into plaintext.
        let conn = match super::connector::transport_for(addr) {
            Transport::Tcp => {
                let tcp = dial(addr, timeout).await?;
                handshake(addr, tcp.into_poll_io()?, timeout).await?
            }
            Transport::Hbone { via, identity } => {
                let tunnel =
                    super::connector::hbone_poll_tunnel(addr, via, identity, timeout).await?;
                handshake(addr, tunnel, timeout).await?
            }
            Transport::Tls {
                config,
                server_name,
            } => {
                let tcp = dial(addr, timeout).await?;
                let stream = monoio::time::timeout(timeout, tls_h2(addr, tcp, config, server_name))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "upstream TLS connect timed out")
                    })??;
                handshake(addr, stream, timeout).await?
            }
            Transport::Refuse(reason) => {
                tracing::warn!(endpoint = %addr, "upstream connection refused: {reason}");
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    reason.to_string(),
                ));
            }
        };
        let send = conn.send.clone();
        self.conns.borrow_mut().insert(addr, conn);
        Ok(send)
    }
}

async fn dial(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let tcp = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// TLS offering ALPN `h2` only (the rule's settings otherwise); a backend
/// that does not choose h2 is refused rather than spoken to in HTTP/2 blindly.
async fn tls_h2(
    addr: SocketAddr,
    tcp: TcpStream,
    config: Arc<mesh_tls::rustls::ClientConfig>,
    server_name: ServerName<'static>,
) -> io::Result<mesh_tls::TlsStream> {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = server_name.to_str().into_owned();
    let stream = match mesh_tls::connect_plain(Arc::new(config), server_name, tcp).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(endpoint = %addr, server_name = %name, "upstream TLS handshake failed: {e}");
            return Err(e.into());
        }
    };
    if stream.alpn_protocol() != Some(b"h2") {
        tracing::warn!(endpoint = %addr, server_name = %name, "upstream TLS: the backend did not negotiate ALPN h2");
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the backend did not negotiate ALPN h2",
        ));
    }
    Ok(stream)
}

/// The HTTP/2 client handshake over `io`, its connection driven by a task
/// of its own; the handle reports the connection dead once that task ends.
async fn handshake<T>(addr: SocketAddr, io: T, timeout: Duration) -> io::Result<Conn>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false);
    let handshake = builder.handshake::<_, Bytes>(io);
    let (send, conn) = match monoio::time::timeout(timeout, handshake).await {
        Ok(r) => r.map_err(io::Error::other)?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP/2 handshake timed out",
            ))
        }
    };
    let alive = Rc::new(Cell::new(true));
    let flag = alive.clone();
    monoio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, "HTTP/2 upstream connection ended: {e}");
        }
        flag.set(false);
    });
    Ok(Conn { send, alive })
}
