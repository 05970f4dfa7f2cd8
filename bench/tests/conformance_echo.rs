//! `bench echo` against the echo_backend_contract of the conformance vectors
//! (../shared/conformance/gateway-api/_environment.yaml), over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

struct Echo {
    child: Child,
    port: u16,
    pod: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Echo {
    fn start(extra: &[&str]) -> Echo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["echo", "--port", "0", "--bind", "127.0.0.1"])
            .args([
                "--name",
                "infra-backend-v1",
                "--namespace",
                "gateway-conformance-infra",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bench echo");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = reader.next() {
                let _ = tx.send(first);
            }
            for line in reader.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("echo prints its address");
        // "echo listening on 127.0.0.1:PORT pod NAME"
        let mut words = first.split_whitespace();
        let addr = words.nth(3).expect("address");
        let pod = words.nth(1).expect("pod").to_string();
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Echo {
            child,
            port,
            pod,
            lines,
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Reads one Content-Length framed response from `stream`, keeping leftovers in `buf`.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Response> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = parsed.parse(buf).expect("valid response") {
            let status = parsed.code.unwrap();
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("content-length");
            while buf.len() < head_len + len {
                read_more(stream, buf)?;
            }
            let body = buf[head_len..head_len + len].to_vec();
            buf.drain(..head_len + len);
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
        read_more(stream, buf)?;
    }
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn get(echo: &Echo, target: &str, extra_headers: &str) -> std::io::Result<Response> {
    let mut stream = echo.connect();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: example.com\r\n{extra_headers}Connection: close\r\n\r\n"
    )?;
    read_response(&mut stream, &mut Vec::new())
}

#[test]
fn echo_body_has_the_echo_basic_fields() {
    let echo = Echo::start(&[]);
    let response = get(
        &echo,
        "/some/path?x=1&y=2",
        "x-multi: a\r\nX-MULTI: b\r\nx-echo-set-header: \r\n",
    )
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["path"], "/some/path?x=1&y=2");
    assert_eq!(body["host"], "example.com");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["proto"], "HTTP/1.1");
    assert_eq!(body["namespace"], "gateway-conformance-infra");
    assert_eq!(body["httpPort"], echo.port.to_string());
    assert_eq!(body["headers"]["X-Multi"], serde_json::json!(["a", "b"]));
    assert_eq!(
        body["headers"]["X-Echo-Set-Header"],
        serde_json::json!([""])
    );
    assert!(
        body["headers"].get("Host").is_none(),
        "Host is not a header in Go"
    );
    let pod = body["pod"].as_str().unwrap();
    assert_eq!(pod, echo.pod);
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    assert_eq!(
        parts[2], "infra-backend-v1",
        "pod {pod} is NAME-<hash>-<suffix>"
    );
    assert!(
        echo.wait_for_log("Echoing back request made to /some/path?x=1&y=2 to client (127.0.0.1:")
    );
}

#[test]
fn pod_override_and_health() {
    let echo = Echo::start(&["--pod", "custom-pod-abc-12345"]);
    let response = get(&echo, "/", "").unwrap();
    assert_eq!(response.json()["pod"], "custom-pod-abc-12345");
    let health = get(&echo, "/health", "").unwrap();
    assert_eq!(health.status, 200);
}

#[test]
fn delay_query_sleeps_before_answering() {
    let echo = Echo::start(&[]);
    let start = Instant::now();
    let response = get(&echo, "/slow?delay=300ms", "").unwrap();
    assert_eq!(response.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        start.elapsed()
    );
    let bad = get(&echo, "/slow?delay=soon", "").unwrap();
    assert_eq!(bad.status, 400);
}

#[test]
fn status_path_returns_that_code_with_empty_body() {
    let echo = Echo::start(&[]);
    for code in [204u16, 418, 503] {
        let response = get(&echo, &format!("/status/{code}"), "").unwrap();
        assert_eq!(response.status, code);
        assert!(response.body.is_empty());
    }
}

#[test]
fn set_header_preserves_case_and_joins_repeats() {
    let echo = Echo::start(&[]);
    let response = get(
        &echo,
        "/",
        "X-Echo-Set-Header: X-Header-Set: one, some-other:val,X-Header-Set:two\r\n",
    )
    .unwrap();
    assert_eq!(response.status, 200);
    let names: Vec<&str> = response.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"some-other"), "case preserved: {names:?}");
    assert_eq!(response.header("X-Header-Set"), Some("one,two"));
    assert_eq!(response.header("some-other"), Some("val"));
}

#[test]
fn retry_fails_first_attempts_with_code_then_echoes() {
    let echo = Echo::start(&[]);
    let target = "/retry/x?responseCode=503&succeedAfter=2&uuid=code-test";
    assert_eq!(get(&echo, target, "").unwrap().status, 503);
    assert_eq!(get(&echo, target, "").unwrap().status, 503);
    let ok = get(&echo, target, "").unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["path"], target);
    // Another uuid has its own counter.
    let other = "/retry/x?responseCode=500&succeedAfter=1&uuid=code-test-2";
    assert_eq!(get(&echo, other, "").unwrap().status, 500);
    assert_eq!(get(&echo, other, "").unwrap().status, 200);
    // Missing parameters are a client error.
    assert_eq!(
        get(&echo, "/retry/x?succeedAfter=1", "").unwrap().status,
        400
    );
}

#[test]
fn retry_without_code_resets_the_connection() {
    let echo = Echo::start(&[]);
    let target = "/retry/x?succeedAfter=2&uuid=rst-test&delayRetry=50ms";
    for attempt in 0..2 {
        let mut stream = echo.connect();
        write!(stream, "GET {target} HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "attempt {attempt}"
            ),
            Ok(n) => panic!("attempt {attempt}: expected RST, got {n} bytes"),
        }
    }
    let ok = get(&echo, target, "").unwrap();
    assert_eq!(ok.status, 200);
}

#[test]
fn keep_alive_pipelining_and_request_bodies() {
    let echo = Echo::start(&[]);
    let mut stream = echo.connect();
    // Two pipelined requests, the first with a Content-Length body, the second chunked.
    let requests = "POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
                    POST /two HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n0\r\n\r\n";
    stream.write_all(requests.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut stream, &mut buf).unwrap();
    let second = read_response(&mut stream, &mut buf).unwrap();
    assert_eq!(first.json()["path"], "/one");
    assert_eq!(first.json()["method"], "POST");
    assert_eq!(second.json()["path"], "/two");
    // Same connection still usable afterwards.
    write!(stream, "GET /three HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let third = read_response(&mut stream, &mut buf).unwrap();
    assert_eq!(third.json()["path"], "/three");
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let echo = Echo::start(&[]);
    let mut stream = echo.connect();
    stream
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream, &mut Vec::new()).unwrap();
    assert_eq!(response.status, 400);
    let mut garbage = echo.connect();
    garbage.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut garbage, &mut Vec::new()).unwrap().status,
        400
    );
    assert_eq!(get(&echo, "/after", "").unwrap().status, 200);
}

#[test]
fn fixed_response_mode_and_multiple_workers() {
    let echo = Echo::start(&["--fixed-response", "64", "--workers", "2"]);
    for _ in 0..4 {
        let response = get(&echo, "/anything", "").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, vec![b'x'; 64]);
    }
}
