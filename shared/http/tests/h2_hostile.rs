//! Hostile HTTP/2 input, written frame by frame over raw sockets: each attack
//! is answered with GOAWAY (or the connection is closed) and counted, while a
//! well-behaved connection on the same worker keeps being served.

mod common;
mod h2_support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use h2_support::*;

const ENHANCE_YOUR_CALM: u32 = 0xb;
const FLOW_CONTROL_ERROR: u32 = 0x3;

/// Writes as much of `data` as the server accepts: it may close mid-way.
fn write_lossy(s: &mut TcpStream, data: &[u8]) {
    for piece in data.chunks(64 * 1024) {
        if s.write_all(piece).is_err() {
            return;
        }
    }
}

fn open(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(kind::SETTINGS, 0, 0, &[])).unwrap();
    s
}

/// A client making requests in a loop on its own connection until stopped.
struct GoodClient {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl GoodClient {
    fn start(gw: &Gateway) -> GoodClient {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let addr = gw.addr;
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let client = h2c_client(addr).await;
                while !s.load(Ordering::SeqCst) {
                    let url = format!("http://good.test:{}/good", addr.port());
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        send(&client, h2get(&url), None, 0),
                    )
                    .await;
                    match r {
                        Ok(r) if r.status == 200 => o.fetch_add(1, Ordering::SeqCst),
                        _ => f.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        });
        GoodClient {
            stop,
            ok,
            failed,
            thread,
        }
    }

    /// Waits until at least `n` more requests succeeded (bounded by a deadline).
    fn served_more(&self, n: u64) -> bool {
        let start = self.ok.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.ok.load(Ordering::SeqCst) >= start + n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// Polls `cond` until it holds or a deadline passes (the counter is bumped
/// as the server's side of the connection winds down, just after the close).
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

fn counters(gw: &Gateway) -> (u64, u64) {
    (
        gw.metrics.h2_floods.load(Ordering::Relaxed),
        gw.metrics.h2_protocol_errors.load(Ordering::Relaxed),
    )
}

#[test]
fn hostile_http2_is_answered_with_goaway_while_a_good_connection_is_served() {
    let up = upstream();
    let c = cluster("web", vec![up.addr]);
    let gw = Gateway::start(
        move |port| {
            snapshot(
                port,
                vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                vec![],
            )
        },
        quick_options(),
    );
    let good = GoodClient::start(&gw);
    assert!(good.served_more(3), "the good client is served at all");
    let deadline = Duration::from_secs(10);

    // SETTINGS flood: thousands of SETTINGS, each demanding an ACK.
    let before = counters(&gw);
    let mut s = open(&gw);
    let mut flood = Vec::new();
    for _ in 0..5000 {
        flood.extend(frame(kind::SETTINGS, 0, 0, &[]));
    }
    write_lossy(&mut s, &flood);
    assert_eq!(
        read_until_closed(&mut s, deadline),
        Ending::GoAway(ENHANCE_YOUR_CALM)
    );
    assert!(
        eventually(|| counters(&gw).0 == before.0 + 1),
        "counted as a flood"
    );
    assert!(good.served_more(3));

    // PING flood, the same way.
    let mut s = open(&gw);
    let mut flood = Vec::new();
    for i in 0..5000u64 {
        flood.extend(frame(kind::PING, 0, 0, &i.to_be_bytes()));
    }
    write_lossy(&mut s, &flood);
    assert_eq!(
        read_until_closed(&mut s, deadline),
        Ending::GoAway(ENHANCE_YOUR_CALM)
    );
    assert!(good.served_more(3));

    // Rapid reset (CVE-2023-44487): open a stream and cancel it at once, again and again.
    let before = counters(&gw);
    let mut s = open(&gw);
    let block = get_headers_block();
    let mut attack = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        attack.extend(frame(kind::HEADERS, 0x4 | 0x1, id, &block));
        attack.extend(frame(kind::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    write_lossy(&mut s, &attack);
    assert_eq!(
        read_until_closed(&mut s, deadline),
        Ending::GoAway(ENHANCE_YOUR_CALM)
    );
    assert!(
        eventually(|| {
            let after = counters(&gw);
            after.0 + after.1 > before.0 + before.1
        }),
        "counted"
    );
    assert!(good.served_more(3));

    // CONTINUATION flood: one header block that never ends.
    let before = counters(&gw);
    let mut s = open(&gw);
    let mut attack = frame(kind::HEADERS, 0x1, 1, &block); // no END_HEADERS
                                                           // Literal header without indexing: name "x-a", a 1000-byte value.
    let mut field = vec![0x00, 3, b'x', b'-', b'a', 0x7f, 0xe9, 0x06];
    field.extend(std::iter::repeat_n(b'a', 1000));
    for _ in 0..5000 {
        attack.extend(frame(kind::CONTINUATION, 0, 1, &field));
    }
    write_lossy(&mut s, &attack);
    assert!(
        matches!(
            read_until_closed(&mut s, deadline),
            Ending::GoAway(_) | Ending::Closed
        ),
        "the endless header block is cut off"
    );
    assert!(
        eventually(|| counters(&gw).1 > before.1),
        "counted as a protocol error"
    );
    assert!(good.served_more(3));

    // WINDOW_UPDATE overflow: the connection window past 2^31-1.
    let mut s = open(&gw);
    let inc = 0x7fff_ffffu32.to_be_bytes();
    let mut attack = frame(kind::WINDOW_UPDATE, 0, 0, &inc);
    attack.extend(frame(kind::WINDOW_UPDATE, 0, 0, &inc));
    write_lossy(&mut s, &attack);
    assert_eq!(
        read_until_closed(&mut s, deadline),
        Ending::GoAway(FLOW_CONTROL_ERROR)
    );
    assert!(good.served_more(3));

    // A broken preface after the h2c request line: closed, nothing served.
    let before = counters(&gw);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    write_lossy(
        &mut s,
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\ngarbage garbage garbage garbage",
    );
    assert!(matches!(
        read_until_closed(&mut s, deadline),
        Ending::GoAway(_) | Ending::Closed
    ));
    assert!(eventually(|| counters(&gw).1 > before.1));
    assert!(good.served_more(3));

    let (ok, failed) = good.finish();
    assert_eq!(failed, 0, "the good connection never failed ({ok} served)");
    // Every attack connection was closed: only the good client's remains.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let opened = gw.metrics.connections_opened.load(Ordering::Relaxed);
        let closed = gw.metrics.connections_closed.load(Ordering::Relaxed);
        if opened - closed <= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{opened} opened, {closed} closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn garbage_after_alpn_h2_over_tls_is_closed() {
    let up = upstream();
    let c = cluster("web", vec![up.addr]);
    let tls_cert = cert("h2.example.com");
    let (p, k, d) = (
        tls_cert.cert_pem.clone(),
        tls_cert.key_pem.clone(),
        tls_cert.der.clone(),
    );
    let gw = Gateway::start(
        move |port| {
            let cert = TestCert {
                cert_pem: p,
                key_pem: k,
                der: d,
            };
            with_tls(
                snapshot(
                    port,
                    vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                    vec![],
                ),
                port,
                &cert,
            )
        },
        quick_options(),
    );
    runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tls_connect(gw.addr, &tls_cert, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let _ = tls
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\nnot a preface at all")
            .await;
        let _ = tls.flush().await;
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "the connection is closed");
        // Whatever came back is HTTP/2 framing (SETTINGS/GOAWAY), never an HTTP/1.1 answer.
        assert!(!out.starts_with(b"HTTP/1.1"));
        // A proper h2 client on a new connection is served.
        let client = tls_h2_client(gw.addr, &tls_cert, &[b"h2"]).await;
        let url = format!("https://h2.example.com:{}/after", gw.addr.port());
        assert_eq!(send(&client, h2get(&url), None, 0).await.status, 200);
    });
    assert!(eventually(|| gw
        .metrics
        .h2_protocol_errors
        .load(Ordering::Relaxed)
        >= 1));
}
