//! HTTPS listeners against the real binary: certificates by SNI (curl and a
//! rustls client), 421 on SNI/Host disagreement, certificate rotation by
//! editing the Secret, and garbage on the TLS port.
//!
//! The route answers with a redirect (no backend needed): its `Location`
//! shows that HTTP was served over the TLS connection with scheme https.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use support::{free_port, get, Gateway, TempConfig};

struct TestCert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn cert(names: &[&str]) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn secret(name: &str, c: &TestCert) -> String {
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&c.pem),
        indent(&c.key_pem)
    )
}

/// A Gateway with HTTPS listeners a.example.com and b.example.com on one port and a
/// redirect route on both.
fn gateway_config(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: ringmesh}}
spec: {{controllerName: ringmesh.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: ringmesh
  listeners:
  - {{name: a, port: {port}, protocol: HTTPS, hostname: a.example.com, tls: {{certificateRefs: [{{name: cert-a}}]}}}}
  - {{name: b, port: {port}, protocol: HTTPS, hostname: b.example.com, tls: {{certificateRefs: [{{name: cert-b}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: redirect, namespace: default}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - filters: [{{type: RequestRedirect, requestRedirect: {{hostname: moved.example.net}}}}]
"
    )
}

struct Setup {
    config: TempConfig,
    gw: Gateway,
    port: u16,
    a: TestCert,
    b: TestCert,
}

fn start() -> Setup {
    let port = free_port();
    let config = TempConfig::new();
    let (a, b) = (cert(&["a.example.com"]), cert(&["b.example.com"]));
    config.write("gateway.yaml", &gateway_config(port));
    config.write("cert-a.yaml", &secret("cert-a", &a));
    config.write("cert-b.yaml", &secret("cert-b", &b));
    let gw = Gateway::with_config(config.path()).start();
    Setup {
        config,
        gw,
        port,
        a,
        b,
    }
}

/// `curl -v` over HTTPS with SNI `host`; returns (status code, verbose output).
fn curl(port: u16, sni_host: &str, cacert: &std::path::Path, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--resolve")
        .arg(format!("{sni_host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(cacert)
        .args(extra)
        .arg(format!("https://{sni_host}:{port}/path"))
        .output()
        .expect("curl must be installed for this test");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A keep-alive TLS connection from a rustls client that trusts `trusted`.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    fn connect(port: u16, sni: &str, trusted: &[&TestCert]) -> std::io::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for c in trusted {
            roots.add(c.der.clone()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(sni.to_string()).unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsClient { tls })
    }

    fn peer_leaf(&self) -> CertificateDer<'static> {
        self.tls.conn.peer_certificates().unwrap()[0].clone()
    }

    /// One keep-alive GET: (status, head).
    fn get(&mut self, host: &str) -> std::io::Result<(u16, String)> {
        write!(
            self.tls,
            "GET /path HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
        )?;
        self.tls.flush()?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if self.tls.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.tls.read_exact(&mut body)?;
        Ok((status, head))
    }
}

#[test]
fn curl_gets_the_certificate_of_each_hostname() {
    let s = start();
    let ca_a = s.config.write("a.pem", &s.a.pem);
    let ca_b = s.config.write("b.pem", &s.b.pem);
    let (code, verbose) = curl(s.port, "a.example.com", &ca_a, &[]);
    assert_eq!(code, "302", "{verbose}\n{}", s.gw.logs());
    assert!(verbose.contains("CN=a.example.com"), "{verbose}");
    assert!(verbose.contains("ALPN: server accepted h2"), "{verbose}");
    assert!(
        verbose.contains("location: https://moved.example.net"),
        "{verbose}"
    );
    let (code, verbose) = curl(s.port, "b.example.com", &ca_b, &[]);
    assert_eq!(code, "302", "{verbose}");
    assert!(verbose.contains("CN=b.example.com"), "{verbose}");
    // a's certificate is not accepted for b: the server really chose by SNI.
    let (code, _) = curl(s.port, "b.example.com", &ca_a, &[]);
    assert_eq!(code, "000");
    // TLS 1.2 as well as 1.3.
    let (code, verbose) = curl(s.port, "a.example.com", &ca_a, &["--tls-max", "1.2"]);
    assert_eq!(code, "302", "{verbose}");
    assert!(verbose.contains("TLSv1.2"), "{verbose}");

    // The same through a rustls client, comparing the served leaf itself.
    let client = TlsClient::connect(s.port, "a.example.com", &[&s.a]).unwrap();
    assert_eq!(client.peer_leaf(), s.a.der);
    let client = TlsClient::connect(s.port, "b.example.com", &[&s.b]).unwrap();
    assert_eq!(client.peer_leaf(), s.b.der);
}

#[test]
fn sni_and_host_of_different_listeners_get_421() {
    let s = start();
    let ca_a = s.config.write("a.pem", &s.a.pem);
    let (code, verbose) = curl(
        s.port,
        "a.example.com",
        &ca_a,
        &["-H", "Host: b.example.com"],
    );
    assert_eq!(code, "421", "{verbose}");
    // Same listener: served (and on the same connection type, keep-alive).
    let mut client = TlsClient::connect(s.port, "a.example.com", &[&s.a]).unwrap();
    assert_eq!(client.get("a.example.com").unwrap().0, 302);
    assert_eq!(client.get("b.example.com").unwrap().0, 421);
    assert_eq!(client.get("a.example.com:443").unwrap().0, 302);
}

#[test]
fn rotating_the_secret_serves_the_new_certificate_to_new_connections() {
    let s = start();
    let mut old = TlsClient::connect(s.port, "a.example.com", &[&s.a]).unwrap();
    assert_eq!(old.get("a.example.com").unwrap().0, 302);
    assert_eq!(old.peer_leaf(), s.a.der);

    let rotated = cert(&["a.example.com"]);
    let before = s.gw.version();
    s.config.write("cert-a.yaml", &secret("cert-a", &rotated));
    s.gw.wait_version_above(before);

    let fresh = TlsClient::connect(s.port, "a.example.com", &[&s.a, &rotated]).unwrap();
    assert_eq!(
        fresh.peer_leaf(),
        rotated.der,
        "new connections get the new certificate"
    );
    // The connection opened before the rotation keeps working.
    let (status, head) = old.get("a.example.com").unwrap();
    assert_eq!(status, 302, "{head}");
    assert_eq!(old.peer_leaf(), s.a.der);
    // b was not touched.
    let b = TlsClient::connect(s.port, "b.example.com", &[&s.b]).unwrap();
    assert_eq!(b.peer_leaf(), s.b.der);
}

#[test]
fn garbage_on_the_tls_port_closes_only_that_connection() {
    let s = start();
    let mut good = TlsClient::connect(s.port, "a.example.com", &[&s.a]).unwrap();
    assert_eq!(good.get("a.example.com").unwrap().0, 302);

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
        // The gateway answers with a TLS alert record (content type 21) and closes.
        let read = raw.read_to_end(&mut answer);
        assert_eq!(
            answer.first(),
            Some(&21u8),
            "expected an alert for {garbage:?}, got {answer:?} ({read:?})"
        );
    }

    // The established connection and new ones are unaffected.
    assert_eq!(good.get("a.example.com").unwrap().0, 302);
    let mut fresh = TlsClient::connect(s.port, "b.example.com", &[&s.b]).unwrap();
    assert_eq!(fresh.get("b.example.com").unwrap().0, 302);

    let metrics = get(s.gw.metrics, "/metrics").unwrap().body;
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringmesh_tls_handshake_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no handshake failure counter in\n{metrics}"));
    assert_eq!(failures, 2, "{metrics}");
}

#[test]
fn a_listener_with_a_missing_secret_is_not_programmed() {
    let port = free_port();
    let config = TempConfig::new();
    config.write("gateway.yaml", &gateway_config(port));
    let b = cert(&["b.example.com"]);
    config.write("cert-b.yaml", &secret("cert-b", &b));
    let gw = Gateway::with_config(config.path()).start();
    let status = get(gw.admin, "/status").unwrap().json();
    let listeners = status["gateways"][0]["listeners"]
        .as_array()
        .unwrap()
        .clone();
    let a = listeners.iter().find(|l| l["name"] == "a").unwrap();
    let resolved = a["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .unwrap();
    assert_eq!(resolved["status"], "False", "{status}");
    assert_eq!(resolved["reason"], "InvalidCertificateRef", "{status}");
    // b still serves on the shared port.
    let client = TlsClient::connect(port, "b.example.com", &[&b]).unwrap();
    assert_eq!(client.peer_leaf(), b.der);
}
