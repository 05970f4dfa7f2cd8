//! HTTP/2 from clients: h2c prior knowledge and TLS with ALPN h2, routed by
//! the same engine as HTTP/1.1 to HTTP/1.1 and h2c backends; gRPC trailers
//! and the proxy's own errors as gRPC statuses.

mod common;
mod h2_support;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use h2_support::*;
use http::Request;
use mesh_registry::{BackendTarget, Cluster, Timeouts, UpstreamProtocol, WeightedBackend};

fn simple_gateway(c: &Arc<Cluster>) -> Gateway {
    let c = c.clone();
    Gateway::start(
        move |port| {
            snapshot(
                port,
                vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                vec![],
            )
        },
        quick_options(),
    )
}

fn h2c_cluster(name: &str, addr: std::net::SocketAddr) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: format!("default/{name}:80"),
        service: obj("default", name),
        port: 80,
        endpoints: vec![addr],
        protocol: UpstreamProtocol::H2c,
        policy: Default::default(),
    })
}

#[test]
fn h2c_prior_knowledge_reaches_an_http1_backend_with_streamed_bodies() {
    let up = upstream();
    let gw = simple_gateway(&cluster("web", vec![up.addr]));
    let url = format!("http://h2.test:{}", gw.addr.port());
    runtime().block_on(async {
        let client = h2c_client(gw.addr).await;
        let r = send(&client, h2get(&format!("{url}/hello?x=1")), None, 0).await;
        assert_eq!(r.status, 200);
        let seen = r.text();
        assert!(seen.starts_with("GET /hello?x=1 HTTP/1.1\r\n"), "{seen}");
        assert_eq!(
            header_value(&seen, "host").as_deref(),
            Some(&*format!("h2.test:{}", gw.addr.port()))
        );
        assert_eq!(
            header_value(&seen, "x-forwarded-proto").as_deref(),
            Some("http")
        );
        assert!(header_value(&seen, "x-request-id").is_some());
        assert!(r.header("x-envoy-upstream-service-time").is_some());

        // Unknown length: streamed upstream chunked, 3 MiB in 50 KiB frames.
        let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let post = Request::post(format!("{url}/upload")).body(()).unwrap();
        let r = send(&client, post, Some(&body), 50_000).await;
        assert_eq!(r.status, 200);
        let seen = r.text();
        assert_eq!(
            header_value(&seen, "transfer-encoding").as_deref(),
            Some("chunked"),
            "{seen}"
        );
        assert_eq!(r.header("x-body-len"), Some(&*body.len().to_string()));
        assert_eq!(r.header("x-body-sum"), Some(&*checksum(&body).to_string()));

        // Large response body, and several streams at once on one connection.
        let mut calls = Vec::new();
        for _ in 0..8 {
            let client = client.clone();
            let url = url.clone();
            calls.push(tokio::spawn(async move {
                send(&client, h2get(&format!("{url}/big/3000000")), None, 0).await
            }));
        }
        for call in calls {
            let r = call.await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 3_000_000);
            assert_eq!(r.header("content-length"), Some("3000000"));
        }
        // Chunked upstream response becomes DATA frames without a length.
        let r = send(&client, h2get(&format!("{url}/chunked")), None, 0).await;
        assert_eq!(r.text(), "hello world");
        assert_eq!(r.header("transfer-encoding"), None);
    });
    // Recorded like HTTP/1.1 requests.
    let total: u64 = gw
        .metrics
        .requests()
        .iter()
        .filter(|((d, code), _)| d.name == "web" && *code == 200)
        .map(|(_, s)| s.count)
        .sum();
    assert_eq!(total, 11);
    assert!(
        gw.metrics
            .h2_connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // HTTP/1.1 on the same listener is unaffected.
    assert_eq!(get(&gw, "/plain").status, 200);
}

#[test]
fn h2_over_tls_with_alpn_and_http1_still_offered() {
    let up = upstream();
    let c = cluster("web", vec![up.addr]);
    let tls_cert = cert("h2.example.com");
    let cert2 = TestCert {
        cert_pem: tls_cert.cert_pem.clone(),
        key_pem: tls_cert.key_pem.clone(),
        der: tls_cert.der.clone(),
    };
    let gw = Gateway::start(
        move |port| {
            with_tls(
                snapshot(
                    port,
                    vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                    vec![],
                ),
                port,
                &cert2,
            )
        },
        quick_options(),
    );
    let url = format!("https://h2.example.com:{}", gw.addr.port());
    runtime().block_on(async {
        let client = tls_h2_client(gw.addr, &tls_cert, &[b"h2", b"http/1.1"]).await;
        let r = send(&client, h2get(&format!("{url}/secure")), None, 0).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            header_value(&r.text(), "x-forwarded-proto").as_deref(),
            Some("https")
        );
        // Known length larger than the buffering limit: streamed with content-length.
        let body = vec![b'z'; 2 * 1024 * 1024 + 17];
        let post = Request::post(format!("{url}/upload"))
            .header("content-length", body.len().to_string())
            .body(())
            .unwrap();
        let r = send(&client, post, Some(&body), 64 * 1024).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            header_value(&r.text(), "content-length").as_deref(),
            Some(&*body.len().to_string())
        );
        assert_eq!(r.header("x-body-sum"), Some(&*checksum(&body).to_string()));
        let r = send(&client, h2get(&format!("{url}/big/5000000")), None, 0).await;
        assert_eq!(r.body.len(), 5_000_000);

        // A client offering only http/1.1 is served HTTP/1.1.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tls_connect(gw.addr, &tls_cert, &[b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls.write_all(b"GET /one HTTP/1.1\r\nhost: h2.example.com\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.unwrap_or_default();
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    });
}

#[test]
fn grpc_through_an_h2c_backend_streams_both_ways_with_trailers() {
    let backend_addr = h2c_backend();
    let gw = simple_gateway(&h2c_cluster("grpc", backend_addr));
    let url = format!("http://grpc.test:{}", gw.addr.port());
    runtime().block_on(async {
        let client = h2c_client(gw.addr).await;
        // Bidirectional: each message is echoed before the next is sent.
        let req = Request::post(format!("{url}/echo.Echo/Chat"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut c = client.clone().ready().await.unwrap();
        let (resp, mut stream) = c.send_request(req, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(b"ping-1"), false)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-seen-te"], "trailers");
        assert!(resp.headers().contains_key("x-envoy-upstream-service-time"));
        assert_eq!(
            resp.headers()["x-seen-authority"],
            format!("grpc.test:{}", gw.addr.port())
        );
        let mut body = resp.into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"ping-1");
        stream
            .send_data(bytes::Bytes::from_static(b"ping-2"), false)
            .unwrap();
        let second = body.data().await.unwrap().unwrap();
        assert_eq!(&second[..], b"ping-2");
        let mut client_trailers = http::HeaderMap::new();
        client_trailers.insert("x-client-trailer", "bye".parse().unwrap());
        stream.send_trailers(client_trailers).unwrap();
        assert!(body.data().await.is_none());
        let trailers = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-echo-bytes"], "12");
        assert_eq!(trailers["x-client-trailer-seen"], "bye");

        // Trailers-only error from the backend passes through as it is.
        let req = Request::post(format!("{url}/fail"))
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let r = send(&client, req, Some(b"x"), 1).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("grpc-status"), Some("5"));
        assert_eq!(r.header("grpc-message"), Some("not found here"));

        // Many concurrent calls share the pooled upstream connection.
        let mut calls = Vec::new();
        for i in 0..20 {
            let client = client.clone();
            let url = url.clone();
            calls.push(tokio::spawn(async move {
                let payload = vec![b'a' + (i % 26) as u8; 100_000 + i];
                let req = Request::post(format!("{url}/echo.Echo/Big"))
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap();
                let r = send(&client, req, Some(&payload), 16 * 1024).await;
                (r, payload)
            }));
        }
        for call in calls {
            let (r, payload) = call.await.unwrap();
            assert_eq!(r.body, payload);
            assert_eq!(r.trailers.unwrap()["grpc-status"], "0");
        }
    });
    let ok: u64 = gw
        .metrics
        .requests()
        .iter()
        .filter(|((d, code), _)| d.name == "grpc" && *code == 200)
        .map(|(_, s)| s.count)
        .sum();
    assert_eq!(ok, 22);
}

#[test]
fn proxy_errors_on_grpc_requests_are_grpc_statuses() {
    let up = upstream();
    let slow = cluster("slow", vec![up.addr]);
    let empty = cluster("empty", vec![]);
    // A port nobody listens on: connection refused.
    let dead_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = h2c_cluster("dead", dead_addr);
    let gw = Gateway::start(
        move |port| {
            let mut timed = rule(vec![backend(&slow, 1)], vec![]);
            timed.timeouts = Timeouts {
                request: Some(Duration::from_millis(200)),
                ..Default::default()
            };
            snapshot(
                port,
                vec![
                    prefix("/slow", timed),
                    prefix("/empty", rule(vec![backend(&empty, 1)], vec![])),
                    prefix("/dead", rule(vec![backend(&dead, 1)], vec![])),
                    prefix(
                        "/invalid",
                        rule(
                            vec![WeightedBackend {
                                weight: 1,
                                target: BackendTarget::Invalid {
                                    reason: "no such Service".into(),
                                },
                                filters: vec![],
                            }],
                            vec![],
                        ),
                    ),
                ],
                vec![],
            )
        },
        quick_options(),
    );
    let url = format!("http://grpc.test:{}", gw.addr.port());
    runtime().block_on(async {
        let client = h2c_client(gw.addr).await;
        let grpc = |path: &str| {
            Request::post(format!("{url}{path}"))
                .header("content-type", "application/grpc+proto")
                .body(())
                .unwrap()
        };
        for (path, code) in [
            ("/nowhere", "12"),
            ("/empty/x", "14"),
            ("/dead/x", "14"),
            // GRPCRoute: an unresolved backendRef is UNAVAILABLE (HTTPRoute's is a 500).
            ("/invalid/x", "14"),
            ("/slow?delay=2000", "4"),
        ] {
            let r = send(&client, grpc(path), None, 0).await;
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(
                r.header("grpc-status"),
                Some(code),
                "{path}: {:?}",
                r.headers
            );
            assert_eq!(r.header("content-type"), Some("application/grpc"));
            assert!(r.header("grpc-message").is_some());
            assert!(r.body.is_empty());
        }
        // The same errors without gRPC keep their HTTP status.
        let r = send(&client, h2get(&format!("{url}/nowhere")), None, 0).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.text(), "no route\n");
        let r = send(&client, h2get(&format!("{url}/slow?delay=2000")), None, 0).await;
        assert_eq!(r.status, 504);
        let r = send(&client, h2get(&format!("{url}/invalid/x")), None, 0).await;
        assert_eq!(r.status, 500);
    });
}

#[test]
fn curl_speaks_http2_to_the_gateway() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not installed: skipped");
        return;
    }
    let up = upstream();
    let gw = simple_gateway(&cluster("web", vec![up.addr]));
    let out = std::process::Command::new("curl")
        .args(["-sS", "-v", "--http2-prior-knowledge", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{}/from-curl", gw.addr.port()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("< HTTP/2 200"), "{stderr}");
    assert!(stdout.starts_with("GET /from-curl HTTP/1.1"), "{stdout}");
}

#[test]
fn traffic_policy_applies_to_http2_streams() {
    use mesh_balance::PoolLimits;
    let up = upstream();
    let c = Arc::new(Cluster {
        name: "default/small:80".into(),
        service: obj("default", "small"),
        port: 80,
        endpoints: vec![up.addr],
        protocol: UpstreamProtocol::Http1,
        policy: Arc::new(mesh_registry::ClusterPolicy {
            connection_pool: Some(PoolLimits {
                max_connections: 1,
                max_pending_requests: 1,
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    let gw = simple_gateway(&c);
    let url = format!("http://h2.test:{}", gw.addr.port());
    runtime().block_on(async {
        let client = h2c_client(gw.addr).await;
        // Five concurrent slow streams on one connection: one in flight, one
        // pending, the rest refused by the circuit breaker.
        let mut calls = Vec::new();
        for i in 0..5 {
            let client = client.clone();
            let url = url.clone();
            calls.push(tokio::spawn(async move {
                let mut req = h2get(&format!("{url}/delay/600"));
                if i == 4 {
                    req.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                }
                (i, send(&client, req, None, 0).await)
            }));
        }
        let mut ok = 0;
        let mut overloaded = 0;
        for call in calls {
            let (i, r) = call.await.unwrap();
            match (r.status.as_u16(), r.header("grpc-status")) {
                (200, None) => ok += 1,
                (503, None) => {
                    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
                    overloaded += 1;
                }
                (200, Some("14")) if i == 4 => {
                    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
                    overloaded += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((1..=2).contains(&ok), "{ok} ok");
        assert!(overloaded >= 3, "{overloaded} overloaded");
        // Closed again once the load is gone.
        let r = send(&client, h2get(&format!("{url}/after")), None, 0).await;
        assert_eq!(r.status, 200);
    });
}

/// Reads one chunked HTTP/1.1 response with trailers from `s`, raw.
fn read_chunked_with_trailers(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some(i) = text.find("\r\n0\r\n") {
            if text[i + 5..].contains("\r\n\r\n") || text[i + 5..].starts_with("\r\n") {
                return text.into_owned();
            }
        }
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed early: {text}");
        buf.push(byte[0]);
    }
}

#[test]
fn http1_clients_reach_an_h2c_backend_with_trailers_as_chunked_trailers() {
    use std::io::Write;
    let backend_addr = h2c_backend();
    let gw = simple_gateway(&h2c_cluster("grpc", backend_addr));
    let mut s = gw.connect();
    for round in 0..2 {
        write!(
            s,
            "POST /echo.Echo/Say HTTP/1.1\r\nhost: h1.test\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: 5\r\n\r\nhello"
        )
        .unwrap();
        let text = read_chunked_with_trailers(&mut s);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.contains("x-seen-te: trailers\r\n"), "{text}");
        assert!(text.contains("x-seen-authority: h1.test\r\n"), "{text}");
        assert!(text.contains("\r\n5\r\nhello\r\n0\r\n"), "{text}");
        assert!(text.contains("grpc-status: 0\r\n"), "round {round}: {text}");
        assert!(text.contains("x-echo-bytes: 5\r\n"), "{text}");
    }
    // Unknown length from the client: chunked in, streamed to the backend.
    write!(
        s,
        "POST /echo.Echo/Stream HTTP/1.1\r\nhost: h1.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    .unwrap();
    let text = read_chunked_with_trailers(&mut s);
    assert!(text.contains("x-echo-bytes: 7\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[test]
fn drain_sends_goaway_and_lets_open_streams_finish() {
    let up = upstream();
    let gw = simple_gateway(&cluster("web", vec![up.addr]));
    let url = format!("http://h2.test:{}", gw.addr.port());
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        // A slow request is in flight when the drain starts.
        let slow = {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(
                async move { send(&client, h2get(&format!("{url}/delay/400")), None, 0).await },
            )
        };
        // Wait until the upstream has the request, then drain.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while up.seen.heads.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "request never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gw.drain.start();
        let r = slow.await.unwrap();
        assert_eq!(r.status, 200, "the in-flight stream finished");
        // GOAWAY: the connection ends cleanly and refuses new streams.
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        let refused = match client.clone().ready().await {
            Err(_) => true,
            Ok(mut c) => c.send_request(h2get(&format!("{url}/late")), true).is_err(),
        };
        assert!(refused);
    });
}

/// The waypoint's entry point: a stream opened for a Service VIP:port
/// (`serve_service_stream`) that carries HTTP/2 (gRPC) is routed with that
/// Service's table, whatever the :authority says.
#[test]
fn grpc_inside_a_service_scoped_stream_uses_the_service_table() {
    use mesh_registry::service_routes::{ServiceRoute, ServiceRoutes};
    use mesh_registry::{new_handle, RouteTable};
    use std::rc::Rc;
    let backend_addr = h2c_backend();
    let c = h2c_cluster("grpc", backend_addr);
    let vip: std::net::SocketAddr = "10.96.0.10:8080".parse().unwrap();
    let mut snap = snapshot(1, vec![], vec![]);
    snap.services = ServiceRoutes {
        by_vip: [(
            vip,
            Arc::new(ServiceRoute {
                service: obj("default", "grpc"),
                port: 8080,
                table: Arc::new(RouteTable {
                    entries: vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                }),
                from_routes: false,
                authz: None,
            }),
        )]
        .into_iter()
        .collect(),
    };
    let snapshots = new_handle(snap);
    let metrics = Arc::new(mesh_http::WorkerMetrics::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let m = metrics.clone();
    std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = monoio::net::TcpListener::from_std(listener).unwrap();
            let handler = Rc::new(mesh_http::HttpHandler::new(snapshots, m, quick_options()));
            let drain = mesh_runtime::Drain::new();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                monoio::spawn(handler.clone().serve_service_stream(
                    stream,
                    peer,
                    vip,
                    drain.clone(),
                ));
            }
        });
    });
    runtime().block_on(async {
        let client = h2c_client(addr).await;
        let req = Request::post("http://anything.example/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let r = send(&client, req, Some(b"through the waypoint"), 7).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"through the waypoint");
        assert_eq!(r.trailers.unwrap()["grpc-status"], "0");
    });
    let ok: u64 = metrics
        .requests()
        .iter()
        .filter(|((d, code), _)| d.name == "grpc" && *code == 200)
        .map(|(_, s)| s.count)
        .sum();
    assert_eq!(ok, 1);
}

#[test]
fn rate_limits_apply_to_http2_and_grpc_gets_resource_exhausted() {
    let up = upstream();
    let c = cluster("limited", vec![up.addr]);
    let gw = Gateway::start(
        move |port| {
            let mut r = rule(vec![backend(&c, 1)], vec![]);
            r.rate_limit = Some(Arc::new(mesh_limits::RateLimiter::new(
                mesh_limits::RateLimitConfig {
                    bucket: mesh_limits::TokenBucketConfig {
                        max_tokens: 2,
                        tokens_per_fill: 2,
                        fill_interval: Duration::from_secs(60),
                    },
                    key: mesh_limits::LimitKey::None,
                    source: "default/limit".into(),
                },
            )));
            snapshot(port, vec![prefix("/", r)], vec![])
        },
        quick_options(),
    );
    let url = format!("http://h2.test:{}/x", gw.addr.port());
    runtime().block_on(async {
        let client = h2c_client(gw.addr).await;
        for _ in 0..2 {
            assert_eq!(send(&client, h2get(&url), None, 0).await.status, 200);
        }
        let r = send(&client, h2get(&url), None, 0).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        let grpc = Request::post(&url)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let r = send(&client, grpc, None, 0).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("grpc-status"), Some("8"));
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    });
}
