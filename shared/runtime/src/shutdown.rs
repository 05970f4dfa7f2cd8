//! Process-wide shutdown state: requested once (signal, `/quitquitquit`, or
//! [`ShutdownHandle::trigger`]), observed by workers on their next tick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct ShutdownState {
    requested: AtomicBool,
    /// Set together with `requested`; workers drain until `started_at + drain_timeout`.
    started_at: OnceLock<Instant>,
    pub(crate) drain_timeout: Duration,
}

impl ShutdownState {
    pub(crate) fn new(drain_timeout: Duration) -> Self {
        Self {
            requested: AtomicBool::new(false),
            started_at: OnceLock::new(),
            drain_timeout,
        }
    }

    /// Returns true for the call that actually started the shutdown.
    pub(crate) fn trigger(&self, why: &str) -> bool {
        let first = self.started_at.set(Instant::now()).is_ok();
        self.requested.store(true, Ordering::Release);
        if first {
            tracing::info!(
                reason = why,
                drain_timeout_ms = self.drain_timeout.as_millis() as u64,
                "shutdown requested: closing listeners and draining connections"
            );
        }
        first
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// When draining must end, once shutdown was requested.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.started_at.get().map(|t| *t + self.drain_timeout)
    }
}

/// Starts a graceful shutdown from anywhere (tests, other control-plane code).
#[derive(Clone, Debug)]
pub struct ShutdownHandle(pub(crate) Arc<ShutdownState>);

impl ShutdownHandle {
    pub fn trigger(&self) {
        self.0.trigger("requested by the program");
    }

    pub fn is_requested(&self) -> bool {
        self.0.is_requested()
    }
}
