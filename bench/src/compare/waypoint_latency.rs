//! `bench compare waypoint-latency`: what a waypoint hop costs. In the HBONE
//! topology (two nodes, [`hbone_topology`](super::hbone_topology)) the same
//! `bench echo` answers through four paths:
//!
//! - `direct`: pod c (node1) → pod d's echo (node2), no mesh;
//! - `ztunnel`: pod a → Service `echo-l4` → ztunnel node1 → HBONE → ztunnel
//!   node2 → pod b's echo (L4 only);
//! - `waypoint`: pod a → Service `echo-l7` (`istio.io/use-waypoint`) →
//!   ztunnel node1 → HBONE → waypoint (pod wp, node2; L7 engine) → HBONE →
//!   ztunnel node2 → pod b's echo;
//! - `nginx`: pod c → nginx (pod ng, node2; plain HTTP reverse proxy) → pod
//!   d's echo: a reference L7 hop without the mesh.
//!
//! Each round runs every path twice: open loop at `--qps` (latency,
//! coordinated-omission corrected) and closed loop with `--connections`
//! (max rate). Placement: ztunnels, waypoint and nginx on `--proxy-cpu`
//! (one worker each), `bench load` and the echoes on `--load-cpu`.

use super::hbone_topology::{self as topo, in_ns, netns, APP_PORT, POD_D};
use super::loadrun::run_bench_load_cmd;
use super::procs::Proc;
use super::report::{self, Report, Run};
use super::waypoint_report::{self as wr, WaypointReport, MAX_RATE, OPEN_LOOP};
use super::waypoint_setup::{self as setup, NGINX_POD, NGINX_PORT, WAYPOINT_POD};
use super::wrk::LoadResult;
use super::{svg, tools, Args};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

const NAME: &str = "waypoint-latency";

/// One path under test: where the load comes from and goes to, and which
/// processes its proxy CPU is charged to.
struct PathUnderTest {
    name: &'static str,
    client_pod: &'static str,
    url: String,
    /// Indices into `Procs::proxies`.
    charged: Vec<usize>,
    /// Index into `Procs::echoes` of the backend it reaches.
    echo: usize,
}

struct Procs {
    /// ztunnel node1, ztunnel node2, waypoint, nginx (those that started).
    proxies: Vec<Proc>,
    /// pod b's echo (mesh), pod d's echo (plain).
    echoes: Vec<Proc>,
}

impl Procs {
    fn cpu(&self, idx: &[usize]) -> f64 {
        idx.iter().map(|&i| self.proxies[i].cpu_seconds()).sum()
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.plot_only {
        return plot_only(&args.out_dir);
    }
    validate(args)?;
    if !args.no_install {
        tools::ensure(&[("nginx", "nginx")])?;
    }
    if !topo::reexec_in_namespaces()? {
        return Ok(());
    }
    inside(args)
}

/// Settings this scenario cannot run with, as a clear error.
pub fn validate(args: &Args) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if !(args.qps.is_finite() && args.qps > 0.0) {
        bail!(
            "--qps must be a positive rate (requests/s), got {}",
            args.qps
        );
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.proxy_cpu >= cpus || args.load_cpu >= cpus {
        bail!("this machine has {cpus} CPU(s); pick --proxy-cpu and --load-cpu below {cpus}");
    }
    Ok(())
}

fn binary(env: &str, name: &str, bench: &Path) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| bench.with_file_name(name))
}

fn inside(args: &Args) -> anyhow::Result<()> {
    let bench = std::env::current_exe()?;
    let ztunnel = binary("HBONE_ZTUNNEL_BIN", "ztunnel", &bench);
    let waypoint = binary("WAYPOINT_BIN", "waypoint", &bench);
    if !ztunnel.is_file() {
        bail!(
            "{} not found (cargo build --release -p ringmesh-ztunnel, or set HBONE_ZTUNNEL_BIN)",
            ztunnel.display()
        );
    }
    let started_at = crate::load::fortio::rfc3339(SystemTime::now());
    let dir = std::env::temp_dir().join(format!("waypoint-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    topo::build_with(&[WAYPOINT_POD, NGINX_POD])?;
    topo::write_config_with(&dir, &setup::mesh_yaml())?;
    let (mut procs, paths, skipped) = start_paths(&bench, &ztunnel, &waypoint, args, &dir)?;
    let json_tmp = dir.join("load.json");
    for p in &paths {
        warm_up(&bench, args.load_cpu, p, &json_tmp)
            .with_context(|| format!("warm-up of {}", p.name))?;
    }
    let runs = run_rounds(&bench, args, &mut procs, &paths, &json_tmp)?;
    let (waypoint_requests, tunneled) = check_mesh_paths(&paths, &runs)?;
    let names: Vec<String> = paths.iter().map(|p| p.name.to_string()).collect();
    let tools = vec![OPEN_LOOP.to_string(), MAX_RATE.to_string()];
    let summary = report::summarize(&runs, &names, &tools, wr::BASELINE);
    let hop_costs = wr::hop_costs(&summary);
    println!("\n{}", report::table(&summary, wr::BASELINE));
    println!("{}", wr::hop_table(&hop_costs));
    let report = WaypointReport {
        report: Report {
            scenario: NAME.into(),
            started_at,
            machine: report::Machine::detect(),
            settings: serde_json::json!({
                "rounds": args.rounds,
                "duration_s": args.duration.as_secs_f64(),
                "connections": args.connections,
                "open_loop_qps": args.qps,
                "load_threads": 1,
                "tools": tools,
                "response_size": args.response_size,
                "baseline": wr::BASELINE,
                "workers_per_proxy": 1,
                "waypoint_requests_counted": waypoint_requests,
                "ztunnel_node2_connections_counted": tunneled,
                "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            }),
            placement: format!(
                "ztunnels, waypoint and nginx (one worker each) pinned to CPU {}; bench load -t1 and the echo backends (bench echo, 1 worker, {}-byte body) pinned to CPU {}",
                args.proxy_cpu, args.response_size, args.load_cpu
            ),
            skipped,
            summary,
            runs,
        },
        hop_costs,
    };
    std::fs::create_dir_all(&args.out_dir)?;
    let json_path = args.out_dir.join(format!("{NAME}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let svg_path = args.out_dir.join(format!("{NAME}.svg"));
    std::fs::write(&svg_path, plot(&report))?;
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
    // Stop the proxies before their watched config disappears.
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Starts the echoes and the proxies; the paths that can run, and why the
/// others cannot (the waypoint or nginx failing to start skips its path).
fn start_paths(
    bench: &Path,
    ztunnel: &Path,
    waypoint: &Path,
    args: &Args,
    dir: &Path,
) -> anyhow::Result<(Procs, Vec<PathUnderTest>, Vec<String>)> {
    let (pcpu, lcpu) = (args.proxy_cpu, args.load_cpu);
    let mut procs = Procs {
        proxies: vec![],
        echoes: vec![
            setup::start_echo(bench, lcpu, "b", args.response_size)?,
            setup::start_echo(bench, lcpu, "d", args.response_size)?,
        ],
    };
    procs
        .proxies
        .push(topo::start_ztunnel(ztunnel, pcpu, 1, dir)?);
    procs
        .proxies
        .push(topo::start_ztunnel(ztunnel, pcpu, 2, dir)?);
    let mut paths = vec![
        PathUnderTest {
            name: "direct",
            client_pod: "c",
            url: format!("http://{POD_D}:{APP_PORT}/"),
            charged: vec![],
            echo: 1,
        },
        PathUnderTest {
            name: "ztunnel",
            client_pod: "a",
            url: format!("http://{}/", setup::L4_VIP),
            charged: vec![0, 1],
            echo: 0,
        },
    ];
    let mut skipped = vec![];
    match setup::start_waypoint(waypoint, pcpu, dir) {
        Ok(p) => {
            procs.proxies.push(p);
            paths.push(PathUnderTest {
                name: "waypoint",
                client_pod: "a",
                url: format!("http://{}/", setup::L7_VIP),
                charged: vec![0, 1, procs.proxies.len() - 1],
                echo: 0,
            });
        }
        Err(e) => skipped.push(format!("waypoint: {e:#}")),
    }
    match setup::start_nginx(pcpu, dir) {
        Ok(p) => {
            procs.proxies.push(p);
            paths.push(PathUnderTest {
                name: "nginx",
                client_pod: "c",
                url: format!("http://{}:{NGINX_PORT}/", NGINX_POD.ip),
                charged: vec![procs.proxies.len() - 1],
                echo: 1,
            });
        }
        Err(e) => skipped.push(format!("nginx: {e:#}")),
    }
    for why in &skipped {
        eprintln!("skipping {why}");
    }
    Ok((procs, paths, skipped))
}

/// A B A B ...: every path once per round (open loop, then max rate), the
/// start of the order rotating each round.
fn run_rounds(
    bench: &Path,
    args: &Args,
    procs: &mut Procs,
    paths: &[PathUnderTest],
    json_tmp: &Path,
) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        let n = paths.len();
        for i in 0..n {
            let p = &paths[(i + round) % n];
            for proxy in procs.proxies.iter_mut() {
                proxy.check_alive()?;
            }
            for (tool, qps) in [(OPEN_LOOP, Some(args.qps)), (MAX_RATE, None)] {
                let mode = Mode {
                    tool,
                    qps,
                    round: round + 1,
                };
                let run = measure(bench, args, procs, p, &mode, json_tmp)
                    .with_context(|| format!("round {} on {} ({tool})", round + 1, p.name))?;
                if run.load.errors > 0 {
                    eprintln!("warning: {} errors on {} ({tool})", run.load.errors, p.name);
                }
                eprintln!(
                    "round {}/{} {:>8} {:>9}: {:>8.0} req/s  p50 {:>6.0}µs  p90 {:>6.0}µs  p99 {:>6.0}µs  proxy CPU {} µs/req",
                    round + 1,
                    args.rounds,
                    p.name,
                    tool,
                    run.load.rps,
                    run.load.p50_us,
                    run.load.p90_us,
                    run.load.p99_us,
                    run.proxy_cpu_us_per_request
                        .map_or("-".into(), |v| format!("{v:.1}")),
                );
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

/// Proof that the mesh paths went where they claim: the waypoint counted
/// every request sent through it, and ztunnel node2 accepted tunneled
/// connections. (requests the waypoint counted, connections node2 counted).
fn check_mesh_paths(paths: &[PathUnderTest], runs: &[Run]) -> anyhow::Result<(Option<u64>, u64)> {
    let waypoint_requests = if paths.iter().any(|p| p.name == "waypoint") {
        let sent: u64 = runs
            .iter()
            .filter(|r| r.contender == "waypoint")
            .map(|r| r.load.requests)
            .sum();
        let counted = setup::waypoint_requests()?;
        if counted < sent {
            bail!("the waypoint counted {counted} requests, the load generator sent {sent} through it: the waypoint path bypassed it");
        }
        Some(counted)
    } else {
        None
    };
    let tunneled = setup::node2_ztunnel_connections()?;
    if tunneled == 0 {
        bail!("ztunnel node2 accepted no connection: the mesh paths were not tunneled");
    }
    Ok((waypoint_requests, tunneled))
}

/// Which run of a round: open loop at a rate, or closed loop (max rate).
struct Mode {
    tool: &'static str,
    qps: Option<f64>,
    round: usize,
}

/// One timed run of `bench load` from the path's client pod.
fn measure(
    bench: &Path,
    args: &Args,
    procs: &Procs,
    p: &PathUnderTest,
    mode: &Mode,
    json_tmp: &Path,
) -> anyhow::Result<Run> {
    let qps = mode.qps;
    let before = procs.cpu(&p.charged);
    let echo_before = procs.echoes[p.echo].cpu_seconds();
    let load = load(
        bench,
        args.load_cpu,
        p,
        args.connections,
        args.duration,
        qps,
        json_tmp,
    )?;
    let per_req = |cpu: f64| {
        if load.requests > 0 {
            cpu * 1e6 / load.requests as f64
        } else {
            0.0
        }
    };
    let proxy_cpu = (!p.charged.is_empty()).then(|| procs.cpu(&p.charged) - before);
    Ok(Run {
        round: mode.round,
        contender: p.name.into(),
        tool: mode.tool.into(),
        proxy_cpu_seconds: proxy_cpu,
        proxy_cpu_us_per_request: proxy_cpu.map(per_req),
        backend_cpu_us_per_request: per_req(procs.echoes[p.echo].cpu_seconds() - echo_before),
        load,
    })
}

fn load(
    bench: &Path,
    cpu: usize,
    p: &PathUnderTest,
    connections: usize,
    duration: Duration,
    qps: Option<f64>,
    json_tmp: &Path,
) -> anyhow::Result<LoadResult> {
    let cmd = in_ns(cpu, &netns(p.client_pod), bench);
    run_bench_load_cmd(cmd, &p.url, connections, duration, qps, &[], json_tmp)
}

/// Proves the path answers (retrying while listeners and pools come up),
/// then warms it for a second; excluded from the measurements.
fn warm_up(bench: &Path, cpu: usize, p: &PathUnderTest, json_tmp: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = load(bench, cpu, p, 1, Duration::from_millis(300), None, json_tmp);
        match probe {
            Ok(r) if r.requests > 0 && r.errors == 0 => break,
            Ok(r) if Instant::now() > deadline => {
                bail!("{} never answered cleanly: {r:?}", p.url)
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    load(bench, cpu, p, 8, Duration::from_secs(1), None, json_tmp).map(|_| ())
}

fn plot(r: &WaypointReport) -> String {
    let rep = &r.report;
    let at = rep
        .started_at
        .get(..16)
        .unwrap_or(&rep.started_at)
        .replace('T', " ");
    let subtitle = vec![
        format!(
            "bars: max rate (closed loop, {} connections); latency: open loop at {:.0} req/s, coordinated-omission corrected",
            rep.settings["connections"],
            rep.settings["open_loop_qps"].as_f64().unwrap_or(0.0)
        ),
        format!(
            "{} rounds x {}s per path and mode, medians; {at} UTC on {} ({} CPUs)",
            rep.settings["rounds"], rep.settings["duration_s"], rep.machine.cpu_model, rep.machine.cpus
        ),
        rep.placement.clone(),
    ];
    svg::render(
        "waypoint-latency: client → ztunnel → [waypoint] → ztunnel → echo",
        &subtitle,
        &wr::plot_rows(&rep.summary),
    )
}

fn plot_only(out_dir: &Path) -> anyhow::Result<()> {
    let json_path = out_dir.join(format!("{NAME}.json"));
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("reading {}", json_path.display()))?;
    let report: WaypointReport =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json_path.display()))?;
    let svg_path = out_dir.join(format!("{NAME}.svg"));
    std::fs::write(&svg_path, plot(&report))?;
    eprintln!("wrote {}", svg_path.display());
    Ok(())
}
