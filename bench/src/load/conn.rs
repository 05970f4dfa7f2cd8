//! A load connection for HTTP/1.1 and raw TCP: plain TCP with monoio's
//! owned-buffer io_uring calls, or TLS (tokio-rustls over the poll-io stream),
//! and the receive buffer both read into.

use super::stats::ErrorKind;
use super::tls::TlsStream;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RECV_BUF: usize = 16 * 1024;

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Conn {
    pub async fn write_all(&mut self, data: &Arc<Vec<u8>>) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data.clone()).await.0.map(|_| ()),
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    /// Read into `buf`'s spare capacity (appending); 0 at end of stream.
    async fn read_append(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Conn::Plain(s) => {
                let len = buf.len();
                let (res, slice) = s.read(buf.slice_mut(len..)).await;
                (res, slice.into_inner())
            }
            Conn::Tls(s) => {
                let mut buf = buf;
                let res = match s.read_buf(&mut buf).await {
                    // TCP closed without close_notify: for a response delimited
                    // by the close that is its end, as for plain TCP.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    other => other,
                };
                (res, buf)
            }
        }
    }
}

/// Receive buffer: `buf[pos..]` holds bytes read but not yet consumed.
pub struct RecvBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl RecvBuf {
    pub fn new() -> RecvBuf {
        RecvBuf {
            buf: Vec::with_capacity(RECV_BUF),
            pos: 0,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Read more bytes after the unconsumed ones; returns 0 at end of stream.
    pub async fn fill(&mut self, conn: &mut Conn) -> Result<usize, ErrorKind> {
        if self.buf.len() == self.buf.capacity() {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            } else {
                // Also restores the buffer after a timed-out read took it away.
                self.buf.reserve(self.buf.capacity().max(RECV_BUF));
            }
        }
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = conn.read_append(buf).await;
        self.buf = buf;
        res.map_err(|_| ErrorKind::Read)
    }
}
