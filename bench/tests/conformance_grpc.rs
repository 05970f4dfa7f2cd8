//! gRPC through the gateway, end to end with real processes and sockets:
//! - `bench echo --grpc` (the conformance gRPC echo backend) called by a tonic client:
//!   Echo/EchoTwo answer with the pod identity and the metadata received, anything else
//!   is UNIMPLEMENTED;
//! - `bench conformance` on a vector folder written here (no ../shared needed): a
//!   GRPCRoute with exact and regular-expression method matches, header modifiers both
//!   ways, an unmatched method and weighted backends (3:1:0), through the real `gateway`
//!   over h2c (the first route also
//!   has a mirror, which must not disturb the call; that the mirror backend receives a
//!   copy is not asserted: the engine mirrors over HTTP/1.1 only, and the gRPC echo
//!   speaks h2c);
//! - the shared conformance vectors' gRPC tests all pass (skipped when absent).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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

/// `target/<profile>/gateway` next to the bench binary, built on demand: cargo only builds
/// binaries of the package under test.
fn gateway_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let dir = bench.parent().expect("bench binary has a folder");
    let gateway = dir.join("gateway");
    if !gateway.exists() {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "ringmesh-gateway"]);
        if profile == "release" {
            command.arg("--release");
        } else if profile != "debug" {
            command.args(["--profile", profile]);
        }
        let status = command
            .status()
            .expect("run cargo build -p ringmesh-gateway");
        assert!(status.success(), "cargo build -p ringmesh-gateway failed");
    }
    gateway
}

fn run_conformance(dir: &Path, extra: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("conformance")
        .arg(dir)
        .arg("--gateway-bin")
        .arg(gateway_binary())
        .args(["--min-pass-rate", "1.0"])
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run bench conformance");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    (output.status.success(), stdout)
}

const ENVIRONMENT: &str = r#"
namespaces:
  grpc-test: {labels: {purpose: grpc}}
gateways:
  grpc-test/gw:
    listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}]
services:
  grpc-test/grpc-v1: {ports: [{port: 8080}], protocol: grpc-h2c}
  grpc-test/grpc-v2: {ports: [{port: 8080}], protocol: grpc-h2c}
  grpc-test/grpc-mirror: {ports: [{port: 8080}], protocol: grpc-h2c}
"#;

const FEATURES: &str = r#"
schema_version: 1
test: GRPCRouteFeatures
features: [Gateway, GRPCRoute]
target:
  gateway: grpc-test/gw
  listener: {port: 80, protocol: HTTP}
  scheme: h2c-grpc
manifests:
- apiVersion: gateway.networking.k8s.io/v1
  kind: GRPCRoute
  metadata: {name: features, namespace: grpc-test}
  spec:
    parentRefs: [{name: gw}]
    rules:
    - matches:
      - method: {service: gateway_api_conformance.echo_basic.grpcecho.GrpcEcho, method: EchoTwo}
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{name: x-set, value: set-by-gateway}]
          add: [{name: x-added, value: added}]
          remove: [x-drop]
      - type: ResponseHeaderModifier
        responseHeaderModifier: {add: [{name: x-resp, value: from-gateway}]}
      - type: RequestMirror
        requestMirror: {backendRef: {name: grpc-mirror, port: 8080}}
      backendRefs: [{name: grpc-v2, port: 8080}]
    - matches:
      - method: {type: RegularExpression, service: '.*\.GrpcEcho', method: Echo}
      backendRefs: [{name: grpc-v1, port: 8080}]
cases:
- id: 0
  request:
    grpc_method: /gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoTwo
    metadata: {X-Set: from-client, X-Drop: please}
  expect:
    grpc_status: OK
    backend: grpc-v2
    backend_namespace: grpc-test
    upstream:
      headers: {x-set: set-by-gateway, x-added: added}
      absent_headers: [x-drop]
    response_headers: {x-resp: from-gateway}
- id: 1
  request:
    grpc_method: {service: gateway_api_conformance.echo_basic.grpcecho.GrpcEcho, method: Echo}
  expect:
    grpc_status: OK
    backend: grpc-v1
    backend_namespace: grpc-test
- id: 2
  request:
    grpc_method: /gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoThree
  expect:
    grpc_status: UNIMPLEMENTED
"#;

const WEIGHT: &str = r#"
schema_version: 1
test: GRPCRouteWeightLocal
features: [Gateway, GRPCRoute]
target:
  gateway: grpc-test/gw
  listener: {port: 80, protocol: HTTP}
  scheme: h2c-grpc
manifests:
- apiVersion: gateway.networking.k8s.io/v1
  kind: GRPCRoute
  metadata: {name: weighted, namespace: grpc-test}
  spec:
    parentRefs: [{name: gw}]
    rules:
    - backendRefs:
      - {name: grpc-v1, port: 8080, weight: 3}
      - {name: grpc-v2, port: 8080, weight: 1}
      - {name: grpc-mirror, port: 8080, weight: 0}
cases:
- id: 0
  request:
    grpc_method: /gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo
  expect:
    grpc_status: OK
    backend_namespace: grpc-test
- id: 1
  kind: route_status
  route: grpc-test/weighted
  parent: grpc-test/gw
  expect:
    conditions:
    - {type: Accepted, status: "True", reason: Accepted}
    - {type: ResolvedRefs, status: "True", reason: ResolvedRefs}
- id: 2
  kind: distribution
  request:
    grpc_method: /gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo
  samples: 400
  concurrency: 8
  tolerance_abs: 0.06
  max_attempts: 10
  expect:
    backend_namespace: grpc-test
    backend_fractions: {grpc-v1: 0.75, grpc-v2: 0.25, grpc-mirror: 0.0}
    backends_receiving_traffic: 2
"#;

#[test]
fn grpcroute_features_through_the_gateway() {
    let dir = std::env::temp_dir().join(format!("ringmesh-grpc-vectors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("_environment.yaml"), ENVIRONMENT).unwrap();
    std::fs::write(dir.join("grpcroute-features.yaml"), FEATURES).unwrap();
    std::fs::write(dir.join("grpcroute-weight.yaml"), WEIGHT).unwrap();
    // A wrong expectation must fail (the checks can fail): claim v1 serves EchoTwo.
    let wrong = FEATURES.replacen("backend: grpc-v2", "backend: grpc-v1", 1);
    let wrong_dir = dir.join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    std::fs::write(wrong_dir.join("_environment.yaml"), ENVIRONMENT).unwrap();
    std::fs::write(wrong_dir.join("grpcroute-features.yaml"), wrong).unwrap();

    let (ok, stdout) = run_conformance(&dir, &[]);
    let (wrong_ok, wrong_stdout) = run_conformance(&wrong_dir, &["--case-timeout", "1s"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("PASS GRPCRouteFeatures 3/3"), "{stdout}");
    assert!(stdout.contains("PASS GRPCRouteWeightLocal 3/3"), "{stdout}");
    assert!(
        stdout.contains("6 passed, 0 failed (0 skipped)"),
        "{stdout}"
    );
    assert!(!wrong_ok, "{wrong_stdout}");
    assert!(
        wrong_stdout.contains("expected backend grpc-v1, got pod \"grpc-v2-"),
        "{wrong_stdout}"
    );
}

#[test]
fn shared_grpc_vectors_pass() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/gateway-api"
    ));
    if !dir.join("_environment.yaml").exists() {
        println!(
            "skipping: conformance vectors not found at {}",
            dir.display()
        );
        return;
    }
    let (ok, stdout) = run_conformance(&dir, &["--only", "GRPC"]);
    assert!(ok, "{stdout}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("");
    assert!(summary.ends_with(" 0 failed (0 skipped)"), "{stdout}");
    assert!(!summary.starts_with("0 passed"), "{stdout}");
}
