//! `bench reftunnel`: the reference HBONE tunnel the ztunnel benchmark compares
//! against, built on the stack Istio's ztunnel uses (tokio + tokio-rustls + h2)
//! with the same settings as ringmesh (stream window 4 MiB, connection window
//! 16 MiB, 256 KiB frames, 1 MiB send buffer, TLS 1.3 mTLS with SPIFFE
//! identities, ALPN h2). One current-thread runtime per process, like one
//! ztunnel worker. Also the plain-TCP traffic tools of the benchmark (`sink`,
//! `blast`, `connrate`), which run inside the pod namespaces.

mod certs;
mod client;
mod pipe;
mod server;
pub mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The h2 settings both ends use (the same as mesh-hbone's defaults).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
pub const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Read size of the TCP side of a tunnel (one full frame).
pub const READ_BUF: usize = 256 * 1024;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(clap::Subcommand, Debug)]
pub enum Mode {
    /// Accepts plain TCP and carries each connection as one CONNECT stream
    /// to `--target` over a single pooled mTLS HTTP/2 connection to `--peer`.
    Client {
        #[arg(long)]
        listen: SocketAddr,
        /// The tunnel server (HBONE port).
        #[arg(long)]
        peer: SocketAddr,
        /// What the server connects to (the CONNECT authority).
        #[arg(long)]
        target: SocketAddr,
        #[command(flatten)]
        tls: TlsArgs,
        /// Identity the server must present, `spiffe://TD/ns/NS/sa/SA`.
        #[arg(long)]
        peer_identity: String,
    },
    /// Terminates mTLS HTTP/2, connects each CONNECT stream to its authority.
    Server {
        #[arg(long)]
        listen: SocketAddr,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Reads every connection to EOF, then answers with the byte count.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One connection: sends `--bytes`, half-closes, waits for the count.
    Blast {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    /// New connection per small request, for `--duration`, `--concurrency` at once.
    Connrate {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, value_parser = crate::load::units::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        request_size: usize,
    },
}

#[derive(clap::Args, Debug)]
pub struct TlsArgs {
    /// `DIR/root-cert.pem` and `DIR/ca-key.pem` (the files ztunnel's --ca-dir uses).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// This process's identity: `spiffe://cluster.local/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    #[arg(long)]
    pub identity: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.mode {
        Mode::Client {
            listen,
            peer,
            target,
            tls,
            peer_identity,
        } => {
            let config = certs::client_config(&tls, &peer_identity)?;
            runtime()?.block_on(client::run(listen, peer, target, config))
        }
        Mode::Server { listen, tls } => {
            let config = certs::server_config(&tls)?;
            runtime()?.block_on(server::run(listen, config))
        }
        Mode::Sink { listen } => traffic::sink(listen),
        Mode::Blast { connect, bytes } => traffic::blast(connect, bytes),
        Mode::Connrate {
            connect,
            duration,
            concurrency,
            request_size,
        } => traffic::connrate(connect, duration, concurrency, request_size),
    }
}

/// One thread, like one ztunnel worker (the benchmark pins the process to one CPU).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
