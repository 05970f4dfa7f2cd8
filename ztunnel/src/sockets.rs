//! Socket recipes for in-pod proxying: listeners and upstream connections
//! made inside a pod's network namespace, SO_MARK so that the pod's capture
//! rules let our own traffic through, IP_TRANSPARENT to keep the client's
//! source address, SO_ORIGINAL_DST to learn where a redirected connection
//! was going.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::netns::NetNs;

/// Istio's mark for the proxy's own sockets: capture rules skip it.
pub const PROXY_MARK: u32 = 0x539;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `0.0.0.0:port` (SO_REUSEPORT: one socket per worker) inside `netns`.
/// `nonblocking`: the epoll driver needs it, io_uring wants blocking fds.
pub fn bind_listener(
    netns: &NetNs,
    port: u16,
    nonblocking: bool,
) -> io::Result<monoio::net::TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let socket = netns.run(|| listening_socket(addr))?;
    socket.set_nonblocking(nonblocking)?;
    monoio::net::TcpListener::from_std(socket.into())
}

/// SO_REUSEPORT, and TCP_NODELAY, which Linux copies to every accepted socket: one
/// `setsockopt` here instead of one per connection.
fn listening_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket)
}

/// How an upstream socket is made.
#[derive(Debug, Clone, Copy)]
pub struct Upstream {
    pub destination: SocketAddr,
    /// Bind to this (non-local) address with IP_TRANSPARENT: the server sees
    /// the original client as the source.
    pub transparent_source: Option<std::net::IpAddr>,
    /// io_uring wants blocking fds; the epoll driver non-blocking ones.
    pub uring: bool,
}

/// Sockets made ahead inside one pod's network namespace, for one worker. A socket belongs
/// to the namespace it was created in, and entering one costs two `setns` calls; so each
/// visit makes `SOCKET_BATCH` IPv4 sockets (marked, non-blocking, close-on-exec, all set
/// when created) and connections take them one at a time.
pub struct PodSockets {
    netns: Arc<NetNs>,
    ipv4: RefCell<Vec<Socket>>,
}

/// Sockets made per visit to a pod's namespace: few enough that idle ones cost little.
const SOCKET_BATCH: usize = 16;

impl PodSockets {
    pub fn new(netns: Arc<NetNs>) -> Self {
        Self {
            netns,
            ipv4: RefCell::new(Vec::new()),
        }
    }

    /// A fresh socket of the pod's namespace, marked SO_MARK 0x539, non-blocking.
    fn take(&self, domain: Domain) -> io::Result<Socket> {
        if domain != Domain::IPV4 {
            return self.netns.run(|| new_upstream_socket(domain));
        }
        if let Some(socket) = self.ipv4.borrow_mut().pop() {
            return Ok(socket);
        }
        let mut made = self.netns.run(|| {
            let mut made = Vec::with_capacity(SOCKET_BATCH);
            for _ in 0..SOCKET_BATCH {
                match new_upstream_socket(domain) {
                    Ok(socket) => made.push(socket),
                    // E.g. out of file descriptors: use what was made.
                    Err(e) if made.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            Ok(made)
        })?;
        let socket = made.pop().expect("a batch holds at least one socket");
        *self.ipv4.borrow_mut() = made;
        Ok(socket)
    }
}

/// SOCK_NONBLOCK and SOCK_CLOEXEC in the `socket` call itself (no fcntl), and the mark that
/// the pod's capture rules skip.
fn new_upstream_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
    socket.set_mark(PROXY_MARK)?;
    Ok(socket)
}

/// Connects from inside the pod's namespace with SO_MARK 0x539.
pub async fn connect_in(sockets: &PodSockets, up: Upstream) -> io::Result<monoio::net::TcpStream> {
    let socket = sockets.take(Domain::for_address(up.destination))?;
    if let Some(source) = up.transparent_source {
        socket.set_ip_transparent_v4(true)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&up.destination.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = monoio::net::TcpStream::from_std(socket.into())?;
    monoio::time::timeout(CONNECT_TIMEOUT, stream.writable(false))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    // SAFETY: the fd is owned by `stream`, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let sock = SockRef::from(&fd);
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    if up.uring {
        set_blocking(stream.as_raw_fd())?;
    }
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Clears O_NONBLOCK with one `ioctl(FIONBIO)` (socket2's `set_nonblocking` reads the
/// flags and writes them back: two `fcntl` calls).
fn set_blocking(fd: std::os::fd::RawFd) -> io::Result<()> {
    let mut nonblocking: libc::c_int = 0;
    // SAFETY: FIONBIO reads one c_int from the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd, libc::FIONBIO, &mut nonblocking) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where an iptables-REDIRECTed connection was originally going.
pub fn original_dst(stream: &impl AsRawFd) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    // SAFETY: getsockopt writes at most `len` bytes into the zeroed sockaddr
    // storage we own; `len` tells it the size.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        );
        if rc == 0 {
            return Ok(sockaddr_to_std(&addr));
        }
        let v4_error = io::Error::last_os_error();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            libc::IP6T_SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        );
        if rc == 0 {
            return Ok(sockaddr_to_std(&addr));
        }
        Err(v4_error)
    }
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> SocketAddr {
    // SAFETY: the family field says which sockaddr layout the kernel wrote.
    unsafe {
        if i32::from(addr.ss_family) == libc::AF_INET6 {
            let a = &*(addr as *const _ as *const libc::sockaddr_in6);
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, u16::from_be(a.sin6_port))),
                None => SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), 0, 0)),
            }
        } else {
            let a = &*(addr as *const _ as *const libc::sockaddr_in);
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let socket = listening_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(
            SockRef::from(&accepted).tcp_nodelay().unwrap(),
            "the handlers no longer set TCP_NODELAY on accepted sockets themselves"
        );
        drop(client);
    }
}
