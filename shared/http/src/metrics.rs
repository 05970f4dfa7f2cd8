//! Per-worker request counters, summed when scraped.
//!
//! Each worker writes only its own `WorkerMetrics`; the request table sits
//! behind a Mutex that only the scraper ever contends for, and the
//! connection counters are relaxed atomics.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_registry::Cluster;
use mesh_runtime::MetricsSource;

/// Istio's default buckets for `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug, Clone, Default)]
pub struct CodeStats {
    pub count: u64,
    pub sum_ms: f64,
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    pub buckets: [u64; DURATION_BUCKETS_MS.len() + 1],
}

impl CodeStats {
    fn observe(&mut self, ms: f64) {
        self.count += 1;
        self.sum_ms += ms;
        let i = DURATION_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(DURATION_BUCKETS_MS.len());
        self.buckets[i] += 1;
    }

    fn merge(&mut self, other: &CodeStats) {
        self.count += other.count;
        self.sum_ms += other.sum_ms;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }
}

/// Destination labels of one cluster (or "unknown").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Destination {
    pub service: String,
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Default)]
struct DestStats {
    labels: Option<Destination>,
    codes: Vec<(SeriesKey, CodeStats)>,
}

/// (response code, source principal, gRPC status, response flags) within
/// one destination.
type SeriesKey = (u16, Option<Box<str>>, Option<u32>, &'static str);

/// One series of `istio_requests_total`: what a request is counted by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKey {
    pub destination: Destination,
    pub code: u16,
    /// The client's SPIFFE identity, "" when unknown.
    pub source: String,
    /// gRPC requests: the call's status (`grpc-status`).
    pub grpc_status: Option<u32>,
    /// Envoy's response flags ("-" when none).
    pub flags: &'static str,
}

/// Written only by its own worker; read by the scraper.
#[derive(Default, Debug)]
pub struct WorkerMetrics {
    requests: Mutex<HashMap<String, DestStats>>,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    /// HTTPS listeners: completed TLS handshakes.
    pub tls_handshakes: AtomicU64,
    /// HTTPS listeners: handshakes that failed (bad ClientHello, alert, timeout, EOF).
    pub tls_handshake_failures: AtomicU64,
    /// Client connections served as HTTP/2 (ALPN h2 or h2c).
    pub h2_connections: AtomicU64,
    /// HTTP/2 connections closed for a protocol error h2 detected (bad
    /// preface, CONTINUATION flood, window overflow...: GOAWAY sent).
    pub h2_protocol_errors: AtomicU64,
    /// HTTP/2 connections closed by the flood guard (SETTINGS/PING flood,
    /// rapid reset): GOAWAY ENHANCE_YOUR_CALM.
    pub h2_floods: AtomicU64,
    /// Requests refused by an L7 AuthorizationPolicy (403 RBAC: access denied).
    pub authz_denied: AtomicU64,
}

const UNKNOWN: &str = "unknown";

impl WorkerMetrics {
    /// One finished request: its status and the cluster it went to (None when
    /// answered by the gateway before a backend was chosen).
    pub fn record_request(&self, status: u16, cluster: Option<&Cluster>, elapsed: Duration) {
        self.record_request_from(None, status, cluster, elapsed);
    }

    /// [`WorkerMetrics::record_request`] with the client's SPIFFE identity
    /// (the waypoint's HBONE peer), for `source_principal`.
    pub fn record_request_from(
        &self,
        source: Option<&str>,
        status: u16,
        cluster: Option<&Cluster>,
        elapsed: Duration,
    ) {
        self.record_grpc_request_from(source, status, None, cluster, elapsed);
    }

    /// [`WorkerMetrics::record_request_from`] for a gRPC call that ended
    /// with `grpc_status` (None: not gRPC, or the status is unknown).
    pub fn record_grpc_request_from(
        &self,
        source: Option<&str>,
        status: u16,
        grpc_status: Option<u32>,
        cluster: Option<&Cluster>,
        elapsed: Duration,
    ) {
        self.record_flagged(source, status, grpc_status, "-", cluster, elapsed);
    }

    /// The general form: `flags` are Envoy's response flags of an answer
    /// the proxy wrote itself (`access_log::flags_for_local`), "-" otherwise.
    pub fn record_flagged(
        &self,
        source: Option<&str>,
        status: u16,
        grpc_status: Option<u32>,
        flags: &'static str,
        cluster: Option<&Cluster>,
        elapsed: Duration,
    ) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let key = cluster.map_or(UNKNOWN, |c| c.name.as_str());
        let mut table = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let dest = match table.get_mut(key) {
            Some(d) => d,
            None => table.entry(key.to_owned()).or_insert_with(|| DestStats {
                labels: cluster.map(|c| Destination {
                    service: format!(
                        "{}.{}.svc.cluster.local",
                        c.service.name, c.service.namespace
                    ),
                    name: c.service.name.clone(),
                    namespace: c.service.namespace.clone(),
                }),
                codes: Vec::new(),
            }),
        };
        let found = dest.codes.iter_mut().find(|((c, src, g, f), _)| {
            *c == status && src.as_deref() == source && *g == grpc_status && *f == flags
        });
        match found {
            Some((_, s)) => s.observe(ms),
            None => {
                let mut s = CodeStats::default();
                s.observe(ms);
                let key = (status, source.map(Box::from), grpc_status, flags);
                dest.codes.push((key, s));
            }
        }
    }

    pub fn connection_opened(&self) {
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tls_handshake_completed(&self) {
        self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn h2_connection_opened(&self) {
        self.h2_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn h2_protocol_error(&self) {
        self.h2_protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn h2_flood(&self) {
        self.h2_floods.fetch_add(1, Ordering::Relaxed);
    }

    pub fn authz_denied(&self) {
        self.authz_denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Snapshot of this worker's request table: (destination, code) → stats.
    pub fn requests(&self) -> BTreeMap<(Destination, u16), CodeStats> {
        let mut out: BTreeMap<(Destination, u16), CodeStats> = BTreeMap::new();
        for (key, stats) in self.requests_labeled() {
            out.entry((key.destination, key.code))
                .or_default()
                .merge(&stats);
        }
        out
    }

    /// Every series with all its labels.
    pub fn requests_labeled(&self) -> BTreeMap<RequestKey, CodeStats> {
        let mut out = BTreeMap::new();
        let table = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for dest in table.values() {
            let labels = dest.labels.clone().unwrap_or_else(|| Destination {
                service: UNKNOWN.into(),
                name: UNKNOWN.into(),
                namespace: UNKNOWN.into(),
            });
            for ((code, source, grpc_status, flags), stats) in &dest.codes {
                let key = RequestKey {
                    destination: labels.clone(),
                    code: *code,
                    source: source.as_deref().unwrap_or_default().to_string(),
                    grpc_status: *grpc_status,
                    flags,
                };
                out.entry(key)
                    .or_insert_with(CodeStats::default)
                    .merge(stats);
            }
        }
        out
    }
}

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

    /// Requests denied by L7 AuthorizationPolicy, summed over workers.
    pub fn authz_denied(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.authz_denied.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum over workers, with every label.
    pub fn requests_labeled(&self) -> BTreeMap<RequestKey, CodeStats> {
        let mut total: BTreeMap<RequestKey, CodeStats> = BTreeMap::new();
        for w in &self.workers {
            for (k, v) in w.requests_labeled() {
                total.entry(k).or_default().merge(&v);
            }
        }
        total
    }

    /// Sum over workers.
    pub fn requests(&self) -> BTreeMap<(Destination, u16), CodeStats> {
        let mut total: BTreeMap<(Destination, u16), CodeStats> = BTreeMap::new();
        for w in &self.workers {
            for (k, v) in w.requests() {
                total.entry(k).or_default().merge(&v);
            }
        }
        total
    }
}

fn labels(out: &mut String, d: &Destination, code: u16) {
    let _ = write!(
        out,
        "response_code=\"{code}\",source_workload=\"unknown\",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",reporter=\"source\",request_protocol=\"http\"",
        d.service, d.name, d.namespace
    );
}

impl MetricsSource for HttpMetrics {
    fn render(&self, out: &mut String) {
        let requests = self.requests();
        out.push_str("# TYPE istio_requests_total counter\n");
        for ((d, code), s) in &requests {
            out.push_str("istio_requests_total{");
            labels(out, d, *code);
            let _ = writeln!(out, "}} {}", s.count);
        }
        out.push_str("# TYPE istio_request_duration_milliseconds histogram\n");
        for ((d, code), s) in &requests {
            let mut cumulative = 0;
            for (i, n) in s.buckets.iter().enumerate() {
                cumulative += n;
                out.push_str("istio_request_duration_milliseconds_bucket{");
                labels(out, d, *code);
                match DURATION_BUCKETS_MS.get(i) {
                    Some(le) => {
                        let _ = writeln!(out, ",le=\"{le}\"}} {cumulative}");
                    }
                    None => {
                        let _ = writeln!(out, ",le=\"+Inf\"}} {cumulative}");
                    }
                }
            }
            out.push_str("istio_request_duration_milliseconds_sum{");
            labels(out, d, *code);
            let _ = writeln!(out, "}} {}", s.sum_ms);
            out.push_str("istio_request_duration_milliseconds_count{");
            labels(out, d, *code);
            let _ = writeln!(out, "}} {}", s.count);
        }
        let opened: u64 = self
            .workers
            .iter()
            .map(|w| w.connections_opened.load(Ordering::Relaxed))
            .sum();
        let closed: u64 = self
            .workers
            .iter()
            .map(|w| w.connections_closed.load(Ordering::Relaxed))
            .sum();
        out.push_str("# TYPE istio_tcp_connections_opened_total counter\n");
        let _ = writeln!(
            out,
            "istio_tcp_connections_opened_total{{reporter=\"source\",request_protocol=\"http\"}} {opened}"
        );
        out.push_str("# TYPE istio_tcp_connections_closed_total counter\n");
        let _ = writeln!(
            out,
            "istio_tcp_connections_closed_total{{reporter=\"source\",request_protocol=\"http\"}} {closed}"
        );
        let sum = |f: fn(&WorkerMetrics) -> &AtomicU64| -> u64 {
            self.workers
                .iter()
                .map(|w| f(w).load(Ordering::Relaxed))
                .sum()
        };
        let handshakes = sum(|w| &w.tls_handshakes);
        let failures = sum(|w| &w.tls_handshake_failures);
        out.push_str("# TYPE ringmesh_tls_handshakes_total counter\n");
        let _ = writeln!(out, "ringmesh_tls_handshakes_total {handshakes}");
        out.push_str("# TYPE ringmesh_tls_handshake_failures_total counter\n");
        let _ = writeln!(out, "ringmesh_tls_handshake_failures_total {failures}");
        for (name, field) in [
            (
                "ringmesh_h2_connections_total",
                (|w| &w.h2_connections) as fn(&WorkerMetrics) -> &AtomicU64,
            ),
            ("ringmesh_h2_protocol_errors_total", |w| {
                &w.h2_protocol_errors
            }),
            ("ringmesh_h2_floods_total", |w| &w.h2_floods),
            ("ringmesh_authz_denied_total", |w| &w.authz_denied),
        ] {
            let value = sum(field);
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_registry::ObjectRef;

    #[test]
    fn render_sums_workers() {
        let m = HttpMetrics::new(2);
        let c = Cluster {
            name: "ns/svc:80".into(),
            service: ObjectRef {
                namespace: "ns".into(),
                name: "svc".into(),
            },
            port: 80,
            endpoints: vec![],
            protocol: Default::default(),
            policy: Default::default(),
        };
        m.workers[0].record_request(200, Some(&c), Duration::from_millis(3));
        m.workers[1].record_request(200, Some(&c), Duration::from_millis(700));
        m.workers[1].record_request(404, None, Duration::from_micros(100));
        m.workers[0].connection_opened();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("istio_requests_total{response_code=\"200\",source_workload=\"unknown\",destination_service=\"svc.ns.svc.cluster.local\",destination_service_name=\"svc\",destination_service_namespace=\"ns\",reporter=\"source\",request_protocol=\"http\"} 2"), "{out}");
        assert!(out.contains(
            "response_code=\"404\",source_workload=\"unknown\",destination_service=\"unknown\""
        ));
        assert!(out.contains("le=\"5\"} 1"));
        assert!(out.contains("le=\"1000\"} 2"));
        assert!(out.contains(
            "istio_tcp_connections_opened_total{reporter=\"source\",request_protocol=\"http\"} 1"
        ));
    }
}
