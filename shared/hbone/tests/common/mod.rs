//! Loopback fixtures shared by the HBONE tests: a monoio runtime, echo and
//! "reply after EOF" upstreams, and an HBONE server accept loop.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use mesh_hbone::{ConnectHandler, ConnectRequest, Refusal, Server};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, IntoPollIo};
use monoio::net::{TcpListener, TcpStream};

/// Runs `fut` on a fresh io_uring runtime with timers (as the workers do).
pub fn run<F: Future>(fut: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime")
        .block_on(fut)
}

/// Fails the test instead of hanging when something never completes.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    monoio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Echoes every connection; half-closes its side after reading EOF.
pub fn spawn_echo() -> SocketAddr {
    let (listener, addr) = listener();
    monoio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            monoio::spawn(echo_connection(stream));
        }
    });
    addr
}

async fn echo_connection(mut stream: TcpStream) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let chunk = buf.split().freeze();
                let (res, _) = stream.write_all(chunk).await;
                if res.is_err() {
                    return;
                }
                if buf.capacity() < 64 * 1024 {
                    buf = BytesMut::with_capacity(256 * 1024);
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// Reads until EOF, then answers `got <n> bytes` and closes: a request/response
/// protocol that needs half-close to work.
pub fn spawn_reply_after_eof() -> SocketAddr {
    let (listener, addr) = listener();
    monoio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            monoio::spawn(async move {
                let mut total = 0usize;
                loop {
                    let (res, _) = stream.read(vec![0u8; 16 * 1024]).await;
                    match res {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(_) => return,
                    }
                }
                let reply = format!("got {total} bytes");
                let _ = stream.write_all(reply.into_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// The ztunnel-inbound-like handler: refuses by authority port (for the
/// status tests), otherwise connects to the authority; a failed connect is 503.
pub struct Upstreams {
    pub seen: RefCell<Vec<ConnectRequest>>,
    pub finished: Cell<usize>,
    /// Tunnels whose pipe ended with an error.
    pub failed: Cell<usize>,
}

pub const DENY_PORT: u16 = 1;
pub const UNKNOWN_PORT: u16 = 2;
pub const BAD_PORT: u16 = 3;

impl Upstreams {
    pub fn new() -> Self {
        Self {
            seen: RefCell::new(Vec::new()),
            finished: Cell::new(0),
            failed: Cell::new(0),
        }
    }
}

impl ConnectHandler for Upstreams {
    type Upstream = TcpStream;

    async fn connect(&self, request: &ConnectRequest) -> Result<TcpStream, Refusal> {
        self.seen.borrow_mut().push(request.clone());
        match request.authority.port() {
            DENY_PORT => return Err(Refusal::Denied("policy".into())),
            UNKNOWN_PORT => return Err(Refusal::Unavailable("unknown workload".into())),
            BAD_PORT => return Err(Refusal::BadRequest("bad".into())),
            _ => {}
        }
        TcpStream::connect(request.authority)
            .await
            .map_err(|err| Refusal::Unavailable(format!("upstream connect: {err}")))
    }

    fn finished(&self, _request: &ConnectRequest, outcome: &mesh_hbone::TunnelOutcome) {
        self.finished.set(self.finished.get() + 1);
        if let mesh_hbone::TunnelOutcome::Piped(piped) = outcome {
            if piped.result.is_err() {
                self.failed.set(self.failed.get() + 1);
            }
        }
    }
}

/// Accepts HBONE (plain TCP) connections and serves each with whichever
/// server `current` holds at accept time (swapping it models a restart).
pub fn spawn_hbone_server<H: ConnectHandler>(current: Rc<RefCell<Server<H>>>) -> SocketAddr {
    let (listener, addr) = listener();
    monoio::spawn(async move {
        while let Ok((stream, peer_addr)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            let server = current.borrow().clone();
            let connection = mesh_hbone::ConnectionInfo {
                peer_identity: None,
                peer_addr: Some(peer_addr),
                local_addr: stream.local_addr().ok(),
            };
            monoio::spawn(async move {
                let io = stream.into_poll_io().expect("poll io");
                let _ = server.serve(io, connection).await;
            });
        }
    });
    addr
}

/// A port nothing listens on.
pub fn closed_port() -> SocketAddr {
    let (listener, addr) = listener();
    drop(listener);
    addr
}

/// Deterministic pseudo-random bytes (xorshift64).
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn fill(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            out.extend_from_slice(&self.0.to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A streaming checksum: the same for any split of the same bytes.
#[derive(Default)]
pub struct Checksum {
    hasher: std::collections::hash_map::DefaultHasher,
    pub len: u64,
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.write(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn value(&self) -> (u64, u64) {
        (self.len, self.hasher.finish())
    }
}

/// A one-shot gate tasks can wait on (tests only; single thread).
#[derive(Default)]
pub struct Gate {
    open: Cell<bool>,
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl Gate {
    pub fn open(&self) {
        self.open.set(true);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.open.get() {
                std::task::Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Reads until EOF into a checksum.
pub async fn read_to_end_checksum<R: AsyncReadRent>(read: &mut R) -> Checksum {
    let mut sum = Checksum::default();
    let mut buf = Vec::with_capacity(256 * 1024);
    loop {
        buf.clear();
        let (res, b) = read.read(buf).await;
        buf = b;
        match res.expect("read") {
            0 => return sum,
            _ => sum.update(&buf),
        }
    }
}
