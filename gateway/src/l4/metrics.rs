//! Istio's TCP metrics for TLS passthrough and TCP connections, per worker,
//! summed when scraped, and the gateway's `/metrics` source that merges them
//! with the HTTP engine's.
//!
//! Series (Istio's names and label names; `reporter="source"` like the HTTP
//! engine's, since the gateway originates the upstream connection):
//! `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//! `istio_tcp_sent_bytes_total` (client → backend),
//! `istio_tcp_received_bytes_total` (backend → client), labelled with
//! `request_protocol` (`tls` or `tcp`), the destination Service and
//! `response_flags` (empty, or why the connection was refused: `NR` no
//! route, `UH` no healthy endpoint, `UF` upstream connect failure — Envoy's
//! flags). Plus `ringmesh_tls_passthrough_rejected_total{reason}` for
//! connections whose ClientHello was garbage, incomplete or too slow.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh_registry::Cluster;
use mesh_runtime::MetricsSource;

/// The labels of one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnLabels {
    /// `tls` (passthrough) or `tcp`.
    pub protocol: &'static str,
    /// `name.namespace.svc.cluster.local`, or `unknown`.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub response_flags: &'static str,
}

impl ConnLabels {
    pub fn new(protocol: &'static str, cluster: Option<&Cluster>, flags: &'static str) -> Self {
        match cluster {
            Some(c) => Self {
                protocol,
                destination_service: format!(
                    "{}.{}.svc.cluster.local",
                    c.service.name, c.service.namespace
                ),
                destination_service_name: c.service.name.clone(),
                destination_service_namespace: c.service.namespace.clone(),
                response_flags: flags,
            },
            None => Self {
                protocol,
                destination_service: "unknown".into(),
                destination_service_name: "unknown".into(),
                destination_service_namespace: "unknown".into(),
                response_flags: flags,
            },
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

/// Why a passthrough connection was dropped before routing.
#[derive(Debug, Clone, Copy)]
pub enum HelloRejection {
    /// Not a TLS ClientHello (answered with an alert where rustls has one).
    Invalid,
    /// The client closed before a whole ClientHello arrived.
    Incomplete,
    /// The ClientHello did not arrive within the timeout.
    Timeout,
}

/// Written only by its own worker (an uncontended lock); read by the scraper.
#[derive(Debug, Default)]
pub struct WorkerL4Metrics {
    series: Mutex<HashMap<ConnLabels, Counts>>,
    hello_invalid: AtomicU64,
    hello_incomplete: AtomicU64,
    hello_timeout: AtomicU64,
}

impl WorkerL4Metrics {
    pub fn opened(&self, labels: &ConnLabels) {
        self.with(labels, |c| c.opened += 1);
    }

    /// `sent`: bytes to the backend; `received`: bytes from it.
    pub fn closed(&self, labels: &ConnLabels, sent: u64, received: u64) {
        self.with(labels, |c| {
            c.closed += 1;
            c.sent += sent;
            c.received += received;
        });
    }

    pub fn hello_rejected(&self, why: HelloRejection) {
        let counter = match why {
            HelloRejection::Invalid => &self.hello_invalid,
            HelloRejection::Incomplete => &self.hello_incomplete,
            HelloRejection::Timeout => &self.hello_timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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

/// The gateway's `/metrics`: the HTTP engine's series with the L4 series
/// merged into the same families (one `# TYPE` line per family).
pub struct GatewayMetrics {
    pub http: Arc<mesh_http::HttpMetrics>,
    pub l4: Vec<Arc<WorkerL4Metrics>>,
}

impl GatewayMetrics {
    pub fn new(http: Arc<mesh_http::HttpMetrics>, workers: usize) -> Self {
        Self {
            http,
            l4: (0..workers.max(1)).map(|_| Default::default()).collect(),
        }
    }

    fn l4_rows(&self) -> Vec<(ConnLabels, Counts)> {
        let mut sum: HashMap<ConnLabels, Counts> = HashMap::new();
        for worker in &self.l4 {
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
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

type Family = (&'static str, fn(&Counts) -> u64);

const FAMILIES: [Family; 4] = [
    ("istio_tcp_connections_opened_total", |c| c.opened),
    ("istio_tcp_connections_closed_total", |c| c.closed),
    ("istio_tcp_sent_bytes_total", |c| c.sent),
    ("istio_tcp_received_bytes_total", |c| c.received),
];

impl MetricsSource for GatewayMetrics {
    fn render(&self, out: &mut String) {
        let mut http = String::new();
        self.http.render(&mut http);
        let rows = self.l4_rows();
        let mut lines: Vec<String> = http.lines().map(str::to_string).collect();
        for (name, value) in FAMILIES {
            let ours: Vec<String> = rows
                .iter()
                .map(|(labels, counts)| {
                    format!("{name}{{{}}} {}", render_labels(labels), value(counts))
                })
                .collect();
            let type_line = format!("# TYPE {name} counter");
            match lines.iter().position(|l| *l == type_line) {
                Some(at) => {
                    // After the family's existing samples, before the next family.
                    let mut end = at + 1;
                    while end < lines.len() && !lines[end].starts_with('#') {
                        end += 1;
                    }
                    lines.splice(end..end, ours);
                }
                None => {
                    lines.push(type_line);
                    lines.extend(ours);
                }
            }
        }
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        let total = |f: fn(&WorkerL4Metrics) -> &AtomicU64| -> u64 {
            self.l4.iter().map(|w| f(w).load(Ordering::Relaxed)).sum()
        };
        out.push_str("# HELP ringmesh_tls_passthrough_rejected_total TLS passthrough connections dropped before routing: no valid ClientHello.\n");
        out.push_str("# TYPE ringmesh_tls_passthrough_rejected_total counter\n");
        for (reason, value) in [
            ("invalid", total(|w| &w.hello_invalid)),
            ("incomplete", total(|w| &w.hello_incomplete)),
            ("timeout", total(|w| &w.hello_timeout)),
        ] {
            let _ = writeln!(
                out,
                "ringmesh_tls_passthrough_rejected_total{{reason=\"{reason}\"}} {value}"
            );
        }
    }
}

fn render_labels(l: &ConnLabels) -> String {
    let pairs = [
        ("reporter", "source"),
        ("request_protocol", l.protocol),
        ("destination_service", &l.destination_service),
        ("destination_service_name", &l.destination_service_name),
        (
            "destination_service_namespace",
            &l.destination_service_namespace,
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l4_series_join_the_http_families() {
        let m = GatewayMetrics::new(Arc::new(mesh_http::HttpMetrics::new(1)), 2);
        let labels = ConnLabels::new("tcp", None, "NR");
        m.l4[0].opened(&labels);
        m.l4[1].opened(&labels);
        m.l4[1].closed(&labels, 10, 20);
        m.l4[0].hello_rejected(HelloRejection::Invalid);
        let mut out = String::new();
        m.render(&mut out);
        for name in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
        ] {
            let type_line = format!("# TYPE {name} counter");
            assert_eq!(out.matches(&type_line).count(), 1, "{out}");
        }
        let series = |name: &str| {
            out.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "{name}{{reporter=\"source\",request_protocol=\"tcp\""
                    ))
                })
                .unwrap_or_else(|| panic!("{name} missing: {out}"))
                .to_string()
        };
        assert!(series("istio_tcp_connections_opened_total").ends_with(" 2"));
        assert!(series("istio_tcp_connections_closed_total").ends_with(" 1"));
        assert!(series("istio_tcp_sent_bytes_total").ends_with(" 10"));
        assert!(series("istio_tcp_received_bytes_total").ends_with(" 20"));
        assert!(series("istio_tcp_sent_bytes_total").contains("response_flags=\"NR\""));
        assert!(out.contains("ringmesh_tls_passthrough_rejected_total{reason=\"invalid\"} 1"));
        // The HTTP engine's own series are still there.
        assert!(out.contains("request_protocol=\"http\""), "{out}");
    }
}
