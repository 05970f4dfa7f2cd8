//! `bench load` over HTTPS, HTTP/2 over TLS (ALPN h2) and h2c: the real binary
//! against a small tokio + tokio-rustls + h2 server built here, checking the
//! request and connection counts both sides see, status codes, the TLS
//! handshake histogram and the JSON shape. Nothing here asserts on timing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    /// Requests by protocol ("h1", "h2").
    requests: Mutex<HashMap<&'static str, u64>>,
    /// Most streams in flight at once on one HTTP/2 connection.
    peak_streams: AtomicU64,
}

impl Counters {
    fn requests(&self, proto: &'static str) -> u64 {
        *self.requests.lock().unwrap().get(proto).unwrap_or(&0)
    }
    fn count(&self, proto: &'static str) {
        *self.requests.lock().unwrap().entry(proto).or_insert(0) += 1;
    }
}

#[derive(Clone, Default)]
struct ServerOptions {
    /// TLS with ALPN h2 and http/1.1; None: cleartext.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Cleartext connections speak HTTP/2 (prior knowledge) instead of HTTP/1.1.
    h2c: bool,
    /// HTTP/2: send a graceful GOAWAY after this many streams on a connection.
    goaway_after: Option<u64>,
}

struct TestServer {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

/// Answers `/status/NNN` with that status, anything else 200; body "hello".
fn status_of(path: &str) -> u16 {
    path.strip_prefix("/status/")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

fn start_server(options: ServerOptions) -> TestServer {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (c, acceptor, options) = (c.clone(), acceptor.clone(), options.clone());
                tokio::spawn(async move {
                    c.connections.fetch_add(1, Ordering::Relaxed);
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                                serve_h2(tls, c, options.goaway_after).await;
                            } else {
                                serve_h1(tls, c).await;
                            }
                        }
                        None if options.h2c => serve_h2(tcp, c, options.goaway_after).await,
                        None => serve_h1(tcp, c).await,
                    }
                });
            }
        });
    });
    TestServer { addr, counters }
}

async fn serve_h1<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, c: Arc<Counters>) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            pending.drain(..end + 4);
            c.count("h1");
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let close = head.to_ascii_lowercase().contains("connection: close");
            let resp = format!(
                "HTTP/1.1 {} X\r\nContent-Length: 5\r\n{}\r\nhello",
                status_of(&path),
                if close { "Connection: close\r\n" } else { "" }
            );
            if io.write_all(resp.as_bytes()).await.is_err() || io.flush().await.is_err() {
                return;
            }
            if close {
                let _ = io.shutdown().await;
                return;
            }
        }
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

async fn serve_h2<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    c: Arc<Counters>,
    goaway_after: Option<u64>,
) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut streams = 0u64;
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        streams += 1;
        if goaway_after == Some(streams) {
            conn.graceful_shutdown();
        }
        c.count("h2");
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak_streams.fetch_max(now, Ordering::SeqCst);
        let (c, in_flight) = (c.clone(), in_flight.clone());
        tokio::spawn(async move {
            // Let the other streams of the connection arrive before answering.
            tokio::task::yield_now().await;
            let status = status_of(request.uri().path());
            let response = http::Response::builder().status(status).body(()).unwrap();
            if let Ok(mut body) = respond.send_response(response, false) {
                let _ = body.send_data(bytes::Bytes::from_static(b"hello"), true);
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(c);
        });
    }
}

/// A self-signed certificate for `localhost`, its PEM written to a temp file
/// (the CA file the client trusts), and the server config.
struct Cert {
    ca_file: std::path::PathBuf,
    config: Arc<rustls::ServerConfig>,
}

fn cert(tag: &str) -> Cert {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "ringmesh-load-tls-{tag}-{}-{}.pem",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Cert {
        ca_file,
        config: Arc::new(config),
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Run `bench load ARGS --json TMP` and return (output, parsed JSON or Null).
fn run_load(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let json_path = std::env::temp_dir().join(format!(
        "ringmesh-load-tls-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    let out = Command::new(BENCH)
        .arg("load")
        .args(args)
        .arg("--no-progress")
        .arg("--json")
        .arg(&json_path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let json = std::fs::read_to_string(&json_path)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(&json_path);
    (out, json)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn https_keep_alive_verifies_against_the_ca_file() {
    let cert = cert("ka");
    let server = start_server(ServerOptions {
        tls: Some(cert.config.clone()),
        ..Default::default()
    });
    let url = format!("https://{}/", server.addr);
    let ca = cert.ca_file.to_str().unwrap();
    let (out, json) = run_load(&[
        "-n",
        "500",
        "-c",
        "4",
        "--cacert",
        ca,
        "--sni",
        "localhost",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json["RetCodes"]["200"], 500, "{json}");
    assert!(json["RetCodes"].get("-1").is_none(), "{json}");
    assert_eq!(json["DurationHistogram"]["Count"], 500);
    assert_eq!(json["SocketCount"], 4);
    assert_eq!(json["TLS"], true);
    assert_eq!(json["HTTPVersion"], "HTTP/1.1");
    assert_eq!(json["TLSHandshakeHistogram"]["Count"], 4);
    let p50 = json["TLSHandshakeHistogram"]["Percentiles"][0]["Value"]
        .as_f64()
        .unwrap();
    assert!(p50 > 0.0, "{json}");
    assert_eq!(server.counters.requests("h1"), 500);
    assert_eq!(server.counters.connections.load(Ordering::Relaxed), 4);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("TLS:        4 handshakes"), "{summary}");
    let _ = std::fs::remove_file(&cert.ca_file);
}

#[test]
fn https_new_tls_connection_per_request() {
    let cert = cert("nc");
    let server = start_server(ServerOptions {
        tls: Some(cert.config.clone()),
        ..Default::default()
    });
    let url = format!("https://{}/status/201", server.addr);
    let (out, json) = run_load(&["-n", "60", "-c", "3", "-k", "--new-conn", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json["RetCodes"]["201"], 60, "{json}");
    assert_eq!(json["SocketCount"], 60);
    assert_eq!(json["TLSHandshakeHistogram"]["Count"], 60);
    assert_eq!(server.counters.requests("h1"), 60);
    assert_eq!(server.counters.connections.load(Ordering::Relaxed), 60);
    let _ = std::fs::remove_file(&cert.ca_file);
}

#[test]
fn https_with_the_wrong_ca_fails_every_request_as_tls() {
    let served = cert("served");
    let other = cert("other");
    let server = start_server(ServerOptions {
        tls: Some(served.config.clone()),
        ..Default::default()
    });
    let url = format!("https://{}/", server.addr);
    let ca = other.ca_file.to_str().unwrap();
    let (out, json) = run_load(&[
        "-n",
        "5",
        "-c",
        "1",
        "--cacert",
        ca,
        "--sni",
        "localhost",
        &url,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no request succeeded"),
        "{}",
        text(&out)
    );
    assert_eq!(json["ErrorKinds"]["tls"], 5, "{json}");
    assert_eq!(server.counters.requests("h1"), 0);
    let _ = std::fs::remove_file(&served.ca_file);
    let _ = std::fs::remove_file(&other.ca_file);
}

#[test]
fn h2_over_tls_uses_streams_per_connection() {
    let cert = cert("h2");
    let server = start_server(ServerOptions {
        tls: Some(cert.config.clone()),
        ..Default::default()
    });
    let url = format!("https://{}/", server.addr);
    let (out, json) = run_load(&["-n", "800", "-c", "2", "-m", "8", "--h2", "-k", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json["RetCodes"]["200"], 800, "{json}");
    assert_eq!(json["HTTPVersion"], "HTTP/2");
    assert_eq!(json["StreamsPerConnection"], 8);
    assert_eq!(json["SocketCount"], 2);
    assert_eq!(json["TLSHandshakeHistogram"]["Count"], 2);
    // Every request arrived as HTTP/2 (ALPN h2), none as HTTP/1.1.
    assert_eq!(server.counters.requests("h2"), 800);
    assert_eq!(server.counters.requests("h1"), 0);
    assert_eq!(server.counters.connections.load(Ordering::Relaxed), 2);
    let peak = server.counters.peak_streams.load(Ordering::SeqCst);
    assert!((2..=8).contains(&peak), "peak concurrent streams {peak}");
    let _ = std::fs::remove_file(&cert.ca_file);
}

#[test]
fn h2c_prior_knowledge_counts_status_codes() {
    let server = start_server(ServerOptions {
        h2c: true,
        ..Default::default()
    });
    let url = format!("http://{}/status/503", server.addr);
    let (out, json) = run_load(&["-n", "300", "-c", "1", "-m", "4", "--h2c", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json["RetCodes"]["503"], 300, "{json}");
    assert_eq!(json["TLS"], false);
    assert!(json.get("TLSHandshakeHistogram").is_none(), "{json}");
    assert_eq!(server.counters.requests("h2"), 300);
    assert!(server.counters.peak_streams.load(Ordering::SeqCst) <= 4);
}

#[test]
fn h2_graceful_goaway_reconnects_without_errors() {
    // The server closes every connection gracefully after 100 streams (as
    // nginx does after keepalive_requests): requests past its last stream are
    // retried on a new connection, not counted as errors.
    let server = start_server(ServerOptions {
        h2c: true,
        goaway_after: Some(100),
        ..Default::default()
    });
    let url = format!("http://{}/", server.addr);
    let (out, json) = run_load(&["-n", "450", "-c", "1", "-m", "4", "--h2c", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json["RetCodes"]["200"], 450, "{json}");
    assert!(json["RetCodes"].get("-1").is_none(), "{json}");
    let sockets = json["SocketCount"].as_u64().unwrap();
    assert!(
        sockets >= 5,
        "{sockets} connections for 450 requests at 100 per connection"
    );
    assert_eq!(server.counters.requests("h2"), 450);
}

#[test]
fn tls_and_h2_argument_errors_are_clear() {
    for (args, want) in [
        (vec!["https://127.0.0.1:1/"], "--cacert"),
        (vec!["--h2", "http://127.0.0.1:1/"], "--h2c"),
        (vec!["--h2c", "-k", "https://127.0.0.1:1/"], "--h2"),
        (vec!["-m", "4", "http://127.0.0.1:1/"], "needs --h2"),
        (
            vec!["--h2c", "--new-conn", "http://127.0.0.1:1/"],
            "--new-conn",
        ),
        (vec!["--sni", "x", "http://127.0.0.1:1/"], "https://"),
        (
            vec!["--h2c", "-H", "Connection: close", "http://127.0.0.1:1/"],
            "connection-specific",
        ),
    ] {
        let (out, _) = run_load(&args);
        assert!(!out.status.success(), "{args:?}");
        let t = text(&out);
        assert!(t.contains(want), "{args:?}: {t}");
    }
}
