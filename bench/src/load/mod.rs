//! `bench load URL`: a fortio-class HTTP/1.1, HTTP/2 (h2, h2c), HTTPS and raw
//! TCP load generator on monoio (one io_uring runtime per thread), with
//! hdrhistogram latencies.
//!
//! Closed loop (default): every connection sends its next request as soon as
//! the previous response is complete (max rate, like wrk). Open loop
//! (`--qps N`): requests follow a fixed schedule and latency counts from the
//! intended send time (coordinated-omission corrected, like wrk2/fortio).

mod conn;
pub mod fortio;
mod http2;
mod pacing;
mod progress;
mod response;
pub mod stats;
mod summary;
mod target;
pub mod tls;
pub mod units;
mod worker;

use anyhow::{bail, Context};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Target: http[s]://host[:port]/path (HTTP/1.1; HTTP/2 with --h2/--h2c) or
    /// tcp://host:port (raw echo).
    pub url: String,
    /// Connections in total (spread over the threads).
    #[arg(short = 'c', long = "connections", default_value_t = 64)]
    pub connections: usize,
    /// Threads, each running its own monoio runtime.
    #[arg(short = 't', long = "threads", default_value_t = 1)]
    pub threads: usize,
    /// Run time (10s, 500ms, 2m). Ignored when -n is given.
    #[arg(short = 'd', long = "duration", default_value = "10s", value_parser = units::parse_duration)]
    pub duration: Duration,
    /// Send exactly this many requests instead of running for a duration.
    #[arg(short = 'n', long = "requests")]
    pub requests: Option<u64>,
    /// Open loop at this total rate (requests/s); 0 or absent = closed loop, max rate.
    #[arg(long = "qps", default_value_t = 0.0)]
    pub qps: f64,
    /// Open a new connection (and TLS session) for every request (sends
    /// Connection: close). HTTP/1.1 only.
    #[arg(long = "new-conn")]
    pub new_conn: bool,
    /// HTTP/2 over TLS, negotiated with ALPN h2 (https:// URLs).
    #[arg(long = "h2", conflicts_with = "h2c")]
    pub h2: bool,
    /// HTTP/2 over cleartext TCP with prior knowledge (http:// URLs).
    #[arg(long = "h2c")]
    pub h2c: bool,
    /// HTTP/2: concurrent streams per connection (h2load's -m).
    #[arg(short = 'm', long = "streams", default_value_t = 1)]
    pub streams: usize,
    /// https://: do not verify the server certificate (like curl -k).
    #[arg(short = 'k', long = "insecure", conflicts_with = "cacert")]
    pub insecure: bool,
    /// https://: verify the server certificate against the CA certificates in
    /// this PEM file.
    #[arg(long = "cacert")]
    pub cacert: Option<std::path::PathBuf>,
    /// https://: TLS server name (SNI and verification); default: the URL's host.
    #[arg(long = "sni")]
    pub sni: Option<String>,
    /// Request method.
    #[arg(short = 'X', long = "method", default_value = "GET")]
    pub method: String,
    /// Extra request header "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(long = "body", conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body read from a file.
    #[arg(long = "body-file")]
    pub body_file: Option<std::path::PathBuf>,
    /// Raw TCP echo mode: bytes sent (and expected back) per request.
    #[arg(long = "payload-size", default_value_t = 64)]
    pub payload_size: usize,
    /// Raw TCP bulk mode (tcp:// only): each connection writes --payload-size
    /// blocks back to back for the duration and counts what comes back.
    #[arg(long = "bulk")]
    pub bulk: bool,
    /// Per-request timeout; 0 disables it.
    #[arg(long = "timeout", default_value = "5s", value_parser = units::parse_duration)]
    pub timeout: Duration,
    /// Write fortio-compatible result JSON to this file.
    #[arg(long = "json")]
    pub json: Option<std::path::PathBuf>,
    /// Free-form labels stored in the JSON (fortio's Labels).
    #[arg(long = "labels", default_value = "")]
    pub labels: String,
    /// No live progress line even on a terminal.
    #[arg(long = "no-progress")]
    pub no_progress: bool,
    /// Do not print the summary (only write --json).
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
}

/// The merged outcome of a run.
pub struct Outcome {
    pub stats: stats::Stats,
    pub result: fortio::FortioResult,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let outcome = execute(&args)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&outcome.result)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if outcome.stats.responses() == 0 && outcome.stats.error_count() > 0 {
        bail!(
            "no request succeeded ({} errors)",
            outcome.stats.error_count()
        );
    }
    Ok(())
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("-c must be at least 1");
    }
    if args.threads == 0 {
        bail!("-t must be at least 1");
    }
    if args.threads > args.connections {
        bail!(
            "-t {} is more than -c {}: every thread needs a connection",
            args.threads,
            args.connections
        );
    }
    if !(args.qps.is_finite() && args.qps >= 0.0) {
        bail!("--qps must be a non-negative number");
    }
    if args.requests == Some(0) {
        bail!("-n must be at least 1");
    }
    if args.requests.is_none() && args.duration.is_zero() {
        bail!("-d must be more than 0");
    }
    if args.streams == 0 {
        bail!("-m must be at least 1");
    }
    let http2 = args.h2 || args.h2c;
    if args.streams > 1 && !http2 {
        bail!(
            "-m {} needs --h2 or --h2c (HTTP/1.1 has one request in flight per connection)",
            args.streams
        );
    }
    if http2 && args.new_conn {
        bail!("--new-conn is for HTTP/1.1; with HTTP/2 use -c for connections and -m for streams");
    }
    if http2 && args.bulk {
        bail!("--bulk is for tcp:// URLs");
    }
    Ok(())
}

/// Run the load described by `args` and print the summary (unless quiet).
pub fn execute(args: &Args) -> anyhow::Result<Outcome> {
    validate(args)?;
    let mut target = target::parse_target(&args.url)?;
    if target.protocol == target::Protocol::TcpEcho && (args.h2 || args.h2c) {
        bail!("--h2/--h2c need an http:// or https:// URL");
    }
    if args.h2 && !target.tls {
        bail!("--h2 is HTTP/2 over TLS (https://); use --h2c for cleartext http://");
    }
    if args.h2c && target.tls {
        bail!("--h2c is cleartext HTTP/2 (http://); use --h2 for https://");
    }
    if !target.tls && (args.cacert.is_some() || args.sni.is_some()) {
        bail!("--cacert and --sni are for https:// URLs");
    }
    if args.h2 || args.h2c {
        target.protocol = target::Protocol::Http2;
    }
    let tls = match target.tls {
        false => None,
        true => {
            let options = tls::TlsOptions {
                insecure: args.insecure,
                ca_file: args.cacert.clone(),
                server_name: args.sni.clone(),
            };
            let alpn = if args.h2 {
                tls::ALPN_H2
            } else {
                tls::ALPN_HTTP1
            };
            Some(Arc::new(tls::TlsClient::new(&target.host, &options, alpn)?))
        }
    };
    let mut http2_plan = None;
    if args.bulk {
        if target.protocol != target::Protocol::TcpEcho {
            bail!("--bulk needs a tcp:// URL");
        }
        if args.requests.is_some() || args.qps > 0.0 {
            bail!("--bulk runs for a duration (-d); -n and --qps do not apply");
        }
        target.protocol = target::Protocol::TcpBulk;
    }
    let request = match target.protocol {
        target::Protocol::Http1 | target::Protocol::Http2 => {
            let body = match (&args.body, &args.body_file) {
                (Some(b), _) => b.as_bytes().to_vec(),
                (None, Some(p)) => {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
                }
                (None, None) => Vec::new(),
            };
            let headers = args
                .headers
                .iter()
                .map(|h| target::parse_header(h))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let spec = target::RequestSpec {
                method: args.method.to_ascii_uppercase(),
                headers,
                body,
                close: args.new_conn,
            };
            if target.protocol == target::Protocol::Http2 {
                http2_plan = Some(Arc::new(http2::Http2Plan::new(
                    &target,
                    &spec,
                    args.streams,
                )?));
            }
            target::build_request(&target, &spec)
        }
        target::Protocol::TcpEcho | target::Protocol::TcpBulk => {
            if args.payload_size == 0 {
                bail!("--payload-size must be at least 1");
            }
            (0..args.payload_size)
                .map(|i| b'a' + (i % 26) as u8)
                .collect()
        }
    };
    let request = Arc::new(request);
    let qps = (args.qps > 0.0).then_some(args.qps);
    let mode = match (qps, args.new_conn) {
        _ if args.bulk => format!("bulk, {}-byte writes", args.payload_size),
        (None, false) => "closed loop (max rate), keep-alive".to_string(),
        (None, true) => "closed loop (max rate), new connection per request".to_string(),
        (Some(q), nc) => format!(
            "open loop at {q} req/s (latency from intended send time){}",
            if nc {
                ", new connection per request"
            } else {
                ", keep-alive"
            }
        ),
    };
    let length = match args.requests {
        Some(n) => format!("{n} requests"),
        None => format!("{:?}", args.duration),
    };
    let http_version = match target.protocol {
        target::Protocol::Http1 => "HTTP/1.1",
        target::Protocol::Http2 => "HTTP/2",
        target::Protocol::TcpEcho | target::Protocol::TcpBulk => "",
    };
    let wire = match (target.protocol, target.tls) {
        (target::Protocol::Http2, true) => format!(
            "HTTP/2 over TLS (ALPN h2), {} stream(s)/connection",
            args.streams
        ),
        (target::Protocol::Http2, false) => format!(
            "HTTP/2 cleartext (h2c), {} stream(s)/connection",
            args.streams
        ),
        (target::Protocol::Http1, true) => "HTTP/1.1 over TLS".to_string(),
        (target::Protocol::Http1, false) => "HTTP/1.1".to_string(),
        _ => "TCP".to_string(),
    };
    let header = format!(
        "bench load {} [{wire}]: {mode}, {} connections, {} thread(s), {length}",
        target.url, args.connections, args.threads
    );
    if !args.quiet {
        eprintln!("{header}");
    }

    let counters: Vec<Arc<progress::ThreadCounters>> = (0..args.threads)
        .map(|_| Arc::new(progress::ThreadCounters::default()))
        .collect();
    let wall_start = SystemTime::now();
    // Give every thread time to build its runtime before the common start.
    let start = Instant::now() + Duration::from_millis(20);
    let deadline = args.requests.is_none().then(|| start + args.duration);
    let progress =
        (!args.no_progress && !args.quiet && std::io::stderr().is_terminal()).then(|| {
            progress::ProgressLine::start(counters.clone(), start, deadline.map(|_| args.duration))
        });

    let mut handles = Vec::new();
    for (t, thread_counters) in counters.iter().enumerate() {
        let plan = worker::ThreadPlan {
            protocol: target.protocol,
            addr: target.addr,
            request: request.clone(),
            head_request: args.method.eq_ignore_ascii_case("HEAD"),
            connection_indices: (0..args.connections)
                .filter(|c| c % args.threads == t)
                .collect(),
            total_connections: args.connections,
            qps,
            start,
            deadline,
            request_budget: args.requests.map(|n| share(n, args.threads, t)),
            new_connection_per_request: args.new_conn,
            timeout: (!args.timeout.is_zero()).then_some(args.timeout),
            counters: thread_counters.clone(),
            tls: tls.clone(),
            http2: http2_plan.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    let now = Instant::now();
                    if plan.start > now {
                        std::thread::sleep(plan.start - now);
                    }
                    worker::run_thread(plan)
                })
                .context("spawning a load thread")?,
        );
    }
    let mut stats = stats::Stats::default();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        stats.merge(&s);
    }
    let elapsed = start.elapsed();
    drop(progress);

    let info = fortio::RunInfo {
        url: &target.url,
        run_type: target.protocol.run_type(),
        labels: &args.labels,
        start: wall_start,
        requested_qps: qps,
        requested_duration: args.requests.is_none().then_some(args.duration),
        exactly: args.requests,
        connections: args.connections,
        threads: args.threads,
        actual_duration: elapsed,
        http_version,
        tls: target.tls,
        streams: if target.protocol == target::Protocol::Http2 {
            args.streams
        } else {
            1
        },
    };
    let result = fortio::build(&info, &stats);
    if !args.quiet {
        print!("{}", summary::render(&header, &stats, elapsed));
    }
    Ok(Outcome { stats, result })
}

/// Thread `t`'s share of `n` requests over `threads` threads.
fn share(n: u64, threads: usize, t: usize) -> u64 {
    let threads = threads as u64;
    n / threads + u64::from((t as u64) < n % threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shares_add_up() {
        for (n, t) in [(10, 3), (1, 4), (1000, 1), (7, 7)] {
            let total: u64 = (0..t).map(|i| share(n, t, i)).sum();
            assert_eq!(total, n);
        }
    }
}
