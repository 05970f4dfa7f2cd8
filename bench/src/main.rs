//! `bench`: echo backend, conformance runner, load generator and side-by-side
//! benchmark scenarios.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod compare;
mod conformance;
mod echo;
mod load;
mod reftunnel;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "ringmesh load generator, echo backend and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo backend implementing the Gateway API conformance echo contract.
    Echo(echo::Args),
    /// Run Gateway API conformance vectors against the gateway.
    Conformance(conformance::Args),
    /// Load generator (closed or open loop), fortio-compatible JSON.
    Load(load::Args),
    /// Side-by-side benchmark scenario against nginx / HAProxy / direct.
    Compare(compare::Args),
    /// Controller scale: translation time, memory and xDS push cost at 1k/10k/50k Services.
    ControllerScale(compare::controller_scale::Args),
    /// Reference HBONE tunnel (tokio + tokio-rustls + h2) and TCP traffic tools.
    Reftunnel(reftunnel::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Echo(a) => echo::run(a),
        Command::Conformance(a) => conformance::run(a),
        Command::Load(a) => load::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Reftunnel(a) => reftunnel::run(a),
        Command::ControllerScale(a) => compare::controller_scale::run(a),
    }
}
