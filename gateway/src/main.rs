//! `gateway`: north-south ingress serving the listeners of Gateway API
//! Gateways. Only flags and composition live here; the work is in shared/.

mod args;
mod connected;
mod handler;
mod l4;
mod mesh;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use mesh_registry::{Snapshot, TranslateOptions};

use args::Args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let log_control = init_logging();
    match run(args, log_control) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr with the `RUST_LOG` filter (default `info`), which the
/// admin `/logging` endpoint can replace at run time.
fn init_logging() -> mesh_runtime::LogControl {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    Box::new(move |level: Option<&str>| {
        if let Some(level) = level {
            let filter =
                EnvFilter::try_new(level).map_err(|e| format!("invalid filter {level:?}: {e}"))?;
            handle.reload(filter).map_err(|e| e.to_string())?;
        }
        handle
            .with_current(|f| f.to_string())
            .map_err(|e| e.to_string())
    })
}

fn run(args: Args, log_control: mesh_runtime::LogControl) -> anyhow::Result<()> {
    let translate_options = TranslateOptions {
        gateway_class: args.gateway_class.clone(),
        gateway: args.gateway.clone(),
    };

    let options = args.runtime_options();
    let workers = options.workers;
    let snapshots = mesh_registry::new_handle(Snapshot::default());
    let metrics = Arc::new(mesh_http::HttpMetrics::new(workers));
    let mut runtime = mesh_runtime::Runtime::new(options, snapshots.clone());
    // The HTTP engine's series with the TLS passthrough / TCP ones merged in.
    let gateway_metrics = Arc::new(l4::metrics::GatewayMetrics::new(metrics.clone(), workers));
    runtime.add_metrics(gateway_metrics.clone());
    runtime.set_log_control(log_control);
    let mesh = match &args.connected.xds {
        Some(address) => {
            let gateway = args
                .gateway
                .as_ref()
                .context("--xds needs --gateway NS/NAME")?;
            if args.mesh.ca_dir.is_some() {
                anyhow::bail!(
                    "--ca-dir is for standalone mode; with --xds the certificate comes from the controller's CA (--node, --node-token-file)"
                );
            }
            let started =
                connected::start(&args.connected, address, gateway, &args.mesh, &snapshots)?;
            runtime.add_metrics(Arc::new(connected::MetricsSource(started.metrics)));
            started.mesh
        }
        None => standalone(&args, &translate_options, &snapshots, &mut runtime)?,
    };

    let http_options = args.http_options();
    let l4_options = l4::L4Options::from_http(&http_options);
    runtime.run(move |worker| {
        mesh::install_upstream(mesh.as_deref(), &snapshots);
        handler::GatewayHandler {
            http: std::rc::Rc::new(mesh_http::HttpHandler::new(
                snapshots.clone(),
                metrics.workers[worker].clone(),
                http_options.clone(),
            )),
            l4: std::rc::Rc::new(l4::L4Handler::new(
                snapshots.clone(),
                gateway_metrics.l4[worker].clone(),
                l4_options.clone(),
                worker,
            )),
        }
    })
}

/// `--config`: watch the path, then load and publish the first snapshot.
fn standalone(
    args: &Args,
    translate_options: &TranslateOptions,
    snapshots: &mesh_registry::SnapshotHandle,
    runtime: &mut mesh_runtime::Runtime,
) -> anyhow::Result<Option<Arc<mesh::Mesh>>> {
    let config = args
        .config
        .clone()
        .context("--config PATH or --xds ADDR is required")?;
    if !config.exists() {
        anyhow::bail!("config path {} does not exist", config.display());
    }
    // Watch first, then load: an edit made during the initial load is not missed.
    let reload_path = config.clone();
    let reload_options = translate_options.clone();
    let mesh = mesh::Mesh::start(&args.mesh, args.gateway.as_ref(), &config)?;
    let reload_mesh = mesh.clone();
    runtime.watch_config(
        config.clone(),
        Box::new(move || {
            if let Some(mesh) = &reload_mesh {
                mesh.reload(&reload_path)?;
            }
            build_snapshot(&reload_path, &reload_options)
        }),
    );

    let initial = build_snapshot(&config, translate_options)?;
    let version = mesh_runtime::publish(snapshots, initial);
    tracing::info!(config = %config.display(), version, "configuration loaded");

    Ok(mesh)
}

/// Load + translate. Rejected documents are logged one per line and listed in
/// `status.config_errors`; only an unreadable path is an error.
fn build_snapshot(path: &Path, options: &TranslateOptions) -> anyhow::Result<Snapshot> {
    let loaded = mesh_config::load_path(path)?;
    let mut snapshot = mesh_registry::translate(&loaded.resources, options);
    let mut errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    for error in &snapshot.status.config_errors {
        if !errors.contains(error) {
            errors.push(error.clone());
        }
    }
    for error in &errors {
        tracing::warn!("config error: {error}");
    }
    snapshot.status.config_errors = errors;
    Ok(snapshot)
}
