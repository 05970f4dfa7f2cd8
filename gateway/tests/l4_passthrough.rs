//! TLS passthrough against the real binary: two TLS backends with their own
//! certificates behind one `protocol: TLS` listener, routed by SNI without
//! decrypting (openssl s_client when installed, and a rustls client); unknown
//! SNI refused; a ClientHello split over several TCP segments; garbage and a
//! stalled ClientHello rejected and counted; the metrics.

mod l4_common;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use l4_common::*;
use support::{free_port, get, wait_for, Gateway, TempConfig};

struct Setup {
    gw: Gateway,
    port: u16,
    a: TestCert,
    b: TestCert,
    _config: TempConfig,
}

fn start(extra: &[&str]) -> Setup {
    let a = cert("a.example.com");
    let b = cert("b.example.com");
    let a_port = tls_backend("backend-a", &a);
    let b_port = tls_backend("backend-b", &b);
    let port = free_port();
    let mut y = GATEWAY_CLASS.to_string();
    y += &gateway(&[format!(
        "{{name: tls, port: {port}, protocol: TLS, tls: {{mode: Passthrough}}}}"
    )]);
    y += &service("a", a_port);
    y += &service("b", b_port);
    for (route, host, svc) in [("ra", "a.example.com", "a"), ("rb", "b.example.com", "b")] {
        y += &format!(
            "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: {route}, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{host}]\n  rules: [{{backendRefs: [{{name: {svc}, port: 8000}}]}}]\n"
        );
    }
    let config = TempConfig::new();
    config.write("gw.yaml", &y);
    let mut builder = Gateway::with_config(config.path());
    for arg in extra {
        builder = builder.arg(arg);
    }
    Setup {
        gw: builder.start(),
        port,
        a,
        b,
        _config: config,
    }
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The first certificate `openssl s_client` prints, whitespace-normalised.
fn s_client_leaf(port: u16, servername: &str) -> Option<String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            servername,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[begin..].find("-----END CERTIFICATE-----")? + begin;
    Some(normalise(&text[begin..end]))
}

fn normalise(pem: &str) -> String {
    let end = pem.find("-----END").unwrap_or(pem.len());
    pem[..end].split_whitespace().collect()
}

#[test]
fn openssl_s_client_reaches_each_backends_own_certificate() {
    if !openssl_available() {
        eprintln!("skipped: openssl is not installed (scripts/test.sh installs it)");
        return;
    }
    let s = start(&[]);
    assert_eq!(
        s_client_leaf(s.port, "a.example.com").as_deref(),
        Some(normalise(&s.a.pem).as_str())
    );
    assert_eq!(
        s_client_leaf(s.port, "b.example.com").as_deref(),
        Some(normalise(&s.b.pem).as_str())
    );
    // No route for this name: the connection is closed without a certificate.
    assert_eq!(s_client_leaf(s.port, "c.example.com"), None);
}

#[test]
fn rustls_clients_are_routed_by_sni_and_talk_to_the_backend() {
    let s = start(&[]);
    for (sni, cert, name) in [
        ("a.example.com", &s.a, "backend-a"),
        ("b.example.com", &s.b, "backend-b"),
        ("A.Example.COM", &s.a, "backend-a"),
    ] {
        // Both certificates are trusted: only the name check tells them apart.
        let mut tls = tls_connect(s.port, sni, &[&s.a, &s.b]).unwrap();
        assert_eq!(tls.conn.peer_certificates().unwrap()[0], cert.der, "{sni}");
        assert_eq!(read_line(&mut tls).unwrap(), name);
        tls.write_all(b"over the tunnel\n").unwrap();
        tls.flush().unwrap();
        assert_eq!(read_line(&mut tls).unwrap(), "over the tunnel");
    }
    let unknown = tls_connect(s.port, "c.example.com", &[&s.a, &s.b]);
    assert!(unknown.is_err(), "unknown SNI must be refused");

    let metrics = || get(s.gw.metrics, "/metrics").unwrap().body;
    wait_for(
        "closed passthrough connections counted",
        Duration::from_secs(5),
        || {
            metric(
                &metrics(),
                "istio_tcp_connections_closed_total{",
                &[
                    "request_protocol=\"tls\"",
                    "destination_service_name=\"a\"",
                    "response_flags=\"\"",
                ],
            ) == Some(2)
        },
    );
    let text = metrics();
    let opened_b = metric(
        &text,
        "istio_tcp_connections_opened_total{",
        &[
            "request_protocol=\"tls\"",
            "destination_service=\"b.default.svc.cluster.local\"",
        ],
    );
    assert_eq!(opened_b, Some(1), "{text}");
    let refused = metric(
        &text,
        "istio_tcp_connections_opened_total{",
        &["request_protocol=\"tls\"", "response_flags=\"NR\""],
    );
    assert_eq!(refused, Some(1), "{text}");
    let sent_a = metric(
        &text,
        "istio_tcp_sent_bytes_total{",
        &["request_protocol=\"tls\"", "destination_service_name=\"a\""],
    )
    .unwrap();
    assert!(
        sent_a > 2 * 16,
        "the ClientHellos and data were counted: {text}"
    );
}

#[test]
fn a_client_hello_split_over_several_segments_is_reassembled() {
    let s = start(&[]);
    let mut conn = client_connection("b.example.com", &[&s.b]);
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert!(hello.len() > 100, "a real ClientHello");
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], s.port))).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // The record header alone, then the body in two parts, with pauses so that
    // each goes out as its own segment.
    let cuts = [0, 3, 5, hello.len() / 2, hello.len()];
    for w in cuts.windows(2) {
        tls.sock.write_all(&hello[w[0]..w[1]]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    assert_eq!(tls.conn.peer_certificates().unwrap()[0], s.b.der);
    assert_eq!(read_line(&mut tls).unwrap(), "backend-b");
}

#[test]
fn garbage_and_stalled_client_hellos_are_rejected_and_counted() {
    let s = start(&["--request-header-timeout", "1s"]);
    let mut good = tls_connect(s.port, "a.example.com", &[&s.a]).unwrap();
    assert_eq!(read_line(&mut good).unwrap(), "backend-a");

    // A complete handshake record announcing a ClientHello whose body is nonsense.
    let mut bad_hello = vec![0x16, 0x03, 0x01, 0x00, 0x30, 0x01, 0x00, 0x00, 0x2c];
    bad_hello.resize(5 + 0x30, 0xff);
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"[..],
        &bad_hello[..],
    ] {
        let mut raw = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], s.port))).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(garbage).unwrap();
        let mut answer = Vec::new();
        let read = raw.read_to_end(&mut answer);
        assert!(read.is_ok(), "closed, not left hanging: {read:?}");
        // A TLS alert record (content type 21), then the close.
        assert_eq!(answer.first(), Some(&21u8), "for {garbage:?}: {answer:?}");
    }

    // Half a record header, then nothing: closed after the ClientHello timeout.
    let mut stalled = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], s.port))).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    stalled.write_all(&[0x16, 0x03]).unwrap();
    let mut answer = Vec::new();
    let read = stalled.read_to_end(&mut answer);
    assert!(read.is_ok() && answer.is_empty(), "{read:?} {answer:?}");

    // The established connection is unaffected.
    good.write_all(b"still here\n").unwrap();
    good.flush().unwrap();
    assert_eq!(read_line(&mut good).unwrap(), "still here");

    let text = get(s.gw.metrics, "/metrics").unwrap().body;
    let rejected = |reason: &str| {
        metric(
            &text,
            "ringmesh_tls_passthrough_rejected_total{",
            &[&format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(rejected("invalid"), Some(2), "{text}");
    assert_eq!(rejected("timeout"), Some(1), "{text}");
}
