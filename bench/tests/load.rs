//! `bench load` end to end: the real binary against real servers on loopback,
//! checking counts, status codes, sizes and the fortio JSON it writes. Nothing
//! here asserts on timing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

/// A std::net HTTP/1.1 server: answers `/status/NNN` with that code, anything
/// else with 200 and a 5-byte body; counts requests and connections; honours
/// `Connection: close`.
struct TinyServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

fn tiny_server() -> TinyServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let (r, c) = (requests.clone(), connections.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            c.fetch_add(1, Ordering::Relaxed);
            let r = r.clone();
            std::thread::spawn(move || {
                let mut pending = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if pending.len() < end + 4 + length {
                            break;
                        }
                        pending.drain(..end + 4 + length);
                        r.fetch_add(1, Ordering::Relaxed);
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let status = path
                            .strip_prefix("/status/")
                            .and_then(|s| s.parse::<u16>().ok())
                            .unwrap_or(200);
                        let close = head.to_ascii_lowercase().contains("connection: close");
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: 5\r\n{}\r\nhello",
                            if close { "Connection: close\r\n" } else { "" }
                        );
                        if conn.write_all(resp.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    TinyServer {
        addr,
        requests,
        connections,
    }
}

fn run_load(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!(
        "bench-load-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = Command::new(BENCH)
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--no-progress")
        .output()
        .unwrap();
    let v = std::fs::read_to_string(&json)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    (out, v)
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn exact_count_keep_alive_with_fortio_json() {
    let s = tiny_server();
    let url = format!("http://{}/hello", s.addr);
    let (out, v) = run_load(&["-n", "500", "-c", "8", "-t", "2", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.requests.load(Ordering::Relaxed), 500);
    assert_eq!(
        s.connections.load(Ordering::Relaxed),
        8,
        "keep-alive reuses the 8 connections"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("200: 500"), "{stdout}");
    assert!(stdout.contains("p99.9"), "{stdout}");

    for field in [
        "RunType",
        "RequestedQPS",
        "ActualQPS",
        "NumThreads",
        "ActualDuration",
        "DurationHistogram",
        "RetCodes",
        "Sizes",
        "HeaderSizes",
        "URL",
    ] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    assert_eq!(v["RunType"], "HTTP");
    assert_eq!(v["RequestedQPS"], "max");
    assert_eq!(v["RequestedDuration"], "exactly 500 calls");
    assert_eq!(v["NumThreads"], 8);
    assert_eq!(v["RuntimeThreads"], 2);
    assert_eq!(v["SocketCount"], 8);
    assert_eq!(v["RetCodes"]["200"], 500);
    assert_eq!(v["URL"], url);
    let h = &v["DurationHistogram"];
    assert_eq!(h["Count"], 500);
    let (min, max, avg) = (
        h["Min"].as_f64().unwrap(),
        h["Max"].as_f64().unwrap(),
        h["Avg"].as_f64().unwrap(),
    );
    assert!(
        min > 0.0 && min <= avg && avg <= max && max < 5.0,
        "latencies are seconds: {h}"
    );
    let pcts: Vec<f64> = h["Percentiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Percentile"].as_f64().unwrap())
        .collect();
    assert_eq!(pcts, vec![50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99]);
    let values: Vec<f64> = h["Percentiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Value"].as_f64().unwrap())
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "percentiles are monotonic: {values:?}"
    );
    // Body is 5 bytes; header is the status line + Content-Length + blank line.
    let header = "HTTP/1.1 200 X\r\nContent-Length: 5\r\n\r\n".len() as f64;
    assert_eq!(v["HeaderSizes"]["Avg"].as_f64().unwrap(), header);
    assert_eq!(v["Sizes"]["Avg"].as_f64().unwrap(), header + 5.0);
}

#[test]
fn new_connection_per_request_post_with_headers() {
    let s = tiny_server();
    let url = format!("http://{}/", s.addr);
    let (out, v) = run_load(&[
        "-n",
        "40",
        "-c",
        "4",
        "--new-conn",
        "-X",
        "POST",
        "--body",
        "abc",
        "-H",
        "X-Test: 1",
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.requests.load(Ordering::Relaxed), 40);
    assert_eq!(
        s.connections.load(Ordering::Relaxed),
        40,
        "one connection per request"
    );
    assert_eq!(v["SocketCount"], 40);
    assert_eq!(v["RetCodes"]["200"], 40);
}

#[test]
fn status_codes_are_counted_and_open_loop_is_marked() {
    let s = tiny_server();
    let url = format!("http://{}/status/503", s.addr);
    let (out, v) = run_load(&["-n", "60", "-c", "3", "--qps", "600", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["RetCodes"]["503"], 60);
    assert_eq!(v["RequestedQPS"], "600");
    assert_eq!(v["CoordinatedOmissionCorrected"], true);
}

#[test]
fn dead_target_is_an_error_not_a_hang() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (out, v) = run_load(&["-n", "5", "-c", "1", &format!("http://127.0.0.1:{port}/")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no request succeeded"));
    assert_eq!(v["RetCodes"]["-1"], 5);
    assert_eq!(v["ErrorKinds"]["connect"], 5);
}

#[test]
fn bad_arguments_get_clear_errors() {
    let out = Command::new(BENCH)
        .args(["load", "ftp://127.0.0.1/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));
    let out = Command::new(BENCH)
        .args(["load", "-c", "1", "-t", "2", "http://127.0.0.1:1/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("every thread needs a connection"));
}

/// `bench echo` (the benchmarks' backend) as the target, and the raw TCP echo
/// mode against a std echo server.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn against_the_bench_echo_backend() {
    let mut child = Command::new(BENCH)
        .args([
            "echo",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--fixed-response",
            "32",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _guard = Killed(child);
    let addr = line
        .split_whitespace()
        .nth(3)
        .expect("echo prints its address");
    let (out, v) = run_load(&["-n", "300", "-c", "4", &format!("http://{addr}/")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["RetCodes"]["200"], 300);
    let body = v["Sizes"]["Avg"].as_f64().unwrap() - v["HeaderSizes"]["Avg"].as_f64().unwrap();
    assert_eq!(body, 32.0);
}

/// A std::net TCP echo server.
fn tcp_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn raw_tcp_echo_mode() {
    let addr = tcp_echo_server();
    let (out, v) = run_load(&[
        "-n",
        "200",
        "-c",
        "2",
        "--payload-size",
        "1000",
        &format!("tcp://{addr}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["RunType"], "TCP");
    assert_eq!(v["RetCodes"]["200"], 200);
    assert_eq!(v["BytesSent"], 200_000);
    assert_eq!(v["BytesReceived"], 200_000);
}

#[test]
fn raw_tcp_bulk_mode_gets_every_byte_back() {
    let addr = tcp_echo_server();
    let (out, v) = run_load(&[
        "--bulk",
        "-d",
        "300ms",
        "-c",
        "2",
        "--payload-size",
        "16384",
        &format!("tcp://{addr}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = v["BytesSent"].as_u64().unwrap();
    assert!(
        sent >= 2 * 16384,
        "each connection wrote at least one block: {sent}"
    );
    assert_eq!(sent % 16384, 0);
    assert_eq!(
        v["BytesReceived"].as_u64().unwrap(),
        sent,
        "the echo returned everything before closing"
    );
    assert_eq!(v["SocketCount"], 2);
    assert!(
        v["ErrorKinds"].as_object().unwrap().is_empty(),
        "{}",
        v["ErrorKinds"]
    );
}
