//! `bench controller-scale`: the real `controller` binary on a generated cluster of
//! 1k / 10k / 50k Services with 10 endpoints each. Per size: load + translation time (from the
//! controller's "config published" log line), controller RSS after the initial load and per
//! workload, the registry's size in a connected ztunnel's shoes (a probe process holding the
//! xDS resources and `WorkloadRegistry::from_xds`), the time until 100 simulated ztunnels
//! (raw Delta ADS streams on one tokio runtime here) hold the initial set, the time from a
//! one-endpoint file edit to the last of them receiving it, and the bytes that edit pushes.

use super::controller_scale_config::{self as config, Generated};
use super::controller_scale_subscribers::{run_subscriber, Fleet};
use super::procs::{http_get, Proc};
use super::report::Machine;
use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Services to generate per run (10 endpoint pods each), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pub sizes: Vec<usize>,
    /// Simulated ztunnels (Delta ADS streams) subscribed during the edit.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// The controller binary (default: `controller` next to this program).
    #[arg(long)]
    pub controller_bin: Option<PathBuf>,
    /// Where the JSON goes (run from the repository root).
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// Longest wait for any one phase (initial sync, edit propagation).
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Only write the config for the first size into this folder and exit.
    #[arg(long)]
    pub generate_only: Option<PathBuf>,
    /// Internal: run as the registry probe against this xDS address.
    #[arg(long, hide = true)]
    pub probe_xds: Option<SocketAddr>,
    /// Internal: Address resources the probe waits for.
    #[arg(long, hide = true, default_value_t = 0)]
    pub probe_expect: usize,
}

#[derive(Debug, Serialize)]
struct SizeResult {
    generated: Generated,
    generate_seconds: f64,
    /// Spawn to the listening line (the initial load happens before the controller binds).
    controller_startup_seconds: f64,
    initial_load_ms: f64,
    initial_translate_ms: f64,
    controller_rss_after_load_kb: u64,
    controller_rss_empty_kb: u64,
    /// (RSS after load − RSS with an empty config) / pods.
    controller_bytes_per_workload: f64,
    probe: ProbeResult,
    /// (probe RSS holding the registry − its RSS before connecting) / pods.
    ztunnel_registry_bytes_per_workload: f64,
    subscribers: usize,
    initial_sync_seconds: f64,
    initial_bytes_per_subscriber: u64,
    controller_rss_with_subscribers_kb: u64,
    controller_hwm_with_subscribers_kb: u64,
    edit_reload_load_ms: f64,
    edit_reload_translate_ms: f64,
    edit_to_first_subscriber_ms: f64,
    edit_to_median_subscriber_ms: f64,
    edit_to_last_subscriber_ms: f64,
    edit_bytes_per_subscriber_min: u64,
    edit_bytes_per_subscriber_max: u64,
    edit_resources_per_subscriber_max: u64,
    /// ringmesh_xds_bytes_sent_total growth over the edit / subscribers.
    edit_controller_bytes_sent_per_subscriber: f64,
}

#[derive(Debug, Serialize, serde::Deserialize, Default)]
struct ProbeResult {
    rss_before_kb: u64,
    rss_after_kb: u64,
    addresses: usize,
    workloads: usize,
    services: usize,
    sync_seconds: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(xds) = args.probe_xds {
        return probe(xds, args.probe_expect);
    }
    if let Some(dir) = &args.generate_only {
        let size = *args.sizes.first().context("--sizes is empty")?;
        let generated = config::generate(dir, size)?;
        println!("{}", serde_json::to_string(&generated)?);
        return Ok(());
    }
    let controller_bin = match &args.controller_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("bench binary has no folder")?
            .join("controller"),
    };
    if !controller_bin.exists() {
        bail!(
            "{} not found: cargo build --release -p ringmesh-controller (or --controller-bin)",
            controller_bin.display()
        );
    }
    let scratch =
        std::env::temp_dir().join(format!("ringmesh-controller-scale-{}", std::process::id()));
    let empty = scratch.join("empty");
    std::fs::create_dir_all(&empty)?;
    let empty_rss = {
        let controller = Controller::start(&controller_bin, &empty, &scratch.join("empty.log"))?;
        std::thread::sleep(Duration::from_millis(500));
        rss_kb(controller.proc.pid())?.0
    };
    eprintln!("controller RSS with an empty config: {empty_rss} kB");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started_at = crate::load::fortio::rfc3339(SystemTime::now());
    let mut results = Vec::new();
    for &size in &args.sizes {
        let dir = scratch.join(format!("size-{size}"));
        let result = runtime.block_on(measure_size(&args, &controller_bin, &dir, size, empty_rss));
        let _ = std::fs::remove_dir_all(&dir);
        let result = result.with_context(|| format!("{size} services"))?;
        eprintln!("{}", serde_json::to_string_pretty(&result)?);
        results.push(result);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{}", table(&results));
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join("controller-scale.json");
    let report = serde_json::json!({
        "scenario": "controller-scale",
        "started_at": started_at,
        "machine": Machine::detect(),
        "settings": {
            "sizes": args.sizes,
            "subscribers": args.subscribers,
            "endpoints_per_service": config::ENDPOINTS_PER_SERVICE,
            "services_per_file": config::SERVICES_PER_NAMESPACE,
        },
        "results": results,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

struct Controller {
    proc: Proc,
    xds: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Controller {
    fn start(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Controller> {
        let mut command = Command::new(bin);
        command
            .arg("--config")
            .arg(config)
            .args(["--xds-addr", "127.0.0.1:0", "--xds-tls-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?);
        let mut proc = Proc::spawn("controller", command)?;
        let line = proc.first_stdout_line()?;
        let field = |name: &str| -> anyhow::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .ok_or_else(|| {
                    anyhow!(
                        "no {name}= in the controller's line {line:?} (log: {})",
                        log.display()
                    )
                })?
                .parse()
                .context("controller address")
        };
        Ok(Controller {
            xds: field("xds")?,
            admin: field("admin")?,
            proc,
            log: log.to_path_buf(),
        })
    }

    /// (load µs, translate µs) of every "config published" line so far.
    fn reloads(&self) -> Vec<(u64, u64)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(parse_published_line).collect()
    }

    fn metric(&self, name: &str) -> u64 {
        http_get(self.admin, "/metrics")
            .and_then(|body| parse_metric(&body, name))
            .unwrap_or(0)
    }
}

/// `load_us` and `translate_us` of a controller "config published" log line.
pub fn parse_published_line(line: &str) -> Option<(u64, u64)> {
    let line = strip_ansi(line);
    if !line.contains("config published") {
        return None;
    }
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    Some((field("load_us")?, field("translate_us")?))
}

/// The text without ANSI SGR sequences (`ESC [ ... m`), in case the log is colored after all
/// (the controller is started with NO_COLOR=1).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A Prometheus text metric without labels.
pub fn parse_metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// (VmRSS, VmHWM) in kB from the text of /proc/PID/status.
pub fn parse_rss_kb(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn rss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_rss_kb(&text).ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

async fn measure_size(
    args: &Args,
    controller_bin: &Path,
    dir: &Path,
    size: usize,
    empty_rss: u64,
) -> anyhow::Result<SizeResult> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let t = Instant::now();
    let generated = config::generate(dir, size)?;
    let generate_seconds = t.elapsed().as_secs_f64();
    eprintln!("{size} services: generated {generated:?} in {generate_seconds:.1} s");

    let t = Instant::now();
    let log = dir.with_extension("log");
    let controller = Controller::start(controller_bin, dir, &log)?;
    let controller_startup_seconds = t.elapsed().as_secs_f64();
    let (initial_load, initial_translate) = *controller
        .reloads()
        .first()
        .ok_or_else(|| anyhow!("no \"config published\" line in {}", log.display()))?;
    let (rss_after_load, _) = rss_kb(controller.proc.pid())?;
    let pods = generated.pods as f64;
    eprintln!("{size} services: controller up in {controller_startup_seconds:.1} s, RSS {rss_after_load} kB");

    let probe = run_probe(controller.xds, generated.addresses(), timeout)?;
    eprintln!("{size} services: probe {probe:?}");

    let fleet = Fleet::new(args.subscribers);
    let t = Instant::now();
    let tasks: Vec<_> = (0..args.subscribers)
        .map(|i| tokio::spawn(run_subscriber(controller.xds, i, fleet.clone())))
        .collect();
    wait_for(&fleet, timeout, "initial sync", |s| {
        s.resources >= generated.addresses() as u64
    })
    .await?;
    let initial_sync_seconds = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = fleet.snapshot();
    let (rss_with_subscribers, hwm_with_subscribers) = rss_kb(controller.proc.pid())?;
    let controller_bytes_before = controller.metric("ringmesh_xds_bytes_sent_total");
    eprintln!(
        "{size} services: {} subscribers synced in {initial_sync_seconds:.2} s",
        args.subscribers
    );

    let reloads_before = controller.reloads().len();
    let watched = config::workload_resource_name(0, config::ENDPOINTS_PER_SERVICE);
    fleet.watch(&watched);
    let edited = Instant::now();
    let added = config::add_one_endpoint(dir, size)?;
    debug_assert_eq!(added, watched);
    wait_for(&fleet, timeout, "the edit", |s| s.watched_at.is_some()).await?;
    // Let anything else the edit caused arrive (debounce is 100 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = fleet.snapshot();
    let controller_bytes_after = controller.metric("ringmesh_xds_bytes_sent_total");
    let (edit_load, edit_translate) = controller
        .reloads()
        .get(reloads_before)
        .copied()
        .unwrap_or_default();
    for task in tasks {
        task.abort();
    }
    drop(controller);

    let mut latencies: Vec<f64> = after
        .iter()
        .filter_map(|s| s.watched_at)
        .map(|at| (at - edited).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let edit_bytes: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.bytes - b.bytes)
        .collect();
    let edit_resources = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.resources - b.resources);
    let probe_bytes = probe.rss_after_kb.saturating_sub(probe.rss_before_kb) as f64 * 1024.0;
    Ok(SizeResult {
        generated,
        generate_seconds,
        controller_startup_seconds,
        initial_load_ms: ms(initial_load),
        initial_translate_ms: ms(initial_translate),
        controller_rss_after_load_kb: rss_after_load,
        controller_rss_empty_kb: empty_rss,
        controller_bytes_per_workload: rss_after_load.saturating_sub(empty_rss) as f64 * 1024.0
            / pods,
        ztunnel_registry_bytes_per_workload: probe_bytes / pods,
        probe,
        subscribers: args.subscribers,
        initial_sync_seconds,
        initial_bytes_per_subscriber: before.iter().map(|s| s.bytes).max().unwrap_or(0),
        controller_rss_with_subscribers_kb: rss_with_subscribers,
        controller_hwm_with_subscribers_kb: hwm_with_subscribers,
        edit_reload_load_ms: ms(edit_load),
        edit_reload_translate_ms: ms(edit_translate),
        edit_to_first_subscriber_ms: latencies.first().copied().unwrap_or(0.0),
        edit_to_median_subscriber_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(0.0),
        edit_to_last_subscriber_ms: latencies.last().copied().unwrap_or(0.0),
        edit_bytes_per_subscriber_min: edit_bytes.iter().copied().min().unwrap_or(0),
        edit_bytes_per_subscriber_max: edit_bytes.iter().copied().max().unwrap_or(0),
        edit_resources_per_subscriber_max: edit_resources.max().unwrap_or(0),
        edit_controller_bytes_sent_per_subscriber: controller_bytes_after
            .saturating_sub(controller_bytes_before)
            as f64
            / args.subscribers.max(1) as f64,
    })
}

/// Waits until every subscriber satisfies `done`; fails on a subscriber error or the timeout.
async fn wait_for(
    fleet: &Fleet,
    timeout: Duration,
    what: &str,
    done: impl Fn(&super::controller_scale_subscribers::Seen) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = fleet.snapshot();
        if let Some((i, error)) = seen
            .iter()
            .enumerate()
            .find_map(|(i, s)| Some((i, s.error.clone()?)))
        {
            bail!("subscriber {i} failed during {what}: {error}");
        }
        if seen.iter().all(&done) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let ready = seen.iter().filter(|s| done(s)).count();
            bail!(
                "{what}: only {ready}/{} subscribers done after {timeout:?}",
                seen.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs this program as the probe (a fresh process, so its RSS is the registry's alone).
fn run_probe(xds: SocketAddr, expect: usize, timeout: Duration) -> anyhow::Result<ProbeResult> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["controller-scale", "--probe-xds", &xds.to_string()])
        .args(["--probe-expect", &expect.to_string()])
        .args(["--timeout-secs", &timeout.as_secs().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("start the probe")?;
    let output = std::io::read_to_string(child.stdout.take().context("probe stdout")?)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("probe exited with {status}");
    }
    serde_json::from_str(output.trim()).with_context(|| format!("probe output {output:?}"))
}

/// The probe: what a connected ztunnel's xDS thread holds — the client's resource set and the
/// registry built from it with `WorkloadRegistry::from_xds` — measured as RSS growth.
fn probe(xds: SocketAddr, expect: usize) -> anyhow::Result<()> {
    use mesh_api::istio::security::Authorization;
    use mesh_api::istio::workload::Address;
    use mesh_api::type_url;
    use mesh_registry::workloads::WorkloadRegistry;
    use prost::Message;
    use std::sync::{Arc, Mutex};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (rss_before_kb, _) = rss_kb(std::process::id())?;
    let registry: Arc<Mutex<Option<(usize, WorkloadRegistry)>>> = Arc::default();
    let publish = registry.clone();
    let client = mesh_xds::XdsClient::new(
        mesh_xds::ClientConfig::new(
            format!("http://{xds}"),
            super::controller_scale_subscribers::node_id(999),
        )
        .wildcard(type_url::ADDRESS)
        .wildcard(type_url::AUTHORIZATION),
    );
    let t = Instant::now();
    // A current-thread runtime only runs while blocked on, so it gets its own thread (as the
    // ztunnel's xDS thread does); the process exits when the probe is done.
    let on_update = move |_delta: &mesh_xds::Delta, all: &mesh_xds::ResourceSet| {
        fn decode<M: Message + Default>(
            all: &mesh_xds::ResourceSet,
            url: &str,
        ) -> Result<Vec<M>, String> {
            all.get(url)
                .into_iter()
                .flat_map(|held| held.values())
                .map(|r| M::decode(r.resource.value.as_slice()).map_err(|e| e.to_string()))
                .collect()
        }
        let addresses: Vec<Address> = decode(all, type_url::ADDRESS)?;
        let authorizations: Vec<Authorization> = decode(all, type_url::AUTHORIZATION)?;
        let next = WorkloadRegistry::from_xds(
            &addresses,
            &authorizations,
            "cluster.local",
            &Default::default(),
        )?;
        *publish.lock().unwrap() = Some((addresses.len(), next));
        Ok(())
    };
    std::thread::spawn(move || runtime.block_on(client.run(on_update)));
    let deadline = Instant::now() + Duration::from_secs(600);
    let (addresses, workloads, services) = loop {
        if let Some((addresses, r)) = registry.lock().unwrap().as_ref() {
            if *addresses >= expect {
                break (*addresses, r.workloads.len(), r.services.len());
            }
        }
        if Instant::now() > deadline {
            bail!("probe: fewer than {expect} addresses after 600 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let sync_seconds = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let (rss_after_kb, _) = rss_kb(std::process::id())?;
    let result = ProbeResult {
        rss_before_kb,
        rss_after_kb,
        addresses,
        workloads,
        services,
        sync_seconds,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn table(results: &[SizeResult]) -> String {
    let mut out = String::from(
        "| services | pods | load ms | translate ms | controller RSS MB | controller B/workload | ztunnel registry B/workload | initial sync s | edit → last of N ms | edit bytes/subscriber |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} (N={}) | {} |\n",
            r.generated.services,
            r.generated.pods,
            r.initial_load_ms,
            r.initial_translate_ms,
            r.controller_rss_after_load_kb as f64 / 1024.0,
            r.controller_bytes_per_workload,
            r.ztunnel_registry_bytes_per_workload,
            r.initial_sync_seconds,
            r.edit_to_last_subscriber_ms,
            r.subscribers,
            r.edit_bytes_per_subscriber_max,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_line_fields() {
        let line = "2026-12-08T01:00:00.000Z  INFO ringmesh_controller::state: config published generation=1 addresses=11 authorizations=0 proxies=0 config_errors=0 load_us=1234 translate_us=567";
        assert_eq!(parse_published_line(line), Some((1234, 567)));
        let colored = "\u{1b}[2mringmesh_controller::state\u{1b}[0m: config published \u{1b}[3mload_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m625 \u{1b}[3mtranslate_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m209";
        assert_eq!(parse_published_line(colored), Some((625, 209)));
        assert_eq!(parse_published_line("config published generation=1"), None);
        assert_eq!(parse_published_line("other load_us=1 translate_us=2"), None);
    }

    #[test]
    fn metrics_and_rss() {
        let body = "ringmesh_xds_bytes_sent_total_x 9\nringmesh_xds_bytes_sent_total 42\n";
        assert_eq!(
            parse_metric(body, "ringmesh_xds_bytes_sent_total"),
            Some(42)
        );
        assert_eq!(parse_metric(body, "missing"), None);
        let status = "Name:\tcontroller\nVmHWM:\t  20480 kB\nVmRSS:\t  10240 kB\n";
        assert_eq!(parse_rss_kb(status), Some((10240, 20480)));
        assert_eq!(parse_rss_kb("Name: x\n"), None);
    }
}
