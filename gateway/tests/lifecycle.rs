//! The gateway process: start-up, control endpoints, shutdown.

mod support;

use std::time::{Duration, Instant};

use support::{get, request, Gateway, TempConfig};

const GATEWAY_CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: ringmesh
spec:
  controllerName: ringmesh.io/gateway-controller
";

#[test]
fn ready_admin_and_metrics_endpoints() {
    let config = TempConfig::new();
    config.write("class.yaml", GATEWAY_CLASS);
    let gw = Gateway::with_config(config.path()).start();

    let ready = get(gw.ready, "/healthz/ready").unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(get(gw.admin, "/healthz/ready").unwrap().status, 200);

    let dump = get(gw.admin, "/config_dump").unwrap();
    assert_eq!(dump.status, 200);
    assert_eq!(dump.header("content-type"), Some("application/json"));
    let dump = dump.json();
    assert_eq!(dump["version"], 1);
    assert!(dump["ports"].is_object(), "{dump}");

    let status = get(gw.admin, "/status").unwrap();
    assert_eq!(status.status, 200);
    let status = status.json();
    assert!(status["config_errors"].is_array(), "{status}");
    assert!(status["gateways"].is_array(), "{status}");

    let metrics = get(gw.metrics, "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        metrics.body.contains("\nringmesh_workers 2\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("\nringmesh_snapshot_version 1\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("ringmesh_config_reloads_total 0\n"),
        "{}",
        metrics.body
    );

    assert_eq!(get(gw.admin, "/nope").unwrap().status, 404);
    assert_eq!(get(gw.metrics, "/config_dump").unwrap().status, 404);
    assert_eq!(get(gw.ready, "/metrics").unwrap().status, 404);
}

#[test]
fn sigterm_exits_zero_within_the_drain_deadline() {
    let config = TempConfig::new();
    config.write("class.yaml", GATEWAY_CLASS);
    let mut gw = Gateway::with_config(config.path())
        .arg("--drain-timeout")
        .arg("3s")
        .start();
    let started = Instant::now();
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    // Nothing to drain: exits well before the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn quitquitquit_shuts_down() {
    let config = TempConfig::new();
    config.write("class.yaml", GATEWAY_CLASS);
    let mut gw = Gateway::with_config(config.path()).start();
    let r = request(gw.admin, "POST", "/quitquitquit", "localhost").unwrap();
    assert_eq!(r.status, 200);
    let status = gw.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert!(gw.logs().contains("/quitquitquit"), "{}", gw.logs());
}

#[test]
fn missing_config_path_exits_non_zero_with_a_message() {
    let missing = std::env::temp_dir().join("ringmesh-gw-test-definitely-missing/config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&missing)
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--ready-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn taken_admin_port_is_a_start_error() {
    let config = TempConfig::new();
    config.write("class.yaml", GATEWAY_CLASS);
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(config.path())
        .args(["--admin-addr", &squatter.local_addr().unwrap().to_string()])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--ready-addr",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot bind the admin address"), "{stderr}");
}

#[test]
fn bad_flags_are_rejected() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", "/tmp", "--gateway", "no-namespace"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("NAMESPACE/NAME"));
}

#[test]
fn logging_filter_changes_at_run_time() {
    let config = TempConfig::new();
    config.write("class.yaml", GATEWAY_CLASS);
    let gw = Gateway::with_config(config.path()).start();
    let now = get(gw.admin, "/logging").unwrap();
    assert_eq!((now.status, now.body.trim()), (200, "info"));

    let set = request(gw.admin, "POST", "/logging?level=debug", "localhost").unwrap();
    assert_eq!((set.status, set.body.trim()), (200, "debug"));
    assert!(gw.logs().contains("log filter changed"), "{}", gw.logs());
    assert_eq!(get(gw.admin, "/logging").unwrap().body.trim(), "debug");

    let bad = request(gw.admin, "POST", "/logging?level=%%%", "localhost").unwrap();
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(get(gw.admin, "/logging").unwrap().body.trim(), "debug");
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let config = TempConfig::new();
    config.write("class.yaml", GATEWAY_CLASS);
    let port = support::free_port();
    config.write(
        "gateway.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: default
spec:
  gatewayClassName: ringmesh
  listeners:
  - name: http
    port: {port}
    protocol: HTTP
"
        ),
    );
    let mut gw = Gateway::with_config(config.path())
        .arg("--drain-timeout")
        .arg("60s")
        .start();
    // An open connection in the middle of a request head keeps the drain busy.
    let mut busy = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut busy, b"GET / HTTP/1.1\r\n").unwrap();
    support::wait_for(
        "the connection to be counted",
        Duration::from_secs(5),
        || {
            get(gw.metrics, "/metrics")
                .unwrap()
                .body
                .contains("ringmesh_downstream_connections_active 1\n")
        },
    );
    gw.terminate();
    support::wait_for("draining", Duration::from_secs(5), || {
        get(gw.ready, "/healthz/ready").is_ok_and(|r| r.status == 503)
    });
    let started = Instant::now();
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(5));
    assert!(
        !status.success(),
        "a forced exit is not a clean one: {status}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
