//! HBONE client (pool) and server over h2 on monoio.
//!
//! HBONE is HTTP/2 CONNECT over mutual TLS (Istio's wire format, see
//! DESIGN.md "Wire contracts"). This crate is transport-agnostic: the server
//! serves any `tokio::io::AsyncRead + AsyncWrite` connection (mesh-tls's TLS
//! stream, or plain TCP via monoio's poll-io), and the client's pool gets new
//! connections from a [`Connect`] implementation.
//!
//! - [`server`]: [`Server`] answers CONNECT streams via a [`ConnectHandler`].
//! - [`pool`]: [`Pool`], the per-worker client.
//! - [`pipe`]: zero-copy byte pipes between an h2 stream and a socket.
//! - [`io`]: a tunnel as a monoio byte stream, for socket-style callers.
//! - [`settings`]: the HTTP/2 windows, frame size and keepalive both ends use.
//!
//! Everything is per worker thread (`Rc`, no locks); the monoio runtime needs
//! its timer (handshake/connect timeouts, PING keepalive, idle close).
//!
//! ```ignore
//! // Inbound (ztunnel 15008): TLS first, then HBONE with the verified identity.
//! let server = Server::new(ServerConfig::default(), handler_fn(|req: ConnectRequest| async move {
//!     // policy on req.peer_identity / req.authority ...; Err(Refusal::Denied(..)) → 401
//!     TcpStream::connect(req.authority).await.map_err(|e| Refusal::Unavailable(e.to_string()))
//! }));
//! let tls = mesh_tls::accept(hbone_tls.server_config(), tcp).await?;
//! let info = ConnectionInfo {
//!     peer_identity: Some(tls.peer_identity().to_string().into()),
//!     peer_addr: tls.peer_addr().ok(),
//!     local_addr: tls.local_addr().ok(),
//! };
//! server.serve(tls, info).await?;
//!
//! // Outbound (ztunnel 15001): a pooled tunnel, then a zero-copy pipe.
//! let pool = Pool::new(ClientConfig::default(), connect_fn(move |key: PoolKey| {
//!     let tls = hbone_tls.clone();
//!     async move {
//!         let expected: mesh_tls::Identity = key.destination_identity.as_deref().unwrap().parse().unwrap();
//!         let tcp = TcpStream::connect(key.destination).await?;
//!         Ok(mesh_tls::connect(tls.client_config(&[expected]).unwrap(), tcp).await?)
//!     }
//! }));
//! let mut request = TunnelRequest::new(PoolKey::new(Some(src), Some(dst), endpoint_15008), endpoint_target_port);
//! request.forwarded_for = Some(app_peer_addr);
//! let tunnel = pool.connect(&request).await?; // Err(ClientError::Status(401)) when refused
//! let (read, write) = app_socket.into_split();
//! let outcome = tunnel.pipe(read, write).await; // bytes each way + result
//! ```

pub mod client;
mod event;
pub mod headers;
pub mod io;
mod keepalive;
pub mod pipe;
pub mod pool;
pub mod server;
pub mod settings;
mod stream;

pub use client::{
    connect_fn, ClientError, Connect, ConnectFn, TcpConnector, Tunnel, TunnelRequest,
};
pub use io::{TunnelReader, TunnelWriter};
pub use keepalive::KeepaliveError;
pub use pipe::{PipeError, PipeOutcome};
pub use pool::{ClientConfig, Lease, Pool, PoolKey};
pub use server::{
    handler_fn, ConnectHandler, ConnectRequest, ConnectionInfo, HandlerFn, Refusal, Server,
    ServerConfig, ServerError, TunnelOutcome,
};
pub use settings::H2Settings;
pub use stream::H2Stream;
