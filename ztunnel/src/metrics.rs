//! Istio's TCP metrics (`istio_tcp_*`) with Istio's labels, plus ztunnel
//! specifics, and the access log line. Each worker writes only its own slot
//! (an uncontended lock); `/metrics` sums the slots at scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The labels of one series (Istio's names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ConnLabels {
    /// `source` (outbound side) or `destination` (inbound side).
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: &'static str,
    /// Empty, or why the connection failed: `DENY`, `CONNECT`, `UNKNOWN_WORKLOAD`.
    pub response_flags: &'static str,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

/// Labels are hashed twice per connection (opened, closed): foldhash instead of SipHash,
/// which cost ~1,300 instructions per lookup here (the labels are ~10 strings, from the
/// registry and the authenticated peer identity, not attacker-chosen keys).
type SeriesMap = HashMap<ConnLabels, Counts, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct WorkerMetrics {
    series: Mutex<SeriesMap>,
    /// HBONE connections this worker's pools opened (TLS handshake done).
    pub hbone_connections_opened: AtomicU64,
    /// HBONE connections accepted by this worker's 15008 listeners.
    pub hbone_connections_accepted: AtomicU64,
}

impl WorkerMetrics {
    pub fn opened(&self, labels: &ConnLabels) {
        self.with(labels, |c| c.opened += 1);
    }

    /// `sent`: bytes to the destination; `received`: bytes from it.
    pub fn closed(&self, labels: &ConnLabels, sent: u64, received: u64) {
        self.with(labels, |c| {
            c.closed += 1;
            c.sent += sent;
            c.received += received;
        });
    }

    fn with(&self, labels: &ConnLabels, f: impl FnOnce(&mut Counts)) {
        // Poisoning only means a panic elsewhere mid-update; counters stay usable.
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        match series.get_mut(labels) {
            Some(c) => f(c),
            None => {
                let mut c = Counts::default();
                f(&mut c);
                series.insert(labels.clone(), c);
            }
        }
    }
}

pub struct Metrics {
    pub workers: Vec<std::sync::Arc<WorkerMetrics>>,
}

impl Metrics {
    pub fn new(workers: usize) -> Self {
        Self {
            workers: (0..workers.max(1)).map(|_| Default::default()).collect(),
        }
    }
}

impl mesh_runtime::MetricsSource for Metrics {
    fn render(&self, out: &mut String) {
        let mut sum: HashMap<ConnLabels, Counts> = HashMap::new();
        for worker in &self.workers {
            let series = worker.series.lock().unwrap_or_else(|p| p.into_inner());
            for (labels, c) in series.iter() {
                let s = sum.entry(labels.clone()).or_default();
                s.opened += c.opened;
                s.closed += c.closed;
                s.sent += c.sent;
                s.received += c.received;
            }
        }
        let mut rows: Vec<_> = sum.into_iter().collect();
        rows.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        type Family = (&'static str, &'static str, fn(&Counts) -> u64);
        let families: [Family; 4] = [
            (
                "istio_tcp_connections_opened_total",
                "TCP connections opened",
                |c| c.opened,
            ),
            (
                "istio_tcp_connections_closed_total",
                "TCP connections closed",
                |c| c.closed,
            ),
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the destination",
                |c| c.sent,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from the destination",
                |c| c.received,
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
            for (labels, counts) in &rows {
                let _ = writeln!(out, "{name}{{{}}} {}", render_labels(labels), value(counts));
            }
        }
        let total = |f: fn(&WorkerMetrics) -> &AtomicU64| -> u64 {
            self.workers
                .iter()
                .map(|w| f(w).load(Ordering::Relaxed))
                .sum()
        };
        let _ = writeln!(
            out,
            "# HELP ringmesh_ztunnel_hbone_connections_opened_total HBONE (mTLS) connections opened by the outbound pools.\n# TYPE ringmesh_ztunnel_hbone_connections_opened_total counter\nringmesh_ztunnel_hbone_connections_opened_total {}",
            total(|w| &w.hbone_connections_opened)
        );
        let _ = writeln!(
            out,
            "# HELP ringmesh_ztunnel_hbone_connections_accepted_total HBONE (mTLS) connections accepted on 15008.\n# TYPE ringmesh_ztunnel_hbone_connections_accepted_total counter\nringmesh_ztunnel_hbone_connections_accepted_total {}",
            total(|w| &w.hbone_connections_accepted)
        );
    }
}

fn render_labels(l: &ConnLabels) -> String {
    let pairs = [
        ("reporter", l.reporter),
        ("source_workload", &l.source_workload),
        ("source_workload_namespace", &l.source_workload_namespace),
        ("source_principal", &l.source_principal),
        ("destination_workload", &l.destination_workload),
        (
            "destination_workload_namespace",
            &l.destination_workload_namespace,
        ),
        ("destination_principal", &l.destination_principal),
        ("destination_service", &l.destination_service),
        ("connection_security_policy", l.connection_security_policy),
        ("response_flags", l.response_flags),
    ];
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = v.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out
}

/// One access-log line per connection (target `access`).
pub struct AccessLog<'a> {
    pub direction: &'static str,
    pub labels: &'a ConnLabels,
    pub source: std::net::SocketAddr,
    pub destination: std::net::SocketAddr,
    pub sent: u64,
    pub received: u64,
    pub duration: Duration,
    pub error: Option<String>,
}

impl AccessLog<'_> {
    pub fn emit(&self) {
        let l = self.labels;
        tracing::info!(
            target: "access",
            direction = self.direction,
            src.addr = %self.source,
            src.workload = %l.source_workload,
            src.identity = %l.source_principal,
            dst.addr = %self.destination,
            dst.workload = %l.destination_workload,
            dst.identity = %l.destination_principal,
            dst.service = %l.destination_service,
            bytes_sent = self.sent,
            bytes_recv = self.received,
            duration_ms = self.duration.as_millis() as u64,
            error = self.error.as_deref().unwrap_or(""),
            "connection complete"
        );
    }
}

#[cfg(test)]
mod tests {
    use mesh_runtime::MetricsSource;

    use super::*;

    #[test]
    fn sums_workers_and_renders_istio_labels() {
        let metrics = Metrics::new(2);
        let labels = ConnLabels {
            reporter: "source",
            source_workload: "a".into(),
            destination_principal: "spiffe://cluster.local/ns/x/sa/\"q\"".into(),
            connection_security_policy: "mutual_tls",
            ..Default::default()
        };
        metrics.workers[0].opened(&labels);
        metrics.workers[1].opened(&labels);
        metrics.workers[1].closed(&labels, 10, 20);
        metrics.workers[0]
            .hbone_connections_opened
            .fetch_add(3, Ordering::Relaxed);
        let mut out = String::new();
        metrics.render(&mut out);
        let series = |name: &str| {
            out.lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .unwrap_or_else(|| panic!("{name} missing in\n{out}"))
                .to_string()
        };
        assert!(series("istio_tcp_connections_opened_total").ends_with(" 2"));
        assert!(series("istio_tcp_connections_closed_total").ends_with(" 1"));
        assert!(series("istio_tcp_sent_bytes_total").ends_with(" 10"));
        assert!(series("istio_tcp_received_bytes_total").ends_with(" 20"));
        let line = series("istio_tcp_connections_opened_total");
        assert!(line.contains("reporter=\"source\""), "{line}");
        assert!(line.contains("source_workload=\"a\""), "{line}");
        assert!(line.contains("sa/\\\"q\\\"\""), "quotes escaped: {line}");
        assert!(out.contains("ringmesh_ztunnel_hbone_connections_opened_total 3\n"));
    }
}
