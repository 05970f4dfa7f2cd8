//! Per-worker keep-alive pool of upstream connections, keyed by endpoint.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::io::Io;

/// Connections idle longer than this are probed before reuse (a cheap
/// non-blocking peek) because the peer may have closed them meanwhile.
const PROBE_AFTER: Duration = Duration::from_millis(500);

struct Idle {
    io: Io,
    since: Instant,
}

/// Idle connections older than this are dropped by the periodic sweep
/// (upstreams close idle keep-alive connections on their own schedule).
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);
/// Sweep every this many `put`s (endpoints that disappeared leave no sockets behind).
const SWEEP_EVERY: u32 = 1024;

pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    max_idle: usize,
    puts: std::cell::Cell<u32>,
}

impl Pool {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
            max_idle,
            puts: std::cell::Cell::new(0),
        }
    }

    /// The most recently used live idle connection to `addr`, if any.
    /// `always_probe`: probe even recently used connections (when the request
    /// cannot be replayed on a fresh connection if this one turns out dead).
    pub fn take(&self, addr: SocketAddr, always_probe: bool) -> Option<Io> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if (always_probe || c.since.elapsed() > PROBE_AFTER)
                && !c.io.stream.tcp().is_none_or(is_alive)
            {
                continue;
            }
            return Some(c.io);
        }
        None
    }

    /// Keeps a connection whose last exchange ended cleanly.
    pub fn put(&self, addr: SocketAddr, io: Io) {
        if self.max_idle == 0 || !io.rbuf.is_empty() {
            return;
        }
        let mut io = io;
        io.shrink_idle();
        let mut idle = self.idle.borrow_mut();
        let puts = self.puts.get().wrapping_add(1);
        self.puts.set(puts);
        if puts.is_multiple_of(SWEEP_EVERY) {
            idle.retain(|_, list| {
                list.retain(|c| c.since.elapsed() < MAX_IDLE_AGE);
                !list.is_empty()
            });
        }
        let list = idle.entry(addr).or_default();
        if list.len() >= self.max_idle {
            // Drop the oldest: it is the most likely to be closed by the peer.
            list.remove(0);
        }
        list.push(Idle {
            io,
            since: Instant::now(),
        });
    }

    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.borrow().get(&addr).map_or(0, Vec::len)
    }
}

/// A new connection: TCP, or an HBONE tunnel on workers set up for it
/// (see [`super::connect`]).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Io> {
    super::connect::connect(addr, timeout).await
}

/// An idle HTTP connection must have nothing to read: EOF means the peer
/// closed it, stray bytes mean it is out of sync.
fn is_alive(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: recv on a valid, open socket fd into a 1-byte stack buffer we own;
    // MSG_PEEK|MSG_DONTWAIT neither consumes data nor blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}
