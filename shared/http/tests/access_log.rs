//! The per-request access log (target `access`): one line per request in
//! Envoy's default format, with the response flags of the cause.

mod common;
mod h2_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use tracing_subscriber::fmt::MakeWriter;

/// Collects every line written by the subscriber.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

impl Lines {
    fn access_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(" access: "))
            .map(str::to_string)
            .collect()
    }
}

/// A port nothing listens on (bound, then closed).
fn refused_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn one_line_per_request_with_envoy_fields_and_flags() {
    let lines = Lines::default();
    tracing_subscriber::fmt()
        .with_env_filter("off,access=info")
        .with_writer(lines.clone())
        .with_ansi(false)
        .init();

    let up = upstream();
    let good = cluster("good", vec![up.addr]);
    let dead_addr = refused_port();
    let dead = cluster("dead", vec![dead_addr]);
    let gw = Gateway::start(
        move |port| {
            snapshot(
                port,
                vec![
                    prefix("/dead", rule(vec![backend(&dead, 1)], vec![])),
                    prefix("/", rule(vec![backend(&good, 1)], vec![])),
                ],
                vec![],
            )
        },
        quick_options(),
    );
    let ok = request(
        &gw,
        "GET /hello?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test-agent\r\nX-Forwarded-For: 192.0.2.7\r\nX-Request-Id: req-1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ok.status, 200);
    let refused = get(&gw, "/dead/x");
    assert_eq!(refused.status, 502);
    let url = format!("http://h2.test:{}/over-h2", gw.addr.port());
    let h2 = h2_support::runtime().block_on(async {
        let client = h2_support::h2c_client(gw.addr).await;
        h2_support::send(&client, h2_support::h2get(&url), None, 0).await
    });
    assert_eq!(h2.status, 200);

    // A line is written after its response: wait for both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lines.access_lines().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let all = lines.access_lines();
    assert_eq!(all.len(), 3, "one line per request: {all:#?}");
    // Lines of different connections may come in any order.
    let line_of = |what: &str| {
        all.iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line for {what}: {all:#?}"))
    };
    let first = line_of("/hello");
    let expected_tail = format!("\"GET /hello?x=1 HTTP/1.1\" 200 - 0 {} ", ok.body.len());
    assert!(first.contains(&expected_tail), "{first}");
    assert!(
        first.ends_with(&format!(
            "\"192.0.2.7\" \"test-agent\" \"req-1\" \"example.com\" \"{}\"",
            up.addr
        )),
        "{first}"
    );
    let second = line_of("/dead/x");
    assert!(
        second.contains("\"GET /dead/x HTTP/1.1\" 502 UF "),
        "{second}"
    );
    assert!(
        second.ends_with(&format!("\"example.com\" \"{dead_addr}\"")),
        "the refused endpoint is the upstream host: {second}"
    );
    let third = line_of("/over-h2");
    assert!(
        third.contains("\"GET /over-h2 HTTP/2\" 200 - 0 "),
        "{third}"
    );
    assert!(third.ends_with(&format!("\"{}\"", up.addr)), "{third}");
}
