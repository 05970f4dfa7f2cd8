//! Backends and config for the TLS passthrough and TCP route tests: plain
//! TCP backends that greet with their name and echo, and TLS backends that
//! terminate TLS with their own certificate (the gateway never does).
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// Starts a TCP backend on loopback: on every connection it writes
/// `name\n`, then echoes what it reads until EOF, then closes.
pub fn tcp_backend(name: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let greeting = format!("{name}\n");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let _ = conn.write_all(greeting.as_bytes());
                let mut buf = [0u8; 8192];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

pub struct TestCert {
    pub pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

pub fn cert(name: &str) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        pem: cert.pem(),
        der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Starts a TLS backend with `cert`: after the handshake it writes
/// `name\n`, then echoes until EOF.
pub fn tls_backend(name: &str, cert: &TestCert) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let greeting = format!("{name}\n");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let config = config.clone();
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
                let Ok(tls) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(tls, conn);
                if s.write_all(greeting.as_bytes())
                    .and_then(|_| s.flush())
                    .is_err()
                {
                    return;
                }
                let mut buf = [0u8; 8192];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).and_then(|_| s.flush()).is_err() {
                                break;
                            }
                        }
                    }
                }
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
    port
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn client_connection(sni: &str, trusted: &[&TestCert]) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(sni.to_string()).unwrap(),
    )
    .unwrap()
}

/// A verified TLS connection to `port` with this SNI (certificates from
/// `trusted` only), handshake completed.
pub fn tls_connect(port: u16, sni: &str, trusted: &[&TestCert]) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(client_connection(sni, trusted), tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Reads one `\n`-terminated line byte by byte (no read-ahead is lost).
pub fn read_line(r: &mut impl Read) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
}

/// A plain connection through a TCP listener: its greeting (the backend's name).
pub fn tcp_connect(port: u16) -> std::io::Result<(TcpStream, String)> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = read_line(&mut s)?;
    Ok((s, name))
}

/// Sends `line` and expects it echoed back.
pub fn echo(s: &mut TcpStream, line: &str) -> std::io::Result<()> {
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut back = String::new();
    reader.read_line(&mut back)?;
    if back.trim_end() != line {
        return Err(std::io::Error::other(format!(
            "echo: sent {line:?}, got {back:?}"
        )));
    }
    Ok(())
}

/// Writes (from another thread, so that an echo cannot deadlock on full
/// buffers), half-closes, and reads everything until the backend closes.
pub fn send_and_finish(s: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut writer = s.try_clone()?;
    let data = data.to_vec();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut rest = Vec::new();
    let read = s.read_to_end(&mut rest);
    sender.join().expect("sender thread")?;
    read?;
    Ok(rest)
}

pub const GATEWAY_CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ringmesh}
spec: {controllerName: ringmesh.io/gateway-controller}
";

/// A Gateway `gw` in `default` with these listener lines (YAML flow maps).
pub fn gateway(listeners: &[String]) -> String {
    let mut y = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: ringmesh\n  listeners:\n".to_string();
    for l in listeners {
        y += &format!("  - {l}\n");
    }
    y
}

/// Service `name` (port 8000) whose one endpoint is 127.0.0.1:`port`.
pub fn service(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: main, port: 8000}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: main, port: {port}}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n"
    )
}

/// The value of the first `/metrics` line starting with `prefix` and
/// containing every one of `parts`.
pub fn metric(text: &str, prefix: &str, parts: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
