//! `bench compare SCENARIO`: side-by-side benchmarks against what users run
//! today, with a fixed CPU placement, interleaved rounds and medians.
//!
//! Placement on a 2-core machine: the proxy under test runs alone on
//! `--proxy-cpu` (default 1); the load generator and the backend share
//! `--load-cpu` (default 0). Every contender gets the same placement, so the
//! load generator and backend cost the same in every run and only the proxy
//! differs. `direct` sends the load straight to the backend.

mod contenders;
pub mod controller_scale;
mod controller_scale_config;
mod controller_scale_subscribers;
mod hbone;
mod hbone_report;
mod hbone_topology;
mod loadgen_target;
mod loadrun;
mod procs;
mod report;
mod selfcheck;
mod svg;
mod tls_setup;
mod tools;
mod waypoint_latency;
mod waypoint_report;
mod waypoint_setup;
mod wrk;

use crate::load::fortio::rfc3339;
use crate::load::units::parse_duration;
use anyhow::{anyhow, bail, Context};
use contenders::{Contender, Kind};
use procs::{pinned_command, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use wrk::LoadResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// ringmesh gateway vs nginx vs HAProxy vs direct, HTTP/1.1 keep-alive.
    GatewayHttp,
    /// ringmesh gateway vs nginx vs HAProxy terminating TLS (same certificate),
    /// HTTP/1.1: keep-alive and a new TLS connection per request (`bench load`).
    GatewayHttps,
    /// ringmesh gateway vs nginx vs HAProxy, HTTP/2 over TLS (ALPN h2): h2load
    /// and `bench load --h2`.
    GatewayH2,
    /// The load generator itself vs wrk against the backend directly (max rate
    /// ratio) plus open-loop rate accuracy.
    Loadgen,
    /// One tunneled stream: ringmesh ztunnels vs tokio reference tunnel vs direct (hbone.rs).
    HboneBulk,
    /// New tunneled connection per request: connections/s (hbone.rs).
    HboneConnrate,
    /// What a waypoint hop costs: direct vs ztunnel (L4) vs ztunnel + waypoint
    /// vs an nginx hop, latency at --qps and max rate (waypoint_latency.rs).
    WaypointLatency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    Wrk,
    /// `bench load` (this program).
    Bench,
    Both,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Interleaved rounds (each contender once per round); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Length of each load run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Load generator (gateway-http; gateway-h2: `wrk` means h2load, `both`
    /// runs h2load and `bench load --h2`; gateway-https always uses bench load).
    #[arg(long, value_enum, default_value = "wrk")]
    pub tool: Tool,
    /// waypoint-latency: the fixed open-loop rate (requests/s) the latency
    /// percentiles are measured at.
    #[arg(long, default_value_t = 1000.0)]
    pub qps: f64,
    /// loadgen: which checks to run (http: vs wrk; https: vs wrk over TLS;
    /// h2: vs h2load), comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "http,https,h2"
    )]
    pub modes: Vec<loadgen_target::Mode>,
    /// gateway-h2 and loadgen h2: concurrent streams per connection (h2load -m).
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Contenders, in order (comma separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,ringmesh,nginx,haproxy"
    )]
    pub contenders: Vec<Kind>,
    /// Response body size of the backend, bytes.
    #[arg(long, default_value_t = 64)]
    pub response_size: usize,
    /// CPU of the proxy under test.
    #[arg(long, default_value_t = 1)]
    pub proxy_cpu: usize,
    /// CPU of the load generator and the backend.
    #[arg(long, default_value_t = 0)]
    pub load_cpu: usize,
    /// The ringmesh gateway binary (default: `gateway` next to this program).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Where the JSON and SVG go.
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// Do not apt-get install missing tools.
    #[arg(long)]
    pub no_install: bool,
    /// Only redraw the SVG from the scenario's JSON in --out-dir (no runs).
    #[arg(long)]
    pub plot_only: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::GatewayHttp => proxy_scenario(&args, Proto::Http),
        Scenario::GatewayHttps => proxy_scenario(&args, Proto::Https),
        Scenario::GatewayH2 => proxy_scenario(&args, Proto::H2),
        Scenario::Loadgen => selfcheck::loadgen(&args),
        Scenario::HboneBulk => hbone::run(&args, hbone::Measure::Bulk),
        Scenario::HboneConnrate => hbone::run(&args, hbone::Measure::Connrate),
        Scenario::WaypointLatency => waypoint_latency::run(&args),
    }
}

fn tool_names(t: Tool) -> Vec<String> {
    match t {
        Tool::Wrk => vec!["wrk".into()],
        Tool::Bench => vec!["bench".into()],
        Tool::Both => vec!["wrk".into(), "bench".into()],
    }
}

/// The backend: `bench echo` with a fixed small response on the load CPU.
fn start_backend(
    bench_bin: &Path,
    cpu: usize,
    response_size: usize,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut cmd = pinned_command(cpu, &bench_bin.to_string_lossy());
    cmd.args([
        "echo",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--name",
        "echo",
        "--namespace",
        "default",
        "--quiet",
    ])
    .arg("--fixed-response")
    .arg(response_size.to_string())
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut p = Proc::spawn("backend", cmd)?;
    let line = p.first_stdout_line()?;
    // "echo listening on 127.0.0.1:PORT pod NAME"
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            anyhow!("backend printed {line:?}, expected 'echo listening on ADDR ...'")
        })?;
    procs::wait_ready(&mut p, addr, "/", Duration::from_secs(10))?;
    Ok((p, addr))
}

/// The proxy scenarios: what is on the wire between load generator and proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// gateway-http: HTTP/1.1 over TCP.
    Http,
    /// gateway-https: HTTP/1.1 over TLS.
    Https,
    /// gateway-h2: HTTP/2 over TLS (ALPN h2).
    H2,
}

impl Proto {
    fn scenario(self) -> &'static str {
        match self {
            Proto::Http => "gateway-http",
            Proto::Https => "gateway-https",
            Proto::H2 => "gateway-h2",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Proto::Http => "gateway-http: HTTP/1.1 proxy, one worker",
            Proto::Https => "gateway-https: TLS termination + HTTP/1.1 proxy, one worker",
            Proto::H2 => "gateway-h2: HTTP/2 over TLS (ALPN h2) to the proxy, one worker",
        }
    }

    /// The load variants (each a "tool" column of the report).
    fn loads(self, tool: Tool) -> Vec<String> {
        match self {
            Proto::Http => tool_names(tool),
            Proto::Https => vec![
                tls_setup::TlsLoad::KeepAlive.name().into(),
                tls_setup::TlsLoad::NewConn.name().into(),
            ],
            Proto::H2 => match tool {
                Tool::Wrk => vec![tls_setup::TlsLoad::H2load.name().into()],
                Tool::Bench => vec![tls_setup::TlsLoad::BenchH2.name().into()],
                Tool::Both => vec![
                    tls_setup::TlsLoad::H2load.name().into(),
                    tls_setup::TlsLoad::BenchH2.name().into(),
                ],
            },
        }
    }
}

fn one_run(
    tool: &str,
    bench_bin: &Path,
    args: &Args,
    addr: SocketAddr,
    duration: Duration,
    json_tmp: &Path,
) -> anyhow::Result<LoadResult> {
    let url = format!("http://{addr}/");
    if let Some(load) = tls_setup::TlsLoad::from_name(tool) {
        let settings = tls_setup::LoadSettings {
            bench_bin,
            cpu: args.load_cpu,
            connections: args.connections,
            streams: args.streams,
            duration,
            qps: None,
            json_tmp,
        };
        return tls_setup::run(load, &settings, addr);
    }
    match tool {
        "wrk" => wrk::run_wrk(args.load_cpu, &url, args.connections, duration),
        _ => loadrun::run_bench_load(
            bench_bin,
            args.load_cpu,
            &url,
            args.connections,
            duration,
            None,
            json_tmp,
        ),
    }
}

/// The SVG of a proxy scenario's report.
fn plot(report: &report::Report) -> String {
    let at = report
        .started_at
        .get(..16)
        .unwrap_or(&report.started_at)
        .replace('T', " ");
    let streams = match report.settings.get("streams") {
        Some(m) => format!(" x {m} streams"),
        None => String::new(),
    };
    let subtitle = vec![
        format!(
            "{} rounds x {}s per contender, {} connections{streams}, medians; {at} UTC on {} ({} CPUs)",
            report.settings["rounds"],
            report.settings["duration_s"],
            report.settings["connections"],
            report.machine.cpu_model,
            report.machine.cpus,
        ),
        report.placement.clone(),
    ];
    let title = match report.scenario.as_str() {
        "gateway-https" => Proto::Https.title(),
        "gateway-h2" => Proto::H2.title(),
        _ => Proto::Http.title(),
    };
    svg::render(title, &subtitle, &report.summary)
}

fn proxy_scenario(args: &Args, proto: Proto) -> anyhow::Result<()> {
    let name = proto.scenario();
    if args.plot_only {
        let json_path = args.out_dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?;
        let report: report::Report = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", json_path.display()))?;
        let svg_path = args.out_dir.join(format!("{name}.svg"));
        std::fs::write(&svg_path, plot(&report))?;
        eprintln!("wrote {}", svg_path.display());
        return Ok(());
    }
    if proto == Proto::H2 && args.streams == 0 {
        bail!("--streams must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if args.proxy_cpu >= cpus || args.load_cpu >= cpus {
        bail!("this machine has {cpus} CPU(s); pick --proxy-cpu and --load-cpu below {cpus}");
    }
    if args.proxy_cpu == args.load_cpu {
        eprintln!(
            "warning: proxy and load generator share CPU {}",
            args.proxy_cpu
        );
    }
    let tools = proto.loads(args.tool);
    if !args.no_install {
        let mut needed = vec![];
        if tools.iter().any(|t| t == "wrk") {
            needed.push(("wrk", "wrk"));
        }
        if tools.iter().any(|t| t == "h2load") {
            needed.push(("h2load", "nghttp2-client"));
        }
        if args.contenders.contains(&Kind::Nginx) {
            needed.push(("nginx", "nginx"));
        }
        if args.contenders.contains(&Kind::Haproxy) {
            needed.push(("haproxy", "haproxy"));
        }
        tools::ensure(&needed)?;
    }
    let bench_bin = std::env::current_exe().context("locating this program")?;
    let gateway_bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(|| bench_bin.with_file_name("gateway"));
    let work_dir = std::env::temp_dir().join(format!("ringmesh-compare-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let started_at = rfc3339(SystemTime::now());

    let (mut backend, backend_addr) = start_backend(&bench_bin, args.load_cpu, args.response_size)?;
    eprintln!(
        "backend: bench echo --fixed-response {} on {backend_addr} (CPU {})",
        args.response_size, args.load_cpu
    );

    let tls_files = match proto {
        Proto::Http => None,
        Proto::Https | Proto::H2 => Some(tls_setup::TlsFiles::generate(&work_dir.join("tls"))?),
    };
    let cx = contenders::StartContext {
        work_dir: &work_dir,
        backend: backend_addr,
        proxy_cpu: args.proxy_cpu,
        gateway_bin: &gateway_bin,
        tls: tls_files.as_ref().map(|files| contenders::TlsListener {
            files,
            h2: proto == Proto::H2,
            bench_bin: &bench_bin,
        }),
    };
    let mut running: Vec<Contender> = Vec::new();
    let mut skipped = Vec::new();
    for kind in &args.contenders {
        if *kind == Kind::Ringmesh && !gateway_bin.is_file() {
            let why = format!(
                "ringmesh: {} not found (cargo build --release -p ringmesh-gateway)",
                gateway_bin.display()
            );
            eprintln!("skipping {why}");
            skipped.push(why);
            continue;
        }
        match contenders::start(*kind, &cx) {
            Ok(c) => {
                eprintln!("{}: {}", kind.name(), c.addr);
                running.push(c);
            }
            Err(e) => {
                let why = format!("{}: {e:#}", kind.name());
                eprintln!("skipping {why}");
                skipped.push(why);
            }
        }
    }
    if running.is_empty() {
        bail!("no contender started: {}", skipped.join("; "));
    }

    // Warm up every contender (connection pools, caches, CPU frequency).
    let json_tmp = work_dir.join("load.json");
    for c in &running {
        for tool in &tools {
            one_run(
                tool,
                &bench_bin,
                args,
                c.addr,
                Duration::from_secs(2),
                &json_tmp,
            )
            .with_context(|| format!("warm-up of {}", c.kind.name()))?;
        }
    }

    let mut runs = Vec::new();
    for round in 0..args.rounds {
        // Rotate the order each round so no contender always runs first.
        let n = running.len();
        for i in 0..n {
            let c = &mut running[(i + round) % n];
            if let Some(p) = c.proc.as_mut() {
                p.check_alive()?;
            }
            for tool in &tools {
                let proxy_before = c.proc.as_ref().map(|p| p.cpu_seconds());
                let backend_before = backend.cpu_seconds();
                let load = one_run(tool, &bench_bin, args, c.addr, args.duration, &json_tmp)
                    .with_context(|| format!("round {} on {}", round + 1, c.kind.name()))?;
                let proxy_cpu = c
                    .proc
                    .as_ref()
                    .map(|p| p.cpu_seconds())
                    .zip(proxy_before)
                    .map(|(a, b)| a - b);
                let backend_cpu = backend.cpu_seconds() - backend_before;
                let per_req = |cpu: f64| {
                    if load.requests > 0 {
                        cpu * 1e6 / load.requests as f64
                    } else {
                        0.0
                    }
                };
                let run = report::Run {
                    round: round + 1,
                    contender: c.kind.name().into(),
                    tool: tool.clone(),
                    proxy_cpu_seconds: proxy_cpu,
                    proxy_cpu_us_per_request: proxy_cpu.map(per_req),
                    backend_cpu_us_per_request: per_req(backend_cpu),
                    load,
                };
                eprintln!(
                    "round {}/{} {:>8} {:>5}: {:>9.0} req/s  p50 {:>6.0}µs  p99 {:>6.0}µs  proxy CPU {} µs/req  errors {}",
                    round + 1,
                    args.rounds,
                    run.contender,
                    run.tool,
                    run.load.rps,
                    run.load.p50_us,
                    run.load.p99_us,
                    run.proxy_cpu_us_per_request.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
                    run.load.errors
                );
                runs.push(run);
            }
        }
        backend.check_alive()?;
    }

    let names: Vec<String> = running.iter().map(|c| c.kind.name().to_string()).collect();
    let summary = report::summarize(&runs, &names, &tools, "nginx");
    let table = report::table(&summary, "nginx");
    println!("\n{table}");
    let generator = match proto {
        Proto::Http => tools.join("+"),
        Proto::Https => "bench load -k: keep-alive, and --new-conn".into(),
        Proto::H2 => tools
            .iter()
            .map(|t| {
                if t == "h2load" {
                    "h2load -t1"
                } else {
                    "bench load --h2"
                }
            })
            .collect::<Vec<_>>()
            .join("+"),
    };
    let placement = format!(
        "proxy (one worker) pinned to CPU {}; load generator ({generator}) and backend (bench echo, 1 worker, {}-byte body) pinned to CPU {}",
        args.proxy_cpu,
        args.response_size,
        args.load_cpu
    );
    let machine = report::Machine::detect();
    let mut settings = serde_json::json!({
        "rounds": args.rounds,
        "duration_s": args.duration.as_secs_f64(),
        "connections": args.connections,
        "load_threads": 1,
        "tools": tools,
        "response_size": args.response_size,
        "baseline": "nginx",
    });
    if proto == Proto::H2 {
        settings["streams"] = args.streams.into();
    }
    if proto != Proto::Http {
        settings["tls"] = serde_json::json!({
            "certificate": "ECDSA P-256, self-signed, the same file for every contender",
            "server_name": tls_setup::SERVER_NAME,
            "client": "rustls (bench load) / OpenSSL (h2load), no session resumption in bench load",
        });
    }
    let report = report::Report {
        scenario: name.into(),
        started_at: started_at.clone(),
        settings,
        placement: placement.clone(),
        skipped,
        summary,
        runs,
        machine,
    };
    std::fs::create_dir_all(&args.out_dir)?;
    let json_path = args.out_dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let svg_path = args.out_dir.join(format!("{name}.svg"));
    std::fs::write(&svg_path, plot(&report))?;
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
    drop(running);
    drop(backend);
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("compare").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn loadgen_checks_all_three_modes_unless_told() {
        let a = parse(&["loadgen"]).unwrap();
        assert_eq!(a.scenario, Scenario::Loadgen);
        use loadgen_target::Mode;
        assert_eq!(a.modes, [Mode::Http, Mode::Https, Mode::H2]);
        let a = parse(&["loadgen", "--modes", "h2,https"]).unwrap();
        assert_eq!(a.modes, [Mode::H2, Mode::Https]);
        assert!(parse(&["loadgen", "--modes", "quic"]).is_err());
    }

    #[test]
    fn waypoint_latency_takes_a_rate() {
        let a = parse(&["waypoint-latency"]).unwrap();
        assert_eq!(a.scenario, Scenario::WaypointLatency);
        assert_eq!(a.qps, 1000.0);
        let a = parse(&["waypoint-latency", "--qps", "2500", "--rounds", "3"]).unwrap();
        assert_eq!((a.qps, a.rounds), (2500.0, 3));
        assert!(parse(&["waypoint-latency", "--qps", "fast"]).is_err());
        assert!(parse(&["waypoint-latnecy"]).is_err());
    }
}
