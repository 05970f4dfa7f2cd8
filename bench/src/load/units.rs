//! Parsing and printing of durations, counts and sizes for the CLIs.

pub use mesh_runtime::parse_duration;

/// Latency for humans: `612µs`, `1.20ms`, `2.50s`.
pub fn format_latency_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.0}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

/// `1234567` -> `1,234,567`.
pub fn format_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes per second for humans: `15.2 MB/s` (decimal units, as wrk prints).
pub fn format_rate_bytes(bytes_per_sec: f64) -> String {
    let (v, u) = if bytes_per_sec >= 1e9 {
        (bytes_per_sec / 1e9, "GB")
    } else if bytes_per_sec >= 1e6 {
        (bytes_per_sec / 1e6, "MB")
    } else if bytes_per_sec >= 1e3 {
        (bytes_per_sec / 1e3, "kB")
    } else {
        (bytes_per_sec, "B")
    };
    format!("{v:.1} {u}/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1000), "1,000");
        assert_eq!(format_count(1234567), "1,234,567");
        assert_eq!(format_latency_ns(612_400), "612µs");
        assert_eq!(format_latency_ns(1_204_000), "1.20ms");
        assert_eq!(format_latency_ns(2_500_000_000), "2.50s");
        assert_eq!(format_rate_bytes(15_230_000.0), "15.2 MB/s");
    }
}
