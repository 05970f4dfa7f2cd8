//! Running `bench load` (this binary) as a pinned child and reading its
//! fortio-style JSON.

use super::procs::pinned_command;
use super::wrk::LoadResult;
use anyhow::{anyhow, bail, Context};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub fn run_bench_load(
    bench_bin: &Path,
    cpu: usize,
    url: &str,
    connections: usize,
    duration: Duration,
    qps: Option<f64>,
    json_path: &Path,
) -> anyhow::Result<LoadResult> {
    run_bench_load_with(
        bench_bin,
        cpu,
        url,
        connections,
        duration,
        qps,
        &[],
        json_path,
    )
}

/// `run_bench_load` with extra `bench load` arguments (TLS, HTTP/2).
#[allow(clippy::too_many_arguments)]
pub fn run_bench_load_with(
    bench_bin: &Path,
    cpu: usize,
    url: &str,
    connections: usize,
    duration: Duration,
    qps: Option<f64>,
    extra: &[String],
    json_path: &Path,
) -> anyhow::Result<LoadResult> {
    let cmd = pinned_command(cpu, &bench_bin.to_string_lossy());
    run_bench_load_cmd(cmd, url, connections, duration, qps, extra, json_path)
}

/// `bench load` started by `cmd` (this program, pinned, perhaps inside a
/// network namespace), with `-t1` and the given settings.
pub fn run_bench_load_cmd(
    mut cmd: Command,
    url: &str,
    connections: usize,
    duration: Duration,
    qps: Option<f64>,
    extra: &[String],
    json_path: &Path,
) -> anyhow::Result<LoadResult> {
    let out = cmd
        .args(["load", "-t1", "-q", "--no-progress"])
        .args(extra)
        .arg(format!("--qps={}", qps.unwrap_or(0.0)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}ms", duration.as_millis()))
        .arg("--json")
        .arg(json_path)
        .arg(url)
        .env("RUST_LOG", "warn")
        .output()
        .context("running bench load")?;
    if !out.status.success() {
        bail!(
            "bench load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(json_path)
        .with_context(|| format!("reading {}", json_path.display()))?;
    parse_fortio_json(&text)
}

/// Pull the comparison numbers out of a fortio-format result.
pub fn parse_fortio_json(text: &str) -> anyhow::Result<LoadResult> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let h = &v["DurationHistogram"];
    let count = h["Count"]
        .as_u64()
        .ok_or_else(|| anyhow!("no DurationHistogram.Count"))?;
    let seconds = v["ActualDuration"]
        .as_f64()
        .ok_or_else(|| anyhow!("no ActualDuration"))?
        / 1e9;
    let percentile = |p: f64| -> f64 {
        h["Percentiles"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["Percentile"].as_f64() == Some(p)))
            .and_then(|x| x["Value"].as_f64())
            .unwrap_or(0.0)
            * 1e6
    };
    let mut errors = 0;
    if let Some(codes) = v["RetCodes"].as_object() {
        for (code, n) in codes {
            let ok = code.parse::<i32>().is_ok_and(|c| (200..400).contains(&c));
            if !ok {
                errors += n.as_u64().unwrap_or(0);
            }
        }
    }
    Ok(LoadResult {
        requests: count,
        seconds,
        rps: if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        },
        p50_us: percentile(50.0),
        p75_us: percentile(75.0),
        p90_us: percentile(90.0),
        p99_us: percentile(99.0),
        max_us: h["Max"].as_f64().unwrap_or(0.0) * 1e6,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fortio_shape() {
        let text = r#"{"ActualDuration": 2000000000, "RetCodes": {"200": 1000, "503": 2, "-1": 1},
            "DurationHistogram": {"Count": 1002, "Max": 0.004,
              "Percentiles": [{"Percentile": 50, "Value": 0.0005}, {"Percentile": 99, "Value": 0.002}]}}"#;
        let r = parse_fortio_json(text).unwrap();
        assert_eq!(r.requests, 1002);
        assert_eq!(r.rps, 501.0);
        assert!((r.p50_us - 500.0).abs() < 1e-9);
        assert!((r.p99_us - 2000.0).abs() < 1e-9);
        assert!((r.max_us - 4000.0).abs() < 1e-9);
        assert_eq!(r.errors, 3);
    }
}
