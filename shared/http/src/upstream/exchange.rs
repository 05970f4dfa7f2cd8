//! One upstream attempt: connection (pooled or fresh), request out,
//! response head in; streamed bodies go out while listening for the answer.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, Splitable};

use crate::body::{copy_body, BodyError, BodyReader, CopyError, OutFraming};
use crate::codec::response::parse_response;
use crate::codec::ResponseHead;
use crate::io::{fill_from, ClientStream, Io};
use crate::upstream::pool;
use crate::HttpHandler;

#[derive(Debug)]
pub(crate) enum AttemptError {
    Connect,
    /// The upstream closed or reset before a complete response head.
    Reset {
        any_bytes: bool,
    },
    BadResponse,
    Timeout,
    /// The downstream request body failed while streaming it.
    Client(BodyError),
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn attempt<S: ClientStream>(
    h: &HttpHandler,
    addr: SocketAddr,
    wire: &Bytes,
    stream: Option<(&mut BodyReader, &mut Io<S>)>,
    framing: OutFraming,
    head_request: bool,
    stale_retry: bool,
) -> Result<(Io, ResponseHead), AttemptError> {
    let replayable = stream.is_none();
    let max_head = h.options.max_response_header_bytes;
    let (mut up, reused) = match h.pool.take(addr, !replayable) {
        Some(io) => (io, true),
        None => (
            pool::connect(addr, h.options.connect_timeout)
                .await
                .map_err(|_| AttemptError::Connect)?,
            false,
        ),
    };
    if let Some((reader, client)) = stream {
        up.write_all(wire.clone())
            .await
            .map_err(|_| AttemptError::Reset { any_bytes: false })?;
        return exchange_streaming(up, reader, client, framing, head_request, max_head).await;
    }
    match exchange(&mut up, wire, head_request, max_head).await {
        // A pooled connection the peer closed meanwhile: once more on a fresh one.
        Err(AttemptError::Reset { any_bytes: false }) if reused && stale_retry => {
            let mut fresh = pool::connect(addr, h.options.connect_timeout)
                .await
                .map_err(|_| AttemptError::Connect)?;
            let resp = exchange(&mut fresh, wire, head_request, max_head).await?;
            Ok((fresh, resp))
        }
        Ok(resp) => Ok((up, resp)),
        Err(e) => Err(e),
    }
}

/// A request whose head and (buffered) body are all in `wire`.
async fn exchange(
    up: &mut Io,
    wire: &Bytes,
    head_request: bool,
    max_head: usize,
) -> Result<ResponseHead, AttemptError> {
    up.write_all(wire.clone())
        .await
        .map_err(|_| AttemptError::Reset { any_bytes: false })?;
    read_response_head(&mut up.stream, &mut up.rbuf, head_request, max_head).await
}

pub(crate) async fn read_response_head<R: AsyncReadRent>(
    r: &mut R,
    rbuf: &mut BytesMut,
    head_request: bool,
    max_head: usize,
) -> Result<ResponseHead, AttemptError> {
    loop {
        match parse_response(rbuf, max_head, head_request) {
            // Interim responses (100 Continue, 103) are not forwarded.
            Ok(Some(r)) if (100..200).contains(&r.status) && r.status != 101 => continue,
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(_) => return Err(AttemptError::BadResponse),
        }
        let any_bytes = !rbuf.is_empty();
        match fill_from(r, rbuf, crate::io::HEAD_READ_SIZE).await {
            Ok(0) | Err(_) => return Err(AttemptError::Reset { any_bytes }),
            Ok(_) => {}
        }
    }
}

enum FirstDone {
    Sent(Result<(), CopyError>),
    Received(Result<ResponseHead, AttemptError>),
}

/// Streams the request body while already listening for the response: an
/// upstream may answer early (401, 413...) and stop reading. Then the rest
/// of the body is not sent, the response is forwarded, and neither
/// connection is reused.
async fn exchange_streaming<S: ClientStream>(
    up: Io,
    reader: &mut BodyReader,
    client: &mut Io<S>,
    framing: OutFraming,
    head_request: bool,
    max_head: usize,
) -> Result<(Io, ResponseHead), AttemptError> {
    let Io { stream, mut rbuf } = up;
    let (mut rd, mut wr) = stream.into_split();
    let mut out = BytesMut::new();
    let (result, early) = {
        let send = std::pin::pin!(copy_body(reader, client, &mut wr, framing, &mut out));
        let recv = std::pin::pin!(read_response_head(
            &mut rd,
            &mut rbuf,
            head_request,
            max_head
        ));
        let (mut send, mut recv) = (send, recv);
        let first = monoio::select! {
            s = &mut send => FirstDone::Sent(s),
            r = &mut recv => FirstDone::Received(r),
        };
        match first {
            // The response head read keeps running: never drop a read in flight
            // that we still need (its bytes would be lost).
            FirstDone::Sent(Ok(())) => (recv.await, false),
            FirstDone::Sent(Err(CopyError::Read(e))) => return Err(AttemptError::Client(e)),
            // The upstream stopped reading; it may still have answered.
            FirstDone::Sent(Err(CopyError::Write(_))) => (recv.await, true),
            FirstDone::Received(r) => (r, true),
        }
    };
    let mut resp = result?;
    if early {
        resp.keep_alive = false;
    }
    let stream = rd
        .reunite(wr)
        .map_err(|_| AttemptError::Reset { any_bytes: true })?;
    Ok((Io { stream, rbuf }, resp))
}
