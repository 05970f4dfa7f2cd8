//! `bench echo --grpc` (the conformance gRPC echo backend) called by a tonic client over
//! real sockets: Echo/EchoTwo answer with the pod identity and the metadata received,
//! anything else is UNIMPLEMENTED.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

mod proto {
    tonic::include_proto!("gateway_api_conformance.echo_basic.grpcecho");
}
use proto::{EchoRequest, EchoResponse};

const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

struct GrpcEcho {
    child: Child,
    port: u16,
    pod: String,
}

impl Drop for GrpcEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> GrpcEcho {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["echo", "--grpc", "--port", "0", "--bind", "127.0.0.1"])
        .args([
            "--name",
            "grpc-infra-backend-v1",
            "--namespace",
            "gateway-conformance-infra",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bench echo --grpc");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        // Keep draining so the echo never blocks on a full pipe.
        for _ in lines.map_while(Result::ok) {}
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("echo prints its address");
    // "echo listening on 127.0.0.1:PORT pod NAME"
    let words: Vec<&str> = first.split_whitespace().collect();
    let port = words[3].rsplit_once(':').unwrap().1.parse().unwrap();
    GrpcEcho {
        child,
        port,
        pod: words[5].to_string(),
    }
}

async fn call(
    port: u16,
    method: &str,
    metadata: &[(&str, &str)],
) -> Result<EchoResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("h2c connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(EchoRequest {});
    for (k, v) in metadata {
        request.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_str(k).unwrap(),
            v.parse().unwrap(),
        );
    }
    let path = http::uri::PathAndQuery::from_str(&format!("/{SERVICE}/{method}")).unwrap();
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
    grpc.unary(request, path, codec)
        .await
        .map(|r| r.into_inner())
}

#[test]
fn grpc_echo_reports_pod_method_and_metadata() {
    let echo = start();
    assert!(
        echo.pod.starts_with("grpc-infra-backend-v1-"),
        "{}",
        echo.pod
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for method in ["Echo", "EchoTwo"] {
            let reply = call(echo.port, method, &[("version", "two")])
                .await
                .unwrap_or_else(|s| panic!("{method}: {s:?}"));
            let a = reply.assertions.expect("assertions");
            assert_eq!(a.fully_qualified_method, format!("/{SERVICE}/{method}"));
            assert_eq!(a.authority, format!("127.0.0.1:{}", echo.port));
            let context = a.context.expect("context");
            assert_eq!(context.pod, echo.pod);
            assert_eq!(context.namespace, "gateway-conformance-infra");
            assert!(a
                .headers
                .iter()
                .any(|h| h.key == "version" && h.value == "two"));
            assert!(a
                .headers
                .iter()
                .any(|h| h.key == "content-type" && h.value == "application/grpc"));
        }
        let status = call(echo.port, "EchoThree", &[]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        let status = call(echo.port, "Nope", &[]).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    });
}
