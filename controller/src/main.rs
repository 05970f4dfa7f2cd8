//! `controller`: flags and composition only; the logic lives in the library.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_tls::CertificateAuthority;
use ringmesh_controller::ca::{CaService, CallerAuth};
use ringmesh_controller::xds_access::{Transport, XdsAccess};
use ringmesh_controller::{admin, grpc, watch, Controller, ControllerOptions};

#[derive(Parser)]
#[command(name = "controller", about = "ringmesh control plane: xDS, CA, status")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file or folder (watched; reloaded on change).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Plaintext xDS + CA.
    #[arg(long, default_value = "0.0.0.0:15010")]
    xds_addr: SocketAddr,
    /// xDS + CA over TLS (serving certificate issued by the controller's CA).
    #[arg(long, default_value = "0.0.0.0:15012")]
    xds_tls_addr: SocketAddr,
    /// `/status`, `/metrics`, `/healthz/ready`.
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin_addr: SocketAddr,
    /// CA root certificate and key (PEM); generated and written there when absent.
    /// Without them the CA is generated in memory for this run.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    #[arg(long, default_value = mesh_registry::workloads::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    #[arg(long, default_value = "ringmesh")]
    gateway_class: String,
    /// Extra subject alternative names (IPs or DNS names) of the 15012 serving certificate.
    #[arg(long = "xds-tls-san")]
    xds_tls_sans: Vec<String>,
    /// Lifetime of the 15012 serving certificate in seconds (renewed at half-life); tests
    /// shorten it. Needs --ca-cert/--ca-key (the serving certificate's own CA handle).
    #[arg(long, hide = true, requires = "ca_cert")]
    xds_tls_cert_lifetime: Option<u64>,
    /// Sign certificates without checking the caller's node token (development only).
    #[arg(long)]
    ca_allow_unauthenticated: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Gateway API status of a config path as JSON and exit.
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "ringmesh")]
        gateway_class: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(Command::Status {
        config,
        gateway_class,
    }) = args.command
    {
        let report = ringmesh_controller::state::status_of(&ControllerOptions {
            config,
            trust_domain: args.trust_domain,
            gateway_class,
        })?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let config = args.config.clone().context("--config PATH is required")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args, config))
}

async fn run(args: Args, config: PathBuf) -> anyhow::Result<()> {
    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            CertificateAuthority::load_or_generate(cert, key, &args.trust_domain)?
        }
        _ => CertificateAuthority::generate(&args.trust_domain)?,
    };
    let ca = Arc::new(ca);
    let xds = mesh_xds::XdsServer::new(mesh_xds::ServerConfig::default());
    let controller = Arc::new(Controller::new(
        ControllerOptions {
            config,
            trust_domain: args.trust_domain.clone(),
            gateway_class: args.gateway_class.clone(),
        },
        xds.clone(),
    ));
    let baseline = watch::Fingerprint::of(&controller.options().config);
    // A config path that cannot be read at start is fatal; later it only keeps the last state.
    if let ringmesh_controller::ReloadOutcome::Kept(e) = controller.reload() {
        anyhow::bail!("{e}");
    }

    let bind = |addr: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {what} on {addr}"))
    };
    let plain = bind(args.xds_addr, "xDS").await?;
    let tls = bind(args.xds_tls_addr, "xDS TLS").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    // Tests (and scripts) read the bound addresses from this line when they pass port 0.
    println!(
        "controller listening xds={} xds_tls={} admin={}",
        plain.local_addr()?,
        tls.local_addr()?,
        admin_listener.local_addr()?
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let serving_ca = match (args.xds_tls_cert_lifetime, &args.ca_cert, &args.ca_key) {
        (Some(seconds), Some(cert), Some(key)) => Arc::new(
            CertificateAuthority::load(cert, key)?
                .with_max_lifetime(std::time::Duration::from_secs(seconds)),
        ),
        _ => ca.clone(),
    };
    let serving_tls = grpc::ServingTls::start(grpc::ServingIdentity::new(
        serving_ca,
        &args.trust_domain,
        &args.xds_tls_sans,
    )?)?;
    let caller_auth = if args.ca_allow_unauthenticated {
        tracing::warn!("--ca-allow-unauthenticated: any caller may claim any node");
        CallerAuth::Unauthenticated
    } else {
        CallerAuth::NodeTokens
    };
    let access = |transport| Arc::new(XdsAccess::new(transport, &args.trust_domain));
    let plain_task = tokio::spawn(grpc::serve(
        plain,
        None,
        xds.with_authorizer(access(Transport::Plaintext)),
        CaService::new(ca.clone(), controller.clone(), caller_auth),
        stopped(stop_rx.clone()),
    ));
    let tls_task = tokio::spawn(grpc::serve(
        tls,
        Some(serving_tls),
        xds.with_authorizer(access(Transport::Tls)),
        CaService::new(ca.clone(), controller.clone(), caller_auth),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(admin::serve(admin_listener, controller.clone()));
    tokio::spawn(watch::run(controller.clone(), baseline));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = plain_task.await;
    let _ = tls_task.await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
