//! The human summary printed at the end of a run.

use super::stats::Stats;
use super::units::{format_count, format_latency_ns, format_rate_bytes};
use std::fmt::Write;
use std::time::Duration;

/// Percentiles shown on the latency line (the JSON has more).
const SUMMARY_PERCENTILES: [(f64, &str); 5] = [
    (50.0, "p50"),
    (75.0, "p75"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
];

pub fn render(header: &str, stats: &Stats, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let responses = stats.responses();
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "Requests:   {} in {:.2}s = {:.1} req/s; received {}, sent {}",
        format_count(responses),
        secs,
        responses as f64 / secs,
        format_rate_bytes(stats.bytes_received as f64 / secs),
        format_rate_bytes(stats.bytes_sent as f64 / secs),
    );
    let codes: Vec<String> = stats
        .status_codes
        .iter()
        .map(|(c, n)| format!("{c}: {}", format_count(*n)))
        .collect();
    let _ = writeln!(
        out,
        "Status:     {}",
        if codes.is_empty() {
            "none".into()
        } else {
            codes.join(", ")
        }
    );
    let errors: Vec<String> = stats
        .errors
        .iter()
        .map(|(k, n)| format!("{}: {}", k.name(), format_count(*n)))
        .collect();
    let _ = writeln!(
        out,
        "Errors:     {}{}",
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join(", ")
        },
        if stats.connections_opened > 0 {
            format!(
                " ({} connections opened)",
                format_count(stats.connections_opened)
            )
        } else {
            String::new()
        }
    );
    let l = &stats.latency;
    let mut line = format!(
        "Latency:    min {}  avg {}",
        format_latency_ns(l.min_or_zero()),
        format_latency_ns(l.mean() as u64)
    );
    for (p, name) in SUMMARY_PERCENTILES {
        let _ = write!(line, "  {name} {}", format_latency_ns(l.percentile(p)));
    }
    let _ = write!(line, "  max {}", format_latency_ns(l.max));
    let _ = writeln!(out, "{line}");
    let h = &stats.tls_handshakes;
    if h.count() > 0 {
        let _ = writeln!(
            out,
            "TLS:        {} handshakes  avg {}  p50 {}  p99 {}  max {}",
            format_count(h.count()),
            format_latency_ns(h.mean() as u64),
            format_latency_ns(h.percentile(50.0)),
            format_latency_ns(h.percentile(99.0)),
            format_latency_ns(h.max),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::ErrorKind;

    #[test]
    fn summary_lists_rate_codes_errors_and_percentiles() {
        let mut s = Stats::default();
        for i in 1..=100u64 {
            s.record_response(Duration::from_micros(i * 10), 200, 10, 20);
        }
        s.record_error(ErrorKind::Timeout, None);
        let text = render("hdr", &s, Duration::from_secs(2));
        assert!(text.contains("100 in 2.00s = 50.0 req/s"), "{text}");
        assert!(text.contains("200: 100"), "{text}");
        assert!(text.contains("timeout: 1"), "{text}");
        assert!(text.contains("p99.9 1.00ms"), "{text}");
        assert!(text.contains("max 1.00ms"), "{text}");
        assert!(!text.contains("TLS:"), "{text}");
        s.tls_handshakes.record(1_500_000);
        let text = render("hdr", &s, Duration::from_secs(2));
        assert!(
            text.contains("TLS:        1 handshakes  avg 1.50ms"),
            "{text}"
        );
    }
}
