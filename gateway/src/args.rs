//! Command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh_registry::ObjectRef;

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "ringmesh ingress gateway: serves Gateway API listeners from a YAML file or folder",
    after_help = "Log level: RUST_LOG (default info), e.g. RUST_LOG=debug or RUST_LOG=mesh_http=debug,info"
)]
pub struct Args {
    /// YAML file or folder (read recursively) with Gateway API and Kubernetes resources.
    /// Changes are picked up within a second. Standalone mode; --xds replaces it.
    #[arg(long, value_name = "PATH", required_unless_present = "xds")]
    pub config: Option<PathBuf>,

    /// Serve Gateways of this GatewayClass.
    #[arg(long, default_value = "ringmesh", value_name = "NAME")]
    pub gateway_class: String,

    /// Serve only this Gateway (with --xds: the Gateway whose configuration to fetch).
    #[arg(long, value_name = "NS/NAME", value_parser = parse_object_ref)]
    pub gateway: Option<ObjectRef>,

    /// Admin server: /config_dump, /status, /quitquitquit, /healthz/ready, /logging.
    #[arg(long, default_value = "127.0.0.1:15000", value_name = "ADDR")]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics server: /metrics.
    #[arg(long, default_value = "0.0.0.0:15020", value_name = "ADDR")]
    pub metrics_addr: SocketAddr,

    /// Readiness server: /healthz/ready is 200 once every listener is bound.
    #[arg(long, default_value = "0.0.0.0:15021", value_name = "ADDR")]
    pub ready_addr: SocketAddr,

    /// Worker threads, one io_uring runtime each [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// On SIGTERM or /quitquitquit, how long in-flight connections may finish
    /// before the process exits (Istio's terminationDrainDuration default).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = mesh_runtime::parse_duration)]
    pub drain_timeout: Duration,

    /// Worker I/O driver: auto (io_uring, epoll if unavailable), io-uring, or epoll.
    #[arg(long, default_value = "auto", value_name = "DRIVER")]
    pub io_driver: mesh_runtime::IoDriver,

    /// A request's header block must arrive within this, else 408.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = mesh_runtime::parse_duration)]
    pub request_header_timeout: Duration,

    /// Connected mode: --xds, --xds-root-cert, --xds-server-name, --pod-ip.
    #[command(flatten)]
    pub connected: crate::connected::ConnectedArgs,

    /// Into the mesh: --ca-dir, --trust-domain, --service-account.
    #[command(flatten)]
    pub mesh: crate::mesh::MeshArgs,
}

impl Args {
    pub fn runtime_options(&self) -> mesh_runtime::RuntimeOptions {
        mesh_runtime::RuntimeOptions {
            workers: self
                .workers
                .map_or_else(mesh_runtime::default_workers, usize::from),
            admin_addr: self.admin_addr,
            metrics_addr: self.metrics_addr,
            ready_addr: self.ready_addr,
            drain_timeout: self.drain_timeout,
            io_driver: self.io_driver,
        }
    }

    pub fn http_options(&self) -> mesh_http::HttpOptions {
        mesh_http::HttpOptions {
            request_header_timeout: self.request_header_timeout,
            ..Default::default()
        }
    }
}

fn parse_object_ref(text: &str) -> Result<ObjectRef, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(ObjectRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_refs_parse() {
        let r = parse_object_ref("infra/edge").unwrap();
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("infra", "edge"));
        assert!(parse_object_ref("edge").is_err());
        assert!(parse_object_ref("/edge").is_err());
        assert!(parse_object_ref("a/b/c").is_err());
    }

    #[test]
    fn xds_replaces_config_and_needs_a_gateway() {
        let args = Args::parse_from(["gateway", "--xds", "127.0.0.1:15010", "--gateway", "a/b"]);
        assert_eq!(args.connected.xds.as_deref(), Some("127.0.0.1:15010"));
        assert!(args.config.is_none());
        assert!(Args::try_parse_from(["gateway", "--xds", "c:1"]).is_err());
        assert!(Args::try_parse_from([
            "gateway",
            "--xds",
            "c:1",
            "--gateway",
            "a/b",
            "--config",
            "x"
        ])
        .is_err());
        assert!(Args::try_parse_from(["gateway"]).is_err());
        let x = ["gateway", "--xds", "c:1", "--gateway", "a/b"];
        let with_node =
            Args::parse_from([&x[..], &["--node", "n1", "--node-token-file", "t"]].concat());
        assert_eq!(with_node.connected.node.as_deref(), Some("n1"));
        assert!(Args::try_parse_from([&x[..], &["--node-token-file", "t"]].concat()).is_err());
        assert!(Args::try_parse_from(["gateway", "--config", "x", "--node", "n1"]).is_err());
        assert!(
            Args::try_parse_from(["gateway", "--config", "x", "--xds-root-cert", "r.pem"]).is_err()
        );
    }

    #[test]
    fn defaults_match_istio_ports() {
        let args = Args::parse_from(["gateway", "--config", "x"]);
        assert_eq!(args.admin_addr.to_string(), "127.0.0.1:15000");
        assert_eq!(args.metrics_addr.port(), 15020);
        assert_eq!(args.ready_addr.port(), 15021);
        assert_eq!(args.gateway_class, "ringmesh");
        assert_eq!(args.drain_timeout, Duration::from_secs(5));
        assert_eq!(
            args.http_options().request_header_timeout,
            Duration::from_secs(30)
        );
        assert!(Args::try_parse_from(["gateway", "--config", "x", "--workers", "0"]).is_err());
        assert_eq!(args.io_driver, mesh_runtime::IoDriver::Auto);
        let epoll = Args::parse_from(["gateway", "--config", "x", "--io-driver", "epoll"]);
        assert_eq!(epoll.io_driver, mesh_runtime::IoDriver::Epoll);
    }
}
