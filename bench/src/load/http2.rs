//! HTTP/2 load (`--h2` over TLS with ALPN h2, `--h2c` prior knowledge): the h2
//! crate on monoio through poll-io (tokio's I/O traits on io_uring), as
//! shared/hbone does.
//!
//! Each connection carries `-m` slots; a slot is a closed (or open) loop of
//! one stream at a time, so a connection has up to `-m` streams in flight.
//! When the connection goes away (GOAWAY, e.g. nginx's keepalive_requests, or
//! an I/O error) the connection is re-opened and the slots resume; a request
//! that could not even be started on the old connection is not counted.

use super::pacing::Schedule;
use super::stats::ErrorKind;
use super::target::{RequestSpec, Target};
use super::worker::{slot_loop, Exchanged, Exchanger, Failure, Shared, Slot, Stop, ThreadPlan};
use anyhow::{anyhow, bail};
use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2); h2 would refuse the request.
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Flow-control windows we advertise: large enough that a response never waits
/// for a WINDOW_UPDATE (h2load's defaults are larger still).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 24;

/// The request every stream sends, built once.
pub struct Http2Plan {
    pub streams: usize,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// Request header bytes as HTTP/1.1 would spell them (for BytesSent; the
    /// HPACK-encoded size on the wire is smaller).
    header_bytes: u64,
}

impl Http2Plan {
    pub fn new(target: &Target, spec: &RequestSpec, streams: usize) -> anyhow::Result<Http2Plan> {
        if streams == 0 {
            bail!("-m must be at least 1");
        }
        let method = Method::from_bytes(spec.method.as_bytes())
            .map_err(|_| anyhow!("bad method {:?}", spec.method))?;
        let mut authority = target.authority.clone();
        let mut headers = HeaderMap::new();
        let mut header_bytes = (spec.method.len() + target.path.len() + 12) as u64;
        for (name, value) in &spec.headers {
            let lower = name.to_ascii_lowercase();
            if lower == "host" {
                authority = value.clone();
                continue;
            }
            if CONNECTION_SPECIFIC.contains(&lower.as_str()) {
                bail!("header {name:?} is connection-specific and not allowed in HTTP/2");
            }
            let n = HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| anyhow!("bad header name {name:?}"))?;
            let v =
                HeaderValue::from_str(value).map_err(|_| anyhow!("bad header value {value:?}"))?;
            header_bytes += (name.len() + value.len() + 4) as u64;
            headers.append(n, v);
        }
        if !headers.contains_key(http::header::USER_AGENT) {
            let ua = concat!("ringmesh-bench/", env!("CARGO_PKG_VERSION"));
            header_bytes += (ua.len() + 14) as u64;
            headers.insert(http::header::USER_AGENT, HeaderValue::from_static(ua));
        }
        if !spec.body.is_empty() && !headers.contains_key(http::header::CONTENT_LENGTH) {
            headers.insert(http::header::CONTENT_LENGTH, spec.body.len().into());
        }
        header_bytes += (authority.len() + 8) as u64;
        let scheme = if target.tls { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{authority}{}", target.path)
            .parse()
            .map_err(|e| anyhow!("bad request URI: {e}"))?;
        Ok(Http2Plan {
            streams,
            method,
            uri,
            headers,
            body: Bytes::from(spec.body.clone()),
            header_bytes,
        })
    }

    fn request(&self) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// One HTTP/2 connection and its `-m` slots, reconnecting until the run ends.
pub async fn run_connection(plan: Rc<ThreadPlan>, shared: Rc<Shared>, index: usize) {
    let h2 = plan
        .http2
        .clone()
        .expect("HTTP/2 run without an HTTP/2 plan");
    let m = h2.streams;
    let mut slots: Vec<Slot> =
        (0..m)
            .map(|s| {
                Slot::new(plan.qps.map(|q| {
                    Schedule::for_connection(q, plan.total_connections * m, index * m + s)
                }))
            })
            .collect();
    loop {
        if plan.deadline.is_some_and(|d| Instant::now() >= d) || shared.exhausted() {
            return;
        }
        let began = Instant::now();
        let connected = match plan.timeout {
            Some(t) => monoio::time::timeout(t, open(&plan, &shared))
                .await
                .unwrap_or(Err(ErrorKind::Timeout)),
            None => open(&plan, &shared).await,
        };
        let send = match connected {
            Ok(send) => send,
            Err(kind) => {
                // A failed connection costs one request, so -n ends on a dead target.
                if !shared.claim() {
                    return;
                }
                shared
                    .stats
                    .borrow_mut()
                    .record_error(kind, Some(began.elapsed()));
                plan.counters.add_error();
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let tasks: Vec<_> = slots
            .drain(..)
            .map(|mut slot| {
                let (plan, shared) = (plan.clone(), shared.clone());
                let mut exchanger = Http2Exchanger {
                    send: send.clone(),
                    broken: false,
                };
                monoio::spawn(async move {
                    let stop = slot_loop(&plan, &shared, &mut slot, &mut exchanger).await;
                    (slot, stop)
                })
            })
            .collect();
        // Only the slots hold the connection now: when they are done it closes.
        drop(send);
        let mut broken = false;
        for task in tasks {
            let (slot, stop) = task.await;
            slots.push(slot);
            broken |= stop == Stop::Broken;
        }
        if !broken {
            return;
        }
    }
}

/// TCP connect, TLS with ALPN h2 (--h2) or nothing (--h2c), HTTP/2 handshake;
/// the connection is driven by its own task.
async fn open(plan: &ThreadPlan, shared: &Shared) -> Result<SendRequest<Bytes>, ErrorKind> {
    let tcp = TcpStream::connect_addr(plan.addr)
        .await
        .map_err(|_| ErrorKind::Connect)?;
    let _ = tcp.set_nodelay(true);
    shared.stats.borrow_mut().connections_opened += 1;
    match &plan.tls {
        None => handshake(tcp.into_poll_io().map_err(|_| ErrorKind::Connect)?).await,
        Some(tls) => {
            let began = Instant::now();
            let stream = tls.connect(tcp).await.map_err(|_| ErrorKind::Tls)?;
            shared
                .stats
                .borrow_mut()
                .tls_handshakes
                .record(began.elapsed().as_nanos() as u64);
            handshake(stream).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Bytes>, ErrorKind>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false)
        .handshake::<T, Bytes>(io)
        .await
        .map_err(|e| classify(&e))?;
    monoio::spawn(async move {
        // Ends when every SendRequest is dropped and the streams are done, or
        // on a connection error (which the streams see too).
        let _ = connection.await;
    });
    Ok(send)
}

/// The error kind of an h2 failure.
fn classify(e: &h2::Error) -> ErrorKind {
    if e.is_io() {
        ErrorKind::Read
    } else if e.is_go_away() {
        ErrorKind::Closed
    } else if e.is_reset() {
        ErrorKind::Reset
    } else {
        ErrorKind::Parse
    }
}

/// A failure after which this connection takes no more streams.
fn breaks_connection(e: &h2::Error) -> bool {
    e.is_io() || e.is_go_away() || e.reason().is_none()
}

struct Http2Exchanger {
    send: SendRequest<Bytes>,
    /// The connection failed; the slot must reconnect.
    broken: bool,
}

impl Http2Exchanger {
    fn failed(&mut self, e: h2::Error) -> Failure {
        if breaks_connection(&e) {
            self.broken = true;
        }
        if e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR) {
            // A graceful GOAWAY (nginx after keepalive_requests streams): this
            // stream was above its last-stream-id, so the server did not
            // process it (RFC 9113 §6.8); it is retried on a new connection.
            return Failure::Unsent;
        }
        Failure::Error(classify(&e))
    }
}

impl Exchanger for Http2Exchanger {
    async fn exchange(&mut self, plan: &ThreadPlan, shared: &Shared) -> Result<Exchanged, Failure> {
        let h2 = plan.http2.as_deref().expect("HTTP/2 plan");
        // Waits while the server's SETTINGS_MAX_CONCURRENT_STREAMS is reached.
        let mut send = match self.send.clone().ready().await {
            Ok(s) => s,
            Err(_) => {
                self.broken = true;
                return Err(Failure::Unsent);
            }
        };
        let end_of_stream = h2.body.is_empty();
        let (response, mut body_tx) = match send.send_request(h2.request(), end_of_stream) {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                return Err(Failure::Unsent);
            }
        };
        if !end_of_stream {
            // h2 queues the data and sends it as the peer's window allows.
            body_tx
                .send_data(h2.body.clone(), true)
                .map_err(|e| self.failed(e))?;
        }
        shared.stats.borrow_mut().bytes_sent += h2.header_bytes + h2.body.len() as u64;
        let response = response.await.map_err(|e| self.failed(e))?;
        let status = response.status().as_u16();
        // Decoded header bytes, spelled as HTTP/1.1 would ("HTTP/1.1 200 OK\r\n", "name: value\r\n").
        let header_len = 17
            + response
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
                .sum::<u64>()
            + 2;
        let mut body = response.into_body();
        let mut total = header_len;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| self.failed(e))?;
            total += chunk.len() as u64;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok(Exchanged {
            status,
            header_len,
            total_len: total,
            close: false,
        })
    }

    fn settle(&mut self, _plan: &ThreadPlan, _result: &Result<Exchanged, Failure>) -> bool {
        !self.broken
    }
}
