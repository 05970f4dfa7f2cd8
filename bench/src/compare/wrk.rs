//! Running wrk and reading its text output (`--latency` adds the percentile
//! table).

use super::procs::pinned_command;
use anyhow::{anyhow, bail, Context};
use std::time::Duration;

/// What one load run measured, whichever tool ran it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadResult {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: f64,
    pub p75_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Responses that were not 2xx/3xx plus socket errors.
    pub errors: u64,
}

pub fn run_wrk(
    cpu: usize,
    url: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let out = pinned_command(cpu, "wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
            url,
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("reading wrk output:\n{text}"))
}

/// `612.00us`, `1.20ms`, `2.00s`, `1.00m` -> microseconds.
fn parse_wrk_time(s: &str) -> anyhow::Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| anyhow!("bad number in {s:?}"))?;
    Ok(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        "h" => v * 3600e6,
        _ => bail!("unknown time unit in {s:?}"),
    })
}

pub fn parse_wrk(text: &str) -> anyhow::Result<LoadResult> {
    let mut r = LoadResult::default();
    let mut saw_rps = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => r.max_us = parse_wrk_time(max)?,
            ["50%", v] => r.p50_us = parse_wrk_time(v)?,
            ["75%", v] => r.p75_us = parse_wrk_time(v)?,
            ["90%", v] => r.p90_us = parse_wrk_time(v)?,
            ["99%", v] => r.p99_us = parse_wrk_time(v)?,
            [n, "requests", "in", secs, ..] => {
                r.requests = n.parse()?;
                r.seconds = parse_wrk_time(secs.trim_end_matches(','))? / 1e6;
            }
            ["Requests/sec:", v] => {
                r.rps = v.parse()?;
                saw_rps = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        r.errors += n.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_rps {
        bail!("no Requests/sec line");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   620.11us  150.23us   5.01ms   80.00%
    Req/Sec   103.21k     5.12k  110.00k    72.00%
  Latency Distribution
     50%  600.00us
     75%  700.00us
     90%  800.00us
     99%    1.20ms
  1028765 requests in 10.00s, 150.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec: 102876.50
Transfer/sec:     15.00MB
";

    #[test]
    fn parses_wrk_latency_output() {
        let r = parse_wrk(SAMPLE).unwrap();
        assert_eq!(r.requests, 1_028_765);
        assert_eq!(r.seconds, 10.0);
        assert_eq!(r.rps, 102_876.5);
        assert_eq!(r.p50_us, 600.0);
        assert_eq!(r.p75_us, 700.0);
        assert_eq!(r.p90_us, 800.0);
        assert_eq!(r.p99_us, 1200.0);
        assert_eq!(r.max_us, 5010.0);
        assert_eq!(r.errors, 8);
    }

    #[test]
    fn rejects_output_without_a_rate() {
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn time_units() {
        assert_eq!(parse_wrk_time("2.00s").unwrap(), 2e6);
        assert_eq!(parse_wrk_time("1.00m").unwrap(), 60e6);
        assert!(parse_wrk_time("12").is_err());
    }
}
