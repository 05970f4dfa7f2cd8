//! `/metrics`: the engine's per-request counters with the waypoint's Istio
//! labels (`reporter="waypoint"`), plus the HBONE listener's counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mesh_http::metrics::{RequestKey, DURATION_BUCKETS_MS};
use mesh_http::HttpMetrics;

pub struct WaypointMetrics {
    pub http: Arc<HttpMetrics>,
    /// `namespace/name` of this waypoint.
    pub waypoint: String,
    /// HBONE connections whose mTLS handshake completed.
    pub hbone_connections: AtomicU64,
    /// Handshakes refused (no or untrusted client certificate, garbage).
    pub tls_refused: AtomicU64,
    /// CONNECTs for an address that is no Service bound to this waypoint.
    pub unknown_destination: AtomicU64,
}

impl WaypointMetrics {
    pub fn new(http: Arc<HttpMetrics>, waypoint: String) -> Self {
        Self {
            http,
            waypoint,
            hbone_connections: AtomicU64::new(0),
            tls_refused: AtomicU64::new(0),
            unknown_destination: AtomicU64::new(0),
        }
    }

    /// Istio's labels for what the waypoint knows: the client's principal
    /// (its HBONE identity) and namespace, the destination Service, the code.
    fn labels(&self, out: &mut String, key: &RequestKey) {
        let d = &key.destination;
        let source = key.source.as_str();
        let (principal, namespace) = if source.is_empty() {
            ("unknown", "unknown")
        } else {
            (source, namespace_of(source).unwrap_or("unknown"))
        };
        // Istio: request_protocol "grpc" and the call's status for gRPC,
        // an empty grpc_response_status otherwise.
        let (protocol, grpc_status) = match key.grpc_status {
            Some(code) => ("grpc", code.to_string()),
            None => ("http", String::new()),
        };
        let _ = write!(
            out,
            "reporter=\"waypoint\",source_workload=\"unknown\",source_workload_namespace=\"{}\",source_principal=\"{}\",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\",response_code=\"{}\",response_flags=\"{}\",grpc_response_status=\"{grpc_status}\",request_protocol=\"{protocol}\",connection_security_policy=\"mutual_tls\",waypoint=\"{}\"",
            escape(namespace),
            escape(principal),
            escape(&d.service),
            escape(&d.name),
            escape(&d.namespace),
            key.code,
            key.flags,
            escape(&self.waypoint),
        );
    }
}

/// `spiffe://td/ns/NS/sa/SA` → `NS`.
fn namespace_of(principal: &str) -> Option<&str> {
    let rest = principal.split_once("/ns/")?.1;
    Some(rest.split_once("/sa/").map_or(rest, |(ns, _)| ns))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

impl mesh_runtime::MetricsSource for WaypointMetrics {
    fn render(&self, out: &mut String) {
        let requests = self.http.requests_labeled();
        out.push_str("# HELP istio_requests_total Requests served by the waypoint.\n# TYPE istio_requests_total counter\n");
        for (key, s) in &requests {
            out.push_str("istio_requests_total{");
            self.labels(out, key);
            let _ = writeln!(out, "}} {}", s.count);
        }
        out.push_str("# TYPE istio_request_duration_milliseconds histogram\n");
        for (key, s) in &requests {
            let mut cumulative = 0;
            for (i, n) in s.buckets.iter().enumerate() {
                cumulative += n;
                out.push_str("istio_request_duration_milliseconds_bucket{");
                self.labels(out, key);
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
            self.labels(out, key);
            let _ = writeln!(out, "}} {}", s.sum_ms);
            out.push_str("istio_request_duration_milliseconds_count{");
            self.labels(out, key);
            let _ = writeln!(out, "}} {}", s.count);
        }
        let counters = [
            (
                "ringmesh_waypoint_hbone_connections_total",
                "HBONE connections accepted (mTLS done)",
                &self.hbone_connections,
            ),
            (
                "ringmesh_waypoint_tls_refused_total",
                "HBONE TLS handshakes refused",
                &self.tls_refused,
            ),
            (
                "ringmesh_waypoint_unknown_destination_total",
                "CONNECTs refused because the authority is no Service of this waypoint",
                &self.unknown_destination,
            ),
        ];
        let denied = self.http.authz_denied();
        let _ = writeln!(
            out,
            "# HELP ringmesh_authz_denied_total Requests denied by an AuthorizationPolicy (403 RBAC: access denied).\n# TYPE ringmesh_authz_denied_total counter\nringmesh_authz_denied_total{{waypoint=\"{}\"}} {denied}",
            escape(&self.waypoint)
        );
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_runtime::MetricsSource;

    use super::*;

    #[test]
    fn requests_are_summed_over_workers_with_the_waypoint_labels() {
        let http = Arc::new(HttpMetrics::new(2));
        let metrics = WaypointMetrics::new(http.clone(), "apps/waypoint".into());
        http.workers[0].record_request(200, None, Duration::from_millis(2));
        http.workers[1].record_request(200, None, Duration::from_millis(3));
        let client = "spiffe://cluster.local/ns/apps/sa/client";
        let ms = Duration::from_millis(1);
        http.workers[1].record_flagged(Some(client), 403, None, "RBAC", None, ms);
        http.workers[0].record_grpc_request_from(Some(client), 200, Some(7), None, Duration::ZERO);
        metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
        let mut out = String::new();
        metrics.render(&mut out);
        let line = out
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap_or_else(|| panic!("no istio_requests_total in {out}"));
        assert!(
            line.starts_with("istio_requests_total{reporter=\"waypoint\""),
            "{line}"
        );
        assert!(line.contains("waypoint=\"apps/waypoint\""), "{line}");
        assert!(line.contains("response_code=\"200\""), "{line}");
        assert!(line.ends_with("} 2"), "{line}");
        let denied = out
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"403\""))
            .unwrap_or_else(|| panic!("no 403 line in {out}"));
        assert!(
            denied.contains("source_principal=\"spiffe://cluster.local/ns/apps/sa/client\""),
            "{denied}"
        );
        assert!(
            denied.contains("source_workload_namespace=\"apps\""),
            "{denied}"
        );
        assert!(denied.ends_with("} 1"), "{denied}");
        assert!(denied.contains("grpc_response_status=\"\""), "{denied}");
        assert!(denied.contains("response_flags=\"RBAC\""), "{denied}");
        assert!(
            out.contains("grpc_response_status=\"7\",request_protocol=\"grpc\""),
            "{out}"
        );
        assert!(
            out.contains("\nringmesh_waypoint_tls_refused_total 1\n"),
            "{out}"
        );
    }
}
