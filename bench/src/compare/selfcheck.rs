//! `bench compare loadgen`: checks the load generator against the tools users
//! run, on the same target in the same run, for each `--modes` entry:
//! `http` (wrk), `https` (wrk over TLS) and `h2` (h2load); the targets are
//! in [`loadgen_target`](super::loadgen_target). The target gets its own CPU
//! (`--proxy-cpu`) and the generator the other (`--load-cpu`), so the
//! generator's core is the limit and a slow generator shows up as a lower
//! max rate than the reference's.
//!
//! 1. Closed loop: the reference and `bench load` alternate for `--rounds`
//!    rounds; the medians and their ratio are reported (the bar: >= 0.9).
//! 2. Open loop: `bench load --qps R` with R = half of the reference's median
//!    max rate; the achieved rate's error against R is reported (bar: 1%).
//!
//! Each run's generator CPU time (getrusage of the waited child) is kept too:
//! CPU per request survives a noisy machine better than requests/s.

use super::loadgen_target::{self as target, Mode, RunSettings, Target};
use super::procs::waited_children_cpu_seconds;
use super::report::{self, median, Run};
use super::wrk::LoadResult;
use super::{tools, Args};
use anyhow::{bail, Context};
use serde::Serialize;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// `bench load`'s max rate must reach this share of the reference's.
pub const MAX_RATE_BAR: f64 = 0.9;
/// The open loop's achieved rate may miss the requested one by this much.
pub const PACING_BAR: f64 = 0.01;

#[derive(Debug, Serialize)]
struct SelfCheck {
    scenario: &'static str,
    started_at: String,
    machine: report::Machine,
    placement: String,
    connections: usize,
    /// HTTP/2 streams per connection (h2 mode).
    streams: usize,
    duration_s: f64,
    rounds: usize,
    checks: Vec<Check>,
}

/// One mode's verdict, medians and runs.
#[derive(Debug, Serialize)]
pub struct Check {
    pub mode: Mode,
    pub target: String,
    pub reference_tool: String,
    pub bench_tool: String,
    pub reference_median_rps: f64,
    pub bench_median_rps: f64,
    /// bench / reference max rate.
    pub max_rate_ratio: f64,
    /// `max_rate_ratio >= MAX_RATE_BAR`: the generator is not the bottleneck.
    pub max_rate_ok: bool,
    /// Generator CPU per request, medians over the rounds.
    pub reference_cpu_us_per_request: f64,
    pub bench_cpu_us_per_request: f64,
    pub open_loop_requested_qps: f64,
    pub open_loop_actual_qps: f64,
    /// actual / requested.
    pub open_loop_rate_ratio: f64,
    /// |actual / requested - 1|.
    pub open_loop_rate_error: f64,
    /// `open_loop_rate_error <= PACING_BAR`.
    pub open_loop_ok: bool,
    pub open_loop_p50_us: f64,
    pub open_loop_p99_us: f64,
    pub open_loop_errors: u64,
    pub runs: Vec<Run>,
}

/// One closed-loop run and the generator's CPU seconds in it.
pub struct Timed {
    pub run: Run,
    pub generator_cpu_seconds: f64,
}

/// The open loop's rate: half of the reference's max rate, in steps of 100.
pub fn open_loop_rate(reference_rps: f64) -> f64 {
    ((reference_rps / 2.0) / 100.0).round().max(1.0) * 100.0
}

/// Medians, ratios and verdicts of one mode.
pub fn check(
    mode: Mode,
    target: String,
    timed: Vec<Timed>,
    requested: f64,
    open: &LoadResult,
) -> Check {
    let of = |tool: &str, f: &dyn Fn(&Timed) -> f64| {
        median(
            &timed
                .iter()
                .filter(|t| t.run.tool == tool)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let rps = |t: &Timed| t.run.load.rps;
    let cpu = |t: &Timed| {
        if t.run.load.requests > 0 {
            t.generator_cpu_seconds * 1e6 / t.run.load.requests as f64
        } else {
            0.0
        }
    };
    let (reference, bench) = (mode.reference(), mode.bench_tool());
    let (ref_rps, bench_rps) = (of(reference, &rps), of(bench, &rps));
    let max_rate_ratio = if ref_rps > 0.0 {
        bench_rps / ref_rps
    } else {
        0.0
    };
    let rate_ratio = if requested > 0.0 {
        open.rps / requested
    } else {
        0.0
    };
    let rate_error = (rate_ratio - 1.0).abs();
    Check {
        mode,
        target,
        reference_tool: reference.into(),
        bench_tool: bench.into(),
        reference_median_rps: ref_rps,
        bench_median_rps: bench_rps,
        max_rate_ratio,
        max_rate_ok: max_rate_ratio >= MAX_RATE_BAR,
        reference_cpu_us_per_request: of(reference, &cpu),
        bench_cpu_us_per_request: of(bench, &cpu),
        open_loop_requested_qps: requested,
        open_loop_actual_qps: open.rps,
        open_loop_rate_ratio: rate_ratio,
        open_loop_rate_error: rate_error,
        open_loop_ok: rate_error <= PACING_BAR && open.errors == 0,
        open_loop_p50_us: open.p50_us,
        open_loop_p99_us: open.p99_us,
        open_loop_errors: open.errors,
        runs: timed.into_iter().map(|t| t.run).collect(),
    }
}

/// The printed (and README) table: one row per mode.
pub fn table(checks: &[Check], connections: usize, streams: usize, rounds: usize) -> String {
    let mut t = format!(
        "| mode | reference | max rate, reference (median of {rounds}) | max rate, bench load | ratio (>= {MAX_RATE_BAR}) | CPU µs/req reference / bench | open loop --qps | achieved | error (<= {}%) | p50 / p99 µs |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        PACING_BAR * 100.0
    );
    for c in checks {
        let load = match c.mode {
            Mode::H2 => format!("-c{connections} -m{streams}"),
            _ => format!("-c{connections}"),
        };
        let mark = |ok: bool| if ok { "" } else { " **FAIL**" };
        let _ = writeln!(
            t,
            "| {} {load} | {} | {:.0} | {:.0} | {:.3}{} | {:.1} / {:.1} | {:.0} | {:.0} | {:.2}%{} | {:.0} / {:.0} |",
            c.mode.name(),
            c.reference_tool,
            c.reference_median_rps,
            c.bench_median_rps,
            c.max_rate_ratio,
            mark(c.max_rate_ok),
            c.reference_cpu_us_per_request,
            c.bench_cpu_us_per_request,
            c.open_loop_requested_qps,
            c.open_loop_actual_qps,
            c.open_loop_rate_error * 100.0,
            mark(c.open_loop_ok),
            c.open_loop_p50_us,
            c.open_loop_p99_us,
        );
    }
    t
}

pub fn loadgen(args: &Args) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.modes.is_empty() {
        bail!("--modes needs at least one of http, https, h2");
    }
    if args.modes.contains(&Mode::H2) && args.streams == 0 {
        bail!("--streams must be at least 1");
    }
    if !args.no_install {
        let needed: Vec<_> = args.modes.iter().flat_map(|m| m.needs()).collect();
        tools::ensure(&needed)?;
    }
    let bench_bin = std::env::current_exe().context("locating this program")?;
    let work_dir = std::env::temp_dir().join(format!("ringmesh-selfcheck-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let json_tmp = work_dir.join("load.json");
    let started_at = crate::load::fortio::rfc3339(SystemTime::now());
    let settings = RunSettings {
        bench_bin: &bench_bin,
        cpu: args.load_cpu,
        connections: args.connections,
        streams: args.streams,
        duration: args.duration,
        json_tmp: &json_tmp,
    };
    let mut checks = Vec::new();
    for &mode in &args.modes {
        // The target gets the other core: here the generator is the thing measured.
        let target = target::start(
            mode,
            &bench_bin,
            args.proxy_cpu,
            args.response_size,
            &work_dir,
        )
        .with_context(|| format!("starting the {} target", mode.name()))?;
        checks.push(run_mode(args, &settings, target)?);
    }
    let table = table(&checks, args.connections, args.streams, args.rounds);
    println!("\n{table}");
    let report = SelfCheck {
        scenario: "loadgen",
        started_at,
        machine: report::Machine::detect(),
        placement: format!(
            "target on CPU {}; wrk -t1 / h2load -t1 / bench load -t1 on CPU {}",
            args.proxy_cpu, args.load_cpu
        ),
        connections: args.connections,
        streams: args.streams,
        duration_s: args.duration.as_secs_f64(),
        rounds: args.rounds,
        checks,
    };
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join("loadgen.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {}", path.display());
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}

/// Warm-up, the alternating closed-loop rounds, then the open loop.
fn run_mode(args: &Args, s: &RunSettings<'_>, mut target: Target) -> anyhow::Result<Check> {
    let mode = target.mode;
    let (reference, bench) = (mode.reference(), mode.bench_tool());
    let one = |tool: &str, s: &RunSettings<'_>, t: &Target| {
        if tool == reference {
            t.run_reference(s)
        } else {
            t.run_bench(s, None)
        }
    };
    let warm = RunSettings {
        duration: Duration::from_secs(2),
        ..*s
    };
    for tool in [reference, bench] {
        one(tool, &warm, &target).with_context(|| format!("warm-up of {tool}"))?;
    }
    let mut timed = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [reference, bench]
        } else {
            [bench, reference]
        };
        for tool in order {
            let target_before = target.proc.cpu_seconds();
            let cpu_before = waited_children_cpu_seconds();
            let load = one(tool, s, &target)
                .with_context(|| format!("{} round {}: {tool}", mode.name(), round + 1))?;
            let generator_cpu_seconds = waited_children_cpu_seconds() - cpu_before;
            let target_cpu = target.proc.cpu_seconds() - target_before;
            eprintln!(
                "{} round {}/{} {tool:>11}: {:>9.0} req/s  p50 {:>6.0}µs  p99 {:>6.0}µs  errors {}  generator CPU {:.1} µs/req",
                mode.name(),
                round + 1,
                args.rounds,
                load.rps,
                load.p50_us,
                load.p99_us,
                load.errors,
                generator_cpu_seconds * 1e6 / load.requests.max(1) as f64,
            );
            let per_req = |cpu: f64| cpu * 1e6 / load.requests.max(1) as f64;
            timed.push(Timed {
                run: Run {
                    round: round + 1,
                    contender: mode.name().into(),
                    tool: tool.into(),
                    proxy_cpu_seconds: None,
                    proxy_cpu_us_per_request: None,
                    backend_cpu_us_per_request: per_req(target_cpu),
                    load,
                },
                generator_cpu_seconds,
            });
        }
        target.proc.check_alive()?;
    }
    let reference_rps = median(
        &timed
            .iter()
            .filter(|t| t.run.tool == reference)
            .map(|t| t.run.load.rps)
            .collect::<Vec<_>>(),
    );
    let requested = open_loop_rate(reference_rps);
    let open = target
        .run_bench(s, Some(requested))
        .with_context(|| format!("{} open loop at {requested} req/s", mode.name()))?;
    eprintln!(
        "{} open loop --qps {requested:.0}: {:.1} req/s  p50 {:.0}µs  p99 {:.0}µs  errors {}",
        mode.name(),
        open.rps,
        open.p50_us,
        open.p99_us,
        open.errors
    );
    let description = mode.target_description(args.response_size);
    Ok(check(mode, description, timed, requested, &open))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(tool: &str, rps: f64, cpu_seconds: f64) -> Timed {
        Timed {
            run: Run {
                round: 1,
                contender: "h2".into(),
                tool: tool.into(),
                load: LoadResult {
                    requests: (rps * 10.0) as u64,
                    seconds: 10.0,
                    rps,
                    ..Default::default()
                },
                proxy_cpu_seconds: None,
                proxy_cpu_us_per_request: None,
                backend_cpu_us_per_request: 0.0,
            },
            generator_cpu_seconds: cpu_seconds,
        }
    }

    fn open(rps: f64) -> LoadResult {
        LoadResult {
            rps,
            p50_us: 400.0,
            p99_us: 900.0,
            ..Default::default()
        }
    }

    #[test]
    fn open_loop_rate_is_half_the_reference_in_hundreds() {
        assert_eq!(open_loop_rate(15310.0), 7700.0);
        assert_eq!(open_loop_rate(15290.0), 7600.0);
        assert_eq!(open_loop_rate(30.0), 100.0);
    }

    #[test]
    fn verdicts_follow_the_bars() {
        let runs = || {
            vec![
                timed("h2load", 10_000.0, 1.0),
                timed("bench-h2", 9_500.0, 0.8),
                timed("h2load", 12_000.0, 1.2),
                timed("bench-h2", 9_000.0, 0.9),
                timed("h2load", 11_000.0, 1.1),
                timed("bench-h2", 9_800.0, 0.7),
            ]
        };
        let c = check(Mode::H2, "t".into(), runs(), 5_500.0, &open(5_490.0));
        assert_eq!(c.reference_tool, "h2load");
        assert_eq!(c.reference_median_rps, 11_000.0);
        assert_eq!(c.bench_median_rps, 9_500.0);
        assert!((c.max_rate_ratio - 9_500.0 / 11_000.0).abs() < 1e-12);
        assert!(!c.max_rate_ok, "0.86 is below the 0.9 bar");
        // 1.1 s for 110k requests: 10 µs each; 0.8 s / 95k requests.
        assert!((c.reference_cpu_us_per_request - 10.0).abs() < 1e-9);
        assert!((c.bench_cpu_us_per_request - 0.8e6 / 95_000.0).abs() < 1e-9);
        assert!((c.open_loop_rate_error - 10.0 / 5_500.0).abs() < 1e-12);
        assert!(c.open_loop_ok);
        assert_eq!(c.runs.len(), 6);

        let slow_pacing = check(Mode::H2, "t".into(), runs(), 5_500.0, &open(5_400.0));
        assert!(!slow_pacing.open_loop_ok, "1.8% off is outside 1%");
        let mut errors = open(5_500.0);
        errors.errors = 3;
        assert!(!check(Mode::H2, "t".into(), runs(), 5_500.0, &errors).open_loop_ok);

        let t = table(&[c], 16, 8, 3);
        assert!(
            t.contains("| h2 -c16 -m8 | h2load | 11000 | 9500 | 0.864 **FAIL** |"),
            "{t}"
        );
        assert!(t.contains("| 5500 | 5490 | 0.18% |"), "{t}");
    }
}
