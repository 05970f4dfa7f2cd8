//! `bench compare hbone-bulk` and `hbone-connrate`: one tunneled pod-to-pod
//! stream (or new tunneled connections) through the two ringmesh ztunnels,
//! through the reference tunnel (`bench reftunnel`: tokio + tokio-rustls + h2,
//! same settings), and direct TCP, in one run with interleaved rounds.
//!
//! The scenario re-runs itself under `unshare -Urnm` and builds
//! [`hbone_topology`](super::hbone_topology) there. Placement: both tunnel
//! processes of a contender on `--proxy-cpu` (each is one thread: ztunnel
//! `--workers 1`, reftunnel a current-thread runtime), traffic generator and
//! sink on `--load-cpu`. CPU is utime+stime of the tunnel processes from
//! /proc. Bytes per bulk round: `HBONE_BULK_MIB` (default 2048); the ztunnel
//! binary: `HBONE_ZTUNNEL_BIN` (default `ztunnel` next to this program).

use super::hbone_topology::{self as topo, in_ns, netns, APP_PORT, POD_B, POD_D};
use super::procs::Proc;
use super::Args;
use anyhow::{bail, Context};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Clone, Copy, PartialEq)]
pub enum Measure {
    Bulk,
    Connrate,
}

/// Where a contender's client connects from (pod) and to.
struct Contender {
    name: &'static str,
    pod: &'static str,
    connect: String,
    tunnel: Vec<Proc>,
}

impl Contender {
    fn cpu_seconds(&self) -> f64 {
        self.tunnel.iter().map(|p| p.cpu_seconds()).sum()
    }
}

pub fn run(args: &Args, measure: Measure) -> anyhow::Result<()> {
    if !topo::reexec_in_namespaces()? {
        return Ok(());
    }
    inside(args, measure)
}

fn inside(args: &Args, measure: Measure) -> anyhow::Result<()> {
    let bench = std::env::current_exe()?;
    let ztunnel = match std::env::var_os("HBONE_ZTUNNEL_BIN") {
        Some(p) => p.into(),
        None => bench.with_file_name("ztunnel"),
    };
    let dir = std::env::temp_dir().join(format!("hbone-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    topo::build()?;
    topo::write_config(&dir)?;
    let (pcpu, lcpu) = (args.proxy_cpu, args.load_cpu);
    let _sinks = [
        start_sink(&bench, lcpu, "b")?,
        start_sink(&bench, lcpu, "d")?,
    ];
    let mut contenders = vec![
        Contender {
            name: "direct",
            pod: "c",
            connect: format!("{POD_D}:{APP_PORT}"),
            tunnel: vec![],
        },
        Contender {
            name: "reference",
            pod: "c",
            connect: "127.0.0.1:15001".into(),
            tunnel: start_reftunnel(&bench, pcpu, &dir)?,
        },
        Contender {
            name: "ringmesh",
            pod: "a",
            connect: format!("{POD_B}:{APP_PORT}"),
            tunnel: vec![
                topo::start_ztunnel(&ztunnel, pcpu, 1, &dir)?,
                topo::start_ztunnel(&ztunnel, pcpu, 2, &dir)?,
            ],
        },
    ];
    for c in &contenders {
        warm_up(&bench, lcpu, c)?;
    }
    let bulk_bytes = bulk_bytes()?;
    let mut samples: Vec<Vec<Sample>> = vec![vec![]; contenders.len()];
    for round in 0..args.rounds {
        for (i, c) in contenders.iter_mut().enumerate() {
            for p in c.tunnel.iter_mut() {
                p.check_alive()?;
            }
            let s = match measure {
                Measure::Bulk => bulk_round(&bench, lcpu, c, bulk_bytes)?,
                Measure::Connrate => connrate_round(&bench, lcpu, c, args)?,
            };
            eprintln!("round {} {:>9}: {}", round + 1, c.name, s.describe(measure));
            samples[i].push(s);
        }
    }
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let report = super::hbone_report::build(measure, args, bulk_bytes, &names, &samples);
    let file = match measure {
        Measure::Bulk => "hbone-bulk.json",
        Measure::Connrate => "hbone-connrate.json",
    };
    std::fs::create_dir_all(&args.out_dir)?;
    let path = args.out_dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report["summary"])?);
    eprintln!("wrote {}", path.display());
    // Stop the ztunnels before their watched config disappears.
    drop(contenders);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn bulk_bytes() -> anyhow::Result<u64> {
    let mib: u64 = match std::env::var("HBONE_BULK_MIB") {
        Ok(v) => v.parse().with_context(|| format!("HBONE_BULK_MIB={v:?}"))?,
        Err(_) => 2048,
    };
    Ok(mib << 20)
}

fn start_sink(bench: &Path, cpu: usize, pod: &str) -> anyhow::Result<Proc> {
    let mut cmd = in_ns(cpu, &netns(pod), bench);
    cmd.args([
        "reftunnel",
        "sink",
        "--listen",
        &format!("0.0.0.0:{APP_PORT}"),
    ]);
    topo::start_listening(&format!("sink {pod}"), cmd)
}

/// Reference client in pod c (addressed directly at 127.0.0.1:15001: no
/// capture rules), server in pod d on 15008 connecting to d's sink.
fn start_reftunnel(bench: &Path, cpu: usize, dir: &Path) -> anyhow::Result<Vec<Proc>> {
    let id = |sa: &str| format!("spiffe://{}/ns/apps/sa/{sa}", topo::TRUST_DOMAIN);
    let mut server = in_ns(cpu, &netns("d"), bench);
    server
        .args([
            "reftunnel",
            "server",
            "--listen",
            "0.0.0.0:15008",
            "--ca-dir",
        ])
        .arg(dir)
        .args(["--identity", &id("sa-d")]);
    let server = topo::start_listening("reftunnel server", server)?;
    let mut client = in_ns(cpu, &netns("c"), bench);
    client
        .args(["reftunnel", "client", "--listen", "127.0.0.1:15001"])
        .args(["--peer", &format!("{POD_D}:15008")])
        .args(["--target", &format!("{POD_D}:{APP_PORT}"), "--ca-dir"])
        .arg(dir)
        .args(["--identity", &id("sa-c"), "--peer-identity", &id("sa-d")]);
    let client = topo::start_listening("reftunnel client", client)?;
    Ok(vec![client, server])
}

/// Runs a traffic tool in the contender's pod; returns its JSON line.
fn traffic(
    bench: &Path,
    cpu: usize,
    c: &Contender,
    tool: &[String],
) -> anyhow::Result<serde_json::Value> {
    let out = in_ns(cpu, &netns(c.pod), bench)
        .args(["reftunnel"])
        .args(tool)
        .args(["--connect", &c.connect])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("{} traffic {tool:?} failed: {}", c.name, out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("{}: output {text:?}", c.name))
}

/// Opens the pooled HBONE connection and proves the path works (retrying
/// while listeners come up); excluded from the measurements.
fn warm_up(bench: &Path, cpu: usize, c: &Contender) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let tool = [
        "blast".to_string(),
        "--bytes".into(),
        (1u64 << 20).to_string(),
    ];
    loop {
        match traffic(bench, cpu, c, &tool) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context("warm-up")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Sample {
    /// Bulk: bytes; connrate: connections.
    pub units: f64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub errors: u64,
}

impl Sample {
    fn describe(&self, m: Measure) -> String {
        let rate = self.units / self.seconds;
        match m {
            Measure::Bulk => format!(
                "{:.2} Gbit/s, tunnel CPU {:.3} s/GiB",
                rate * 8.0 / 1e9,
                self.cpu_seconds / (self.units / GIB)
            ),
            Measure::Connrate => format!(
                "{rate:.0} conn/s, tunnel CPU {:.1} µs/conn, {} errors",
                self.cpu_seconds / self.units * 1e6,
                self.errors
            ),
        }
    }
}

fn bulk_round(bench: &Path, cpu: usize, c: &Contender, bytes: u64) -> anyhow::Result<Sample> {
    let before = c.cpu_seconds();
    let out = traffic(
        bench,
        cpu,
        c,
        &["blast".into(), "--bytes".into(), bytes.to_string()],
    )?;
    Ok(Sample {
        units: bytes as f64,
        seconds: out["seconds"].as_f64().unwrap_or(f64::NAN),
        cpu_seconds: c.cpu_seconds() - before,
        errors: 0,
    })
}

fn connrate_round(bench: &Path, cpu: usize, c: &Contender, args: &Args) -> anyhow::Result<Sample> {
    let before = c.cpu_seconds();
    let tool = [
        "connrate".to_string(),
        "--duration".into(),
        format!("{}ms", args.duration.as_millis()),
        "--concurrency".into(),
        args.connections.to_string(),
    ];
    let out = traffic(bench, cpu, c, &tool)?;
    Ok(Sample {
        units: out["connections"].as_f64().unwrap_or(0.0),
        seconds: out["seconds"].as_f64().unwrap_or(f64::NAN),
        cpu_seconds: c.cpu_seconds() - before,
        errors: out["errors"].as_u64().unwrap_or(0),
    })
}
