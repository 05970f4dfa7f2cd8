//! mTLS handshakes and data transfer over loopback with our TLS stream on monoio io_uring.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{fill_pseudo_random, hbone, identity, issue, run, Checksum, TRUST_DOMAIN};
use mesh_tls::{
    accept, cert_info, connect, CertificateAuthority, HboneTls, Identity, TlsError, TlsStream,
    VerifyError,
};
use monoio::net::{TcpListener, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Accepts one TCP connection and runs the TLS server handshake on it.
async fn serve_one(listener: &TcpListener, tls: &HboneTls) -> Result<TlsStream, TlsError> {
    let (tcp, _) = listener.accept().await.unwrap();
    tls.accept(tcp).await
}

async fn dial(
    addr: SocketAddr,
    tls: &HboneTls,
    expected: &[Identity],
) -> Result<TlsStream, TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tls.connect(tcp, expected).await
}

struct Mesh {
    ca: CertificateAuthority,
    client_id: Identity,
    server_id: Identity,
    client: Arc<HboneTls>,
    server: Arc<HboneTls>,
}

fn mesh() -> Mesh {
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let client_id = identity("app-a", "client-sa");
    let server_id = identity("app-b", "server-sa");
    let client = hbone(&ca, &issue(&ca, &client_id));
    let server = hbone(&ca, &issue(&ca, &server_id));
    Mesh {
        ca,
        client_id,
        server_id,
        client,
        server,
    }
}

/// Both ends connected; returns (client stream, server stream).
async fn pair(m: &Mesh) -> (TlsStream, TlsStream) {
    let (listener, addr) = listener();
    let server_tls = m.server.clone();
    let server = monoio::spawn(async move { serve_one(&listener, &server_tls).await });
    let client = dial(addr, &m.client, std::slice::from_ref(&m.server_id))
        .await
        .unwrap();
    let server = server.await.unwrap();
    (client, server)
}

#[test]
fn mutual_tls_exposes_both_identities_negotiates_h2_and_sends_no_sni() {
    run(async {
        let m = mesh();
        let (mut client, mut server) = pair(&m).await;
        assert_eq!(client.peer_identity(), &m.server_id);
        assert_eq!(server.peer_identity(), &m.client_id);
        assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            client.connection().protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        match server.connection() {
            rustls::Connection::Server(conn) => assert_eq!(conn.server_name(), None, "SNI sent"),
            rustls::Connection::Client(_) => unreachable!(),
        }
        // peer_certificates stays reachable: [leaf, root] from the peer.
        assert_eq!(server.peer_certificates().unwrap().len(), 2);

        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    });
}

#[test]
fn wrong_expected_identity_fails_the_handshake_clearly() {
    run(async {
        let m = mesh();
        let (listener, addr) = listener();
        let server_tls = m.server.clone();
        let server = monoio::spawn(async move { serve_one(&listener, &server_tls).await });
        let expected = identity("app-b", "someone-else");
        let err = dial(addr, &m.client, &[expected]).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err.verify_error(),
                Some(VerifyError::UnexpectedIdentity { .. })
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("peer identity spiffe://cluster.local/ns/app-b/sa/server-sa is not one of the expected identities [spiffe://cluster.local/ns/app-b/sa/someone-else]"),
            "{msg}"
        );
        // The server learns of it through the client's alert.
        let server_err = server.await.unwrap_err();
        assert!(
            matches!(server_err, TlsError::Handshake(_)),
            "{server_err:?}"
        );
    });
}

#[test]
fn server_certificate_from_another_root_is_refused() {
    run(async {
        let m = mesh();
        let rogue_ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
        // Same identity, same trust domain, wrong root.
        let rogue_server = hbone(&rogue_ca, &issue(&rogue_ca, &m.server_id));
        let (listener, addr) = listener();
        let server = monoio::spawn(async move { serve_one(&listener, &rogue_server).await });
        let err = dial(addr, &m.client, std::slice::from_ref(&m.server_id))
            .await
            .unwrap_err();
        assert!(
            matches!(err.verify_error(), Some(VerifyError::Chain(_))),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("does not chain to a trusted root"),
            "{err}"
        );
        assert!(server.await.is_err());
    });
}

/// In TLS 1.3 the client finishes its handshake before the server has checked the client
/// certificate; the server's refusal reaches the client as an alert on its first read.
async fn assert_client_refused(client: Result<TlsStream, TlsError>) {
    if let Ok(mut stream) = client {
        let mut buf = [0u8; 1];
        let read = stream.read(&mut buf).await;
        assert!(read.is_err(), "client read after refusal: {read:?}");
    }
}

#[test]
fn client_certificate_from_another_root_is_refused() {
    run(async {
        let m = mesh();
        let rogue_ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
        // The rogue client trusts the real root (so it accepts the server) but its own cert
        // comes from the rogue CA.
        let rogue_cert = issue(&rogue_ca, &m.client_id);
        let rogue_client =
            Arc::new(HboneTls::from_workload_cert(m.ca.root_pem(), &rogue_cert).unwrap());
        let (listener, addr) = listener();
        let server_tls = m.server.clone();
        let server = monoio::spawn(async move { serve_one(&listener, &server_tls).await });
        let client = dial(addr, &rogue_client, std::slice::from_ref(&m.server_id)).await;
        let err = server.await.unwrap_err();
        assert!(
            matches!(err.verify_error(), Some(VerifyError::Chain(_))),
            "{err:?}"
        );
        assert_client_refused(client).await;
    });
}

#[test]
fn client_from_another_trust_domain_is_refused() {
    run(async {
        let m = mesh();
        let foreign = Identity::new("other.domain", "app-a", "client-sa").unwrap();
        let foreign_client = hbone(&m.ca, &issue(&m.ca, &foreign));
        let (listener, addr) = listener();
        let server_tls = m.server.clone();
        let server = monoio::spawn(async move { serve_one(&listener, &server_tls).await });
        let client = dial(addr, &foreign_client, std::slice::from_ref(&m.server_id)).await;
        let err = server.await.unwrap_err();
        assert!(
            err.to_string()
                .contains("not in trust domain cluster.local"),
            "{err}"
        );
        assert_client_refused(client).await;
    });
}

#[test]
fn client_without_a_certificate_is_refused() {
    run(async {
        let m = mesh();
        let provider = mesh_tls::ring_provider();
        let verifier = Arc::new(mesh_tls::verify::ServerIdentityVerifier::new(
            Arc::new(m.client.roots().clone()),
            &provider,
            vec![m.server_id.clone()],
        ));
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.enable_sni = false;
        let (listener, addr) = listener();
        let server_tls = m.server.clone();
        let server = monoio::spawn(async move { serve_one(&listener, &server_tls).await });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = connect(Arc::new(config), tcp).await;
        let err = server.await.unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::Handshake(rustls::Error::NoCertificatesPresented)
            ),
            "{err:?}"
        );
        assert_client_refused(client).await;
    });
}

#[test]
fn garbage_client_hello_is_an_error_not_a_panic() {
    run(async {
        let m = mesh();
        let (listener, addr) = listener();
        for prefix in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00][..]] {
            let server_tls = m.server.clone();
            let listener_ref = &listener;
            let mut garbage = vec![0u8; 4096];
            let mut seed = 0x1234_5678_9abc_def0u64 ^ prefix.len() as u64;
            fill_pseudo_random(&mut seed, &mut garbage);
            garbage[..prefix.len()].copy_from_slice(prefix);
            let (server, client) = monoio::join!(
                async move { serve_one(listener_ref, &server_tls).await },
                async {
                    let mut tcp = TcpStream::connect(addr).await.unwrap();
                    let (res, _) =
                        monoio::io::AsyncWriteRentExt::write_all(&mut tcp, garbage).await;
                    res.unwrap();
                    // Whatever the server answers (an alert or a close), it must not hang.
                    let (res, buf) =
                        monoio::io::AsyncReadRent::read(&mut tcp, Vec::with_capacity(64)).await;
                    (res, buf)
                }
            );
            let err = server.unwrap_err();
            assert!(
                matches!(
                    err,
                    TlsError::Handshake(_) | TlsError::ClosedDuringHandshake
                ),
                "{err:?}"
            );
            let (res, reply) = client;
            // An alert record (0x15) or a plain close.
            assert!(
                res.is_err() || reply.is_empty() || reply[0] == 0x15,
                "{reply:?}"
            );
        }
    });
}

#[test]
fn half_close_delivers_eof_and_the_reply_still_arrives() {
    run(async {
        let m = mesh();
        let (mut client, mut server) = pair(&m).await;
        let server_task = monoio::spawn(async move {
            let mut request = Vec::new();
            server.read_to_end(&mut request).await.unwrap(); // ends at the client's close_notify
            assert_eq!(request, b"request body");
            server.write_all(b"reply after EOF").await.unwrap();
            server.shutdown().await.unwrap();
        });
        client.write_all(b"request body").await.unwrap();
        client.shutdown().await.unwrap();
        assert!(
            client.write_all(b"late").await.is_err(),
            "write after shutdown"
        );
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after EOF");
        server_task.await;
    });
}

#[test]
fn tcp_close_without_close_notify_is_an_error_for_the_reader() {
    run(async {
        let m = mesh();
        let (client, mut server) = pair(&m).await;
        drop(client); // TCP FIN without close_notify: possible truncation
        let mut buf = Vec::new();
        let err = server.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    });
}

const BULK: usize = 64 * 1024 * 1024;

async fn send_bulk(mut w: impl tokio::io::AsyncWrite + Unpin, seed: u64) -> (u64, u64) {
    let mut seed = seed;
    let mut sum = Checksum::new();
    let mut chunk = vec![0u8; 300 * 1024 + 17]; // odd size: records don't line up with writes
    let mut left = BULK;
    while left > 0 {
        let n = chunk.len().min(left);
        fill_pseudo_random(&mut seed, &mut chunk[..n]);
        sum.update(&chunk[..n]);
        w.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    w.shutdown().await.unwrap();
    sum.finish()
}

async fn receive_bulk(mut r: impl tokio::io::AsyncRead + Unpin) -> (u64, u64) {
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return sum.finish();
        }
        sum.update(&buf[..n]);
    }
}

#[test]
fn bulk_64_mib_both_ways_arrives_intact() {
    run(async {
        let m = mesh();
        let (client, server) = pair(&m).await;
        let (client_r, client_w) = tokio::io::split(client);
        let (server_r, server_w) = tokio::io::split(server);
        let start = std::time::Instant::now();
        let up_sent = monoio::spawn(send_bulk(client_w, 1));
        let down_sent = monoio::spawn(send_bulk(server_w, 2));
        let up_received = monoio::spawn(receive_bulk(server_r));
        let down_received = receive_bulk(client_r).await;
        let up_received = up_received.await;
        let (up_sent, down_sent) = (up_sent.await, down_sent.await);
        assert_eq!(up_sent.1, BULK as u64);
        assert_eq!(up_received, up_sent, "client → server");
        assert_eq!(down_received, down_sent, "server → client");
        assert_ne!(up_sent, down_sent, "directions carry different data");
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "bulk: 2 x 64 MiB in {secs:.2} s ({:.0} MiB/s each way, unoptimised test build)",
            64.0 / secs
        );
    });
}

#[test]
fn rotation_changes_new_handshakes_and_keeps_established_streams() {
    run(async {
        let m = mesh();
        let (mut old_client, mut old_server) = pair(&m).await;
        let serial = |stream: &TlsStream| {
            cert_info(&stream.peer_certificates().unwrap()[0])
                .unwrap()
                .serial
        };
        let first_server_serial = serial(&old_client);
        let first_client_serial = serial(&old_server);

        // Renew both sides' certificates (same identities, new keys and serials).
        let renewed_server = issue(&m.ca, &m.server_id);
        let renewed_client = issue(&m.ca, &m.client_id);
        m.server.cert_store().rotate(&renewed_server).unwrap();
        m.client.cert_store().rotate(&renewed_client).unwrap();

        let (new_client, new_server) = pair(&m).await;
        assert_eq!(serial(&new_client), renewed_server.serial());
        assert_eq!(serial(&new_server), renewed_client.serial());
        assert_ne!(serial(&new_client), first_server_serial);
        assert_ne!(serial(&new_server), first_client_serial);

        // The connection established before the rotation keeps working both ways.
        old_client.write_all(b"still here?").await.unwrap();
        old_client.flush().await.unwrap();
        let mut buf = [0u8; 11];
        old_server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here?");
        old_server.write_all(b"yes").await.unwrap();
        old_server.flush().await.unwrap();
        let mut buf = [0u8; 3];
        old_client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"yes");
        assert_eq!(serial(&old_client), first_server_serial);
    });
}

/// Many connections at once, each echoing randomly sized writes through split halves in
/// separate tasks (the pattern that made monoio-compat's wrapper panic under load).
#[test]
fn concurrent_connections_echo_random_sized_writes() {
    run(async {
        let m = mesh();
        let (listener, addr) = listener();
        const CONNECTIONS: usize = 32;
        const PER_CONNECTION: usize = 2 * 1024 * 1024;
        let server_tls = m.server.clone();
        monoio::spawn(async move {
            for _ in 0..CONNECTIONS {
                let (tcp, _) = listener.accept().await.unwrap();
                let tls = server_tls.clone();
                monoio::spawn(async move {
                    let stream = accept(tls.server_config(), tcp).await.unwrap();
                    let (mut r, mut w) = tokio::io::split(stream);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        let mut clients = Vec::new();
        for i in 0..CONNECTIONS {
            let client_tls = m.client.clone();
            let server_id = m.server_id.clone();
            clients.push(monoio::spawn(async move {
                let stream = dial(addr, &client_tls, &[server_id]).await.unwrap();
                let (r, mut w) = tokio::io::split(stream);
                let writer = monoio::spawn(async move {
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                    let mut sum = Checksum::new();
                    let mut left = PER_CONNECTION;
                    let mut buf = vec![0u8; 70_000];
                    while left > 0 {
                        let n = (seed as usize % buf.len()).clamp(1, left);
                        fill_pseudo_random(&mut seed, &mut buf[..n]);
                        sum.update(&buf[..n]);
                        w.write_all(&buf[..n]).await.unwrap();
                        if seed.is_multiple_of(3) {
                            w.flush().await.unwrap();
                        }
                        left -= n;
                    }
                    w.shutdown().await.unwrap();
                    sum.finish()
                });
                let echoed = receive_bulk(r).await;
                assert_eq!(echoed, writer.await, "connection {i}");
            }));
        }
        for client in clients {
            client.await;
        }
    });
}

/// The stream also works on monoio's epoll driver (fallback where io_uring is unavailable).
#[test]
fn works_on_the_legacy_driver() {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = mesh();
        let (mut client, mut server) = pair(&m).await;
        assert_eq!(server.peer_identity(), &m.client_id);
        client.write_all(b"epoll").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"epoll");
    });
}
