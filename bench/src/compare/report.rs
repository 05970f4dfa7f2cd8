//! Results of a comparison: every run, per-contender medians and ratios to the
//! baseline, the printed table and the JSON file.

use super::wrk::LoadResult;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One load run against one contender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub round: usize,
    pub contender: String,
    pub tool: String,
    #[serde(flatten)]
    pub load: LoadResult,
    /// CPU seconds the proxy process tree used during the run (None: direct).
    pub proxy_cpu_seconds: Option<f64>,
    pub proxy_cpu_us_per_request: Option<f64>,
    pub backend_cpu_us_per_request: f64,
}

/// Medians over the rounds for one (contender, tool).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub contender: String,
    pub tool: String,
    pub runs: usize,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub proxy_cpu_us_per_request: Option<f64>,
    /// Requests/s relative to the baseline (nginx) with the same tool.
    pub rps_vs_baseline: Option<f64>,
    /// p99 relative to the baseline (below 1 is better).
    pub p99_vs_baseline: Option<f64>,
    pub errors: u64,
}

/// Median; the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Summaries in contender order, ratios against `baseline`.
pub fn summarize(
    runs: &[Run],
    contenders: &[String],
    tools: &[String],
    baseline: &str,
) -> Vec<Summary> {
    let mut out = Vec::new();
    for tool in tools {
        for c in contenders {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| &r.contender == c && &r.tool == tool)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let pick =
                |f: &dyn Fn(&Run) -> f64| median(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
            let cpu: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.proxy_cpu_us_per_request)
                .collect();
            out.push(Summary {
                contender: c.clone(),
                tool: tool.clone(),
                runs: mine.len(),
                rps: pick(&|r| r.load.rps),
                p50_us: pick(&|r| r.load.p50_us),
                p90_us: pick(&|r| r.load.p90_us),
                p99_us: pick(&|r| r.load.p99_us),
                proxy_cpu_us_per_request: (!cpu.is_empty()).then(|| median(&cpu)),
                rps_vs_baseline: None,
                p99_vs_baseline: None,
                errors: mine.iter().map(|r| r.load.errors).sum(),
            });
        }
    }
    let baselines: Vec<(String, f64, f64)> = out
        .iter()
        .filter(|s| s.contender == baseline)
        .map(|s| (s.tool.clone(), s.rps, s.p99_us))
        .collect();
    for s in &mut out {
        if let Some((_, rps, p99)) = baselines.iter().find(|(t, _, _)| *t == s.tool) {
            s.rps_vs_baseline = (*rps > 0.0).then(|| s.rps / rps);
            s.p99_vs_baseline = (*p99 > 0.0).then(|| s.p99_us / p99);
        }
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// Markdown table (readable in a terminal, pasted as-is into the README).
pub fn table(summaries: &[Summary], baseline: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| contender | tool | requests/s | p50 µs | p90 µs | p99 µs | proxy CPU µs/req | rps vs {baseline} | p99 vs {baseline} | errors |"
    );
    let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in summaries {
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            s.contender,
            s.tool,
            s.rps,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            opt(s.proxy_cpu_us_per_request, 1),
            opt(
                s.rps_vs_baseline
                    .map(|x| x * 100.0)
                    .map(f64::round)
                    .map(|x| x / 100.0),
                2
            ),
            opt(s.p99_vs_baseline, 2),
            s.errors
        );
    }
    t
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub started_at: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub placement: String,
    pub skipped: Vec<String>,
    pub summary: Vec<Summary>,
    pub runs: Vec<Run>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    fn run(c: &str, rps: f64, p99: f64, cpu: Option<f64>) -> Run {
        Run {
            round: 0,
            contender: c.into(),
            tool: "wrk".into(),
            load: LoadResult {
                rps,
                p99_us: p99,
                ..Default::default()
            },
            proxy_cpu_seconds: cpu.map(|_| 1.0),
            proxy_cpu_us_per_request: cpu,
            backend_cpu_us_per_request: 5.0,
        }
    }

    #[test]
    fn summaries_take_medians_and_ratios_to_baseline() {
        let runs = vec![
            run("nginx", 100.0, 1000.0, Some(12.0)),
            run("nginx", 90.0, 1200.0, Some(11.0)),
            run("nginx", 110.0, 800.0, Some(13.0)),
            run("ringmesh", 130.0, 900.0, Some(9.0)),
            run("ringmesh", 120.0, 700.0, Some(8.0)),
            run("ringmesh", 150.0, 800.0, Some(10.0)),
            run("direct", 300.0, 400.0, None),
        ];
        let names = vec!["direct".to_string(), "ringmesh".into(), "nginx".into()];
        let s = summarize(&runs, &names, &["wrk".into()], "nginx");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].contender, "direct");
        assert_eq!(s[0].proxy_cpu_us_per_request, None);
        assert_eq!(s[1].rps, 130.0);
        assert_eq!(s[1].proxy_cpu_us_per_request, Some(9.0));
        assert_eq!(s[1].rps_vs_baseline, Some(1.3));
        assert_eq!(s[1].p99_vs_baseline, Some(0.8));
        assert_eq!(s[2].rps_vs_baseline, Some(1.0));
        let t = table(&s, "nginx");
        assert!(t.contains("| ringmesh | wrk | 130 |"), "{t}");
        assert!(t.contains("| 9.0 | 1.30 | 0.80 |"), "{t}");
    }
}
