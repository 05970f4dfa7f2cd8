//! Test harness: a gateway worker (monoio thread) serving a hand-built
//! snapshot, a std::net upstream that reports what it received, and a raw
//! std::net client.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_http::{HttpHandler, HttpOptions, WorkerMetrics};
use mesh_registry::*;
use mesh_runtime::{Accepted, ConnectionHandler, Drain};

pub struct Gateway {
    pub addr: SocketAddr,
    pub metrics: Arc<WorkerMetrics>,
    pub drain: Drain,
    pub snapshots: SnapshotHandle,
}

impl Gateway {
    /// Starts one worker; `build` gets the listener port to key the snapshot with.
    pub fn start(build: impl FnOnce(u16) -> Snapshot, options: HttpOptions) -> Gateway {
        Self::start_with_scheme(build, options, None)
    }

    /// `scheme`: serve through `HttpHandler::serve_stream` with this scheme
    /// instead of the `ConnectionHandler` entry point.
    pub fn start_with_scheme(
        build: impl FnOnce(u16) -> Snapshot,
        options: HttpOptions,
        scheme: Option<&'static str>,
    ) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let snapshots = new_handle(build(addr.port()));
        let metrics = Arc::new(WorkerMetrics::default());
        let drain = Drain::new();
        let (s, m, d) = (snapshots.clone(), metrics.clone(), drain.clone());
        std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = monoio::net::TcpListener::from_std(listener).unwrap();
                let handler = Rc::new(HttpHandler::new(s, m, options));
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    if let Some(scheme) = scheme {
                        monoio::spawn(handler.clone().serve_stream(
                            stream,
                            peer,
                            addr.port(),
                            d.clone(),
                            scheme,
                        ));
                        continue;
                    }
                    let conn = Accepted {
                        stream,
                        peer,
                        port: addr.port(),
                        drain: d.clone(),
                    };
                    monoio::spawn(handler.clone().handle(conn));
                }
            });
        });
        Gateway {
            addr,
            metrics,
            drain,
            snapshots,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }
}

pub fn quick_options() -> HttpOptions {
    HttpOptions {
        request_header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

// ---------- snapshot building ----------

pub fn obj(ns: &str, name: &str) -> ObjectRef {
    ObjectRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

pub fn cluster(name: &str, endpoints: Vec<SocketAddr>) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: format!("default/{name}:80"),
        service: obj("default", name),
        port: 80,
        endpoints,
        protocol: Default::default(),
        policy: Default::default(),
    })
}

pub fn backend(c: &Arc<Cluster>, weight: u32) -> WeightedBackend {
    WeightedBackend {
        weight,
        target: BackendTarget::Cluster(c.clone()),
        filters: vec![],
    }
}

pub fn rule(backends: Vec<WeightedBackend>, filters: Vec<Filter>) -> RouteRule {
    RouteRule {
        route: obj("default", "route"),
        rule_index: 0,
        filters,
        total_weight: backends.iter().map(|b| b.weight).sum(),
        backends,
        timeouts: Timeouts::default(),
        retry: None,
        rate_limit: None,
    }
}

pub fn prefix(path: &str, rule: RouteRule) -> RouteEntry {
    RouteEntry {
        matcher: RequestMatcher {
            path: PathMatch::Prefix(path.into()),
            method: None,
            headers: vec![],
            query_params: vec![],
        },
        rule: Arc::new(rule),
    }
}

/// One port, one listener without hostname, the given entries for any host,
/// plus optional entries for an exact host.
pub fn snapshot(
    port: u16,
    entries: Vec<RouteEntry>,
    exact: Vec<(&str, Vec<RouteEntry>)>,
) -> Snapshot {
    let mut routes = VirtualHosts {
        any: Some(Arc::new(RouteTable { entries })),
        ..Default::default()
    };
    for (host, entries) in exact {
        routes
            .exact
            .insert(host.to_string(), Arc::new(RouteTable { entries }));
    }
    let listener = Arc::new(Listener {
        gateway: obj("default", "gw"),
        name: "http".into(),
        hostname: None,
        routes,
    });
    let mut ports = BTreeMap::new();
    ports.insert(
        port,
        Arc::new(PortConfig {
            port,
            protocol: ListenerProtocol::Http,
            tls: None,
            listeners: ListenerSet {
                any: Some(listener),
                ..Default::default()
            },
        }),
    );
    Snapshot {
        version: 1,
        ports,
        status: Default::default(),
        ..Default::default()
    }
}

// ---------- upstream ----------

/// What the upstream saw, for assertions.
#[derive(Default)]
pub struct Seen {
    /// Request heads, in arrival order.
    pub heads: Mutex<Vec<String>>,
    pub body_bytes: AtomicU64,
    pub connections: AtomicU64,
    /// Per key (query `key=`), how many requests arrived (for retry tests).
    pub counts: Mutex<HashMap<String, u32>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

/// A keep-alive HTTP/1.1 upstream. Paths:
/// - default: 200, headers x-body-len / x-body-sum, body = the request head as received
/// - /status/NNN: that status (empty body)
/// - /delay/MS: sleeps then answers like default
/// - /reset: closes with RST before answering
/// - /garbage: answers with something that is not HTTP
/// - /flaky?key=K&fail=N&code=C: the first N requests per K get C (or RST when C=0)
/// - /chunked: chunked response "hello" " world"
/// - /eof: response without length, closed after the body
/// - /big/N: N bytes of response body (Content-Length)
/// - POST /early: 413 before reading the body, then closes
/// - Upgrade requests: 101, then echo raw bytes
pub fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let s = s.clone();
            s.connections.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = serve_upstream(stream, &s);
            });
        }
    });
    Upstream { addr, seen }
}

fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Ok(Some(head));
        }
    }
}

pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

fn checksum(sum: &mut u64, data: &[u8]) {
    for b in data {
        *sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
    }
}

pub fn checksum_of(data: &[u8]) -> u64 {
    let mut s = 0;
    checksum(&mut s, data);
    s
}

fn read_body<R: BufRead>(r: &mut R, head: &str, seen: &Seen) -> std::io::Result<(u64, u64)> {
    let mut len = 0u64;
    let mut sum = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    if let Some(cl) = header_value(head, "content-length") {
        let mut left: u64 = cl.parse().unwrap();
        while left > 0 {
            let n = r.read(&mut buf[..left.min(65536) as usize])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            checksum(&mut sum, &buf[..n]);
            seen.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
            left -= n as u64;
            len += n as u64;
        }
    } else if header_value(head, "transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            if size == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                break;
            }
            let mut left = size;
            while left > 0 {
                let n = r.read(&mut buf[..left.min(65536) as usize])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                checksum(&mut sum, &buf[..n]);
                seen.body_bytes.fetch_add(n as u64, Ordering::SeqCst);
                left -= n as u64;
                len += n as u64;
            }
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    }
    Ok((len, sum))
}

fn query_param(path: &str, name: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

fn serve_upstream(stream: TcpStream, seen: &Seen) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream.try_clone()?;
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        seen.heads.lock().unwrap().push(head.clone());
        if head.starts_with("POST /early") {
            // Answer before reading the body, then stop reading.
            w.write_all(
                b"HTTP/1.1 413 Too Big\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
            )?;
            std::thread::sleep(Duration::from_millis(300));
            return Ok(());
        }
        let (len, sum) = read_body(&mut reader, &head, seen)?;
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        let close =
            header_value(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if header_value(&head, "upgrade").is_some() {
            w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")?;
            // Echo whatever follows, including bytes already buffered.
            let pending = reader.buffer().to_vec();
            w.write_all(&pending)?;
            let mut raw = stream.try_clone()?;
            let mut buf = [0u8; 4096];
            loop {
                let n = raw.read(&mut buf)?;
                if n == 0 {
                    let _ = w.shutdown(Shutdown::Write);
                    return Ok(());
                }
                w.write_all(&buf[..n])?;
            }
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let code: u16 = code[..3].parse().unwrap();
            write!(w, "HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n")?;
            continue;
        }
        if path.starts_with("/garbage") {
            w.write_all(b"SSH-2.0-not-http\r\n\r\n")?;
            return Ok(());
        }
        if path.starts_with("/reset") {
            reset(&stream);
            return Ok(());
        }
        if let Some(ms) = query_param(&path, "delay") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
        }
        if path.contains("/flaky") {
            let key = query_param(&path, "key").unwrap();
            let fail: u32 = query_param(&path, "fail").unwrap().parse().unwrap();
            let code: u16 = query_param(&path, "code")
                .unwrap_or("0".into())
                .parse()
                .unwrap();
            let n = {
                let mut counts = seen.counts.lock().unwrap();
                let c = counts.entry(key).or_insert(0);
                *c += 1;
                *c
            };
            if n <= fail {
                if code == 0 {
                    reset(&stream);
                    return Ok(());
                }
                write!(w, "HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n")?;
                continue;
            }
        }
        if let Some(ms) = path.strip_prefix("/delay/") {
            let ms: u64 = ms.split('?').next().unwrap().parse().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
        }
        if path.starts_with("/chunked") {
            w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")?;
            continue;
        }
        if path.starts_with("/eof") {
            w.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")?;
            return Ok(());
        }
        if let Some(n) = path.strip_prefix("/big/") {
            let n: usize = n.parse().unwrap();
            write!(w, "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n")?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                w.write_all(&chunk[..k])?;
                left -= k;
            }
            continue;
        }
        let body = head.as_bytes();
        write!(
            w,
            "HTTP/1.1 200 OK\r\nx-body-len: {len}\r\nx-body-sum: {sum}\r\nx-upstream: {}\r\ncontent-length: {}\r\n\r\n",
            stream.local_addr()?,
            body.len()
        )?;
        if !head.starts_with("HEAD ") {
            w.write_all(body)?;
        }
        if close {
            return Ok(());
        }
    }
}

// ---------- client ----------

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.head, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response; `head_request` when the request was HEAD.
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> Response {
    let head = loop {
        let head = read_head(r)
            .unwrap()
            .expect("connection closed before a response");
        // Skip interim responses.
        if head.starts_with("HTTP/1.1 100") {
            continue;
        }
        break head;
    };
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 || status == 101 {
    } else if let Some(cl) = header_value(&head, "content-length") {
        body.resize(cl.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if header_value(&head, "transfer-encoding").is_some_and(|v| v == "chunked") {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            if size == 0 {
                let mut end = String::new();
                r.read_line(&mut end).unwrap();
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).unwrap();
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).unwrap();
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Response { status, head, body }
}

/// Sends raw bytes on a new connection and reads one response.
pub fn request(gw: &Gateway, raw: &str) -> Response {
    let s = gw.connect();
    (&s).write_all(raw.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, raw.starts_with("HEAD "))
}

pub fn get(gw: &Gateway, path: &str) -> Response {
    request(
        gw,
        &format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"),
    )
}

/// True when the server closed the connection (EOF after any pending bytes).
pub fn closed_after<R: Read>(r: &mut R) -> bool {
    let mut rest = Vec::new();
    // A reset also means closed; only a read timeout means still open.
    match r.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A healthy request on a fresh connection still works.
pub fn assert_healthy(gw: &Gateway) {
    let r = get(gw, "/healthy");
    assert_eq!(r.status, 200, "{}", r.head);
}
