//! HBONE client side: what a tunnel request carries, how new connections
//! are made ([`Connect`]), and the CONNECT exchange on a pooled connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::Reason;
use http::StatusCode;
use monoio::io::{AsyncReadRent, AsyncWriteRent, IntoPollIo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::headers;
use crate::pipe::PipeOutcome;
use crate::pool::{Lease, PoolKey};
use crate::stream::H2Stream;

/// One tunnel to open: which pooled connection (`key`) and what to ask for.
#[derive(Clone, Debug)]
pub struct TunnelRequest {
    /// Source identity, destination identity, and the HBONE address to
    /// dial (e.g. `podIP:15008`).
    pub key: PoolKey,
    /// `:authority`: where the far end connects (e.g. `podIP:targetPort`).
    pub authority: SocketAddr,
    /// Sent as `forwarded: for="ip:port"` (the original client address).
    pub forwarded_for: Option<SocketAddr>,
    pub baggage: Option<String>,
    pub traceparent: Option<String>,
}

impl TunnelRequest {
    pub fn new(key: PoolKey, authority: SocketAddr) -> Self {
        Self {
            key,
            authority,
            forwarded_for: None,
            baggage: None,
            traceparent: None,
        }
    }
}

/// Makes the byte stream for a new pooled connection: TCP, or mTLS that
/// presents `key.source_identity` and verifies `key.destination_identity`.
pub trait Connect: 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + 'static;

    fn connect(&self, key: &PoolKey) -> impl Future<Output = io::Result<Self::Io>>;
}

/// A [`Connect`] from an async closure; see [`connect_fn`].
pub struct ConnectFn<F>(F);

/// Wraps `Fn(PoolKey) -> impl Future<Output = io::Result<Io>>`.
pub fn connect_fn<F>(f: F) -> ConnectFn<F> {
    ConnectFn(f)
}

impl<F, Fut, S> Connect for ConnectFn<F>
where
    F: Fn(PoolKey) -> Fut + 'static,
    Fut: Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Io = S;

    fn connect(&self, key: &PoolKey) -> impl Future<Output = io::Result<S>> {
        (self.0)(key.clone())
    }
}

/// Plain TCP to `key.destination` (no TLS: for tests and trusted links).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connect for TcpConnector {
    type Io = monoio::net::tcp::stream_poll::TcpStreamPoll;

    async fn connect(&self, key: &PoolKey) -> io::Result<Self::Io> {
        let stream = monoio::net::TcpStream::connect(key.destination).await?;
        stream.set_nodelay(true)?;
        stream.into_poll_io()
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// Making the connection (TCP/TLS) failed or timed out. Shared by every
    /// caller that waited for the same connection attempt.
    Connect(Arc<io::Error>),
    /// The HTTP/2 handshake failed or timed out.
    Handshake(Arc<str>),
    /// The server answered the CONNECT with this non-200 status.
    Status(StatusCode),
    /// The stream failed before a response arrived.
    Stream(h2::Error),
    /// A header value cannot be sent (e.g. a newline in `baggage`).
    InvalidRequest(http::Error),
}

impl ClientError {
    /// The response status, when the server answered with a refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status(status) => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(err) => write!(f, "HBONE connect failed: {err}"),
            ClientError::Handshake(err) => write!(f, "HBONE HTTP/2 handshake failed: {err}"),
            ClientError::Status(status) => write!(f, "HBONE CONNECT refused with {status}"),
            ClientError::Stream(err) => write!(f, "HBONE CONNECT stream failed: {err}"),
            ClientError::InvalidRequest(err) => write!(f, "invalid HBONE request: {err}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// An open tunnel (the server answered 200). Holds its connection's stream
/// slot until dropped. Dereferences to [`H2Stream`] for direct use.
pub struct Tunnel {
    stream: H2Stream,
    lease: Lease,
}

impl Tunnel {
    /// Which pooled connection carries this tunnel.
    pub fn connection_id(&self) -> u64 {
        self.lease.connection_id()
    }

    /// Pipes bytes both ways with a byte stream split into halves (e.g.
    /// `app_socket.into_split()`); the stream slot is held until it ends.
    pub async fn pipe<R: AsyncReadRent, W: AsyncWriteRent>(self, read: R, write: W) -> PipeOutcome {
        let Tunnel { stream, lease } = self;
        let outcome = stream.pipe(read, write).await;
        drop(lease);
        outcome
    }

    /// [`Tunnel::pipe`] to a TCP socket, with fewer frames and syscalls per connection
    /// (see [`crate::pipe::pipe_tcp`]).
    pub async fn pipe_tcp(self, tcp: monoio::net::TcpStream) -> PipeOutcome {
        let Tunnel { stream, lease } = self;
        let outcome = stream.pipe_tcp(tcp).await;
        drop(lease);
        outcome
    }

    /// Reader and writer halves for socket-style code (copies; see
    /// [`crate::io`]). The stream slot is held until both are dropped.
    pub fn into_io(self) -> (crate::io::TunnelReader, crate::io::TunnelWriter) {
        let (send, recv) = self.stream.into_parts();
        crate::io::split(send, recv, Some(self.lease))
    }

    pub fn into_parts(self) -> (H2Stream, Lease) {
        (self.stream, self.lease)
    }
}

impl Deref for Tunnel {
    type Target = H2Stream;
    fn deref(&self) -> &H2Stream {
        &self.stream
    }
}

impl DerefMut for Tunnel {
    fn deref_mut(&mut self) -> &mut H2Stream {
        &mut self.stream
    }
}

/// Outcome of one CONNECT attempt on one connection.
pub(crate) enum Attempt {
    Open(Tunnel),
    /// The connection cannot take this stream (GOAWAY, closed, stream
    /// refused before processing): safe to retry on another connection.
    Retry(h2::Error),
    Failed(ClientError),
}

pub(crate) async fn open_stream(
    send: &SendRequest<Bytes>,
    request: &TunnelRequest,
    lease: Lease,
) -> Attempt {
    let connect = match headers::connect_request(
        request.authority,
        request.forwarded_for,
        request.baggage.as_deref(),
        request.traceparent.as_deref(),
    ) {
        Ok(connect) => connect,
        Err(err) => return Attempt::Failed(ClientError::InvalidRequest(err)),
    };
    // A fresh clone has no pending stream, so h2 never rejects it for that.
    let mut send = send.clone();
    let (response, send_stream) = match send.send_request(connect, false) {
        Ok(sent) => sent,
        Err(err) => return Attempt::Retry(err),
    };
    match response.await {
        Ok(response) if response.status() == StatusCode::OK => Attempt::Open(Tunnel {
            stream: H2Stream::new(send_stream, response.into_body()),
            lease,
        }),
        Ok(response) => Attempt::Failed(ClientError::Status(response.status())),
        Err(err) if never_processed(&err) => Attempt::Retry(err),
        Err(err) => Attempt::Failed(ClientError::Stream(err)),
    }
}

/// The server did not act on the stream: REFUSED_STREAM, or a GOAWAY whose
/// last stream id is below ours.
fn never_processed(err: &h2::Error) -> bool {
    err.reason() == Some(Reason::REFUSED_STREAM) || (err.is_go_away() && err.is_remote())
}
