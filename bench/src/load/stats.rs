//! Per-thread measurement state and its merge: latency histogram (ns), exact
//! min/max/sum, status codes, error kinds, response and header sizes.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies are recorded in nanoseconds with 3 significant digits, up to an
/// hour (anything slower saturates at the top bucket).
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
/// Sizes in bytes, up to 1 TiB.
const MAX_SIZE: u64 = 1 << 40;

/// The percentiles printed and written to JSON (fortio prints the same set
/// plus p95).
pub const REPORTED_PERCENTILES: [f64; 7] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];

/// Why a request produced no status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    Connect,
    Write,
    Read,
    /// The peer closed the connection before a complete response.
    Closed,
    /// The response did not parse as HTTP/1.1.
    Parse,
    Timeout,
    /// Raw TCP echo: the bytes that came back differ from what was sent.
    Mismatch,
    /// The TLS handshake failed (or did not negotiate ALPN h2 with --h2).
    Tls,
    /// HTTP/2: the server reset the stream (RST_STREAM, e.g. REFUSED_STREAM).
    Reset,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Write => "write",
            ErrorKind::Read => "read",
            ErrorKind::Closed => "closed",
            ErrorKind::Parse => "parse",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Tls => "tls",
            ErrorKind::Reset => "reset",
        }
    }
}

/// A histogram plus the exact extremes and sum hdrhistogram only approximates.
#[derive(Clone)]
pub struct Recorder {
    pub hist: Histogram<u64>,
    pub min: u64,
    pub max: u64,
    pub sum: u128,
}

impl Recorder {
    fn new(max_value: u64) -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, max_value, 3)
                .expect("static histogram bounds are valid"),
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    pub fn latency() -> Recorder {
        Recorder::new(MAX_LATENCY_NS)
    }

    pub fn size() -> Recorder {
        Recorder::new(MAX_SIZE)
    }

    #[inline]
    pub fn record(&mut self, value: u64) {
        self.hist.saturating_record(value.max(1));
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value as u128;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Both use the same bounds, so add cannot fail.
        self.hist.add(&other.hist).expect("histograms share bounds");
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn mean(&self) -> f64 {
        if self.count() == 0 {
            0.0
        } else {
            self.sum as f64 / self.count() as f64
        }
    }

    /// Value at percentile `p` (0..=100). p100 is the exact maximum.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count() == 0 {
            return 0;
        }
        if p >= 100.0 {
            return self.max;
        }
        // hdrhistogram reports the highest value equivalent to the bucket;
        // never report more than the exact maximum.
        self.hist.value_at_percentile(p).min(self.max)
    }

    pub fn min_or_zero(&self) -> u64 {
        if self.count() == 0 {
            0
        } else {
            self.min
        }
    }
}

/// Everything one load thread measured.
#[derive(Clone)]
pub struct Stats {
    pub latency: Recorder,
    /// Latency of failed requests (fortio's ErrorsDurationHistogram).
    pub error_latency: Recorder,
    pub sizes: Recorder,
    pub header_sizes: Recorder,
    pub status_codes: BTreeMap<u16, u64>,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connections_opened: u64,
    /// TLS handshake times (ns), from the end of the TCP connect to the
    /// handshake's completion; empty without TLS.
    pub tls_handshakes: Recorder,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: Recorder::latency(),
            error_latency: Recorder::latency(),
            sizes: Recorder::size(),
            header_sizes: Recorder::size(),
            status_codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            bytes_sent: 0,
            bytes_received: 0,
            connections_opened: 0,
            tls_handshakes: Recorder::latency(),
        }
    }
}

impl Stats {
    #[inline]
    pub fn record_response(
        &mut self,
        latency: Duration,
        status: u16,
        header_len: u64,
        total_len: u64,
    ) {
        self.latency.record(latency.as_nanos() as u64);
        *self.status_codes.entry(status).or_insert(0) += 1;
        self.header_sizes.record(header_len);
        self.sizes.record(total_len);
        self.bytes_received += total_len;
    }

    pub fn record_error(&mut self, kind: ErrorKind, latency: Option<Duration>) {
        *self.errors.entry(kind).or_insert(0) += 1;
        if let Some(l) = latency {
            self.error_latency.record(l.as_nanos() as u64);
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.latency.merge(&other.latency);
        self.error_latency.merge(&other.error_latency);
        self.sizes.merge(&other.sizes);
        self.header_sizes.merge(&other.header_sizes);
        for (code, n) in &other.status_codes {
            *self.status_codes.entry(*code).or_insert(0) += n;
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_insert(0) += n;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.connections_opened += other.connections_opened;
        self.tls_handshakes.merge(&other.tls_handshakes);
    }

    /// Requests that got a complete response (any status).
    pub fn responses(&self) -> u64 {
        self.status_codes.values().sum()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error allowed by 3 significant digits.
    fn close(actual: u64, expected: u64) -> bool {
        let diff = actual.abs_diff(expected) as f64;
        diff <= expected as f64 * 0.001 + 1.0
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        // 1 µs .. 10 ms in 1 µs steps: percentile p is p% of 10 ms.
        let mut r = Recorder::latency();
        for us in 1..=10_000u64 {
            r.record(us * 1000);
        }
        assert_eq!(r.count(), 10_000);
        for (p, expected_us) in [
            (50.0, 5_000),
            (75.0, 7_500),
            (90.0, 9_000),
            (99.0, 9_900),
            (99.9, 9_990),
        ] {
            let got = r.percentile(p);
            assert!(
                close(got, expected_us * 1000),
                "p{p}: {got} ns, want ~{expected_us} µs"
            );
        }
        assert_eq!(r.percentile(100.0), 10_000_000);
        assert_eq!(r.min, 1000);
        assert_eq!(r.max, 10_000_000);
        assert!((r.mean() - 5_000_500.0).abs() < 1e-6);
    }

    #[test]
    fn percentiles_of_a_bimodal_distribution() {
        // 98% at 100 µs, 2% at 50 ms: p50..p98 are 100 µs, p99 is 50 ms.
        let mut r = Recorder::latency();
        for _ in 0..9800 {
            r.record(100_000);
        }
        for _ in 0..200 {
            r.record(50_000_000);
        }
        assert!(close(r.percentile(50.0), 100_000));
        assert!(close(r.percentile(98.0), 100_000));
        assert!(close(r.percentile(99.0), 50_000_000));
        assert_eq!(r.percentile(99.99), 50_000_000);
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.record_response(Duration::from_micros(10), 200, 50, 60);
        b.record_response(Duration::from_micros(30), 200, 50, 70);
        b.record_response(Duration::from_micros(20), 503, 40, 40);
        b.record_error(ErrorKind::Read, None);
        a.merge(&b);
        assert_eq!(a.responses(), 3);
        assert_eq!(a.status_codes[&200], 2);
        assert_eq!(a.status_codes[&503], 1);
        assert_eq!(a.error_count(), 1);
        assert_eq!(a.latency.min, 10_000);
        assert_eq!(a.latency.max, 30_000);
        assert_eq!(a.bytes_received, 170);
        assert_eq!(a.tls_handshakes.count(), 0);
        b.tls_handshakes.record(2_000_000);
        a.merge(&b);
        assert_eq!(a.tls_handshakes.count(), 1);
        assert_eq!(a.tls_handshakes.max, 2_000_000);
    }

    #[test]
    fn empty_recorder_reports_zeroes() {
        let r = Recorder::latency();
        assert_eq!(r.percentile(99.0), 0);
        assert_eq!(r.min_or_zero(), 0);
        assert_eq!(r.mean(), 0.0);
    }
}
