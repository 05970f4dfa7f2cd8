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
