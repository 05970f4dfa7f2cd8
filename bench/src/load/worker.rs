//! One load thread: a monoio runtime driving its share of the connections.
//!
//! Every request slot is a loop (`slot_loop`): wait for its slot (open loop)
//! or go at once (closed loop), exchange one request/response, record.
//! Requests are never pipelined: one outstanding request per slot, as wrk and
//! fortio do. HTTP/1.1 and raw TCP have one slot per connection
//! (`Http1Exchanger`, over TCP or TLS); HTTP/2 has `-m` slots per connection,
//! each a stream on the shared connection (`http2.rs`).

use super::conn::{Conn, RecvBuf};
use super::http2::{self, Http2Plan};
use super::pacing::{corrected_latency, NextSend, Schedule};
use super::progress::ThreadCounters;
use super::response::{parse_head, BodySkipper};
use super::stats::{ErrorKind, Stats};
use super::target::Protocol;
use super::tls::TlsClient;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A response head bigger than this is an error (a proxy limit is 64 KiB too).
const MAX_HEAD: usize = 64 * 1024;

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
    /// `https://`: the TLS client side.
    pub tls: Option<Arc<TlsClient>>,
    /// HTTP/2: the request and the streams per connection.
    pub http2: Option<Arc<Http2Plan>>,
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
            if plan.protocol == Protocol::Http2 {
                handles.push(monoio::spawn(http2::run_connection(
                    plan.clone(),
                    shared.clone(),
                    index,
                )));
                continue;
            }
            let mut slot = Slot::new(
                plan.qps
                    .map(|q| Schedule::for_connection(q, plan.total_connections, index)),
            );
            let (plan, shared) = (plan.clone(), shared.clone());
            handles.push(monoio::spawn(async move {
                let mut exchanger = Http1Exchanger {
                    conn: None,
                    recv: RecvBuf::new(),
                };
                slot_loop(&plan, &shared, &mut slot, &mut exchanger).await;
            }));
        }
        for h in handles {
            h.await;
        }
        shared.stats.take()
    });
    Ok(stats)
}

pub(super) struct Shared {
    pub(super) stats: RefCell<Stats>,
    /// Requests this thread may still start (`-n`).
    budget: Cell<u64>,
}

impl Shared {
    pub(super) fn claim(&self) -> bool {
        let left = self.budget.get();
        if left == 0 {
            return false;
        }
        self.budget.set(left - 1);
        true
    }

    /// Give back a claimed request that was never sent.
    fn refund(&self) {
        self.budget.set(self.budget.get().saturating_add(1));
    }

    pub(super) fn exhausted(&self) -> bool {
        self.budget.get() == 0
    }
}

/// What one successful exchange measured.
pub(super) struct Exchanged {
    pub(super) status: u16,
    pub(super) header_len: u64,
    pub(super) total_len: u64,
    /// The server will close: do not reuse the connection.
    pub(super) close: bool,
}

/// Why an exchange produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Counted as an error of this kind.
    Error(ErrorKind),
    /// HTTP/2: the connection took no new stream (GOAWAY, closed) before this
    /// request was sent: not counted; the slot reconnects and tries again.
    Unsent,
}

/// One protocol's way of doing a request/response on a slot.
pub(super) trait Exchanger {
    async fn exchange(&mut self, plan: &ThreadPlan, shared: &Shared) -> Result<Exchanged, Failure>;
    /// After each request: drop what must not be reused. False when the slot
    /// cannot go on with this exchanger (HTTP/2: the connection is gone).
    fn settle(&mut self, plan: &ThreadPlan, result: &Result<Exchanged, Failure>) -> bool;
}

/// A slot's pacing state; it survives reconnects (HTTP/2).
pub(super) struct Slot {
    schedule: Option<Schedule>,
    /// Requests started so far (the open-loop index).
    k: u64,
    /// When the previous request finished.
    ready: Instant,
}

impl Slot {
    pub(super) fn new(schedule: Option<Schedule>) -> Slot {
        Slot {
            schedule,
            k: 0,
            ready: Instant::now(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Deadline reached or `-n` used up.
    Finished,
    /// The exchanger cannot go on (reconnect and resume).
    Broken,
}

/// Run requests on one slot until the deadline or `-n`, or until the
/// exchanger gives up.
pub(super) async fn slot_loop<E: Exchanger>(
    plan: &ThreadPlan,
    shared: &Shared,
    slot: &mut Slot,
    exchanger: &mut E,
) -> Stop {
    loop {
        // When is this request meant to go out?
        let intended = match slot.schedule {
            None => None,
            Some(s) => {
                let now = Instant::now();
                match s.next_send(slot.k, now.saturating_duration_since(plan.start)) {
                    NextSend::Now { intended } => Some(plan.start + intended),
                    NextSend::SleepUntil { intended } => {
                        let at = plan.start + intended;
                        if plan.deadline.is_some_and(|d| at >= d) {
                            return Stop::Finished;
                        }
                        monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
                        Some(at)
                    }
                }
            }
        };
        slot.k += 1;
        let sent = Instant::now();
        if plan.deadline.is_some_and(|d| intended.unwrap_or(sent) >= d) || !shared.claim() {
            return Stop::Finished;
        }

        let result = match plan.timeout {
            Some(t) => match monoio::time::timeout(t, exchanger.exchange(plan, shared)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Error(ErrorKind::Timeout)),
            },
            None => exchanger.exchange(plan, shared).await,
        };
        let done = Instant::now();
        let latency = match intended {
            None => done - sent,
            Some(i) => corrected_latency(
                i - plan.start,
                slot.ready - plan.start,
                sent - plan.start,
                done - plan.start,
            ),
        };
        let go_on = exchanger.settle(plan, &result);
        match result {
            Ok(x) => {
                shared.stats.borrow_mut().record_response(
                    latency,
                    x.status,
                    x.header_len,
                    x.total_len,
                );
                plan.counters.add_done();
            }
            Err(Failure::Error(kind)) => {
                shared.stats.borrow_mut().record_error(kind, Some(latency));
                plan.counters.add_error();
                if matches!(kind, ErrorKind::Connect | ErrorKind::Tls) {
                    // Do not spin on a dead or misconfigured target.
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(Failure::Unsent) => {
                shared.refund();
                slot.k -= 1;
            }
        }
        slot.ready = Instant::now();
        if !go_on {
            return Stop::Broken;
        }
    }
}

/// TCP connect (and TLS handshake for https://), counted in the stats.
pub(super) async fn connect(plan: &ThreadPlan, shared: &Shared) -> Result<Conn, ErrorKind> {
    let s = TcpStream::connect_addr(plan.addr)
        .await
        .map_err(|_| ErrorKind::Connect)?;
    let _ = s.set_nodelay(true);
    shared.stats.borrow_mut().connections_opened += 1;
    match &plan.tls {
        None => Ok(Conn::Plain(s)),
        Some(tls) => {
            let began = Instant::now();
            let stream = tls.connect(s).await.map_err(|_| ErrorKind::Tls)?;
            shared
                .stats
                .borrow_mut()
                .tls_handshakes
                .record(began.elapsed().as_nanos() as u64);
            Ok(Conn::Tls(Box::new(stream)))
        }
    }
}

/// HTTP/1.1 (TCP or TLS) and raw TCP echo: one request at a time on one
/// connection, reconnecting when it is closed or after every request with
/// `--new-conn`.
struct Http1Exchanger {
    conn: Option<Conn>,
    recv: RecvBuf,
}

impl Exchanger for Http1Exchanger {
    async fn exchange(&mut self, plan: &ThreadPlan, shared: &Shared) -> Result<Exchanged, Failure> {
        if self.conn.is_none() {
            self.conn = Some(connect(plan, shared).await.map_err(Failure::Error)?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.write_all(&plan.request)
            .await
            .map_err(|_| Failure::Error(ErrorKind::Write))?;
        shared.stats.borrow_mut().bytes_sent += plan.request.len() as u64;
        match plan.protocol {
            Protocol::Http1 => exchange_http1(conn, &mut self.recv, plan.head_request).await,
            Protocol::TcpEcho => exchange_tcp_echo(conn, &mut self.recv, &plan.request).await,
            Protocol::Http2 | Protocol::TcpBulk => {
                unreachable!("HTTP/2 and bulk connections have their own loops")
            }
        }
        .map_err(Failure::Error)
    }

    fn settle(&mut self, plan: &ThreadPlan, result: &Result<Exchanged, Failure>) -> bool {
        let reuse = matches!(result, Ok(x) if !x.close && !plan.new_connection_per_request);
        if !reuse {
            self.conn = None;
            self.recv.clear();
        }
        true
    }
}

async fn exchange_http1(
    s: &mut Conn,
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
    s: &mut Conn,
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
            tls: None,
            http2: None,
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
            tls: None,
            http2: None,
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
            tls: None,
            http2: None,
        };
        let stats = run_thread(plan).unwrap();
        assert_eq!(stats.errors.get(&ErrorKind::Connect), Some(&3));
        assert_eq!(stats.responses(), 0);
    }
}
