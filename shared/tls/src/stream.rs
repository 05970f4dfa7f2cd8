//! The TLS stream on monoio: rustls driven directly from tokio-style poll functions over
//! monoio's poll-io `TcpStreamPoll`, so that h2 (which only needs tokio's I/O traits) runs on
//! it under `monoio::spawn`.
//!
//! Why not `monoio_compat::StreamWrapper` over monoio-rustls: it panics under load when a write
//! starts while a flush is pending, and copies more. Here:
//! - reads pull up to `READ_BUFFER` bytes of ciphertext per syscall (rustls alone reads 4 KiB
//!   at a time) and feed them to rustls from memory;
//! - writes hand plaintext to rustls, which encrypts it into its outgoing buffer; the socket
//!   is written when that buffer reaches `TLS_WRITE_BATCH` (256 KiB) or on flush, with one
//!   vectored write for many records;
//! - the rustls connection stays reachable (`peer_certificates()`, ALPN, identity).

use std::future::poll_fn;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::TcpStream;
use rustls::pki_types::{CertificateDer, IpAddr as PkiIpAddr, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::{ALPN_H2, TLS_WRITE_BATCH};
use crate::identity::Identity;
use crate::verify::{verify_error_of, VerifyError};

/// Ciphertext read per socket read.
const READ_BUFFER: usize = 64 * 1024;

/// A failed TLS connect/accept.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS I/O: {0}")]
    Io(#[from] io::Error),
    #[error("peer verification failed: {}", verify_error_of(.0).map(|v| v.to_string()).unwrap_or_else(|| .0.to_string()))]
    PeerVerification(rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    #[error("peer closed the connection during the TLS handshake")]
    ClosedDuringHandshake,
    #[error("peer did not negotiate ALPN h2")]
    NoAlpnH2,
    #[error("peer identity: {0}")]
    PeerIdentity(#[from] crate::identity::IdentityError),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("cannot use the TCP stream in poll mode: {0}")]
    PollIo(io::Error),
}

impl TlsError {
    fn from_rustls(err: rustls::Error) -> Self {
        if verify_error_of(&err).is_some() {
            TlsError::PeerVerification(err)
        } else {
            TlsError::Handshake(err)
        }
    }

    /// The verification error, if our verifier refused the peer.
    pub fn verify_error(&self) -> Option<&VerifyError> {
        match self {
            TlsError::PeerVerification(e) => verify_error_of(e),
            _ => None,
        }
    }
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Io(io) => io,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// A TLS connection over a monoio TCP stream, usable with tokio's `AsyncRead`/`AsyncWrite`.
pub struct TlsStream {
    io: TcpStreamPoll,
    conn: Connection,
    read_buf: Box<[u8]>,
    read_pos: usize,
    read_len: usize,
    /// The TCP peer closed its write side.
    tcp_eof: bool,
    /// rustls has been told about `tcp_eof`.
    eof_delivered: bool,
    /// We sent close_notify (poll_shutdown); no more writes.
    write_closed: bool,
    tcp_write_shut: bool,
    peer_identity: Option<Identity>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer_identity", &self.peer_identity)
            .field("peer_addr", &self.io.peer_addr().ok())
            .finish()
    }
}

/// Maps a poll-based socket onto the blocking `Read`/`Write` rustls expects: `Pending`
/// becomes `WouldBlock`, and the socket has registered the waker.
struct SyncIo<'a, 'b> {
    io: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Write for SyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    fn new(tcp: TcpStream, conn: Connection) -> Result<Self, TlsError> {
        let io = tcp
            .try_into_poll_io()
            .map_err(|(e, _tcp)| TlsError::PollIo(e))?;
        let mut conn = conn;
        conn.set_buffer_limit(Some(TLS_WRITE_BATCH));
        Ok(TlsStream {
            io,
            conn,
            read_buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            read_pos: 0,
            read_len: 0,
            tcp_eof: false,
            eof_delivered: false,
            write_closed: false,
            tcp_write_shut: false,
            peer_identity: None,
        })
    }

    /// The verified peer identity (the leaf's SPIFFE URI SAN).
    pub fn peer_identity(&self) -> &Identity {
        self.peer_identity
            .as_ref()
            .expect("peer identity is set before a TlsStream is handed out")
    }

    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The rustls connection (cipher suite, protocol version, ...).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The TCP stream (addresses, socket options, raw fd).
    pub fn tcp(&self) -> &TcpStreamPoll {
        &self.io
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Writes rustls' pending TLS records to the socket until none are left.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut sync = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut sync) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Flushes what can go without waiting (alerts, key updates produced while reading).
    fn flush_tls_best_effort(&mut self, cx: &mut Context<'_>) {
        // A pending write leaves the records in rustls; the next poll_write/poll_flush sends
        // them. Errors surface on that next write too.
        let _ = self.poll_flush_tls(cx);
    }

    /// Feeds buffered ciphertext (or the EOF) to rustls and processes it.
    /// `Ok(true)`: rustls made progress; `Ok(false)`: nothing buffered.
    ///
    /// Records rustls wants to send as a result (handshake replies, key update answers) are
    /// not written here: the read side may run in another task than the write side (e.g.
    /// after `tokio::io::split`), and registering the reader's waker for write readiness
    /// would replace the writer's and strand it. The handshake loop and the next
    /// `poll_write`/`poll_flush` send them.
    fn feed_rustls(&mut self, cx: &mut Context<'_>) -> Result<bool, rustls::Error> {
        if self.read_pos < self.read_len {
            let mut pending = fastcopy::SliceReader(&self.read_buf[self.read_pos..self.read_len]);
            match self.conn.read_tls(&mut pending) {
                // rustls took nothing from a non-empty buffer: it would never make progress.
                Ok(0) => return Err(rustls::Error::General("TLS input not accepted".into())),
                Ok(n) => self.read_pos += n,
                // Only "buffer full" conditions; callers drain plaintext before feeding.
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
        } else if self.tcp_eof && !self.eof_delivered {
            self.eof_delivered = true;
            let _ = self.conn.read_tls(&mut io::empty());
        } else {
            return Ok(false);
        }
        match self.conn.process_new_packets() {
            Ok(_) => Ok(true),
            Err(e) => {
                // Send the alert describing the error, if the socket takes it now.
                self.flush_tls_best_effort(cx);
                Err(e)
            }
        }
    }

    /// Reads ciphertext from the socket into our buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut buf = ReadBuf::new(&mut self.read_buf);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.read_pos = 0;
        self.read_len = n;
        if n == 0 {
            self.tcp_eof = true;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TlsError>> {
        loop {
            ready!(self.poll_flush_tls(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match self.feed_rustls(cx) {
                Ok(true) => continue,
                Ok(false) if self.tcp_eof => {
                    return Poll::Ready(Err(TlsError::ClosedDuringHandshake))
                }
                Ok(false) => ready!(self.poll_fill(cx))?,
                Err(e) => {
                    // Give the peer our alert before reporting.
                    let _ = self.poll_flush_tls(cx);
                    return Poll::Ready(Err(TlsError::from_rustls(e)));
                }
            }
        }
    }

    async fn handshake(mut self) -> Result<Self, TlsError> {
        poll_fn(|cx| self.poll_handshake(cx)).await?;
        if self.conn.alpn_protocol() != Some(ALPN_H2) {
            return Err(TlsError::NoAlpnH2);
        }
        let leaf = self
            .conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or(TlsError::PeerIdentity(
                crate::identity::IdentityError::NoSpiffeSan,
            ))?;
        self.peer_identity = Some(Identity::from_certificate(leaf)?);
        Ok(self)
    }
}

/// Client handshake. `config` comes from [`crate::HboneTls::client_config`] (it carries the
/// identities the server may present). No SNI is sent.
pub async fn connect(config: Arc<ClientConfig>, tcp: TcpStream) -> Result<TlsStream, TlsError> {
    // rustls wants a server name even with SNI disabled; the peer IP is only a placeholder
    // (our verifier checks the SPIFFE identity, not names).
    let name = match tcp.peer_addr() {
        Ok(addr) => ServerName::IpAddress(PkiIpAddr::from(addr.ip())),
        Err(e) => return Err(TlsError::Io(e)),
    };
    let conn = ClientConnection::new(config, name).map_err(TlsError::from_rustls)?;
    TlsStream::new(tcp, Connection::Client(conn))?
        .handshake()
        .await
}

/// Client handshake for ordinary (non-HBONE) TLS, e.g. to a backend outside the mesh:
/// `server_name` is verified and sent as SNI as `config` says; no SPIFFE identity is
/// required, so [`TlsStream::peer_identity`] must not be called on the result.
pub async fn connect_plain(
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    tcp: TcpStream,
) -> Result<TlsStream, TlsError> {
    let conn = ClientConnection::new(config, server_name).map_err(TlsError::from_rustls)?;
    let mut stream = TlsStream::new(tcp, Connection::Client(conn))?;
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// Server handshake: requires a client certificate from the trust domain.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> Result<TlsStream, TlsError> {
    let conn = ServerConnection::new(config).map_err(TlsError::from_rustls)?;
    TlsStream::new(tcp, Connection::Server(conn))?
        .handshake()
        .await
}

/// Server handshake for ordinary (non-HBONE) TLS, e.g. an HTTPS listener: whatever the
/// `config` negotiates (ALPN, versions, client auth) is accepted; no SPIFFE identity is
/// required, so [`TlsStream::peer_identity`] must not be called on the result.
pub async fn accept_plain(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
) -> Result<TlsStream, TlsError> {
    let conn = ServerConnection::new(config).map_err(TlsError::from_rustls)?;
    let mut stream = TlsStream::new(tcp, Connection::Server(conn))?;
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    /// The SNI the client sent (server side), lower-case.
    pub fn server_name(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Copy decrypted plaintext straight into the caller's buffer (no zeroing of its
            // spare capacity first: h2 reads into large uninitialised buffers), avoiding the
            // slow relative alignments (see `fastcopy`).
            let mut reader = this.conn.reader();
            let mut copied = false;
            loop {
                match reader.fill_buf() {
                    // Empty: the peer sent close_notify (clean EOF).
                    Ok([]) => return Poll::Ready(Ok(())),
                    Ok(chunk) => {
                        let n = chunk.len().min(buf.remaining());
                        fastcopy::put_slice(buf, &chunk[..n]);
                        reader.consume(n);
                        copied = true;
                        if buf.remaining() == 0 {
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(_) if copied => return Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // UnexpectedEof: TCP closed without close_notify (possible truncation).
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            match this.feed_rustls(cx) {
                Ok(true) => {}
                Ok(false) => ready!(this.poll_fill(cx))?,
                Err(e) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
    }
}

impl TlsStream {
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&mut Connection) -> io::Result<usize>,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after TLS shutdown",
            )));
        }
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        loop {
            // rustls takes plaintext until its outgoing buffer holds TLS_WRITE_BATCH bytes;
            // then the whole batch goes to the socket and we take more.
            let n = write(&mut self.conn)?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            ready!(self.poll_flush_tls(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |conn| conn.writer().write(buf), buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        // rustls packs the slices into full-size records (an h2 frame header and its payload
        // share a record).
        self.get_mut()
            .poll_write_with(cx, |conn| conn.writer().write_vectored(bufs), len)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    /// Sends close_notify, flushes, then shuts the TCP write side (half-close): reading
    /// continues to work.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.conn.send_close_notify();
        }
        ready!(this.poll_flush_tls(cx))?;
        if !this.tcp_write_shut {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.tcp_write_shut = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// Copies that avoid a pathological case of `rep movsb`, which glibc's `memcpy` uses for
/// copies of a few KiB and more: on the AMD EPYC machines we measure on, a copy whose
/// destination is 1 to 31 bytes past its source modulo 64 runs at ~1.5 GB/s instead of
/// 20-30 GB/s (a 16 KiB copy: 1.1-1.7 GB/s at those offsets, 16-36 GB/s at every other).
/// TLS shifts data by odd amounts (5-byte record headers, 9-byte h2 frame headers), so about
/// half of the large copies on the receive path hit it. Such a copy goes through a staging
/// buffer instead: two copies at fast offsets (32 bytes, then the rest) cost far less than
/// one slow copy. Everything else is a plain `copy_from_slice`.
mod fastcopy {
    use std::cell::RefCell;
    use std::io;
    use std::mem::MaybeUninit;

    use tokio::io::ReadBuf;

    /// Below this, memcpy does not use `rep movsb` and every offset is fast.
    const MIN_STAGED: usize = 2048;
    /// Staging buffer size (per thread); longer copies go in pieces.
    const STAGE: usize = 64 * 1024;

    thread_local! {
        static STAGING: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; STAGE + 64].into_boxed_slice());
    }

    fn slow_offset(dst: *const u8, src: *const u8) -> bool {
        let delta = (dst as usize).wrapping_sub(src as usize) % 64;
        (1..32).contains(&delta)
    }

    /// Copies `src` into `dst` (same length, not overlapping).
    pub(super) fn copy(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
        assert_eq!(dst.len(), src.len());
        let dst_ptr = dst.as_mut_ptr().cast::<u8>();
        if src.len() < MIN_STAGED || !slow_offset(dst_ptr, src.as_ptr()) {
            // SAFETY: `dst` is valid for `src.len()` writes (same length, asserted), and a
            // `&mut` cannot alias the shared `src`.
            unsafe { dst_ptr.copy_from_nonoverlapping(src.as_ptr(), src.len()) };
            return;
        }
        STAGING.with(|staging| {
            let mut staging = staging.borrow_mut();
            let base = staging.as_mut_ptr();
            // Place the staging copy 32 bytes past the source modulo 64: both hops fast.
            let pad = (32 + 64 + (src.as_ptr() as usize % 64) - (base as usize % 64)) % 64;
            let mut done = 0;
            while done < src.len() {
                let n = (src.len() - done).min(STAGE);
                // SAFETY: `pad + n <= 63 + STAGE`, inside the staging buffer (STAGE + 64),
                // which this thread borrows exclusively; `src[done..done + n]` and
                // `dst[done..done + n]` are in bounds (same lengths); the three regions are
                // distinct allocations or `&mut`/`&` borrows, so they do not overlap.
                unsafe {
                    let stage = base.add(pad);
                    stage.copy_from_nonoverlapping(src.as_ptr().add(done), n);
                    dst_ptr.add(done).copy_from_nonoverlapping(stage, n);
                }
                done += n;
            }
        });
    }

    /// `buf.put_slice(src)` through [`copy`].
    pub(super) fn put_slice(buf: &mut ReadBuf<'_>, src: &[u8]) {
        // SAFETY: we only write initialised bytes into the first `src.len()` unfilled bytes
        // (put_slice's own precondition: `src.len() <= remaining`, checked by the slice
        // index), then mark exactly those initialised and filled.
        unsafe {
            let unfilled = &mut buf.unfilled_mut()[..src.len()];
            copy(unfilled, src);
            buf.assume_init(src.len());
        }
        buf.advance(src.len());
    }

    /// A `Read` over a byte slice whose copies go through [`copy`] (rustls' `read_tls`
    /// copies our ciphertext into its record buffer at whatever offset it has reached).
    pub(super) struct SliceReader<'a>(pub(super) &'a [u8]);

    impl io::Read for SliceReader<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.0.len());
            let (head, rest) = self.0.split_at(n);
            // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout; an initialised
            // `&mut [u8]` may be viewed as `&mut [MaybeUninit<u8>]` for writing bytes.
            let out = unsafe { &mut *(&mut out[..n] as *mut [u8] as *mut [MaybeUninit<u8>]) };
            copy(out, head);
            self.0 = rest;
            Ok(n)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Every offset pair and a length that needs pieces: the bytes arrive intact.
        #[test]
        fn copies_exactly_at_every_offset() {
            let src: Vec<u8> = (0..STAGE * 2 + 4096)
                .map(|i| (i * 7 + i / 251) as u8)
                .collect();
            for src_off in [0usize, 5, 9, 31, 32, 63] {
                for dst_off in [0usize, 1, 14, 31, 32, 33, 63] {
                    for len in [0usize, 100, MIN_STAGED + 3, 16 * 1024 + 5, STAGE * 2 + 7] {
                        let input = &src[src_off..src_off + len];
                        let mut out = vec![0u8; len + 64];
                        let mut reader = SliceReader(input);
                        let n =
                            io::Read::read(&mut reader, &mut out[dst_off..dst_off + len]).unwrap();
                        assert_eq!(n, len);
                        assert_eq!(
                            &out[dst_off..dst_off + len],
                            input,
                            "src {src_off} dst {dst_off} len {len}"
                        );
                        assert!(out[..dst_off].iter().all(|&b| b == 0));
                        assert!(out[dst_off + len..].iter().all(|&b| b == 0));
                    }
                }
            }
        }

        #[test]
        fn put_slice_fills_the_read_buf() {
            let src: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
            let mut storage = vec![MaybeUninit::<u8>::uninit(); 30_000];
            let mut buf = ReadBuf::uninit(&mut storage[3..]);
            put_slice(&mut buf, &src[1..10_001]);
            put_slice(&mut buf, &src[10_001..]);
            assert_eq!(buf.filled(), &src[1..]);
        }
    }
}
