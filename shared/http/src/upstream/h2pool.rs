//! Per-worker HTTP/2 (h2c, prior knowledge) upstream connections: one
//! connection per endpoint carries many concurrent streams; a connection the
//! backend closed (or that failed) is replaced on next use.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
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
        // What the worker's connector says about this address: h2c rides
        // plain TCP only. TLS (DestinationRule SIMPLE) or a refusal must not
        // turn into plaintext; HBONE (a mesh pod) keeps plain TCP, which the
        // pod's ztunnel captures.
        match super::connector::transport_for(addr) {
            Transport::Tcp | Transport::Hbone { .. } => {}
            Transport::Tls { .. } => {
                let reason =
                    "tls.mode SIMPLE toward an HTTP/2 (h2c, gRPC) backend is not supported yet";
                tracing::warn!(endpoint = %addr, "upstream connection refused: {reason}");
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, reason));
            }
            Transport::Refuse(reason) => {
                tracing::warn!(endpoint = %addr, "upstream connection refused: {reason}");
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    reason.to_string(),
                ));
            }
        }
        let tcp = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        tcp.set_nodelay(true)?;
        let io = tcp.into_poll_io()?;
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
                tracing::debug!(%addr, "h2c upstream connection ended: {e}");
            }
            flag.set(false);
        });
        self.conns.borrow_mut().insert(
            addr,
            Conn {
                send: send.clone(),
                alive,
            },
        );
        Ok(send)
    }
}
