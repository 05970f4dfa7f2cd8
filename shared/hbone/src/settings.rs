//! HTTP/2 settings shared by the HBONE client and server.
//!
//! The defaults are the ones that reached full speed on the development
//! machines (DESIGN.md, "Facts established"): Istio's windows (4 MiB per
//! stream, 16 MiB per connection), a 1 MiB send buffer per stream, and
//! 256 KiB frames, which cut CPU by 10–20% against the 16 KiB default.

use std::time::Duration;

/// Connection-level HTTP/2 settings, the same on both ends of a tunnel.
#[derive(Clone, Debug)]
pub struct H2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise (receive window per stream).
    pub stream_window: u32,
    /// Our receive window for the whole connection.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we advertise (the largest DATA frame the peer may send us).
    pub max_frame_size: u32,
    /// Bytes h2 buffers per stream before `poll_capacity` stops granting more.
    pub max_send_buffer_size: usize,
    /// Largest header block we accept (h2's header-size protection).
    pub max_header_list_size: u32,
    /// PING interval; `None` disables keepalive (the runtime then needs no timer).
    pub keepalive_interval: Option<Duration>,
    /// A PING unanswered this long closes the connection.
    pub keepalive_timeout: Duration,
    /// Time allowed for the HTTP/2 preface and SETTINGS exchange.
    pub handshake_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 256 * 1024,
            max_send_buffer_size: 1024 * 1024,
            max_header_list_size: 64 * 1024,
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl H2Settings {
    pub(crate) fn client_builder(&self, max_streams: usize) -> h2::client::Builder {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_header_list_size(self.max_header_list_size)
            // Until the server's SETTINGS arrive, assume no more than our own
            // per-connection cap; the pool waits for them anyway.
            .initial_max_send_streams(max_streams)
            .enable_push(false);
        builder
    }

    pub(crate) fn server_builder(&self, max_concurrent_streams: u32) -> h2::server::Builder {
        // Rapid-reset (max_pending_accept_reset_streams, max_local_error_reset_streams)
        // and header-size protections stay at h2's defaults or stricter.
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer_size)
            .max_header_list_size(self.max_header_list_size)
            .max_concurrent_streams(max_concurrent_streams);
        builder
    }
}
