//! HBONE client pool + server over plain TCP on loopback.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use mesh_hbone::{
    connect_fn, ClientConfig, ClientError, Connect, Pool, PoolKey, Server, ServerConfig,
    TcpConnector, TunnelRequest,
};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, IntoPollIo, Splitable};
use monoio::net::TcpStream;

type TestServer = Rc<RefCell<Server<Upstreams>>>;

fn new_server(config: ServerConfig) -> TestServer {
    Rc::new(RefCell::new(Server::new(config, Upstreams::new())))
}

/// A connector that counts how many connections the pool asked for.
fn counting_connector(calls: Rc<Cell<usize>>) -> impl Connect {
    connect_fn(move |key: PoolKey| {
        calls.set(calls.get() + 1);
        async move { TcpConnector.connect(&key).await }
    })
}

async fn collect(tunnel: &mut mesh_hbone::Tunnel) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = tunnel.recv().await {
        out.extend_from_slice(&chunk.expect("tunnel data"));
    }
    out
}

#[test]
fn tunnel_carries_64_mib_each_way_with_matching_checksums() {
    run(async {
        const MIB: usize = 1 << 20;
        let echo = spawn_echo();
        let hbone = spawn_hbone_server(new_server(ServerConfig::default()));
        let pool = Pool::new(ClientConfig::default(), TcpConnector);

        // The app's connection as the outbound listener would capture it.
        let (app_listener, app_addr) = listener();
        let app = TcpStream::connect(app_addr).await.unwrap();
        let (captured, _) = app_listener.accept().await.unwrap();

        let tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), echo))
            .await
            .expect("tunnel to the echo upstream");
        let piping = monoio::spawn(async move {
            let (read, write) = captured.into_split();
            tunnel.pipe(read, write).await
        });

        let (mut app_read, mut app_write) = app.into_split();
        let writer = monoio::spawn(async move {
            let mut pattern = Pattern::new(0x5eed);
            let mut sum = Checksum::default();
            for _ in 0..64 {
                let chunk = pattern.fill(MIB);
                sum.update(&chunk);
                let (res, _) = app_write.write_all(chunk).await;
                res.expect("app write");
            }
            app_write.shutdown().await.expect("app shutdown(Write)");
            sum.value()
        });
        let received = within("echoed bytes", read_to_end_checksum(&mut app_read)).await;
        let sent = writer.await;
        assert_eq!(sent.0, 64 * MIB as u64);
        assert_eq!(
            received.value(),
            sent,
            "echoed bytes differ from sent bytes"
        );

        let outcome = within("client pipe end", piping).await;
        outcome.result.expect("client pipe ended cleanly");
        assert_eq!(outcome.into_tunnel, 64 * MIB as u64);
        assert_eq!(outcome.out_of_tunnel, 64 * MIB as u64);
    });
}

#[test]
fn half_close_lets_the_server_reply_after_reading_eof() {
    run(async {
        let reply = spawn_reply_after_eof();
        let hbone = spawn_hbone_server(new_server(ServerConfig::default()));
        let pool = Pool::new(ClientConfig::default(), TcpConnector);

        // Through the stream API: END_STREAM → upstream EOF → reply.
        let mut tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), reply))
            .await
            .unwrap();
        tunnel
            .send(Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        tunnel.finish().unwrap();
        let answer = within("reply", collect(&mut tunnel)).await;
        assert_eq!(answer, b"got 11 bytes");

        // Through the client pipe: app shutdown(Write) → END_STREAM → upstream EOF.
        let (app_listener, app_addr) = listener();
        let app = TcpStream::connect(app_addr).await.unwrap();
        let (captured, _) = app_listener.accept().await.unwrap();
        let tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), reply))
            .await
            .unwrap();
        let piping = monoio::spawn(async move {
            let (read, write) = captured.into_split();
            tunnel.pipe(read, write).await
        });
        let (mut app_read, mut app_write) = app.into_split();
        let (res, _) = app_write.write_all(vec![b'x'; 100_000]).await;
        res.unwrap();
        app_write.shutdown().await.unwrap();
        let mut answer = Vec::new();
        loop {
            let (res, buf) = app_read.read(Vec::with_capacity(4096)).await;
            if res.unwrap() == 0 {
                break;
            }
            answer.extend_from_slice(&buf);
        }
        assert_eq!(answer, b"got 100000 bytes");
        let outcome = within("pipe end", piping).await;
        outcome.result.unwrap();
        assert_eq!(outcome.into_tunnel, 100_000);
        assert_eq!(outcome.out_of_tunnel, answer.len() as u64);
    });
}

#[test]
fn pipe_tcp_sends_a_short_request_with_its_fin_and_relays_the_reply() {
    run(async {
        let reply = spawn_reply_after_eof();
        let hbone = spawn_hbone_server(new_server(ServerConfig::default()));
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let (app_listener, app_addr) = listener();
        let app = TcpStream::connect(app_addr).await.unwrap();
        let (captured, _) = app_listener.accept().await.unwrap();
        // Request and FIN are both queued before the pipe reads: the first read gets the
        // bytes, the probe after it the end.
        let (mut app_read, mut app_write) = app.into_split();
        let (res, _) = app_write.write_all(b"hello world".to_vec()).await;
        res.unwrap();
        app_write.shutdown().await.unwrap();
        let tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), reply))
            .await
            .unwrap();
        let piping = monoio::spawn(tunnel.pipe_tcp(captured));
        let answer = within("reply", async {
            let mut answer = Vec::new();
            loop {
                let (res, buf) = app_read.read(Vec::with_capacity(4096)).await;
                if res.unwrap() == 0 {
                    return answer;
                }
                answer.extend_from_slice(&buf);
            }
        })
        .await;
        assert_eq!(answer, b"got 11 bytes");
        let outcome = within("pipe end", piping).await;
        outcome.result.unwrap();
        assert_eq!(outcome.into_tunnel, 11);
        assert_eq!(outcome.out_of_tunnel, answer.len() as u64);
    });
}

#[test]
fn pipe_tcp_carries_8_mib_each_way_in_uneven_writes() {
    run(async {
        const MIB: usize = 1 << 20;
        let echo = spawn_echo();
        let hbone = spawn_hbone_server(new_server(ServerConfig::default()));
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let (app_listener, app_addr) = listener();
        let app = TcpStream::connect(app_addr).await.unwrap();
        let (captured, _) = app_listener.accept().await.unwrap();
        let tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), echo))
            .await
            .unwrap();
        let piping = monoio::spawn(tunnel.pipe_tcp(captured));
        let (mut app_read, mut app_write) = app.into_split();
        let writer = monoio::spawn(async move {
            // Short writes, some with pauses: reads that do not fill the buffer, probes
            // that find more bytes or nothing.
            let mut pattern = Pattern::new(0xfeed);
            let mut sum = Checksum::default();
            let mut left = 8 * MIB;
            let mut size = 1;
            while left > 0 {
                let n = size.min(left);
                let chunk = pattern.fill(n);
                sum.update(&chunk);
                let (res, _) = app_write.write_all(chunk).await;
                res.expect("app write");
                left -= n;
                size = (size * 7 + 13) % (300 * 1024) + 1;
                if size % 5 == 0 {
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            app_write.shutdown().await.expect("app shutdown(Write)");
            sum.value()
        });
        let received = within("echoed bytes", read_to_end_checksum(&mut app_read)).await;
        let sent = writer.await;
        assert_eq!(sent.0, 8 * MIB as u64);
        assert_eq!(
            received.value(),
            sent,
            "echoed bytes differ from sent bytes"
        );
        let outcome = within("client pipe end", piping).await;
        outcome.result.expect("client pipe ended cleanly");
        assert_eq!(outcome.into_tunnel, 8 * MIB as u64);
        assert_eq!(outcome.out_of_tunnel, 8 * MIB as u64);
    });
}

/// Opens `streams` tunnels at once and holds them all open; returns
/// (live connections while all were open, connector calls, opened count).
async fn concurrent_streams(server_limit: u32, streams: usize) -> (usize, usize, u64) {
    let echo = spawn_echo();
    let hbone = spawn_hbone_server(new_server(ServerConfig {
        max_concurrent_streams: server_limit,
        ..ServerConfig::default()
    }));
    let calls = Rc::new(Cell::new(0));
    let pool = Pool::new(ClientConfig::default(), counting_connector(calls.clone()));
    let connected = Rc::new(Cell::new(0usize));
    let all_connected = Rc::new(Gate::default());
    let release = Rc::new(Gate::default());
    let mut tasks = Vec::new();
    for i in 0..streams {
        let (pool, connected, all_connected, release) = (
            pool.clone(),
            connected.clone(),
            all_connected.clone(),
            release.clone(),
        );
        tasks.push(monoio::spawn(async move {
            let mut tunnel = pool
                .connect(&TunnelRequest::new(PoolKey::plain(hbone), echo))
                .await
                .expect("tunnel");
            let message = format!("stream {i}");
            tunnel.send(Bytes::from(message.clone())).await.unwrap();
            let echoed = tunnel.recv().await.unwrap().unwrap();
            assert_eq!(echoed, message.as_bytes());
            connected.set(connected.get() + 1);
            if connected.get() == streams {
                all_connected.open();
            }
            release.wait().await;
            tunnel.finish().unwrap();
            assert!(collect(&mut tunnel).await.is_empty());
        }));
    }
    within("all streams open", all_connected.wait()).await;
    let live = pool.connection_count();
    release.open();
    for task in tasks {
        within("stream end", task).await;
    }
    (live, calls.get(), pool.connections_opened())
}

#[test]
fn hundred_concurrent_streams_share_one_connection() {
    run(async {
        let (live, calls, opened) = concurrent_streams(100, 100).await;
        assert_eq!((live, calls, opened), (1, 1, 1));
    });
}

#[test]
fn streams_beyond_the_peers_limit_open_exactly_enough_connections() {
    run(async {
        // The server allows 10 streams per connection: 100 streams need 10
        // connections, and the pool must not dial more than that.
        let (live, calls, opened) = concurrent_streams(10, 100).await;
        assert_eq!((live, calls, opened), (10, 10, 10));
    });
}

#[test]
fn refusals_map_to_status_codes_and_keep_the_connection() {
    run(async {
        let server = new_server(ServerConfig::default());
        let hbone = spawn_hbone_server(server.clone());
        let echo = spawn_echo();
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let key = PoolKey::plain(hbone);
        let cases = [
            (DENY_PORT, StatusCode::UNAUTHORIZED),
            (UNKNOWN_PORT, StatusCode::SERVICE_UNAVAILABLE),
            (BAD_PORT, StatusCode::BAD_REQUEST),
        ];
        for (port, status) in cases {
            let authority = format!("127.0.0.1:{port}").parse().unwrap();
            let err = pool
                .connect(&TunnelRequest::new(key.clone(), authority))
                .await
                .err()
                .expect("refused");
            assert_eq!(err.status(), Some(status), "port {port}: {err}");
        }
        // A refusal is per stream: the same connection still carries tunnels.
        let mut tunnel = pool
            .connect(&TunnelRequest::new(key.clone(), echo))
            .await
            .unwrap();
        tunnel.send(Bytes::from_static(b"ping")).await.unwrap();
        assert_eq!(tunnel.recv().await.unwrap().unwrap(), "ping");
        assert_eq!(pool.connections_opened(), 1);
        assert_eq!(server.borrow().handler().seen.borrow().len(), 4);
    });
}

#[test]
fn upstream_connect_failure_is_503() {
    run(async {
        let hbone = spawn_hbone_server(new_server(ServerConfig::default()));
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let err = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), closed_port()))
            .await
            .err()
            .expect("no upstream");
        assert!(
            matches!(err, ClientError::Status(StatusCode::SERVICE_UNAVAILABLE)),
            "{err}"
        );
    });
}

#[test]
fn request_headers_reach_the_handler() {
    run(async {
        let server = new_server(ServerConfig::default());
        let hbone = spawn_hbone_server(server.clone());
        let echo = spawn_echo();
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let mut request = TunnelRequest::new(PoolKey::plain(hbone), echo);
        request.forwarded_for = Some("10.0.0.7:43210".parse().unwrap());
        request.baggage = Some("k8s.namespace.name=default".into());
        request.traceparent =
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let tunnel = pool.connect(&request).await.unwrap();
        drop(tunnel);
        let seen = server.borrow().handler().seen.borrow()[0].clone();
        assert_eq!(seen.authority, echo);
        assert_eq!(seen.forwarded_for, request.forwarded_for);
        assert_eq!(seen.baggage, request.baggage);
        assert_eq!(seen.traceparent, request.traceparent);
        assert_eq!(seen.peer_identity, None);
        assert_eq!(seen.local_addr, Some(hbone));
        assert!(seen
            .peer_addr
            .is_some_and(|a| a.ip().is_loopback() && a.port() != 0));
    });
}

#[test]
fn malformed_and_non_connect_requests_get_400() {
    run(async {
        let server = new_server(ServerConfig::default());
        let hbone = spawn_hbone_server(server.clone());
        let io = TcpStream::connect(hbone)
            .await
            .unwrap()
            .into_poll_io()
            .unwrap();
        let (mut client, connection) = h2::client::handshake(io).await.unwrap();
        monoio::spawn(connection);

        let get = Request::builder()
            .uri("http://127.0.0.1/")
            .body(())
            .unwrap();
        let connect_host = Request::builder()
            .method(Method::CONNECT)
            .uri("example.com:80")
            .body(())
            .unwrap();
        let connect_no_port = Request::builder()
            .method(Method::CONNECT)
            .uri("127.0.0.1")
            .body(())
            .unwrap();
        for request in [get, connect_host, connect_no_port] {
            let what = format!("{} {}", request.method(), request.uri());
            client = client.ready().await.unwrap();
            let (response, _) = client.send_request(request, false).unwrap();
            let response = within("response", response).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        }
        assert!(
            server.borrow().handler().seen.borrow().is_empty(),
            "handler must not see bad requests"
        );
    });
}

#[test]
fn goaway_on_shutdown_lets_open_streams_finish_and_new_ones_use_a_new_connection() {
    run(async {
        let echo = spawn_echo();
        let old = new_server(ServerConfig::default());
        let old_server = old.borrow().clone();
        let hbone = spawn_hbone_server(old.clone());
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let key = PoolKey::plain(hbone);

        let mut open = pool
            .connect(&TunnelRequest::new(key.clone(), echo))
            .await
            .unwrap();
        open.send(Bytes::from_static(b"before")).await.unwrap();
        assert_eq!(open.recv().await.unwrap().unwrap(), "before");

        // A restart: new connections go to a new server, the old one drains.
        *old.borrow_mut() = Server::new(ServerConfig::default(), Upstreams::new());
        old_server.shutdown();

        // The open stream keeps working (and its round trip, ordered after
        // the GOAWAY on the connection, means the client has seen it).
        open.send(Bytes::from_static(b"after")).await.unwrap();
        assert_eq!(open.recv().await.unwrap().unwrap(), "after");
        assert_eq!(
            pool.connections_for(&key),
            0,
            "GOAWAY took the connection out of the pool"
        );

        let mut fresh = pool
            .connect(&TunnelRequest::new(key.clone(), echo))
            .await
            .unwrap();
        assert_ne!(
            fresh.connection_id(),
            open.connection_id(),
            "new stream on the draining connection"
        );
        fresh.send(Bytes::from_static(b"fresh")).await.unwrap();
        assert_eq!(fresh.recv().await.unwrap().unwrap(), "fresh");
        assert_eq!(
            old.borrow().handler().seen.borrow().len(),
            1,
            "served by the new server"
        );
        assert_eq!(
            pool.connections_for(&key),
            1,
            "the draining connection left the pool"
        );

        // The old connection closes once its last stream finished.
        assert_eq!(old_server.connections(), 1);
        open.finish().unwrap();
        assert!(collect(&mut open).await.is_empty());
        drop(open);
        within("old server drained", old_server.wait_idle()).await;
        assert_eq!(old_server.handler().finished.get(), 1);
    });
}

#[test]
fn failed_connection_attempt_fails_all_waiters_without_redialing() {
    run(async {
        let calls = Rc::new(Cell::new(0));
        let pool = Pool::new(ClientConfig::default(), counting_connector(calls.clone()));
        let dead = PoolKey::plain(closed_port());
        let echo = spawn_echo();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (pool, key) = (pool.clone(), dead.clone());
            tasks.push(monoio::spawn(async move {
                pool.connect(&TunnelRequest::new(key, echo))
                    .await
                    .err()
                    .expect("refused")
            }));
        }
        for task in tasks {
            let err = within("connect error", task).await;
            assert!(matches!(err, ClientError::Connect(_)), "{err}");
        }
        assert_eq!(calls.get(), 1, "one dial for twenty concurrent callers");
        assert_eq!(pool.connection_count(), 0);
    });
}

#[test]
fn idle_connections_are_closed() {
    run(async {
        let server = new_server(ServerConfig::default());
        let server_handle = server.borrow().clone();
        let hbone = spawn_hbone_server(server);
        let echo = spawn_echo();
        let pool = Pool::new(
            ClientConfig {
                idle_timeout: Duration::from_millis(100),
                ..ClientConfig::default()
            },
            TcpConnector,
        );
        let mut tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), echo))
            .await
            .unwrap();
        tunnel.finish().unwrap();
        assert!(collect(&mut tunnel).await.is_empty());
        assert_eq!(pool.connection_count(), 1);
        drop(tunnel);
        within("idle close", async {
            while pool.connection_count() != 0 || server_handle.connections() != 0 {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    });
}

#[test]
fn tunnel_works_as_a_monoio_byte_stream() {
    run(async {
        let hbone = spawn_hbone_server(new_server(ServerConfig::default()));
        let echo = spawn_echo();
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), echo))
            .await
            .unwrap();
        let (mut reader, mut writer) = tunnel.into_io();
        let payload = Pattern::new(9).fill(3 * 1024 * 1024 + 17);
        let expected = {
            let mut sum = Checksum::default();
            sum.update(&payload);
            sum.value()
        };
        let writing = monoio::spawn(async move {
            let (res, _) = writer.write_all(payload).await;
            res.expect("write through the tunnel");
            writer.shutdown().await.expect("END_STREAM");
            writer
        });
        // Small reads: the reader must hand out the rest of a frame later.
        let mut received = Checksum::default();
        loop {
            let (res, buf) = reader.read(Vec::with_capacity(1000)).await;
            if res.unwrap() == 0 {
                break;
            }
            received.update(&buf);
        }
        assert_eq!(received.value(), expected);
        let _writer = writing.await;
        assert_eq!(pool.connection_count(), 1);
    });
}

#[test]
fn keepalive_closes_a_connection_whose_peer_stopped_answering() {
    run(async {
        // A server that answers one CONNECT and then stops reading its
        // connection (a hung peer): PINGs go unanswered.
        let (listener, hbone) = listener();
        let stop = Rc::new(Gate::default());
        let stop_server = stop.clone();
        monoio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp.into_poll_io().unwrap())
                .await
                .unwrap();
            let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
            let _send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            // Flush the response, then hang without closing anything.
            monoio::select! {
                _ = conn.accept() => {}
                _ = stop_server.wait() => {}
            }
            std::future::pending::<()>().await;
        });
        let mut config = ClientConfig::default();
        config.h2.keepalive_interval = Some(Duration::from_millis(50));
        config.h2.keepalive_timeout = Duration::from_millis(200);
        let pool = Pool::new(config, TcpConnector);
        let mut tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), closed_port()))
            .await
            .unwrap();
        assert_eq!(pool.connection_count(), 1);
        stop.open();
        let ended = within("keepalive failure", tunnel.recv()).await;
        assert!(
            matches!(ended, Some(Err(_))),
            "the tunnel fails with its connection: {ended:?}"
        );
        assert_eq!(
            pool.connection_count(),
            0,
            "the dead connection left the pool"
        );
    });
}

#[test]
fn garbage_instead_of_http2_closes_the_connection_cleanly() {
    run(async {
        let server = new_server(ServerConfig::default());
        let handle = server.borrow().clone();
        let hbone = spawn_hbone_server(server);
        let mut tcp = TcpStream::connect(hbone).await.unwrap();
        let (res, _) = tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
            .await;
        res.unwrap();
        // The server answers (at most) a GOAWAY and closes: we read to EOF.
        within("server closes", async {
            loop {
                let (res, _) = tcp.read(vec![0u8; 4096]).await;
                match res {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        within("connection released", handle.wait_idle()).await;
        assert!(handle.handler().seen.borrow().is_empty());
    });
}

#[test]
fn dropping_a_tunnel_mid_transfer_resets_it_and_frees_the_upstream() {
    run(async {
        let server = new_server(ServerConfig::default());
        let handle = server.borrow().clone();
        let hbone = spawn_hbone_server(server);
        // Waits for EOF before answering: the upstream stays idle meanwhile.
        let upstream = spawn_reply_after_eof();
        let pool = Pool::new(ClientConfig::default(), TcpConnector);
        let mut tunnel = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), upstream))
            .await
            .unwrap();
        tunnel
            .send(Bytes::from_static(b"partial request"))
            .await
            .unwrap();
        drop(tunnel); // RST_STREAM(CANCEL), not END_STREAM
        within("server pipe ends", async {
            while handle.handler().finished.get() == 0 {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert_eq!(
            handle.handler().failed.get(),
            1,
            "a reset is an error, not a clean end"
        );
        assert_eq!(handle.streams(), 0);
        // The connection itself is unharmed.
        assert_eq!(pool.connection_count(), 1);
        let mut again = pool
            .connect(&TunnelRequest::new(PoolKey::plain(hbone), upstream))
            .await
            .unwrap();
        again.finish().unwrap();
        assert_eq!(collect(&mut again).await, b"got 0 bytes");
    });
}
