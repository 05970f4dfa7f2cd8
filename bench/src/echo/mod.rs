//! `bench echo`: the Gateway API conformance echo backend (echo-basic compatible) and the
//! backend of the performance benchmarks.
//!
//! Prints `echo listening on ADDR` as its first stdout line, then one
//! `Echoing back request made to <RequestURI> to client (<remote>)` line per echoed request.

mod duration;
mod grpc;
mod handler;
pub mod proto;
mod server;
mod wire;

pub use duration::parse_go_duration;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand::Rng;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Port to listen on (0 = pick a free one; the chosen address is printed).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Service name; the pod name becomes NAME-<rs-hash>-<suffix>.
    #[arg(long, default_value = "echo")]
    pub name: String,
    /// Namespace reported in echo bodies.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Exact pod name (overrides the generated one).
    #[arg(long)]
    pub pod: Option<String>,
    /// Worker threads (one monoio runtime and SO_REUSEPORT listener each).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Answer every request with a constant 200 body of this many bytes (no JSON, no log).
    #[arg(long)]
    pub fixed_response: Option<usize>,
    /// Do not print the per-request log line.
    #[arg(long)]
    pub quiet: bool,
    /// Serve the conformance gRPC echo service (h2c prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    pub grpc: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pod = args
        .pod
        .clone()
        .unwrap_or_else(|| generated_pod_name(&args.name));
    let first = server::bind_reuseport(SocketAddr::new(args.bind, args.port))?;
    let local = first.local_addr()?;
    if args.grpc {
        print_listening(local, &pod)?;
        let identity = Arc::new(grpc::GrpcIdentity {
            namespace: args.namespace.clone(),
            service: args.name.clone(),
            pod,
            log_requests: !args.quiet,
        });
        return grpc::serve(first, identity);
    }
    let shared = Arc::new(server::Shared {
        identity: handler::Identity {
            namespace: args.namespace.clone(),
            pod: pod.clone(),
            http_port: local.port().to_string(),
            fixed_response: args.fixed_response.map(|n| vec![b'x'; n]),
            log_requests: !args.quiet && args.fixed_response.is_none(),
        },
        retries: handler::RetryState::default(),
        fixed: handler::fixed_response_bytes(args.fixed_response.unwrap_or(0)),
    });
    let mut listeners = vec![first];
    for _ in 1..args.workers.max(1) {
        listeners.push(server::bind_reuseport(local)?);
    }
    print_listening(local, &pod)?;
    let mut threads = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("echo-worker-{index}"))
                .spawn(move || server::run_worker(listener, shared))?,
        );
    }
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("echo worker panicked"),
        }
    }
    Ok(())
}

/// The first stdout line, which process supervisors parse for the address.
fn print_listening(local: SocketAddr, pod: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "echo listening on {local} pod {pod}")?;
    stdout.flush()
}

/// `name-<rs-hash>-<suffix>` with Kubernetes' safe alphabet, stable for this process.
fn generated_pod_name(name: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let hash = pick(9);
    let suffix = pick(5);
    format!("{name}-{hash}-{suffix}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_name_shape() {
        let pod = super::generated_pod_name("infra-backend-v1");
        let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "infra-backend-v1");
        assert_eq!(parts[1].len(), 9);
        assert_eq!(parts[0].len(), 5);
    }
}
