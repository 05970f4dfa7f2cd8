//! `bench compare loadgen`: checks the load generator against wrk on the same
//! target in the same run. The backend gets its own CPU (`--proxy-cpu`) and the
//! load generator the other (`--load-cpu`), so the generator's core is the
//! limit and a slow generator shows up as a lower max rate than wrk's.
//!
//! 1. Closed loop: wrk and `bench load` alternate for `--rounds` rounds; the
//!    medians and their ratio are reported (the aim: bench >= 0.9 x wrk).
//! 2. Open loop: `bench load --qps R` with R = half of wrk's median max rate;
//!    the achieved rate over the requested one is reported (aim: within 1%).

use super::report::{self, Run};
use super::wrk::{self, LoadResult};
use super::{loadrun, start_backend, tools, Args};
use anyhow::{bail, Context};
use serde::Serialize;
use std::time::SystemTime;

#[derive(Debug, Serialize)]
struct SelfCheck {
    scenario: &'static str,
    started_at: String,
    machine: report::Machine,
    placement: String,
    connections: usize,
    duration_s: f64,
    rounds: usize,
    wrk_median_rps: f64,
    bench_median_rps: f64,
    /// bench / wrk max rate; >= 0.9 means the generator is not the bottleneck.
    max_rate_ratio: f64,
    open_loop_requested_qps: f64,
    open_loop_actual_qps: f64,
    /// actual / requested.
    open_loop_rate_ratio: f64,
    open_loop_p50_us: f64,
    open_loop_p99_us: f64,
    runs: Vec<Run>,
}

pub fn loadgen(args: &Args) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !args.no_install {
        tools::ensure(&[("wrk", "wrk")])?;
    }
    let bench_bin = std::env::current_exe().context("locating this program")?;
    let work_dir = std::env::temp_dir().join(format!("ringmesh-selfcheck-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let json_tmp = work_dir.join("load.json");
    let started_at = crate::load::fortio::rfc3339(SystemTime::now());
    // The backend gets the other core: here the generator is the thing measured.
    let (mut backend, addr) = start_backend(&bench_bin, args.proxy_cpu, args.response_size)?;
    let url = format!("http://{addr}/");
    let run_tool = |tool: &str, qps: Option<f64>, d| -> anyhow::Result<LoadResult> {
        match tool {
            "wrk" => wrk::run_wrk(args.load_cpu, &url, args.connections, d),
            _ => loadrun::run_bench_load(
                &bench_bin,
                args.load_cpu,
                &url,
                args.connections,
                d,
                qps,
                &json_tmp,
            ),
        }
    };
    for tool in ["wrk", "bench"] {
        run_tool(tool, None, std::time::Duration::from_secs(2))?;
    }
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            ["wrk", "bench"]
        } else {
            ["bench", "wrk"]
        };
        for tool in order {
            let before = backend.cpu_seconds();
            let load = run_tool(tool, None, args.duration)?;
            let backend_cpu = backend.cpu_seconds() - before;
            eprintln!(
                "round {}/{} {tool:>5}: {:>9.0} req/s  p50 {:>6.0}µs  p99 {:>6.0}µs  errors {}",
                round + 1,
                args.rounds,
                load.rps,
                load.p50_us,
                load.p99_us,
                load.errors
            );
            runs.push(Run {
                round: round + 1,
                contender: "direct".into(),
                tool: tool.into(),
                proxy_cpu_seconds: None,
                proxy_cpu_us_per_request: None,
                backend_cpu_us_per_request: if load.requests > 0 {
                    backend_cpu * 1e6 / load.requests as f64
                } else {
                    0.0
                },
                load,
            });
        }
        backend.check_alive()?;
    }
    let med = |tool: &str| {
        report::median(
            &runs
                .iter()
                .filter(|r| r.tool == tool)
                .map(|r| r.load.rps)
                .collect::<Vec<_>>(),
        )
    };
    let (wrk_rps, bench_rps) = (med("wrk"), med("bench"));
    let requested = ((wrk_rps / 2.0) / 100.0).round().max(1.0) * 100.0;
    let open = run_tool("bench", Some(requested), args.duration)?;
    let check = SelfCheck {
        scenario: "loadgen",
        started_at,
        machine: report::Machine::detect(),
        placement: format!(
            "backend (bench echo, 1 worker, {}-byte body) on CPU {}; wrk -t1 / bench load -t1 on CPU {}",
            args.response_size, args.proxy_cpu, args.load_cpu
        ),
        connections: args.connections,
        duration_s: args.duration.as_secs_f64(),
        rounds: args.rounds,
        wrk_median_rps: wrk_rps,
        bench_median_rps: bench_rps,
        max_rate_ratio: if wrk_rps > 0.0 { bench_rps / wrk_rps } else { 0.0 },
        open_loop_requested_qps: requested,
        open_loop_actual_qps: open.rps,
        open_loop_rate_ratio: open.rps / requested,
        open_loop_p50_us: open.p50_us,
        open_loop_p99_us: open.p99_us,
        runs,
    };
    println!(
        "\n| check | wrk | bench load | ratio |\n|---|---:|---:|---:|\n| max rate, -c{} closed loop (median of {}) | {:.0} req/s | {:.0} req/s | {:.3} |\n| open loop --qps {:.0} | - | {:.0} req/s (p50 {:.0}µs, p99 {:.0}µs) | {:.4} |",
        args.connections,
        args.rounds,
        wrk_rps,
        bench_rps,
        check.max_rate_ratio,
        requested,
        open.rps,
        open.p50_us,
        open.p99_us,
        check.open_loop_rate_ratio
    );
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join("loadgen.json");
    std::fs::write(&path, serde_json::to_string_pretty(&check)? + "\n")?;
    eprintln!("wrote {}", path.display());
    drop(backend);
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}
