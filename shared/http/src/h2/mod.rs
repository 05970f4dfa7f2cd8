//! HTTP/2 in the L7 engine (the h2 crate on monoio).
//!
//! Downstream: HTTPS listeners offer ALPN `h2` then `http/1.1`; a connection
//! that negotiates h2 is served here. HTTP listeners accept h2c with prior
//! knowledge ([`H2Options::h2c_prior_knowledge`]): the HTTP/1.1 reader sees
//! the `PRI * HTTP/2.0` preface where a request line should be (it fails to
//! parse as HTTP/1.x, so HTTP/1.1 pays nothing) and hands the connection over.
//!
//! Each stream runs in its own task through the same routing, filters and
//! backend pick as HTTP/1.1 ([`handle`]), then goes to the backend in the
//! cluster's protocol: HTTP/1.1 ([`to_h1`]) or h2c over a per-worker pooled
//! connection ([`to_h2`], `upstream::h2pool`). gRPC requests get the proxy's
//! own errors as trailers-only gRPC statuses ([`grpc`]).
//!
//! Protections: h2's own limits (concurrent streams, header list size, which
//! also bounds CONTINUATION floods, pending-accept and local-error reset
//! limits against rapid reset) plus [`guard`], which closes connections that
//! flood SETTINGS/PING or reset most of their streams.

mod body;
pub(crate) mod from_h1;
mod from_h1_retry;
pub mod grpc;
pub mod guard;
mod handle;
pub(crate) mod poll_io;
mod replay;
mod rewind;
pub(crate) mod server;
mod to_h1;
mod to_h2;
pub mod translate;

pub use guard::PREFACE;
pub(crate) use rewind::Rewind;

/// HTTP/2 settings of the server side.
#[derive(Debug, Clone)]
pub struct H2Options {
    /// Serve h2c (HTTP/2 over cleartext, prior knowledge) on HTTP listeners.
    /// Detection costs HTTP/1.1 nothing: it runs only when the first request
    /// line fails to parse.
    pub h2c_prior_knowledge: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS per client connection.
    pub max_concurrent_streams: u32,
    /// Receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// Receive window of a whole connection.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept.
    pub max_frame_size: u32,
    /// Bytes h2 may buffer per stream toward a slow client.
    pub max_send_buffer_size: usize,
    /// Streams the client may reset before we accepted them (h2's
    /// rapid-reset guard; beyond it GOAWAY ENHANCE_YOUR_CALM).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we may reset for protocol errors on one connection before it
    /// is closed with GOAWAY.
    pub max_local_error_reset_streams: usize,
}

impl Default for H2Options {
    fn default() -> Self {
        Self {
            h2c_prior_knowledge: true,
            max_concurrent_streams: 128,
            // 1 MiB per stream, 4 MiB per connection: room for fast uploads
            // while a client can make us buffer at most that much.
            stream_window: 1024 * 1024,
            connection_window: 4 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_send_buffer_size: 256 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 256,
        }
    }
}
