//! PING keepalive: every `interval` a PING; no PONG within `timeout` means
//! the peer (or the path to it) is gone and the connection must close.
//!
//! A poll-style state machine so a connection driver can poll it next to
//! the h2 connection future in one task.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use h2::{Ping, PingPong};
use monoio::time::{sleep, Instant, Sleep};

#[derive(Debug)]
pub enum KeepaliveError {
    /// No PONG within the timeout.
    Timeout,
    /// h2 refused the PING (connection already failing).
    H2(h2::Error),
}

impl fmt::Display for KeepaliveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepaliveError::Timeout => f.write_str("keepalive PING unanswered"),
            KeepaliveError::H2(err) => write!(f, "keepalive PING failed: {err}"),
        }
    }
}

impl std::error::Error for KeepaliveError {}

pub(crate) struct Keepalive {
    ping: PingPong,
    interval: Duration,
    timeout: Duration,
    awaiting_pong: bool,
    timer: Pin<Box<Sleep>>,
}

impl Keepalive {
    pub(crate) fn new(ping: PingPong, interval: Duration, timeout: Duration) -> Self {
        Self {
            ping,
            interval,
            timeout,
            awaiting_pong: false,
            timer: Box::pin(sleep(interval)),
        }
    }

    /// Pending while the peer answers; `Ready(Err)` once it stopped.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<KeepaliveError> {
        loop {
            if self.awaiting_pong {
                match self.ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        self.timer.as_mut().reset(Instant::now() + self.interval);
                        continue;
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(KeepaliveError::H2(err)),
                    Poll::Pending => {}
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(KeepaliveError::Timeout);
                }
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Err(err) = self.ping.send_ping(Ping::opaque()) {
                return Poll::Ready(KeepaliveError::H2(err));
            }
            self.awaiting_pong = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

/// Sends one PING and resolves on its PONG. The peer sends its SETTINGS
/// before answering anything, so after this the peer's limits are known.
pub(crate) fn poll_ping_roundtrip(
    ping: &mut PingPong,
    sent: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), h2::Error>> {
    if !*sent {
        ping.send_ping(Ping::opaque())?;
        *sent = true;
    }
    ping.poll_pong(cx).map_ok(|_| ())
}
