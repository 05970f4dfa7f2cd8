//! A gRPC-shaped h2c app and client for the pods, and plain HTTP/2 GETs (tokio + h2, no codegen:
//! messages are UTF-8 strings in gRPC's 5-byte length-prefixed frames).
//! Not declared in `mod.rs` (only tests with these dev-dependencies use it):
//! `#[path = "topology/grpc.rs"] mod grpc;`.
//!
//! - `/test.Echo/Unary`: one reply `pod=NAME <request>`, then the trailers
//!   `grpc-status: 0` and `x-served-by: NAME`.
//! - `/test.Echo/Chat` (bidirectional streaming): every request message is
//!   answered `NAME:<message>` as soon as it arrives; at the end of the
//!   request stream the trailers `grpc-status: 0` and `x-messages: COUNT`.
//! - `/test.Echo/Flaky`: as Unary, except that the first call with a given
//!   message fails (trailers-only `grpc-status: 14`, UNAVAILABLE).
//! - `/test.Echo/Slow`: as Unary, after waiting the message's number of
//!   milliseconds.

use std::net::{SocketAddr, TcpListener};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};

use crate::topology::{in_netns, Pod};

pub const UNARY: &str = "/test.Echo/Unary";
pub const CHAT: &str = "/test.Echo/Chat";
pub const FLAKY: &str = "/test.Echo/Flaky";
pub const SLOW: &str = "/test.Echo/Slow";

/// Calls the apps received, by "PATH MESSAGE" (unary methods).
static CALLS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// How many calls of `path` with `message` reached the apps.
pub fn calls_seen(path: &str, message: &str) -> usize {
    let calls = CALLS.lock().unwrap();
    calls
        .get(&format!("{path} {message}"))
        .copied()
        .unwrap_or(0)
}

/// Starts the app inside `pod` on `port`; returns once it listens.
pub fn spawn_grpc_app(pod: &Pod, port: u16) {
    let name = pod.name;
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&pod.netns(), move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind grpc app");
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::task::spawn_local(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = conn.accept().await {
                        tokio::task::spawn_local(serve_call(name, request, respond));
                    }
                });
            }
        });
    });
    rx.recv().unwrap();
}

/// A current-thread runtime whose `block_on` runs `spawn_local` tasks.
fn runtime() -> LocalRuntime {
    LocalRuntime(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    )
}

struct LocalRuntime(tokio::runtime::Runtime);

impl LocalRuntime {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::task::LocalSet::new().block_on(&self.0, f)
    }
}

async fn serve_call(
    name: &'static str,
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    let streaming = path == CHAT;
    let mut send = None;
    if streaming {
        match respond.send_response(grpc_head(None), false) {
            Ok(s) => send = Some(s),
            Err(_) => return,
        }
    }
    let mut frames = BytesMut::new();
    let mut count = 0usize;
    let mut unary_request = None;
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        frames.extend_from_slice(&chunk);
        while let Some(message) = next_message(&mut frames) {
            count += 1;
            match send.as_mut() {
                Some(send) => {
                    if send
                        .send_data(frame(&format!("{name}:{message}")), false)
                        .is_err()
                    {
                        return;
                    }
                }
                None => unary_request = Some(message),
            }
        }
    }
    let mut send = match send {
        Some(send) => send,
        None => {
            let message = unary_request.unwrap_or_default();
            let times = {
                let mut calls = CALLS.lock().unwrap();
                let n = calls.entry(format!("{path} {message}")).or_default();
                *n += 1;
                *n
            };
            if path == FLAKY && times == 1 {
                let _ = respond.send_response(grpc_head(Some("14")), true);
                return;
            }
            if path == SLOW {
                let ms = message.parse().unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let Ok(mut send) = respond.send_response(grpc_head(None), false) else {
                return;
            };
            let _ = send.send_data(frame(&format!("pod={name} {message}")), false);
            send
        }
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("x-served-by", name.parse().unwrap());
    trailers.insert("x-messages", count.to_string().parse().unwrap());
    let _ = send.send_trailers(trailers);
}

/// A gRPC response head; with `status`, a trailers-only answer.
fn grpc_head(status: Option<&str>) -> Response<()> {
    let mut head = Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    if let Some(status) = status {
        head = head.header("grpc-status", status);
    }
    head.body(()).unwrap()
}

/// One length-prefixed message (uncompressed).
fn frame(message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.freeze()
}

/// Takes the first whole message off `buf`, if there is one.
fn next_message(buf: &mut BytesMut) -> Option<String> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    let message = buf.split_to(len);
    Some(String::from_utf8_lossy(&message).into_owned())
}

/// What one call received: its response status, messages and trailers.
#[derive(Debug)]
pub struct Call {
    pub status: u16,
    pub headers: HeaderMap,
    pub messages: Vec<String>,
    pub trailers: HeaderMap,
}

impl Call {
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// From the trailers, or the headers of a trailers-only answer.
    pub fn grpc_status(&self) -> Option<&str> {
        self.trailer("grpc-status").or(self.header("grpc-status"))
    }
}

/// From inside `pod`: `n` unary calls of `path` (messages `TAG 0`,
/// `TAG 1`, ...) on one HTTP/2 connection to `to`.
pub fn unary_calls(
    pod: &Pod,
    to: SocketAddr,
    path: &'static str,
    tag: &'static str,
    n: usize,
) -> Vec<Call> {
    with_connection(pod, to, move |mut client| async move {
        let mut calls = Vec::new();
        for i in 0..n {
            let (response, mut stream) = client
                .send_request(grpc_request(to, path), false)
                .expect("send unary call");
            stream
                .send_data(frame(&format!("{tag} {i}")), true)
                .unwrap();
            calls.push(finish(response, Vec::new()).await);
            client = client.ready().await.expect("connection ready");
        }
        calls
    })
}

/// From inside `pod`: `messages.len()` calls of `path` at once, multiplexed
/// on one HTTP/2 connection to `to`.
pub fn concurrent_calls(
    pod: &Pod,
    to: SocketAddr,
    path: &'static str,
    messages: Vec<String>,
) -> Vec<Call> {
    with_connection(pod, to, move |client| async move {
        let mut pending = Vec::new();
        for m in messages {
            let mut client = client.clone().ready().await.expect("connection ready");
            let (response, mut stream) = client
                .send_request(grpc_request(to, path), false)
                .expect("send call");
            stream.send_data(frame(&m), true).unwrap();
            pending.push(tokio::task::spawn_local(finish(response, Vec::new())));
        }
        let mut calls = Vec::new();
        for p in pending {
            calls.push(p.await.expect("call task"));
        }
        calls
    })
}

/// From inside `pod`: one bidirectional streaming call to `to`; each
/// message is sent only after the previous one's reply arrived (so the
/// path in between must stream, not buffer).
pub fn chat(pod: &Pod, to: SocketAddr, messages: &'static [&'static str]) -> Call {
    with_connection(pod, to, move |mut client| async move {
        let (response, mut stream) = client
            .send_request(grpc_request(to, CHAT), false)
            .expect("start streaming call");
        let response = response.await.expect("response head");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let mut frames = BytesMut::new();
        let mut received = Vec::new();
        for m in messages {
            stream.send_data(frame(m), false).unwrap();
            let reply = loop {
                if let Some(reply) = next_message(&mut frames) {
                    break reply;
                }
                let chunk = body
                    .data()
                    .await
                    .unwrap_or_else(|| panic!("stream ended before the reply to {m}"))
                    .expect("reply data");
                let _ = body.flow_control().release_capacity(chunk.len());
                frames.extend_from_slice(&chunk);
            };
            received.push(reply);
        }
        stream.send_data(Bytes::new(), true).unwrap();
        while let Some(chunk) = body.data().await {
            frames.extend_from_slice(&chunk.expect("data"));
        }
        let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
        Call {
            status,
            headers,
            messages: received,
            trailers,
        }
    })
}

/// From inside `pod`: plain HTTP/2 GETs (h2c prior knowledge) of `paths`,
/// one after another on one connection to `to`: (status, body) each.
pub fn h2_gets(pod: &Pod, to: SocketAddr, paths: Vec<String>) -> Vec<(u16, String)> {
    with_connection(pod, to, move |mut client| async move {
        let mut out = Vec::new();
        for path in paths {
            let request = Request::get(format!("http://{to}{path}")).body(()).unwrap();
            let (response, _) = client.send_request(request, true).expect("send GET");
            let response = response.await.expect("response head");
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("response data");
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            out.push((status, String::from_utf8_lossy(&bytes).into_owned()));
            client = client.ready().await.expect("connection ready");
        }
        out
    })
}

fn grpc_request(to: SocketAddr, path: &str) -> Request<()> {
    Request::builder()
        .method("POST")
        .uri(format!("http://{to}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

async fn finish(response: h2::client::ResponseFuture, mut messages: Vec<String>) -> Call {
    let response = response.await.expect("response head");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut frames = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response data");
        let _ = body.flow_control().release_capacity(chunk.len());
        frames.extend_from_slice(&chunk);
    }
    while let Some(m) = next_message(&mut frames) {
        messages.push(m);
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
    Call {
        status,
        headers,
        messages,
        trailers,
    }
}

/// Runs `f` with an h2c connection to `to` opened from inside `pod`.
fn with_connection<T, Fut>(
    pod: &Pod,
    to: SocketAddr,
    f: impl FnOnce(h2::client::SendRequest<Bytes>) -> Fut + Send + 'static,
) -> T
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    in_netns(&pod.netns(), move || {
        runtime().block_on(async move {
            let tcp = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::net::TcpStream::connect(to),
            )
            .await
            .expect("connect timed out")
            .expect("connect");
            let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::task::spawn_local(async move {
                let _ = conn.await;
            });
            tokio::time::timeout(std::time::Duration::from_secs(20), f(client))
                .await
                .expect("gRPC calls timed out")
        })
    })
    .join()
    .unwrap()
}
