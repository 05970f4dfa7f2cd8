//! Streaming bodies: read one framing, write another, never holding more
//! than one read buffer of payload.

use std::io;

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::codec::chunked::{self, ChunkedDecoder, Decoded};
use crate::codec::BodyKind;
use crate::io::{flush, write_all, Io};

/// Pieces at most this big are copied next to their framing (one write);
/// bigger ones are written as they are (no copy).
const COALESCE: usize = 16 * 1024;

#[derive(Debug)]
pub enum BodyError {
    Io(io::Error),
    /// The peer closed before the body ended.
    UnexpectedEof,
    Malformed(&'static str),
    /// More than the configured limit.
    TooLarge,
    /// No bytes arrived within the body idle timeout.
    Timeout,
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        BodyError::Io(e)
    }
}

pub enum Step {
    Data(Bytes),
    End,
    NeedRead,
}

/// Reads one body from an `Io`, leaving anything after it in the buffer.
#[derive(Debug)]
pub struct BodyReader {
    kind: BodyKind,
    remaining: u64,
    chunked: ChunkedDecoder,
    eof: bool,
    done: bool,
    limit: Option<u64>,
    seen: u64,
    idle_timeout: Option<std::time::Duration>,
}

impl BodyReader {
    /// Each read waiting for the peer gives up after `idle` (a stalled peer
    /// must not hold a connection forever).
    pub fn with_idle_timeout(mut self, idle: Option<std::time::Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    pub fn new(kind: BodyKind, limit: Option<u64>) -> Self {
        Self {
            kind,
            remaining: match kind {
                BodyKind::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::default(),
            eof: false,
            done: kind == BodyKind::None,
            limit,
            seen: 0,
            idle_timeout: None,
        }
    }

    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next piece that is already buffered, without reading.
    pub fn poll_buffered(&mut self, rbuf: &mut BytesMut) -> Result<Step, BodyError> {
        if self.done {
            return Ok(Step::End);
        }
        let step = match self.kind {
            BodyKind::None => Step::End,
            BodyKind::Length(_) => {
                if self.remaining == 0 {
                    Step::End
                } else if rbuf.is_empty() {
                    Step::NeedRead
                } else {
                    let take = self.remaining.min(rbuf.len() as u64) as usize;
                    self.remaining -= take as u64;
                    // Mark the end now so callers see is_done() without another poll.
                    self.done = self.remaining == 0;
                    Step::Data(rbuf.split_to(take).freeze())
                }
            }
            BodyKind::Chunked => match self.chunked.decode(rbuf) {
                Ok(Decoded::Data(b)) => Step::Data(b),
                Ok(Decoded::Done) => Step::End,
                Ok(Decoded::NeedMore) => Step::NeedRead,
                Err(e) => return Err(BodyError::Malformed(e.0)),
            },
            BodyKind::Eof => {
                if !rbuf.is_empty() {
                    Step::Data(rbuf.split().freeze())
                } else if self.eof {
                    Step::End
                } else {
                    Step::NeedRead
                }
            }
        };
        match &step {
            Step::End => self.done = true,
            Step::Data(b) => {
                self.seen += b.len() as u64;
                if self.limit.is_some_and(|l| self.seen > l) {
                    return Err(BodyError::TooLarge);
                }
            }
            Step::NeedRead => {}
        }
        Ok(step)
    }

    /// Reads more from `io` after `poll_buffered` said `NeedRead`.
    pub async fn read_more<S: AsyncReadRent + AsyncWriteRent>(
        &mut self,
        io: &mut Io<S>,
    ) -> Result<(), BodyError> {
        let n = match self.idle_timeout {
            Some(d) => monoio::time::timeout(d, io.fill_body())
                .await
                .map_err(|_| BodyError::Timeout)??,
            None => io.fill_body().await?,
        };
        if n == 0 {
            if self.kind == BodyKind::Eof {
                self.eof = true;
            } else {
                return Err(BodyError::UnexpectedEof);
            }
        }
        Ok(())
    }

    /// The next piece of payload, reading as needed; None at the end.
    pub async fn next<S: AsyncReadRent + AsyncWriteRent>(
        &mut self,
        io: &mut Io<S>,
    ) -> Result<Option<Bytes>, BodyError> {
        loop {
            match self.poll_buffered(&mut io.rbuf)? {
                Step::Data(b) => return Ok(Some(b)),
                Step::End => return Ok(None),
                Step::NeedRead => self.read_more(io).await?,
            }
        }
    }

    /// Reads the whole body into memory if it is at most `max` bytes
    /// (used to make small bodies replayable for retries and mirrors).
    pub async fn read_all<S: AsyncReadRent + AsyncWriteRent>(
        &mut self,
        io: &mut Io<S>,
        max: usize,
    ) -> Result<Bytes, BodyError> {
        let mut out = BytesMut::new();
        while let Some(b) = self.next(io).await? {
            if out.len() + b.len() > max {
                return Err(BodyError::TooLarge);
            }
            if out.is_empty() && self.done {
                return Ok(b);
            }
            out.extend_from_slice(&b);
        }
        Ok(out.freeze())
    }
}

/// How a body is framed on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// Bytes as they are (Content-Length, or until close).
    Raw,
    Chunked,
}

#[derive(Debug)]
pub enum CopyError {
    Read(BodyError),
    Write(io::Error),
}

/// Appends one piece of payload to `out` in the given framing, writing `out`
/// first when the piece is too big to copy.
pub async fn write_piece<W: AsyncWriteRent>(
    w: &mut W,
    out: &mut BytesMut,
    framing: OutFraming,
    data: Bytes,
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if framing == OutFraming::Chunked {
        chunked::write_chunk_header(out, data.len());
    }
    if data.len() <= COALESCE {
        out.extend_from_slice(&data);
    } else {
        flush(w, out).await?;
        write_all(w, data).await?;
    }
    if framing == OutFraming::Chunked {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Copies a body from `src` to `dst`. `out` holds bytes still to be written
/// before the body (e.g. the head), so small messages go out in one write.
/// Everything is flushed before returning Ok.
pub async fn copy_body<S: AsyncReadRent + AsyncWriteRent, W: AsyncWriteRent>(
    reader: &mut BodyReader,
    src: &mut Io<S>,
    dst: &mut W,
    framing: OutFraming,
    out: &mut BytesMut,
) -> Result<(), CopyError> {
    loop {
        match reader
            .poll_buffered(&mut src.rbuf)
            .map_err(CopyError::Read)?
        {
            Step::Data(b) => write_piece(dst, out, framing, b)
                .await
                .map_err(CopyError::Write)?,
            Step::End => {
                if framing == OutFraming::Chunked {
                    out.extend_from_slice(chunked::LAST_CHUNK);
                }
                return flush(dst, out).await.map_err(CopyError::Write);
            }
            Step::NeedRead => {
                // Never sit on unsent bytes while waiting for the peer.
                flush(dst, out).await.map_err(CopyError::Write)?;
                reader.read_more(src).await.map_err(CopyError::Read)?;
            }
        }
    }
}
