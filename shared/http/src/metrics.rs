//! Per-worker request counters, summed when scraped.

use std::sync::Arc;

use mesh_runtime::MetricsSource;

/// Written only by its own worker; read by the scraper.
#[derive(Default, Debug)]
pub struct WorkerMetrics {}

/// All workers' counters, registered once with the metrics server.
#[derive(Default, Debug)]
pub struct HttpMetrics {
    pub workers: Vec<Arc<WorkerMetrics>>,
}

impl HttpMetrics {
    pub fn new(workers: usize) -> Self {
        Self {
            workers: (0..workers)
                .map(|_| Arc::new(WorkerMetrics::default()))
                .collect(),
        }
    }
}

impl MetricsSource for HttpMetrics {
    fn render(&self, _out: &mut String) {}
}
