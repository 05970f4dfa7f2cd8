//! Medians and ratios of the HBONE scenarios, as JSON.

use super::hbone::{Measure, Sample};
use super::report::median;
use super::Args;
use serde_json::{json, Value};

const GIB: f64 = (1u64 << 30) as f64;

/// Per-contender medians of (rate, CPU per unit): bulk in Gbit/s and CPU
/// seconds per GiB; connrate in connections/s and CPU µs per connection.
pub fn medians(measure: Measure, samples: &[Sample]) -> (f64, f64) {
    let rate: Vec<f64> = samples.iter().map(|s| s.units / s.seconds).collect();
    let cpu: Vec<f64> = samples
        .iter()
        .map(|s| match measure {
            Measure::Bulk => s.cpu_seconds / (s.units / GIB),
            Measure::Connrate => s.cpu_seconds / s.units * 1e6,
        })
        .collect();
    let scale = match measure {
        Measure::Bulk => 8.0 / 1e9,
        Measure::Connrate => 1.0,
    };
    (median(&rate) * scale, median(&cpu))
}

pub fn build(
    measure: Measure,
    args: &Args,
    bulk_bytes: u64,
    names: &[&str],
    samples: &[Vec<Sample>],
) -> Value {
    let (rate_key, cpu_key) = match measure {
        Measure::Bulk => ("gbit_per_s", "tunnel_cpu_s_per_gib"),
        Measure::Connrate => ("connections_per_s", "tunnel_cpu_us_per_connection"),
    };
    let mut summary = serde_json::Map::new();
    let mut rounds = serde_json::Map::new();
    for (name, s) in names.iter().zip(samples) {
        let (rate, cpu) = medians(measure, s);
        let errors: u64 = s.iter().map(|x| x.errors).sum();
        summary.insert(
            name.to_string(),
            json!({ rate_key: rate, cpu_key: cpu, "errors": errors }),
        );
        let per_round: Vec<Value> = s
            .iter()
            .map(|x| json!({"units": x.units, "seconds": x.seconds, "cpu_seconds": x.cpu_seconds, "errors": x.errors}))
            .collect();
        rounds.insert(name.to_string(), Value::Array(per_round));
    }
    let get = |n: &str, k: &str| summary.get(n).and_then(|v| v[k].as_f64());
    if let (Some(r), Some(z), Some(rc), Some(zc)) = (
        get("reference", rate_key),
        get("ringmesh", rate_key),
        get("reference", cpu_key),
        get("ringmesh", cpu_key),
    ) {
        let (rate_ratio, cpu_ratio) = (z / r, zc / rc);
        summary.insert(
            "ringmesh_vs_reference".into(),
            json!({
                "rate_ratio": rate_ratio,
                "cpu_ratio": cpu_ratio,
                "done": rate_ratio >= 1.0 && cpu_ratio <= 0.8,
            }),
        );
    }
    json!({
        "scenario": match measure { Measure::Bulk => "hbone-bulk", Measure::Connrate => "hbone-connrate" },
        "rounds": args.rounds,
        "bulk_bytes_per_round": bulk_bytes,
        "connrate_duration_s": args.duration.as_secs_f64(),
        "connrate_concurrency": args.connections,
        "proxy_cpu": args.proxy_cpu,
        "load_cpu": args.load_cpu,
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "summary": summary,
        "samples": rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_medians_are_gbit_and_cpu_per_gib() {
        let s = |secs: f64, cpu: f64| Sample {
            units: GIB,
            seconds: secs,
            cpu_seconds: cpu,
            errors: 0,
        };
        // 1 GiB in 1 s, 2 s, 4 s → median 2 s = 4.295 Gbit/s; CPU median 0.5 s/GiB.
        let (rate, cpu) = medians(Measure::Bulk, &[s(1.0, 0.4), s(2.0, 0.5), s(4.0, 0.9)]);
        assert!((rate - GIB * 8.0 / 2.0 / 1e9).abs() < 1e-9);
        assert!((cpu - 0.5).abs() < 1e-12);
    }
}
