//! Parsing and printing of durations, counts and sizes for the CLIs.

use anyhow::{anyhow, bail};
use std::time::Duration;

/// `10s`, `500ms`, `250us`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| anyhow!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => bail!("bad duration unit in {s:?} (use ns, us, ms, s, m, h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("bad duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

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
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

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
