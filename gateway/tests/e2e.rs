//! Traffic through the real gateway process to real backends on loopback:
//! routing, reloads changing where traffic goes, and in-flight requests
//! surviving a reload and a SIGTERM drain.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{free_port, read_response, request, wait_for, Gateway, TempConfig};

/// A tiny HTTP/1.1 backend: answers every request with its own name as the
/// body; `?delay=MS` holds the response that long. Reports every request it
/// receives (path) on a channel.
struct Backend {
    port: u16,
    received: mpsc::Receiver<String>,
}

impl Backend {
    fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || serve_connection(stream, name, tx));
            }
        });
        Self { port, received }
    }

    /// Waits until the backend saw a request for `path`.
    fn wait_request(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(p) if p == path => return,
                Ok(_) => continue,
                Err(_) => panic!("backend never received {path}"),
            }
        }
    }
}

fn serve_connection(stream: TcpStream, name: &str, tx: mpsc::Sender<String>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((n, v)) = header.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let _ = tx.send(path.clone());
        if let Some(ms) = path.split("delay=").nth(1) {
            let ms: u64 = ms.split('&').next().unwrap().parse().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A Gateway on `listener_port`, an HTTPRoute for `example.com` to Service
/// `app`, whose EndpointSlice lists 127.0.0.1:`backend_port`.
fn config(listener_port: u16, backend_port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: ringmesh
spec:
  controllerName: ringmesh.io/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: default
spec:
  gatewayClassName: ringmesh
  listeners:
  - name: http
    port: {listener_port}
    protocol: HTTP
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: app
  namespace: default
spec:
  parentRefs:
  - name: edge
  hostnames: [example.com]
  rules:
  - backendRefs:
    - name: app
      port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: app
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: {backend_port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  namespace: default
  labels:
    kubernetes.io/service-name: app
addressType: IPv4
ports:
- name: http
  port: {backend_port}
endpoints:
- addresses: [\"127.0.0.1\"]
  conditions:
    ready: true
"
    )
}

fn through(listener: SocketAddr, path: &str) -> support::Response {
    request(listener, "GET", path, "example.com").unwrap()
}

/// Sends a request now and returns a thread that yields its response.
fn in_background(
    listener: SocketAddr,
    path: &str,
) -> std::thread::JoinHandle<std::io::Result<support::Response>> {
    let mut stream = TcpStream::connect(listener).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    std::thread::spawn(move || read_response(&mut stream))
}

#[test]
fn a_request_reaches_the_backend_and_an_edit_moves_traffic() {
    let (a, b) = (Backend::start("backend-a"), Backend::start("backend-b"));
    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = TempConfig::new();
    cfg.write("all.yaml", &config(port, a.port));
    let gw = Gateway::with_config(cfg.path()).start();

    let r = through(listener, "/hello");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "backend-a");
    a.wait_request("/hello");

    // Unknown host: listener isolation says no route.
    assert_eq!(
        request(listener, "GET", "/", "other.test").unwrap().status,
        404
    );

    let status = support::get(gw.admin, "/status").unwrap().json();
    assert!(
        status["routes"].as_array().is_some_and(|r| !r.is_empty()),
        "{status}"
    );

    let before = gw.version();
    cfg.write("all.yaml", &config(port, b.port));
    gw.wait_version_above(before);
    wait_for("traffic on backend-b", Duration::from_secs(5), || {
        through(listener, "/moved").body == "backend-b"
    });
}

#[test]
fn traffic_flows_on_the_epoll_driver_too() {
    let a = Backend::start("backend-a");
    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = TempConfig::new();
    cfg.write("all.yaml", &config(port, a.port));
    let gw = Gateway::with_config(cfg.path())
        .arg("--io-driver")
        .arg("epoll")
        .start();
    for i in 0..20 {
        let r = through(listener, &format!("/epoll/{i}"));
        assert_eq!((r.status, r.body.as_str()), (200, "backend-a"), "{r:?}");
    }
    let metrics = support::get(gw.metrics, "/metrics").unwrap().body;
    assert!(
        metrics.contains("ringmesh_workers_io_uring 0\n"),
        "{metrics}"
    );
}

#[test]
fn an_in_flight_request_finishes_across_a_reload() {
    let (a, b) = (Backend::start("backend-a"), Backend::start("backend-b"));
    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = TempConfig::new();
    cfg.write("all.yaml", &config(port, a.port));
    let gw = Gateway::with_config(cfg.path()).start();

    let slow = in_background(listener, "/slow?delay=1500");
    a.wait_request("/slow?delay=1500");
    let before = gw.version();
    cfg.write("all.yaml", &config(port, b.port));
    gw.wait_version_above(before);
    assert_eq!(through(listener, "/new").body, "backend-b");

    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body, "backend-a",
        "the in-flight request kept its snapshot"
    );
}

#[test]
fn an_in_flight_request_finishes_across_sigterm_then_the_process_exits() {
    let a = Backend::start("backend-a");
    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = TempConfig::new();
    cfg.write("all.yaml", &config(port, a.port));
    let mut gw = Gateway::with_config(cfg.path())
        .arg("--drain-timeout")
        .arg("10s")
        .start();

    let slow = in_background(listener, "/slow?delay=1500");
    a.wait_request("/slow?delay=1500");
    let terminated = Instant::now();
    gw.terminate();

    // Draining: the listener closes and readiness drops while the request runs.
    wait_for("listener closed", Duration::from_secs(3), || {
        TcpStream::connect(listener).is_err()
    });
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "backend-a");

    let status = gw.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    // Exited once the connection finished, not at the 10 s deadline.
    assert!(
        terminated.elapsed() < Duration::from_secs(6),
        "took {:?}",
        terminated.elapsed()
    );
}

#[test]
fn the_drain_deadline_bounds_shutdown() {
    let a = Backend::start("backend-a");
    let port = free_port();
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = TempConfig::new();
    cfg.write("all.yaml", &config(port, a.port));
    let mut gw = Gateway::with_config(cfg.path())
        .arg("--drain-timeout")
        .arg("500ms")
        .start();

    let stuck = in_background(listener, "/stuck?delay=30000");
    a.wait_request("/stuck?delay=30000");
    let terminated = Instant::now();
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert!(terminated.elapsed() >= Duration::from_millis(500));
    // The client sees the connection end instead of a response.
    assert!(stuck.join().unwrap().is_err());
}
