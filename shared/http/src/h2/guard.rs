//! A read-side watcher of a client's HTTP/2 frames, for the floods the h2
//! crate bounds only by back-pressure (it ACKs every SETTINGS and PING before
//! reading on, so a client can keep us busy answering) and for rapid reset
//! (streams opened and immediately cancelled, CVE-2023-44487) when the
//! streams are accepted as fast as they arrive.
//!
//! Only the 9-byte frame headers are looked at; payloads are skipped by
//! length, so a large DATA frame costs nothing. When a limit is crossed the
//! guard stops handing bytes to h2 and raises a flag; the connection loop
//! then sends GOAWAY(ENHANCE_YOUR_CALM) and closes.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface, which precedes the first frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;

/// Control frames (SETTINGS, PING) a client may send in a burst; the
/// allowance refills at `CONTROL_REFILL_PER_SEC`. Browsers send one SETTINGS
/// and an occasional PING.
const CONTROL_BURST: f64 = 100.0;
const CONTROL_REFILL_PER_SEC: f64 = 10.0;
/// Rapid reset: once this many streams were opened, a connection whose
/// streams were mostly (more than half) reset by the client is closed
/// (Envoy's premature-reset rule, with a smaller floor).
const RESET_MIN_STREAMS: u64 = 100;

/// Why the guard closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Control,
    RapidReset,
}

/// Shared between the guard (inside h2's I/O) and the connection loop.
#[derive(Default)]
pub struct GuardState {
    tripped: Cell<Option<Flood>>,
    waker: Cell<Option<Waker>>,
}

impl GuardState {
    pub fn tripped(&self) -> Option<Flood> {
        self.tripped.get()
    }

    /// The connection loop registers here so a trip wakes it.
    pub fn register(&self, waker: &Waker) {
        self.waker.set(Some(waker.clone()));
    }

    fn trip(&self, why: Flood) {
        if self.tripped.get().is_none() {
            self.tripped.set(Some(why));
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

pub struct FrameGuard<S> {
    inner: S,
    state: Rc<GuardState>,
    /// Preface bytes still to skip.
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    control_tokens: f64,
    refilled_at: Instant,
    streams: u64,
    resets: u64,
}

impl<S> FrameGuard<S> {
    /// `expect_preface`: the stream starts with the client preface (always
    /// for a server; h2c callers that consumed it pass false).
    pub fn new(inner: S, state: Rc<GuardState>, expect_preface: bool) -> Self {
        Self {
            inner,
            state,
            preface_left: if expect_preface { PREFACE.len() } else { 0 },
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            control_tokens: CONTROL_BURST,
            refilled_at: Instant::now(),
            streams: 0,
            resets: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.state.tripped().is_none() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                self.header_len = 0;
                let h = self.header;
                self.payload_left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.frame(h[3], h[4]);
            }
        }
    }

    fn frame(&mut self, kind: u8, flags: u8) {
        match kind {
            FRAME_HEADERS => self.streams += 1,
            FRAME_RST_STREAM => {
                self.resets += 1;
                if self.streams >= RESET_MIN_STREAMS && self.resets * 2 > self.streams {
                    self.state.trip(Flood::RapidReset);
                }
            }
            FRAME_SETTINGS | FRAME_PING if flags & FLAG_ACK == 0 => {
                let now = Instant::now();
                let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
                self.refilled_at = now;
                self.control_tokens =
                    (self.control_tokens + elapsed * CONTROL_REFILL_PER_SEC).min(CONTROL_BURST);
                self.control_tokens -= 1.0;
                if self.control_tokens < 0.0 {
                    self.state.trip(Flood::Control);
                }
            }
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.state.tripped().is_some() {
            // Nothing more reaches h2; the connection loop is closing.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.observe(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn guard() -> (FrameGuard<()>, Rc<GuardState>) {
        let state = Rc::new(GuardState::default());
        (FrameGuard::new((), state.clone(), true), state)
    }

    #[test]
    fn settings_flood_trips_and_normal_traffic_does_not() {
        let (mut g, state) = guard();
        g.observe(PREFACE);
        g.observe(&frame(FRAME_SETTINGS, 0, 0, &[0; 6]));
        // Split across reads: the header parser keeps partial state.
        let data = frame(0x0, 0, 1, &[7; 70_000]);
        for piece in data.chunks(1000) {
            g.observe(piece);
        }
        assert_eq!(state.tripped(), None);
        for _ in 0..200 {
            g.observe(&frame(FRAME_SETTINGS, 0, 0, &[]));
        }
        assert_eq!(state.tripped(), Some(Flood::Control));
    }

    #[test]
    fn rapid_reset_trips_but_a_few_cancellations_do_not() {
        let (mut g, state) = guard();
        g.observe(PREFACE);
        for i in 0..150u32 {
            g.observe(&frame(FRAME_HEADERS, 0x5, 2 * i + 1, &[0x82]));
            if i % 10 == 0 {
                g.observe(&frame(FRAME_RST_STREAM, 0, 2 * i + 1, &[0, 0, 0, 8]));
            }
        }
        assert_eq!(state.tripped(), None);
        for i in 150..400u32 {
            g.observe(&frame(FRAME_HEADERS, 0x5, 2 * i + 1, &[0x82]));
            g.observe(&frame(FRAME_RST_STREAM, 0, 2 * i + 1, &[0, 0, 0, 8]));
        }
        assert_eq!(state.tripped(), Some(Flood::RapidReset));
    }
}
