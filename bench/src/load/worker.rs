//! One load thread: a monoio runtime driving its share of the connections.
//!
//! Each connection is a task that loops: wait for its slot (open loop) or go
//! at once (closed loop), send the request, read the whole response, record.
//! Requests are never pipelined: one outstanding request per connection, as
//! wrk and fortio do. The protocol-specific part is `exchange_*`; HTTP/2 and
//! TLS get their own exchange functions and connection types.

use super::pacing::{corrected_latency, NextSend, Schedule};
use super::progress::ThreadCounters;
use super::response::{parse_head, BodySkipper};
use super::stats::{ErrorKind, Stats};
use super::target::Protocol;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A response head bigger than this is an error (a proxy limit is 64 KiB too).
const MAX_HEAD: usize = 64 * 1024;
const RECV_BUF: usize = 16 * 1024;

/// Everything a thread needs; shared read-only between its connections.
pub struct ThreadPlan {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// The bytes of every request (HTTP) or the echo payload (TCP).
    pub request: Arc<Vec<u8>>,
    pub head_request: bool,
    /// Global indices of this thread's connections (for the open-loop offsets).
    pub connection_indices: Vec<usize>,
    pub total_connections: usize,
    pub qps: Option<f64>,
    /// Common start of all threads.
    pub start: Instant,
    pub deadline: Option<Instant>,
    /// This thread's share of `-n`.
    pub request_budget: Option<u64>,
    pub new_connection_per_request: bool,
    pub timeout: Option<Duration>,
    pub counters: Arc<ThreadCounters>,
}

/// Run the plan on a fresh monoio runtime in the current thread.
pub fn run_thread(plan: ThreadPlan) -> anyhow::Result<Stats> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(1024)
        .enable_timer()
        .build()?;
    let stats = rt.block_on(async move {
        let plan = Rc::new(plan);
        let shared = Rc::new(Shared {
            stats: RefCell::new(Stats::default()),
            budget: Cell::new(plan.request_budget.unwrap_or(u64::MAX)),
        });
        let mut handles = Vec::new();
        if plan.protocol == Protocol::TcpBulk {
            let handles: Vec<_> = plan
                .connection_indices
                .iter()
                .map(|_| monoio::spawn(run_bulk_connection(plan.clone(), shared.clone())))
                .collect();
            for h in handles {
                h.await;
            }
            return shared.stats.take();
        }
        for &index in &plan.connection_indices {
            let schedule = plan
                .qps
                .map(|q| Schedule::for_connection(q, plan.total_connections, index));
            handles.push(monoio::spawn(run_connection(
                plan.clone(),
                shared.clone(),
                schedule,
            )));
        }
        for h in handles {
            h.await;
        }
        shared.stats.take()
    });
    Ok(stats)
}

struct Shared {
    stats: RefCell<Stats>,
    /// Requests this thread may still start (`-n`).
    budget: Cell<u64>,
}

impl Shared {
    fn claim(&self) -> bool {
        let left = self.budget.get();
        if left == 0 {
            return false;
        }
        self.budget.set(left - 1);
        true
    }
}

/// What one successful exchange measured.
struct Exchanged {
    status: u16,
    header_len: u64,
    total_len: u64,
    /// The server will close: do not reuse the connection.
    close: bool,
}

async fn run_connection(plan: Rc<ThreadPlan>, shared: Rc<Shared>, schedule: Option<Schedule>) {
    let mut stream: Option<TcpStream> = None;
    let mut recv = RecvBuf::new();
    let mut k: u64 = 0;
    let mut ready = Instant::now();
    loop {
        // When is this request meant to go out?
        let intended = match schedule {
            None => None,
            Some(s) => {
                let now = Instant::now();
                match s.next_send(k, now.saturating_duration_since(plan.start)) {
                    NextSend::Now { intended } => Some(plan.start + intended),
                    NextSend::SleepUntil { intended } => {
                        let at = plan.start + intended;
                        if plan.deadline.is_some_and(|d| at >= d) {
                            break;
                        }
                        monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
                        Some(at)
                    }
                }
            }
        };
        k += 1;
        let sent = Instant::now();
        if plan.deadline.is_some_and(|d| intended.unwrap_or(sent) >= d) || !shared.claim() {
            break;
        }

        let result = match plan.timeout {
            Some(t) => {
                match monoio::time::timeout(t, exchange(&plan, &mut stream, &mut recv, &shared))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(ErrorKind::Timeout),
                }
            }
            None => exchange(&plan, &mut stream, &mut recv, &shared).await,
        };
        let done = Instant::now();
        let latency = match intended {
            None => done - sent,
            Some(i) => corrected_latency(
                i - plan.start,
                ready - plan.start,
                sent - plan.start,
                done - plan.start,
            ),
        };
        match result {
            Ok(x) => {
                shared.stats.borrow_mut().record_response(
                    latency,
                    x.status,
                    x.header_len,
                    x.total_len,
                );
                plan.counters.add_done();
                if x.close || plan.new_connection_per_request {
                    stream = None;
                    recv.clear();
                }
            }
            Err(kind) => {
                shared.stats.borrow_mut().record_error(kind, Some(latency));
                plan.counters.add_error();
                stream = None;
                recv.clear();
                if kind == ErrorKind::Connect {
                    // Do not spin on a dead target.
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        ready = Instant::now();
    }
}

/// One request/response on `stream`, connecting first if needed.
async fn exchange(
    plan: &ThreadPlan,
    stream: &mut Option<TcpStream>,
    recv: &mut RecvBuf,
    shared: &Shared,
) -> Result<Exchanged, ErrorKind> {
    if stream.is_none() {
        let s = TcpStream::connect_addr(plan.addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = s.set_nodelay(true);
        shared.stats.borrow_mut().connections_opened += 1;
        *stream = Some(s);
    }
    let s = stream.as_mut().expect("connected above");
    let (res, _) = s.write_all(plan.request.clone()).await;
    res.map_err(|_| ErrorKind::Write)?;
    shared.stats.borrow_mut().bytes_sent += plan.request.len() as u64;
    match plan.protocol {
        Protocol::Http1 => exchange_http1(s, recv, plan.head_request).await,
        Protocol::TcpEcho => exchange_tcp_echo(s, recv, &plan.request).await,
        Protocol::TcpBulk => unreachable!("bulk connections use run_bulk_connection"),
    }
}

async fn exchange_http1(
    s: &mut TcpStream,
    recv: &mut RecvBuf,
    head_request: bool,
) -> Result<Exchanged, ErrorKind> {
    let mut header_bytes = 0u64;
    let head = loop {
        match parse_head(recv.data(), head_request) {
            Ok(Some(h)) if h.is_interim() => {
                header_bytes += h.header_len as u64;
                recv.consume(h.header_len);
            }
            Ok(Some(h)) => break h,
            Ok(None) if recv.data().len() >= MAX_HEAD => return Err(ErrorKind::Parse),
            Ok(None) => {
                if recv.fill(s).await? == 0 {
                    return Err(ErrorKind::Closed);
                }
            }
            Err(_) => return Err(ErrorKind::Parse),
        }
    };
    recv.consume(head.header_len);
    header_bytes += head.header_len as u64;
    let mut total = header_bytes;
    let mut body = BodySkipper::new(head.body);
    loop {
        let n = body.consume(recv.data()).map_err(|_| ErrorKind::Parse)?;
        recv.consume(n);
        total += n as u64;
        if body.is_done() {
            break;
        }
        if recv.fill(s).await? == 0 {
            if body.until_close() {
                break;
            }
            return Err(ErrorKind::Closed);
        }
    }
    Ok(Exchanged {
        status: head.status,
        header_len: header_bytes,
        total_len: total,
        close: head.close,
    })
}

/// Raw TCP echo: the payload must come back byte for byte. Reported as 200.
async fn exchange_tcp_echo(
    s: &mut TcpStream,
    recv: &mut RecvBuf,
    payload: &[u8],
) -> Result<Exchanged, ErrorKind> {
    let mut matched = 0;
    while matched < payload.len() {
        if recv.data().is_empty() && recv.fill(s).await? == 0 {
            return Err(ErrorKind::Closed);
        }
        let take = recv.data().len().min(payload.len() - matched);
        if recv.data()[..take] != payload[matched..matched + take] {
            return Err(ErrorKind::Mismatch);
        }
        recv.consume(take);
        matched += take;
    }
    Ok(Exchanged {
        status: 200,
        header_len: 0,
        total_len: payload.len() as u64,
        close: false,
    })
}

/// Raw TCP bulk: write `plan.request` blocks back to back until the deadline,
/// then half-close; meanwhile read (and count) whatever the peer sends until
/// it closes or a second after the deadline.
async fn run_bulk_connection(plan: Rc<ThreadPlan>, shared: Rc<Shared>) {
    let Some(deadline) = plan.deadline else {
        return;
    };
    let stream = match TcpStream::connect_addr(plan.addr).await {
        Ok(s) => s,
        Err(_) => {
            shared
                .stats
                .borrow_mut()
                .record_error(ErrorKind::Connect, None);
            plan.counters.add_error();
            return;
        }
    };
    shared.stats.borrow_mut().connections_opened += 1;
    let (mut reader, mut writer) = stream.into_split();
    let block = plan.request.clone();
    let counters = plan.counters.clone();
    let write_side = async move {
        let mut sent = 0u64;
        while Instant::now() < deadline {
            let (res, _) = writer.write_all(block.clone()).await;
            if res.is_err() {
                return (sent, true);
            }
            sent += block.len() as u64;
            counters.add_done();
        }
        let _ = writer.shutdown().await;
        (sent, false)
    };
    let read_side = async move {
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (res, b) = reader.read(buf).await;
            buf = b;
            match res {
                Ok(0) => return (got, false),
                Ok(n) => got += n as u64,
                Err(_) => return (got, true),
            }
        }
    };
    let grace = monoio::time::Instant::from_std(deadline + Duration::from_secs(1));
    let read_side = async move {
        monoio::time::timeout_at(grace, read_side)
            .await
            .unwrap_or((0, true))
    };
    let ((sent, write_failed), (got, read_failed)) = monoio::join!(write_side, read_side);
    let mut stats = shared.stats.borrow_mut();
    stats.bytes_sent += sent;
    stats.bytes_received += got;
    if write_failed {
        stats.record_error(ErrorKind::Write, None);
    }
    if read_failed {
        stats.record_error(ErrorKind::Read, None);
    }
}

/// Receive buffer: `buf[pos..]` holds bytes read but not yet consumed.
struct RecvBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl RecvBuf {
    fn new() -> RecvBuf {
        RecvBuf {
            buf: Vec::with_capacity(RECV_BUF),
            pos: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Read more bytes after the unconsumed ones; returns 0 at end of stream.
    async fn fill(&mut self, s: &mut TcpStream) -> Result<usize, ErrorKind> {
        if self.buf.len() == self.buf.capacity() {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            } else {
                // Also restores the buffer after a timed-out read took it away.
                self.buf.reserve(self.buf.capacity().max(RECV_BUF));
            }
        }
        let len = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        let (res, slice) = s.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res.map_err(|_| ErrorKind::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A std::net server that answers every request on a connection with a
    /// fixed chunked response (to exercise the body skipper on real reads).
    fn chunked_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let n = match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let resp = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
                            if c.write_all(resp).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn exactly_n_requests_against_a_chunked_server() {
        let addr = chunked_server();
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let plan = ThreadPlan {
            protocol: Protocol::Http1,
            addr,
            request: Arc::new(request),
            head_request: false,
            connection_indices: vec![0, 1, 2],
            total_connections: 3,
            qps: None,
            start: Instant::now(),
            deadline: None,
            request_budget: Some(300),
            new_connection_per_request: false,
            timeout: Some(Duration::from_secs(10)),
            counters: Arc::new(ThreadCounters::default()),
        };
        let stats = run_thread(plan).unwrap();
        assert_eq!(
            stats.status_codes.get(&201),
            Some(&300),
            "{:?}",
            stats.errors
        );
        assert_eq!(stats.error_count(), 0);
        assert_eq!(stats.connections_opened, 3);
        let header_len = "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n".len() as u64;
        assert_eq!(stats.header_sizes.max, header_len);
        assert_eq!(
            stats.sizes.max,
            header_len + "4\r\nabcd\r\n0\r\n\r\n".len() as u64
        );
    }

    #[test]
    fn a_timed_out_request_does_not_break_the_next_ones() {
        // The first connection never gets an answer; later ones do.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut first = true;
            let mut keep = Vec::new();
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                if first {
                    first = false;
                    keep.push(c);
                    continue;
                }
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0
                            || c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        let plan = ThreadPlan {
            protocol: Protocol::Http1,
            addr,
            request: Arc::new(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            head_request: false,
            connection_indices: vec![0],
            total_connections: 1,
            qps: None,
            start: Instant::now(),
            deadline: None,
            request_budget: Some(3),
            new_connection_per_request: false,
            timeout: Some(Duration::from_millis(200)),
            counters: Arc::new(ThreadCounters::default()),
        };
        let stats = run_thread(plan).unwrap();
        assert_eq!(
            stats.errors.get(&ErrorKind::Timeout),
            Some(&1),
            "{:?}",
            stats.errors
        );
        assert_eq!(stats.status_codes.get(&200), Some(&2), "{:?}", stats.errors);
        assert_eq!(stats.connections_opened, 2);
    }

    #[test]
    fn refused_connections_are_counted_as_errors() {
        // Bind then drop to get a port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let plan = ThreadPlan {
            protocol: Protocol::Http1,
            addr,
            request: Arc::new(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            head_request: false,
            connection_indices: vec![0],
            total_connections: 1,
            qps: None,
            start: Instant::now(),
            deadline: None,
            request_budget: Some(3),
            new_connection_per_request: false,
            timeout: Some(Duration::from_secs(5)),
            counters: Arc::new(ThreadCounters::default()),
        };
        let stats = run_thread(plan).unwrap();
        assert_eq!(stats.errors.get(&ErrorKind::Connect), Some(&3));
        assert_eq!(stats.responses(), 0);
    }
}
