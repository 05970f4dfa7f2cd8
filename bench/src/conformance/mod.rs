//! `bench conformance DIR`: runs the Gateway API conformance vectors in DIR against the
//! `gateway` binary, in a private network namespace, with the official harness semantics.
//!
//! Prints one line per test (`PASS Name 9/9`, `FAIL Name 7/9` plus one indented line per
//! failed case, `SKIP Name: why`) and a final `N passed, M failed` counting cases.

mod certs;
mod checks;
mod client;
mod grpc;
mod netns;
mod procs;
mod runner;
mod setup;
mod vectors;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use procs::{EchoProcess, GatewayProcess};
use vectors::{Case, Environment, TestFile};

/// Set in the environment by a runner that already created its network namespace.
const IN_NETNS_ENV: &str = "RINGMESH_CONFORMANCE_IN_NETNS";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder with the vector files and _environment.yaml.
    pub dir: PathBuf,
    /// The gateway binary (default: `gateway` next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Run only tests whose name or file name contains this (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Exit non-zero when passed/(passed+failed) is below this.
    #[arg(long, default_value_t = 0.9)]
    pub min_pass_rate: f64,
    /// Features whose tests are skipped (none by default: a case the gateway cannot
    /// serve fails). Pseudo-features: HTTPS (https scheme, SNI or HTTPS-listener cases)
    /// and H2C (h2c/gRPC scheme cases).
    #[arg(long, value_delimiter = ',')]
    pub skip_features: Vec<String>,
    /// Per-case give-up time for the eventual-consistency loop (Go duration syntax).
    #[arg(long, default_value = "10s")]
    pub case_timeout: String,
    /// How long to wait for the gateway's /healthz/ready.
    #[arg(long, default_value = "15s")]
    pub ready_timeout: String,
    /// Already inside a private network namespace: do not create one.
    #[arg(long)]
    pub in_netns: bool,
    /// Run on the host network (port 80 and the listener ports must be free).
    #[arg(long)]
    pub no_netns: bool,
    /// `--workers` passed to the gateway.
    #[arg(long, default_value_t = 1)]
    pub gateway_workers: usize,
    /// Keep the work folder (configs and gateway logs) after the run.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Default)]
struct Totals {
    passed: usize,
    failed: usize,
    skipped: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let case_timeout = crate::echo::parse_go_duration(&args.case_timeout)
        .map_err(|e| anyhow::anyhow!("--case-timeout: {e}"))?;
    let ready_timeout = crate::echo::parse_go_duration(&args.ready_timeout)
        .map_err(|e| anyhow::anyhow!("--ready-timeout: {e}"))?;
    let in_netns = args.in_netns || std::env::var_os(IN_NETNS_ENV).is_some();
    if !in_netns && !args.no_netns {
        // Before any thread exists (the kernel requires it for CLONE_NEWUSER).
        netns::enter_private_netns()?;
        std::env::set_var(IN_NETNS_ENV, "1");
    }

    let env = vectors::load_environment(&args.dir)?;
    let loaded = vectors::load_tests(&args.dir)?;
    let mut tests: Vec<(String, TestFile)> = Vec::new();
    let mut totals = Totals::default();
    for (file, test) in loaded {
        match test {
            Ok(test) => tests.push((file, test)),
            Err(e) => {
                // Counted as one failed case: a broken vector file must not go unnoticed.
                totals.failed += 1;
                println!("ERROR {file}: {e}");
            }
        }
    }
    let self_exe = std::env::current_exe().context("locating the bench executable")?;
    let gateway_bin = match &args.gateway_bin {
        Some(path) => path.clone(),
        None => self_exe
            .parent()
            .map(|dir| dir.join("gateway"))
            .context("locating the gateway binary")?,
    };
    anyhow::ensure!(
        gateway_bin.exists(),
        "gateway binary {} not found (build it: cargo build -p ringmesh-gateway, or pass --gateway-bin)",
        gateway_bin.display()
    );
    remove_stale_workdirs();
    let workdir = std::env::temp_dir().join(format!("{WORKDIR_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;

    let echoes = start_echoes(&self_exe, &env)?;
    let selected = |file: &str, test: &TestFile| -> bool {
        if args.only.is_empty() {
            return true;
        }
        let stem = file.trim_end_matches(".yaml");
        args.only.iter().any(|o| {
            // An exact test or file name selects just that one; otherwise substring match.
            let exact = tests
                .iter()
                .any(|(f, t)| t.test == *o || f.trim_end_matches(".yaml") == o);
            if exact {
                test.test == *o || stem == o
            } else {
                test.test.contains(o.as_str()) || file.contains(o.as_str())
            }
        })
    };
    for (file, test) in &tests {
        if !selected(file, test) {
            continue;
        }
        run_test(
            test,
            &env,
            &echoes,
            &gateway_bin,
            &workdir,
            &args,
            case_timeout,
            ready_timeout,
            &mut totals,
        );
    }
    drop(echoes);
    if args.keep {
        println!("work folder kept: {}", workdir.display());
    } else {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    let ran = totals.passed + totals.failed;
    println!(
        "{} passed, {} failed ({} skipped)",
        totals.passed, totals.failed, totals.skipped
    );
    let rate = if ran == 0 {
        0.0
    } else {
        totals.passed as f64 / ran as f64
    };
    if rate < args.min_pass_rate {
        anyhow::bail!(
            "pass rate {:.1}% is below --min-pass-rate {:.1}%",
            rate * 100.0,
            args.min_pass_rate * 100.0
        );
    }
    Ok(())
}

const WORKDIR_PREFIX: &str = "ringmesh-conformance-";

/// Work folders of runs that were killed (their pid is gone) are removed here, since a
/// killed run cannot clean up after itself.
fn remove_stale_workdirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(WORKDIR_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One echo process per replica of every service (HTTP or gRPC echo by the service's
/// protocol), shared by all tests.
fn start_echoes(self_exe: &Path, env: &Environment) -> anyhow::Result<Vec<EchoProcess>> {
    let mut echoes = Vec::new();
    for (namespace, service, replicas, grpc) in setup::echo_services(env) {
        // Replicas of one Deployment share the ReplicaSet hash, like real pods.
        let rs_hash = &uuid::Uuid::new_v4().simple().to_string()[..9];
        for replica in 0..replicas {
            let suffix = &uuid::Uuid::new_v4().simple().to_string()[..5];
            let pod = format!("{service}-{rs_hash}-{suffix}");
            echoes.push(
                EchoProcess::start(self_exe, &namespace, &service, &pod, grpc)
                    .with_context(|| format!("starting echo replica {replica} of {service}"))?,
            );
        }
    }
    Ok(echoes)
}

/// Why a case cannot run here, if it cannot.
fn skip_reason(
    case: &Case,
    test: &TestFile,
    gateway: &str,
    env: &Environment,
    skip: &[String],
) -> Option<String> {
    let skipping = |f: &str| skip.iter().any(|s| s.eq_ignore_ascii_case(f));
    let scheme = case
        .scheme
        .as_deref()
        .or(test.target.scheme.as_deref())
        .unwrap_or("http");
    if skipping("HTTPS") {
        if scheme == "https" {
            return Some("https scheme".into());
        }
        if case.request.sni.is_some() {
            return Some("SNI".into());
        }
        if case.kind.is_none() && setup::gateway_http_port(gateway, test, env).is_none() {
            return Some(format!("gateway {gateway} has no HTTP listener"));
        }
    }
    if skipping("H2C")
        && (scheme.contains("h2c") || scheme.contains("grpc") || case.request.grpc_method.is_some())
    {
        return Some(format!("scheme {scheme}"));
    }
    None
}

/// The Gateway a case is about: its override, the status target, or the test's target.
fn case_gateway(case: &Case, test: &TestFile) -> String {
    match case.kind.as_deref() {
        Some("route_status") => case.parent.clone(),
        Some("gateway_listener_status") => case.gateway.clone(),
        _ => None,
    }
    .or_else(|| case.target_gateway.clone())
    .unwrap_or_else(|| test.target.gateway.clone())
}

#[allow(clippy::too_many_arguments)]
fn run_test(
    test: &TestFile,
    env: &Environment,
    echoes: &[EchoProcess],
    gateway_bin: &Path,
    workdir: &Path,
    args: &Args,
    case_timeout: Duration,
    ready_timeout: Duration,
    totals: &mut Totals,
) {
    let mut stdout = std::io::stdout();
    if let Some(feature) = test
        .features
        .iter()
        .find(|f| args.skip_features.iter().any(|s| s.eq_ignore_ascii_case(f)))
    {
        totals.skipped += test.cases.len();
        let _ = writeln!(
            stdout,
            "SKIP {}: feature {feature} ({} cases)",
            test.test,
            test.cases.len()
        );
        return;
    }
    let config_dir = workdir.join(&test.test);
    let mut results: Vec<(String, Result<(), String>)> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut config_notes: Vec<String> = Vec::new();
    if let Err(e) = setup::write_config(&config_dir, env, echoes, test) {
        for case in &test.cases {
            results.push((case.id.clone(), Err(format!("writing config: {e:#}"))));
        }
    } else {
        // Cases grouped by the Gateway they target, in order of first appearance: the
        // gateway process serves one Gateway at a time (several share port 80).
        let mut groups: Vec<(String, Vec<&Case>)> = Vec::new();
        for case in &test.cases {
            let gateway = case_gateway(case, test);
            if let Some(reason) = skip_reason(case, test, &gateway, env, &args.skip_features) {
                skipped.push((case.id.clone(), reason));
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == gateway) {
                Some((_, cases)) => cases.push(case),
                None => groups.push((gateway, vec![case])),
            }
        }
        for (index, (gateway, cases)) in groups.iter().enumerate() {
            let log_path = workdir.join(format!("{}-gateway-{index}.log", test.test));
            match GatewayProcess::start(
                gateway_bin,
                &config_dir,
                gateway,
                log_path,
                ready_timeout,
                args.gateway_workers,
            ) {
                Err(e) => {
                    for case in cases {
                        results.push((case.id.clone(), Err(format!("{e:#}"))));
                    }
                }
                Ok(mut process) => {
                    let port = setup::gateway_http_port(gateway, test, env).unwrap_or(80);
                    let scheme = test.target.scheme.clone().unwrap_or_else(|| "http".into());
                    let mut target = runner::Target {
                        gateway: &mut process,
                        port,
                        scheme: scheme.clone(),
                        echoes,
                        case_timeout,
                        tls: None,
                    };
                    let mut group_failed = false;
                    for case in cases {
                        // HTTPS cases go to the Gateway's HTTPS listener with a TLS client
                        // that trusts the test certificate.
                        let https = case.scheme.as_deref().or(test.target.scheme.as_deref())
                            == Some("https");
                        target.tls = None;
                        if https {
                            target.port =
                                setup::gateway_port(gateway, test, env, "HTTPS").unwrap_or(443);
                            target.scheme = "https".into();
                            match certs::test_certificate(&setup::listener_hostnames(env)) {
                                Ok(cert) => target.tls = Some(cert.client_config.clone()),
                                Err(e) => {
                                    group_failed = true;
                                    results.push((case.id.clone(), Err(e)));
                                    continue;
                                }
                            }
                        } else {
                            target.port = port;
                            target.scheme = scheme.clone();
                        }
                        let result = runner::run_case(case, &mut target);
                        group_failed |= result.is_err();
                        results.push((case.id.clone(), result));
                    }
                    if group_failed {
                        for error in runner::config_errors(process.admin) {
                            if !config_notes.contains(&error) {
                                config_notes.push(error);
                            }
                        }
                    }
                }
            }
        }
    }
    let passed = results.iter().filter(|(_, r)| r.is_ok()).count();
    let failed = results.len() - passed;
    totals.passed += passed;
    totals.failed += failed;
    totals.skipped += skipped.len();
    let verdict = if failed == 0 { "PASS" } else { "FAIL" };
    let skipped_note = if skipped.is_empty() {
        String::new()
    } else {
        let mut reasons: Vec<&str> = skipped.iter().map(|(_, r)| r.as_str()).collect();
        reasons.dedup();
        format!(" ({} skipped: {})", skipped.len(), reasons.join(", "))
    };
    let _ = writeln!(
        stdout,
        "{verdict} {} {passed}/{}{skipped_note}",
        test.test,
        results.len()
    );
    let mut by_id: Vec<&(String, Result<(), String>)> = results.iter().collect();
    by_id.sort_by_key(|(id, _)| id.parse::<u64>().unwrap_or(u64::MAX));
    for (id, result) in by_id {
        if let Err(reason) = result {
            let comment = test
                .cases
                .iter()
                .find(|c| &c.id == id)
                .map(describe_case)
                .unwrap_or_default();
            let _ = writeln!(stdout, "    case {id}{comment}: {reason}");
        }
    }
    for note in &config_notes {
        let _ = writeln!(stdout, "    gateway config error: {note}");
    }
    let _ = stdout.flush();
}

fn describe_case(case: &Case) -> String {
    if let Some(method) = &case.request.grpc_method {
        let method = grpc::method_path(method).unwrap_or_else(|e| e);
        return match case.kind.as_deref() {
            Some(kind) => format!(" [{kind} gRPC {method}]"),
            None => format!(" [gRPC {method}]"),
        };
    }
    match case.kind.as_deref() {
        Some(kind) => format!(" [{kind}]"),
        None => {
            let method = case.request.method.as_deref().unwrap_or("GET");
            let host = case
                .request
                .host
                .as_deref()
                .map(|h| format!(" host {h}"))
                .unwrap_or_default();
            format!(
                " [{method} {}{host}]",
                case.request.path.as_deref().unwrap_or("/")
            )
        }
    }
}
