//! h2 runs on the TLS stream under monoio (the HBONE stack): a CONNECT stream echoes data.

mod common;

use bytes::Bytes;
use common::{fill_pseudo_random, hbone, identity, issue, run, Checksum, TRUST_DOMAIN};
use mesh_tls::{accept, connect, CertificateAuthority};
use monoio::net::{TcpListener, TcpStream};

const TOTAL: usize = 16 * 1024 * 1024;

#[test]
fn h2_connect_stream_echoes_over_mtls() {
    run(async {
        let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
        let client_id = identity("a", "client");
        let server_id = identity("b", "server");
        let client_tls = hbone(&ca, &issue(&ca, &client_id));
        let server_tls = hbone(&ca, &issue(&ca, &server_id));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();

        let server = monoio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = accept(server_tls.server_config(), tcp).await.unwrap();
            let peer = tls.peer_identity().clone();
            let mut conn = h2::server::Builder::new()
                .initial_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .max_frame_size(256 * 1024 - 1)
                .handshake::<_, Bytes>(tls)
                .await
                .unwrap();
            let (request, mut respond) = conn.accept().await.unwrap().unwrap();
            assert_eq!(request.method(), http::Method::CONNECT);
            monoio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = request.into_body();
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            // Echo every chunk back, releasing receive capacity as we go.
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                send.reserve_capacity(chunk.len());
                send.send_data(chunk, false).unwrap();
            }
            send.send_data(Bytes::new(), true).unwrap();
            peer
        });

        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = connect(
            client_tls
                .client_config(std::slice::from_ref(&server_id))
                .unwrap(),
            tcp,
        )
        .await
        .unwrap();
        let (mut client, conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(256 * 1024 - 1)
            .handshake::<_, Bytes>(tls)
            .await
            .unwrap();
        monoio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.2:8080")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        let sender = monoio::spawn(async move {
            let mut seed = 7u64;
            let mut sum = Checksum::new();
            let mut left = TOTAL;
            while left > 0 {
                let mut chunk = vec![0u8; (128 * 1024).min(left)];
                fill_pseudo_random(&mut seed, &mut chunk);
                sum.update(&chunk);
                left -= chunk.len();
                send.reserve_capacity(chunk.len());
                let mut chunk = Bytes::from(chunk);
                while !chunk.is_empty() {
                    let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    let part = chunk.split_to(cap.min(chunk.len()));
                    send.send_data(part, false).unwrap();
                }
            }
            send.send_data(Bytes::new(), true).unwrap();
            sum.finish()
        });
        let response = response.await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Checksum::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            received.update(&chunk);
        }
        let sent = sender.await;
        assert_eq!(sent.1, TOTAL as u64);
        assert_eq!(received.finish(), sent);
        assert_eq!(server.await, client_id);
    });
}
