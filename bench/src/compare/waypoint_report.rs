//! waypoint-latency's results: the proxy report (every run, medians, ratios to
//! `ztunnel`), what each hop adds (latency at the fixed open-loop rate, max
//! rate, CPU), and the plot rows (max rate on the left, open-loop latency on
//! the right).

use super::report::{Report, Summary};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// The ratios' baseline: the L4-only mesh path.
pub const BASELINE: &str = "ztunnel";
/// Tool column of the closed-loop runs (max rate).
pub const MAX_RATE: &str = "max-rate";
/// Tool column of the open-loop runs (`--qps`, coordinated-omission corrected).
pub const OPEN_LOOP: &str = "open-loop";

/// (hop, over): the hop's cost is `hop`'s figure minus `over`'s.
pub const HOPS: [(&str, &str); 3] = [
    // The two ztunnels (HBONE, mTLS) in the path.
    ("ztunnel", "direct"),
    // The waypoint: a second HBONE leg plus the L7 engine.
    ("waypoint", "ztunnel"),
    // A plain HTTP reverse proxy hop, for comparison.
    ("nginx", "direct"),
];

/// What one hop adds, from the medians.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopCost {
    pub hop: String,
    pub over: String,
    /// Open-loop latency added, µs (hop minus over).
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// Max rate of `hop` over `over`'s.
    pub max_rate_ratio: Option<f64>,
    /// Proxy CPU per request added at max rate, µs (None when unmeasured).
    pub cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WaypointReport {
    #[serde(flatten)]
    pub report: Report,
    pub hop_costs: Vec<HopCost>,
}

fn find<'a>(s: &'a [Summary], contender: &str, tool: &str) -> Option<&'a Summary> {
    s.iter()
        .find(|x| x.contender == contender && x.tool == tool)
}

/// Every hop of `HOPS` whose two ends were measured.
pub fn hop_costs(summary: &[Summary]) -> Vec<HopCost> {
    HOPS.iter()
        .filter_map(|(hop, over)| {
            let (h, o) = (
                find(summary, hop, OPEN_LOOP)?,
                find(summary, over, OPEN_LOOP)?,
            );
            let (hm, om) = (find(summary, hop, MAX_RATE), find(summary, over, MAX_RATE));
            let max_rate_ratio = match (hm, om) {
                (Some(h), Some(o)) if o.rps > 0.0 => Some(h.rps / o.rps),
                _ => None,
            };
            let cpu = |s: Option<&Summary>| match s {
                // `direct` has no proxy: zero CPU on the proxy core.
                Some(s) if s.contender == "direct" => Some(0.0),
                Some(s) => s.proxy_cpu_us_per_request,
                None => None,
            };
            Some(HopCost {
                hop: hop.to_string(),
                over: over.to_string(),
                p50_us: h.p50_us - o.p50_us,
                p90_us: h.p90_us - o.p90_us,
                p99_us: h.p99_us - o.p99_us,
                max_rate_ratio,
                cpu_us_per_request: cpu(hm).zip(cpu(om)).map(|(h, o)| h - o),
            })
        })
        .collect()
}

/// Markdown table of the hop costs.
pub fn hop_table(hops: &[HopCost]) -> String {
    let mut t = String::from(
        "| hop | over | +p50 µs | +p90 µs | +p99 µs | max rate ratio | +proxy CPU µs/req |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for h in hops {
        let opt = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
            h.hop,
            h.over,
            h.p50_us,
            h.p90_us,
            h.p99_us,
            opt(h.max_rate_ratio, 2),
            opt(h.cpu_us_per_request, 1)
        );
    }
    t
}

/// One row per contender for the SVG: requests/s and CPU from the max-rate
/// runs, p50/p90/p99 from the open-loop runs (the latency that matters is at
/// a fixed rate, not at saturation).
pub fn plot_rows(summary: &[Summary]) -> Vec<Summary> {
    let mut rows = Vec::new();
    for s in summary.iter().filter(|s| s.tool == OPEN_LOOP) {
        let mut row = s.clone();
        row.tool = "plot".into();
        if let Some(m) = find(summary, &s.contender, MAX_RATE) {
            row.rps = m.rps;
            row.proxy_cpu_us_per_request = m.proxy_cpu_us_per_request;
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(c: &str, tool: &str, rps: f64, p50: f64, p99: f64, cpu: Option<f64>) -> Summary {
        Summary {
            contender: c.into(),
            tool: tool.into(),
            runs: 3,
            rps,
            p50_us: p50,
            p90_us: p50 * 2.0,
            p99_us: p99,
            proxy_cpu_us_per_request: cpu,
            rps_vs_baseline: None,
            p99_vs_baseline: None,
            errors: 0,
        }
    }

    fn sample() -> Vec<Summary> {
        vec![
            s("direct", OPEN_LOOP, 1000.0, 100.0, 300.0, None),
            s("ztunnel", OPEN_LOOP, 1000.0, 180.0, 500.0, Some(40.0)),
            s("waypoint", OPEN_LOOP, 1000.0, 300.0, 900.0, Some(90.0)),
            s("direct", MAX_RATE, 40000.0, 1500.0, 3000.0, None),
            s("ztunnel", MAX_RATE, 20000.0, 3000.0, 6000.0, Some(30.0)),
            s("waypoint", MAX_RATE, 8000.0, 8000.0, 16000.0, Some(75.0)),
        ]
    }

    #[test]
    fn hop_costs_subtract_the_hop_below() {
        let hops = hop_costs(&sample());
        // nginx was not measured: its hop is left out.
        assert_eq!(hops.len(), 2);
        let z = &hops[0];
        assert_eq!((z.hop.as_str(), z.over.as_str()), ("ztunnel", "direct"));
        assert_eq!((z.p50_us, z.p90_us, z.p99_us), (80.0, 160.0, 200.0));
        assert_eq!(z.max_rate_ratio, Some(0.5));
        assert_eq!(z.cpu_us_per_request, Some(30.0));
        let w = &hops[1];
        assert_eq!((w.hop.as_str(), w.over.as_str()), ("waypoint", "ztunnel"));
        assert_eq!((w.p50_us, w.p99_us), (120.0, 400.0));
        assert_eq!(w.max_rate_ratio, Some(0.4));
        assert_eq!(w.cpu_us_per_request, Some(45.0));
        let t = hop_table(&hops);
        assert!(
            t.contains("| waypoint | ztunnel | 120 | 240 | 400 | 0.40 | 45.0 |"),
            "{t}"
        );
    }

    #[test]
    fn plot_rows_take_rate_from_max_rate_and_latency_from_open_loop() {
        let rows = plot_rows(&sample());
        assert_eq!(rows.len(), 3);
        let w = &rows[2];
        assert_eq!(w.contender, "waypoint");
        assert_eq!(w.rps, 8000.0);
        assert_eq!(w.p50_us, 300.0);
        assert_eq!(w.p99_us, 900.0);
        assert_eq!(w.proxy_cpu_us_per_request, Some(75.0));
        assert!(rows.iter().all(|r| r.tool == "plot"));
    }
}
