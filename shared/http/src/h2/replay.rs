//! Retries toward h2c backends (gRPC): the request body streams upstream as
//! it arrives while a copy is kept up to `max_buffered_body_bytes`; when the
//! answer is retriable and the whole request was kept, it is replayed on a
//! new stream. A request that outgrew the copy (a long client stream) is
//! never replayed, so streaming calls are never held back for a retry.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use mesh_registry::RetryPolicy;

use super::body::{next_data, release, reset_by_peer, send_all};

/// The copy of a request body sent upstream.
#[derive(Default)]
pub(super) struct Tee {
    chunks: Vec<Bytes>,
    size: usize,
    trailers: Option<HeaderMap>,
    /// The client's stream ended and everything of it is in `chunks`.
    complete: bool,
    /// Larger than the limit: not kept, not replayable.
    overflow: bool,
}

impl Tee {
    pub(super) fn replayable(&self) -> bool {
        self.complete && !self.overflow
    }
}

pub(super) type SharedTee = Rc<RefCell<Tee>>;

/// Streams the client's body (then trailers) upstream, keeping a copy in
/// `tee` while it stays within `limit` bytes.
pub(super) async fn pump_tee(
    mut from: RecvStream,
    mut to: SendStream<Bytes>,
    tee: SharedTee,
    limit: usize,
) {
    loop {
        let next = monoio::select! {
            d = next_data(&mut from) => d,
            _ = reset_by_peer(&mut to) => return,
        };
        match next {
            None => break,
            Some(Ok(d)) => {
                let n = d.len();
                {
                    let mut t = tee.borrow_mut();
                    if !t.overflow && t.size + n <= limit {
                        t.size += n;
                        t.chunks.push(d.clone());
                    } else {
                        t.overflow = true;
                        t.chunks.clear();
                    }
                }
                if send_all(&mut to, d).await.is_err() {
                    return;
                }
                release(&mut from, n);
            }
            Some(Err(_)) => {
                to.send_reset(Reason::CANCEL);
                return;
            }
        }
    }
    let trailers = monoio::select! {
        t = std::future::poll_fn(|cx| from.poll_trailers(cx)) => t,
        _ = reset_by_peer(&mut to) => return,
    };
    match trailers {
        Ok(t) => {
            {
                let mut tee = tee.borrow_mut();
                tee.trailers = t.clone();
                tee.complete = true;
            }
            match t {
                Some(t) => {
                    let _ = to.send_trailers(t);
                }
                None => {
                    let _ = to.send_data(Bytes::new(), true);
                }
            }
        }
        Err(_) => to.send_reset(Reason::CANCEL),
    }
}

/// Sends the kept copy of the request body on a new upstream stream.
pub(super) async fn replay(tee: SharedTee, mut to: SendStream<Bytes>) {
    let (chunks, trailers) = {
        let t = tee.borrow();
        (t.chunks.clone(), t.trailers.clone())
    };
    for chunk in chunks {
        if send_all(&mut to, chunk).await.is_err() {
            return;
        }
    }
    match trailers {
        Some(t) => {
            let _ = to.send_trailers(t);
        }
        None => {
            let _ = to.send_data(Bytes::new(), true);
        }
    }
}

/// A response the policy retries: a listed status, or a trailers-only
/// answer whose `grpc-status` is listed.
pub(super) fn retriable_response(
    policy: &RetryPolicy,
    status: u16,
    headers: &HeaderMap,
    end_stream: bool,
) -> bool {
    policy.codes.contains(&status)
        || (end_stream
            && headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.trim().parse::<u32>().ok())
                .is_some_and(|code| policy.grpc_codes.contains(&code)))
}
