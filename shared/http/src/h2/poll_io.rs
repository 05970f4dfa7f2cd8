//! A monoio (owned-buffer, completion style) stream seen through tokio's
//! poll-style I/O traits, so h2 can run over streams that only speak monoio's
//! traits (an HBONE tunnel into the waypoint). One read and one write may be
//! in flight at once (the stream is split), each owning its buffer inside a
//! boxed future; a write is acknowledged once copied and completed on flush
//! or the next write. TCP and TLS streams do not need this (they have poll
//! I/O of their own).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::ClientStream;

const READ_SIZE: usize = 64 * 1024;

type ReadFut<S> = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>, OwnedReadHalf<S>)>>>;
type WriteFut<S> = Pin<Box<dyn Future<Output = (io::Result<()>, OwnedWriteHalf<S>)>>>;

enum ReadState<S: ClientStream> {
    Idle(OwnedReadHalf<S>, Vec<u8>),
    Reading(ReadFut<S>),
    /// Bytes read and not yet handed out, from `.1`.
    Ready(OwnedReadHalf<S>, Vec<u8>, usize),
    Failed,
}

enum WriteState<S: ClientStream> {
    Idle(OwnedWriteHalf<S>),
    Writing(WriteFut<S>),
    Failed,
}

pub struct PollIo<S: ClientStream> {
    read: ReadState<S>,
    write: WriteState<S>,
}

impl<S: ClientStream> PollIo<S> {
    pub fn new(stream: S) -> Self {
        let (r, w) = stream.into_split();
        Self {
            read: ReadState::Idle(r, Vec::with_capacity(READ_SIZE)),
            write: WriteState::Idle(w),
        }
    }
}

impl<S: ClientStream> AsyncRead for PollIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match std::mem::replace(&mut self.read, ReadState::Failed) {
                ReadState::Idle(mut r, mut v) => {
                    v.clear();
                    self.read = ReadState::Reading(Box::pin(async move {
                        let (res, v) = r.read(v).await;
                        (res, v, r)
                    }));
                }
                ReadState::Reading(mut fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.read = ReadState::Reading(fut);
                        return Poll::Pending;
                    }
                    Poll::Ready((Ok(n), v, r)) => {
                        if n == 0 {
                            self.read = ReadState::Idle(r, v);
                            return Poll::Ready(Ok(()));
                        }
                        self.read = ReadState::Ready(r, v, 0);
                    }
                    Poll::Ready((Err(e), _, _)) => return Poll::Ready(Err(e)),
                },
                ReadState::Ready(r, v, at) => {
                    let n = (v.len() - at).min(buf.remaining());
                    buf.put_slice(&v[at..at + n]);
                    self.read = if at + n == v.len() {
                        ReadState::Idle(r, v)
                    } else {
                        ReadState::Ready(r, v, at + n)
                    };
                    return Poll::Ready(Ok(()));
                }
                ReadState::Failed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
}

impl<S: ClientStream> PollIo<S> {
    /// Completes the write in flight, if any.
    fn poll_pending_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match std::mem::replace(&mut self.write, WriteState::Failed) {
            WriteState::Writing(mut fut) => match fut.as_mut().poll(cx) {
                Poll::Pending => {
                    self.write = WriteState::Writing(fut);
                    Poll::Pending
                }
                Poll::Ready((res, w)) => {
                    self.write = WriteState::Idle(w);
                    Poll::Ready(res)
                }
            },
            idle @ WriteState::Idle(_) => {
                self.write = idle;
                Poll::Ready(Ok(()))
            }
            WriteState::Failed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl<S: ClientStream> AsyncWrite for PollIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending_write(cx))?;
        let WriteState::Idle(mut w) = std::mem::replace(&mut self.write, WriteState::Failed) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let owned = data.to_vec();
        self.write = WriteState::Writing(Box::pin(async move {
            let (res, _) = w.write_all(owned).await;
            (res.map(|_| ()), w)
        }));
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending_write(cx))?;
        let WriteState::Idle(mut w) = std::mem::replace(&mut self.write, WriteState::Failed) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        self.write = WriteState::Writing(Box::pin(async move {
            let res = w.flush().await;
            (res, w)
        }));
        self.poll_pending_write(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let WriteState::Idle(mut w) = std::mem::replace(&mut self.write, WriteState::Failed) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        self.write = WriteState::Writing(Box::pin(async move {
            let res = w.shutdown().await;
            (res, w)
        }));
        self.poll_pending_write(cx)
    }
}
