//! HTTP/2 test helpers: an h2 client on tokio (h2c and TLS with ALPN), a
//! TLS-terminating gateway snapshot, an h2c backend that echoes with
//! trailers, and a raw-frame writer for hostile input.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::RecvStream;
use http::{HeaderMap, Request, Response, StatusCode};
use mesh_registry::tls::{certified_key_from_pem, PortTls, SniCertificates};
use mesh_registry::Snapshot;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An h2c (prior knowledge) client connection.
pub async fn h2c_client(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

pub fn cert(name: &str) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Makes the snapshot's port an HTTPS port with `cert` (ALPN h2, http/1.1).
pub fn with_tls(mut snapshot: Snapshot, port: u16, cert: &TestCert) -> Snapshot {
    let key = certified_key_from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    let mut certs = SniCertificates::default();
    certs.add(None, key);
    let tls = PortTls::new(certs, vec!["*".into()]).unwrap();
    let mut pc2 = Arc::try_unwrap(snapshot.ports.remove(&port).unwrap()).unwrap();
    pc2.tls = Some(Arc::new(tls));
    pc2.protocol = mesh_registry::ListenerProtocol::Https;
    snapshot.ports.insert(port, Arc::new(pc2));
    snapshot
}

/// A TLS client connection offering `alpn`; returns the h2 handle when h2
/// was negotiated (panics otherwise).
pub async fn tls_h2_client(
    addr: SocketAddr,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> SendRequest<Bytes> {
    let stream = tls_connect(addr, cert, alpn).await;
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN h2 negotiated"
    );
    let (send, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub async fn tls_connect(
    addr: SocketAddr,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("h2.example.com").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

pub struct Collected {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

impl Collected {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn collect(resp: Response<RecvStream>) -> Collected {
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    Collected {
        status: parts.status,
        headers: parts.headers,
        body: out,
        trailers,
    }
}

/// Sends a request with an optional body (streamed in `piece`-sized DATA
/// frames, honouring flow control) and collects the response.
pub async fn send(
    client: &SendRequest<Bytes>,
    req: Request<()>,
    body: Option<&[u8]>,
    piece: usize,
) -> Collected {
    let mut client = client.clone().ready().await.unwrap();
    let (resp, mut stream) = client.send_request(req, body.is_none()).unwrap();
    if let Some(body) = body {
        let body = Bytes::copy_from_slice(body);
        tokio::spawn(async move {
            let mut rest = body;
            while !rest.is_empty() {
                let n = piece.min(rest.len());
                stream.reserve_capacity(n);
                let cap = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(c)) => c,
                    _ => return,
                };
                let chunk = rest.split_to(cap.min(n));
                if stream.send_data(chunk, false).is_err() {
                    return;
                }
            }
            let _ = stream.send_data(Bytes::new(), true);
        });
    }
    collect(resp.await.unwrap()).await
}

pub fn h2get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

pub fn checksum(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    for b in data {
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
    }
    sum
}

// ---------- an h2c backend ----------

/// An h2c server on its own thread (tokio). Every stream: answers 200 with
/// `content-type: application/grpc`, echoes each DATA chunk as it arrives
/// (so a client can interleave), then trailers `grpc-status: 0` and
/// `x-echo-bytes: N`. Path `/fail` answers trailers-only grpc-status 5.
/// Response header `x-seen-te` reports the te field it received and
/// `x-seen-authority` the :authority.
pub fn h2c_backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        tokio::spawn(echo_stream(req, respond));
                    }
                });
            }
        })
    });
    addr
}

async fn echo_stream(req: Request<RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let (parts, mut body) = req.into_parts();
    let te = parts
        .headers
        .get("te")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if parts.uri.path() == "/fail" {
        let resp = Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "5")
            .header("grpc-message", "not found here")
            .body(())
            .unwrap();
        let _ = respond.send_response(resp, true);
        return;
    }
    let resp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-seen-te", te)
        .header("x-seen-authority", authority)
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    let mut total = 0usize;
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        total += chunk.len();
        let mut rest = chunk;
        while !rest.is_empty() {
            send.reserve_capacity(rest.len());
            let Some(Ok(cap)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else {
                return;
            };
            let piece = rest.split_to(cap.min(rest.len()));
            if send.send_data(piece, false).is_err() {
                return;
            }
        }
    }
    let request_trailer = body
        .trailers()
        .await
        .ok()
        .flatten()
        .and_then(|t| t.get("x-client-trailer").cloned());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("x-echo-bytes", total.to_string().parse().unwrap());
    if let Some(v) = request_trailer {
        trailers.insert("x-client-trailer-seen", v);
    }
    let _ = send.send_trailers(trailers);
}

// ---------- raw frames ----------

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = BytesMut::with_capacity(9 + payload.len());
    let len = payload.len();
    f.put_u8((len >> 16) as u8);
    f.put_u8((len >> 8) as u8);
    f.put_u8(len as u8);
    f.put_u8(kind);
    f.put_u8(flags);
    f.put_u32(stream);
    f.extend_from_slice(payload);
    f.to_vec()
}

/// A minimal HPACK block for `GET http://h2.test/` using only static-table
/// indexes and one literal (:authority), no Huffman.
pub fn get_headers_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    b.push(0x41); // :authority, literal with incremental indexing (name index 1)
    b.push(7);
    b.extend_from_slice(b"h2.test");
    b
}

/// What a hostile connection ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// GOAWAY with this error code, then the connection closed.
    GoAway(u32),
    /// Closed (or reset) without a GOAWAY we could read.
    Closed,
    /// Still open at the deadline.
    StillOpen,
}

/// Reads frames until GOAWAY and then EOF, or EOF, or the deadline.
pub fn read_until_closed(stream: &mut std::net::TcpStream, deadline: Duration) -> Ending {
    use std::io::Read;
    let end = std::time::Instant::now() + deadline;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut goaway = None;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ending::StillOpen;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Ending::StillOpen
            }
            Err(_) => break,
        }
        // Scan complete frames for GOAWAY.
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (usize::from(buf[at]) << 16)
                | (usize::from(buf[at + 1]) << 8)
                | usize::from(buf[at + 2]);
            if buf.len() < at + 9 + len {
                break;
            }
            if buf[at + 3] == kind::GOAWAY && len >= 8 {
                let p = &buf[at + 9..];
                goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            at += 9 + len;
        }
        buf.drain(..at);
    }
    match goaway {
        Some(code) => Ending::GoAway(code),
        None => Ending::Closed,
    }
}
