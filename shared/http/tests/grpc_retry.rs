//! Retries toward an h2c (gRPC) backend: a trailers-only `grpc-status` the
//! route's policy lists (VirtualService `retryOn: unavailable`) is retried
//! with the request body replayed, for HTTP/2 and HTTP/1.1 clients; a body
//! larger than the kept copy is never replayed; without a policy nothing is
//! retried.

mod common;
mod h2_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use h2_support::*;
use http::{Request, Response};
use mesh_registry::{Cluster, RetryPolicy, UpstreamProtocol};

/// Calls per path, with the request bodies the backend received.
type Calls = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;

/// An h2c backend that answers the first call of every path with a
/// trailers-only `grpc-status: 14` (UNAVAILABLE), later calls with the
/// request body echoed and `grpc-status: 0`. The body is read first.
fn flaky_grpc_backend(calls: Calls) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let calls = calls.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        tokio::spawn(answer(req, respond, calls.clone()));
                    }
                });
            }
        })
    });
    addr
}

async fn answer(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    calls: Calls,
) {
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    let mut received = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let first = {
        let mut calls = calls.lock().unwrap();
        let list = calls.entry(path).or_default();
        list.push(received.clone());
        list.len() == 1
    };
    let head = Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    if first {
        let resp = head.header("grpc-status", "14").body(()).unwrap();
        let _ = respond.send_response(resp, true);
        return;
    }
    let Ok(mut send) = respond.send_response(head.body(()).unwrap(), false) else {
        return;
    };
    send.reserve_capacity(received.len());
    let _ = send.send_data(Bytes::from(received), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let _ = send.send_trailers(trailers);
}

fn gateway(addr: SocketAddr, retry: Option<RetryPolicy>) -> Gateway {
    let c = Arc::new(Cluster {
        name: "default/grpc:80".into(),
        service: obj("default", "grpc"),
        port: 80,
        endpoints: vec![addr],
        protocol: UpstreamProtocol::H2c,
        policy: Default::default(),
    });
    Gateway::start(
        move |port| {
            let mut r = rule(vec![backend(&c, 1)], vec![]);
            r.retry = retry;
            snapshot(port, vec![prefix("/", r)], vec![])
        },
        quick_options(),
    )
}

fn unavailable_retried() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        grpc_codes: vec![14],
        backoff: Some(std::time::Duration::from_millis(1)),
        ..Default::default()
    }
}

fn call(gw: &Gateway, path: &str, payload: &[u8]) -> Collected {
    let url = format!("http://grpc.test:{}{path}", gw.addr.port());
    runtime().block_on(async {
        let client = h2c_client(gw.addr).await;
        let req = Request::post(url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        send(&client, req, Some(payload), 4096).await
    })
}

fn grpc_status(r: &Collected) -> String {
    r.header("grpc-status")
        .map(str::to_string)
        .or_else(|| {
            r.trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn a_listed_grpc_status_is_retried_with_the_body_replayed() {
    let calls = Calls::default();
    let gw = gateway(
        flaky_grpc_backend(calls.clone()),
        Some(unavailable_retried()),
    );
    let payload = b"unary request message".repeat(50);
    let r = call(&gw, "/echo.Echo/Once", &payload);
    assert_eq!(r.status, 200);
    assert_eq!(grpc_status(&r), "0", "{:?} {:?}", r.headers, r.trailers);
    assert_eq!(r.body, payload);
    let seen = calls.lock().unwrap()["/echo.Echo/Once"].clone();
    assert_eq!(
        seen,
        vec![payload.clone(), payload],
        "the retry carried the same body"
    );
}

#[test]
fn without_a_policy_or_beyond_the_kept_copy_nothing_is_replayed() {
    let calls = Calls::default();
    let backend = flaky_grpc_backend(calls.clone());
    let gw = gateway(backend, None);
    let r = call(&gw, "/echo.Echo/NoPolicy", b"x");
    assert_eq!(grpc_status(&r), "14", "{:?} {:?}", r.headers, r.trailers);
    assert_eq!(calls.lock().unwrap()["/echo.Echo/NoPolicy"].len(), 1);

    // quick_options keeps copies up to max_buffered_body_bytes; a bigger body streams only.
    let gw = gateway(backend, Some(unavailable_retried()));
    let big = vec![b'z'; quick_options().max_buffered_body_bytes + 1];
    let r = call(&gw, "/echo.Echo/Big", &big);
    assert_eq!(grpc_status(&r), "14", "{:?} {:?}", r.headers, r.trailers);
    assert_eq!(calls.lock().unwrap()["/echo.Echo/Big"].len(), 1);
}

#[test]
fn http1_clients_of_an_h2c_backend_are_retried_too() {
    use std::io::{Read, Write};
    let calls = Calls::default();
    let gw = gateway(
        flaky_grpc_backend(calls.clone()),
        Some(unavailable_retried()),
    );
    let mut s = gw.connect();
    let payload = "a small unary message";
    write!(
        s,
        "POST /echo.Echo/FromH1 HTTP/1.1\r\nhost: grpc.test\r\ncontent-type: application/grpc\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(payload), "{out}");
    assert!(out.contains("grpc-status: 0"), "{out}");
    let seen = calls.lock().unwrap()["/echo.Echo/FromH1"].clone();
    assert_eq!(seen, vec![payload.as_bytes().to_vec(); 2]);
}
