//! One worker's listening socket on one port, and its accept loop.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::worker::WorkerContext;
use crate::{Accepted, ConnectionHandler};

const BACKLOG: i32 = 4096;

/// Binds `port` on all addresses with SO_REUSEPORT so that every worker owns
/// its own accept queue for the port (the kernel spreads connections).
///
/// Tries `[::]` dual-stack first (one socket for IPv4 and IPv6) and falls back
/// to `0.0.0.0` where IPv6 is unavailable.
pub(crate) fn bind(port: u16, nonblocking: bool) -> io::Result<std::net::TcpListener> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match bind_one(v6, nonblocking) {
        Ok(l) => Ok(l),
        Err(e) if ipv6_unavailable(&e) => {
            bind_one(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), nonblocking)
        }
        Err(e) => Err(e),
    }
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn bind_one(addr: SocketAddr, nonblocking: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // io_uring completes accepts on a blocking socket; the epoll fallback needs
    // non-blocking ones.
    socket.set_nonblocking(nonblocking)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A running accept loop; `stop()` cancels the pending accept and closes the
/// socket. Connections already accepted keep running.
pub(crate) struct ListenerTask {
    stopped: Rc<Cell<bool>>,
    canceller: Option<monoio::io::Canceller>,
    closed: Rc<Cell<bool>>,
}

impl ListenerTask {
    /// Returns a flag that turns true once the accept loop has dropped the socket.
    pub(crate) fn stop(mut self) -> Rc<Cell<bool>> {
        self.stopped.set(true);
        if let Some(c) = self.canceller.take() {
            c.cancel();
        }
        self.closed.clone()
    }
}

/// Spawns the accept loop for an already bound socket on the current worker.
pub(crate) fn spawn_accept_loop<H: ConnectionHandler>(
    std_listener: std::net::TcpListener,
    port: u16,
    handler: Rc<H>,
    ctx: Rc<WorkerContext>,
) -> io::Result<ListenerTask> {
    let listener = monoio::net::TcpListener::from_std(std_listener)?;
    let canceller = monoio::io::Canceller::new();
    let cancel = canceller.handle();
    let stopped = Rc::new(Cell::new(false));
    let loop_stopped = stopped.clone();
    let closed = Rc::new(Cell::new(false));
    let loop_closed = closed.clone();
    monoio::spawn(async move {
        loop {
            match listener.cancelable_accept(cancel.clone()).await {
                Ok((stream, peer)) => {
                    let conn = Accepted {
                        stream,
                        peer: unmap_ipv4(peer),
                        port,
                        drain: ctx.drain.clone(),
                    };
                    let active = ctx.connection_started();
                    let fut = handler.clone().handle(conn);
                    monoio::spawn(async move {
                        if crate::worker::CatchUnwind(fut).await.is_err() {
                            tracing::error!(port, %peer, "connection handler panicked; connection closed");
                        }
                        drop(active);
                    });
                }
                Err(_) if loop_stopped.get() => break,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS and friends: back off instead of spinning.
                    tracing::warn!(port, error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        drop(listener);
        loop_closed.set(true);
        tracing::debug!(port, worker = ctx.index, "listener closed");
    });
    Ok(ListenerTask {
        stopped,
        canceller: Some(canceller),
        closed,
    })
}

/// Dual-stack sockets report IPv4 peers as `::ffff:a.b.c.d`; downstream code
/// (x-forwarded-for, logs) wants the plain IPv4 form.
fn unmap_ipv4(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_peers_are_unmapped() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        assert_eq!(unmap_ipv4(mapped), "127.0.0.1:4000".parse().unwrap());
        let v6: SocketAddr = "[::1]:4000".parse().unwrap();
        assert_eq!(unmap_ipv4(v6), v6);
    }

    #[test]
    fn two_sockets_share_a_port_with_reuseport() {
        let a = bind(0, false).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = bind(port, false).unwrap();
        assert_eq!(b.local_addr().unwrap().port(), port);
        // Reachable over IPv4 loopback (dual-stack or the IPv4 fallback).
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    }
}
