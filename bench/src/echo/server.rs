//! Thread-per-core HTTP/1.1 server loop of the echo backend (monoio, one SO_REUSEPORT
//! listener per worker).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::handler::{self, Action, Identity, RequestView, RetryState};
use super::wire::{self, BodyFraming, ChunkedDiscarder, MAX_HEADERS, MAX_HEAD_BYTES};

/// State shared by every connection of every worker.
pub struct Shared {
    pub identity: Identity,
    pub retries: RetryState,
    pub fixed: Vec<u8>,
}

/// Binds a listening socket with SO_REUSEPORT so every worker gets its own accept queue.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Runs one worker: its own monoio runtime accepting on its own listener.
pub fn run_worker(listener: std::net::TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("echo accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            monoio::spawn(async move {
                let mut conn = Conn {
                    stream,
                    buf: Vec::with_capacity(8 * 1024),
                    out: Vec::with_capacity(8 * 1024),
                };
                let _ = conn.serve(Rc::new(remote.to_string()), &shared).await;
            });
        }
    })
}

struct Conn {
    stream: TcpStream,
    /// Bytes received and not yet consumed.
    buf: Vec<u8>,
    /// Responses waiting to be written (pipelined requests are answered in one write).
    out: Vec<u8>,
}

enum Next {
    Request {
        action: Action,
        framing: wire::Framing,
        head_len: usize,
        expects_continue: bool,
    },
    /// Answer with this error status and close.
    Reject(u16),
}

impl Conn {
    async fn serve(&mut self, remote: Rc<String>, shared: &Shared) -> std::io::Result<()> {
        loop {
            let next = loop {
                if let Some(next) = self.parse_head(&remote, shared) {
                    break next;
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    break Next::Reject(431);
                }
                self.flush().await?;
                if self.read_more().await? == 0 {
                    return Ok(());
                }
            };
            let (action, framing, head_len, expects_continue) = match next {
                Next::Request {
                    action,
                    framing,
                    head_len,
                    expects_continue,
                } => (action, framing, head_len, expects_continue),
                Next::Reject(status) => {
                    handler::write_head(&mut self.out, status, 0, None, &[], false);
                    return self.flush().await;
                }
            };
            self.buf.drain(..head_len);
            if expects_continue && framing.body != BodyFraming::None {
                self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                self.flush().await?;
            }
            if !self.discard_body(framing.body).await? {
                handler::write_head(&mut self.out, 400, 0, None, &[], false);
                return self.flush().await;
            }
            match action {
                Action::Fixed => {
                    self.out.extend_from_slice(&shared.fixed);
                }
                Action::Respond { delay, bytes } => {
                    if let Some(delay) = delay {
                        self.flush().await?;
                        monoio::time::sleep(delay).await;
                    }
                    self.out.extend_from_slice(&bytes);
                }
                Action::Reset { delay } => {
                    self.flush().await?;
                    if let Some(delay) = delay {
                        monoio::time::sleep(delay).await;
                    }
                    set_linger_zero(&self.stream);
                    // Dropping the stream now sends RST instead of FIN.
                    return Ok(());
                }
            }
            if !framing.keep_alive {
                return self.flush().await;
            }
        }
    }

    /// Parses one request head from the buffer; `None` = incomplete.
    fn parse_head(&self, remote: &str, shared: &Shared) -> Option<Next> {
        if self.buf.is_empty() {
            return None;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(httparse::Error::TooManyHeaders) => return Some(Next::Reject(431)),
            Err(_) => return Some(Next::Reject(400)),
        };
        let framing = match wire::framing_of(&req) {
            Ok(f) => f,
            Err(_) => return Some(Next::Reject(400)),
        };
        let expects_continue = req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue")
        });
        let view = RequestView {
            method: req.method.unwrap_or("GET"),
            target: req.path.unwrap_or("/"),
            version: req.version.unwrap_or(1),
            headers: req.headers,
            remote,
            keep_alive: framing.keep_alive,
            is_head: framing.is_head,
        };
        let action = handler::handle(&view, &shared.identity, &shared.retries);
        Some(Next::Request {
            action,
            framing,
            head_len,
            expects_continue,
        })
    }

    /// Reads and drops the request body. Returns false on malformed chunking.
    async fn discard_body(&mut self, body: BodyFraming) -> std::io::Result<bool> {
        match body {
            BodyFraming::None => Ok(true),
            BodyFraming::ContentLength(mut remaining) => loop {
                let take = (self.buf.len() as u64).min(remaining) as usize;
                self.buf.drain(..take);
                remaining -= take as u64;
                if remaining == 0 {
                    return Ok(true);
                }
                if self.read_more().await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            },
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDiscarder::default();
                loop {
                    match decoder.feed(&self.buf) {
                        Ok(n) => {
                            self.buf.drain(..n);
                        }
                        Err(_) => return Ok(false),
                    }
                    if decoder.is_done() {
                        return Ok(true);
                    }
                    if self.read_more().await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let len = buf.len();
        let (result, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        result
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (result, mut out) = self.stream.write_all(std::mem::take(&mut self.out)).await;
        out.clear();
        self.out = out;
        result.map(|_| ())
    }
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a file descriptor we own for the duration of the call, with a
    // correctly sized, initialised linger struct. Needed because monoio's TcpStream exposes
    // no linger setter and the retry contract requires an RST (SO_LINGER 0) on close.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
