//! End-to-end: raw std::net clients → HttpHandler on a monoio thread → a
//! std::net upstream.

mod common;

use std::io::{BufReader, Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mesh_registry::*;

fn simple(up: &Upstream) -> Gateway {
    let c = cluster("echo", vec![up.addr]);
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

#[test]
fn forwards_and_adds_forwarding_headers() {
    let up = upstream();
    let gw = simple(&up);
    let r = request(
        &gw,
        "GET /hello?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nX-Forwarded-For: 9.9.9.9\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 3\r\nX-Keep: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = r.text();
    assert!(seen.starts_with("GET /hello?x=1 HTTP/1.1\r\n"), "{seen}");
    assert_eq!(
        header_value(&seen, "host").as_deref(),
        Some("Example.com:8080")
    );
    assert_eq!(
        header_value(&seen, "x-forwarded-for").as_deref(),
        Some("9.9.9.9, 127.0.0.1")
    );
    assert_eq!(
        header_value(&seen, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(header_value(&seen, "x-keep").as_deref(), Some("yes"));
    let id = header_value(&seen, "x-request-id").expect("x-request-id generated");
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "UUID v4: {id}");
    for gone in ["x-drop", "keep-alive", "connection"] {
        assert!(
            header_value(&seen, gone).is_none(),
            "{gone} forwarded: {seen}"
        );
    }
    // An existing request id is kept.
    let r = request(
        &gw,
        "GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        header_value(&r.text(), "x-request-id").as_deref(),
        Some("abc")
    );
}

#[test]
fn keep_alive_reuses_both_connections_and_pipelining_keeps_order() {
    let up = upstream();
    let gw = simple(&up);
    let s = gw.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for i in 0..5 {
        (&s).write_all(format!("GET /seq/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let resp = read_response(&mut r, false);
        assert_eq!(resp.status, 200);
        assert!(resp.text().starts_with(&format!("GET /seq/{i} ")));
    }
    assert_eq!(
        up.seen.connections.load(Ordering::SeqCst),
        1,
        "upstream connection pooled"
    );

    // Pipelined: all requests in one write, including one with a body and a slow one.
    let mut batch = String::new();
    batch.push_str("GET /delay/100 HTTP/1.1\r\nHost: a\r\n\r\n");
    batch.push_str("POST /p1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    batch.push_str("GET /status/404 HTTP/1.1\r\nHost: a\r\n\r\n");
    batch.push_str("GET /p3 HTTP/1.1\r\nHost: a\r\n\r\n");
    (&s).write_all(batch.as_bytes()).unwrap();
    let a = read_response(&mut r, false);
    assert!(a.text().starts_with("GET /delay/100 "));
    let b = read_response(&mut r, false);
    assert!(b.text().starts_with("POST /p1 "));
    assert_eq!(b.header("x-body-len").as_deref(), Some("5"));
    let c = read_response(&mut r, false);
    assert_eq!(c.status, 404);
    let d = read_response(&mut r, false);
    assert!(d.text().starts_with("GET /p3 "));
}

#[test]
fn chunked_both_ways_and_eof_responses() {
    let up = upstream();
    let gw = simple(&up);
    let s = gw.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    (&s).write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-body-len").as_deref(), Some("11"));
    assert_eq!(
        resp.header("x-body-sum"),
        Some(checksum_of(b"hello world").to_string())
    );
    assert!(header_value(&resp.text(), "transfer-encoding").is_some_and(|v| v == "chunked"));

    (&s).write_all(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(resp.text(), "hello world");

    // Read-to-EOF upstream response: re-framed as chunked for an HTTP/1.1 client, connection kept.
    (&s).write_all(b"GET /eof HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.text(), "until the end");
    (&s).write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);

    // HTTP/1.0 client: raw body then close.
    let resp = request(&gw, "GET /eof HTTP/1.0\r\n\r\n");
    assert_eq!(resp.text(), "until the end");
    assert!(resp.header("transfer-encoding").is_none());
}

#[test]
fn http10_closes_unless_keep_alive_requested() {
    let up = upstream();
    let gw = simple(&up);
    let s = gw.connect();
    (&s).write_all(b"GET /a HTTP/1.0\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert!(closed_after(&mut r));

    let s = gw.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        (&s).write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let resp = read_response(&mut r, false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection").as_deref(), Some("keep-alive"));
    }
}

#[test]
fn expect_continue_gets_100_before_the_body() {
    let up = upstream();
    let gw = simple(&up);
    let s = gw.connect();
    (&s).write_all(
        b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    (&s).write_all(b"data").unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-body-len").as_deref(), Some("4"));
    assert!(header_value(&resp.text(), "expect").is_none());
}

#[test]
fn upgrade_tunnels_bytes_both_ways() {
    let up = upstream();
    let gw = simple(&up);
    let s = gw.connect();
    (&s).write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\nearly").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("upgrade").as_deref(), Some("websocket"));
    let seen = up.seen.heads.lock().unwrap()[0].clone();
    assert_eq!(header_value(&seen, "upgrade").as_deref(), Some("websocket"));
    assert_eq!(
        header_value(&seen, "connection").as_deref(),
        Some("upgrade")
    );
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"early");
    (&s).write_all(b"ping-pong").unwrap();
    let mut buf = [0u8; 9];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping-pong");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_after(&mut r));
}

#[test]
fn large_bodies_stream_through() {
    let up = upstream();
    let gw = simple(&up);
    const TOTAL: usize = 128 * 1024 * 1024;
    let s = gw.connect();
    (&s).write_all(
        format!("POST /big-upload HTTP/1.1\r\nHost: a\r\nContent-Length: {TOTAL}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut sum = 0u64;
    let mut sent = 0;
    // First half, then wait until the upstream has seen body bytes: the
    // gateway forwards before the body is complete.
    while sent < TOTAL / 2 {
        (&s).write_all(&chunk).unwrap();
        for b in &chunk {
            sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
        }
        sent += chunk.len();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while up.seen.body_bytes.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream saw nothing of a half-sent body"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    while sent < TOTAL {
        (&s).write_all(&chunk).unwrap();
        for b in &chunk {
            sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
        }
        sent += chunk.len();
    }
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-body-len"), Some(TOTAL.to_string()));
    assert_eq!(resp.header("x-body-sum"), Some(sum.to_string()));

    // Chunked upload of 16 MiB in uneven chunks.
    (&s).write_all(b"POST /chunky HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut total = 0;
    let mut sum = 0u64;
    for i in 0..256 {
        let part = &chunk[..(i * 977) % chunk.len() + 1];
        (&s).write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .unwrap();
        (&s).write_all(part).unwrap();
        (&s).write_all(b"\r\n").unwrap();
        for b in part {
            sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
        }
        total += part.len();
    }
    (&s).write_all(b"0\r\n\r\n").unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.header("x-body-len"), Some(total.to_string()));
    assert_eq!(resp.header("x-body-sum"), Some(sum.to_string()));

    // And a large download.
    (&s).write_all(b"GET /big/67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, false);
    assert_eq!(resp.body.len(), 64 * 1024 * 1024);
}

/// Sends `raw`, expects `status` with connection: close and the connection
/// closed, while a concurrent healthy connection is still served.
fn hostile(gw: &Gateway, raw: &[u8], status: u16) {
    // A keep-alive connection that is idle while the hostile one is handled.
    let bystander = gw.connect();
    let mut by = BufReader::new(bystander.try_clone().unwrap());
    (&bystander)
        .write_all(b"GET /bystander HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut by, false).status, 200);
    let s = gw.connect();
    (&s).write_all(raw).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, status, "{}", String::from_utf8_lossy(raw));
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert!(!resp.body.is_empty(), "short text body");
    assert!(closed_after(&mut r));
    (&bystander)
        .write_all(b"GET /bystander HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut by, false).status, 200);
    assert_healthy(gw);
}

#[test]
fn hostile_input_gets_a_status_and_a_close() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = Gateway::start(
        move |port| {
            snapshot(
                port,
                vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                vec![],
            )
        },
        mesh_http::HttpOptions {
            max_request_body_bytes: Some(1000),
            body_idle_timeout: Duration::from_millis(500),
            ..quick_options()
        },
    );
    hostile(
        &gw,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        400,
    );
    hostile(
        &gw,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    );
    hostile(
        &gw,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        400,
    );
    hostile(&gw, b"\x16\x03\x01garbage\r\n\r\n", 400);
    hostile(
        &gw,
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        400,
    );
    hostile(&gw, b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    hostile(&gw, big.as_bytes(), 431);
    hostile(
        &gw,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
        413,
    );
    let mut chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("200\r\n{}\r\n", "b".repeat(512)).as_bytes());
    }
    hostile(&gw, &chunked, 413);
    // Incomplete head: 408 after request_header_timeout.
    hostile(&gw, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ", 408);
    // A body that stalls: 408 after body_idle_timeout.
    hostile(
        &gw,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        408,
    );
}

#[test]
fn bad_chunk_mid_stream_aborts_both_sides() {
    let up = upstream();
    let gw = simple(&up);
    // Big enough to be streamed (not buffered): the upstream sees data first.
    let s = gw.connect();
    let mut raw =
        b"POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(format!("10000\r\n{}\r\n", "c".repeat(0x10000)).as_bytes());
    (&s).write_all(&raw).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while up.seen.body_bytes.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    (&s).write_all(b"nothex\r\n").unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 400);
    assert!(closed_after(&mut r));
    assert_healthy(&gw);
}

#[test]
fn routing_errors_and_upstream_failures() {
    let up = upstream();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let echo = cluster("echo", vec![up.addr]);
    let empty = cluster("empty", vec![]);
    let refused = cluster("refused", vec![dead]);
    let gw = Gateway::start(
        move |port| {
            let mut timeout_rule = rule(vec![backend(&echo, 1)], vec![]);
            timeout_rule.timeouts.backend_request = Some(Duration::from_millis(200));
            let mut request_timeout = rule(vec![backend(&echo, 1)], vec![]);
            request_timeout.timeouts.request = Some(Duration::from_millis(200));
            let invalid = WeightedBackend {
                weight: 1,
                target: BackendTarget::Invalid {
                    reason: "missing".into(),
                },
                filters: vec![],
            };
            snapshot(
                port,
                vec![
                    prefix("/nobackends", rule(vec![], vec![])),
                    prefix("/invalid", rule(vec![invalid], vec![])),
                    prefix("/empty", rule(vec![backend(&empty, 1)], vec![])),
                    prefix("/refused", rule(vec![backend(&refused, 1)], vec![])),
                    prefix("/reset", rule(vec![backend(&echo, 1)], vec![])),
                    prefix("/delay", timeout_rule),
                    prefix("/slow", request_timeout),
                    prefix("/ok", rule(vec![backend(&echo, 1)], vec![])),
                ],
                vec![],
            )
        },
        quick_options(),
    );
    assert_eq!(get(&gw, "/nothing-here").status, 404);
    assert_eq!(get(&gw, "/nobackends").status, 500);
    assert_eq!(get(&gw, "/invalid").status, 500);
    assert_eq!(get(&gw, "/empty").status, 503);
    assert_eq!(get(&gw, "/refused").status, 502);
    assert_eq!(get(&gw, "/reset").status, 502);
    assert_eq!(get(&gw, "/delay/1000").status, 504);
    assert_eq!(get(&gw, "/delay/10").status, 200);
    assert_eq!(get(&gw, "/slow?delay=1000").status, 504);
    assert_eq!(get(&gw, "/slow?delay=10").status, 200);
    assert_eq!(get(&gw, "/ok").status, 200);
}

#[test]
fn head_responses_keep_their_length_and_no_body() {
    let up = upstream();
    let gw = simple(&up);
    let s = gw.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    (&s).write_all(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, true);
    assert_eq!(resp.status, 200);
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    assert!(len > 0);
    // The connection is still in sync: the next response is the right one.
    (&s).write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r, false);
    assert!(resp.text().starts_with("GET /next "));
}

#[test]
fn early_upstream_response_to_a_streamed_upload_is_forwarded() {
    let up = upstream();
    let gw = simple(&up);
    let s = gw.connect();
    const TOTAL: usize = 32 * 1024 * 1024;
    (&s).write_all(
        format!("POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: {TOTAL}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let writer = {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![b'u'; 64 * 1024];
            let mut sent = 0;
            // The gateway stops reading once the answer came: errors are expected.
            while sent < TOTAL && (&s).write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
        })
    };
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r, false);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.text(), "nope");
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    drop(r);
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    assert_healthy(&gw);
}

#[test]
fn garbage_from_upstream_is_a_502() {
    let up = upstream();
    let gw = simple(&up);
    assert_eq!(get(&gw, "/garbage").status, 502);
    assert_healthy(&gw);
}

#[test]
fn idle_connections_are_closed() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = Gateway::start(
        move |port| {
            snapshot(
                port,
                vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                vec![],
            )
        },
        mesh_http::HttpOptions {
            idle_timeout: Duration::from_millis(300),
            request_header_timeout: Duration::from_millis(300),
            ..quick_options()
        },
    );
    // Kept alive after a request, closed once idle.
    let s = gw.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    (&s).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);
    assert!(closed_after(&mut r));
    // A connection that never sends anything is closed without a response.
    let mut silent = gw.connect();
    let mut buf = Vec::new();
    assert_eq!(silent.read_to_end(&mut buf).unwrap(), 0);
}

#[test]
fn random_garbage_never_takes_the_worker_down() {
    use rand::{Rng, SeedableRng};
    let up = upstream();
    let gw = simple(&up);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let seed = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    for _ in 0..150 {
        let mut input = seed.to_vec();
        for _ in 0..rng.random_range(1..8) {
            let at = rng.random_range(0..input.len());
            input[at] = rng.random();
        }
        let s = gw.connect();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = (&s).write_all(&input);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = (&s).read_to_end(&mut sink);
    }
    assert_healthy(&gw);
}
