//! Graceful shutdown signal: once raised, connections finish the request in
//! hand, then close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Default, Debug)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Resolves once draining started; for idle connections to select on.
    pub async fn signaled(&self) {
        while !self.is_draining() {
            monoio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
