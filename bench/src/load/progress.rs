//! Live progress line on a terminal: each load thread bumps its own counters
//! (one cache line per thread, so no contention) and a plain std thread prints
//! the totals once a second.

use super::units::format_count;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Completed requests and errors of one load thread.
#[derive(Default)]
#[repr(align(128))]
pub struct ThreadCounters {
    done: AtomicU64,
    errors: AtomicU64,
}

impl ThreadCounters {
    #[inline]
    pub fn add_done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints `\r[ 3.0s] 153,220 requests  51,034 req/s  0 errors` every second
/// until dropped.
pub struct ProgressLine {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    pub fn start(
        counters: Vec<Arc<ThreadCounters>>,
        start: Instant,
        total: Option<Duration>,
    ) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut last_done = 0u64;
            let mut last_at = start;
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last_at.elapsed() < Duration::from_secs(1) {
                    continue;
                }
                let now = Instant::now();
                let done: u64 = counters
                    .iter()
                    .map(|c| c.done.load(Ordering::Relaxed))
                    .sum();
                let errors: u64 = counters
                    .iter()
                    .map(|c| c.errors.load(Ordering::Relaxed))
                    .sum();
                let rate = (done - last_done) as f64 / (now - last_at).as_secs_f64();
                let of = total.map(|t| format!("/{t:?}")).unwrap_or_default();
                let _ = write!(
                    std::io::stderr(),
                    "\r\x1b[K[{:5.1}s{of}] {} requests  {} req/s  {} errors",
                    (now - start).as_secs_f64(),
                    format_count(done),
                    format_count(rate as u64),
                    format_count(errors)
                );
                last_done = done;
                last_at = now;
            }
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        });
        ProgressLine {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
