//! After a 101 Switching Protocols: copy bytes both ways until both sides
//! are done.

use bytes::BytesMut;
use monoio::buf::SliceMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};

use crate::io::{ClientStream, Io, READ_SIZE};

pub(crate) async fn run<S: ClientStream>(client: Io<S>, upstream: Io) {
    let Io {
        stream: client_stream,
        rbuf: client_pending,
    } = client;
    let Io {
        stream: upstream_stream,
        rbuf: upstream_pending,
    } = upstream;
    let (client_r, client_w) = client_stream.into_split();
    let (upstream_r, upstream_w) = upstream_stream.into_split();
    monoio::join!(
        copy(client_r, client_pending, upstream_w),
        copy(upstream_r, upstream_pending, client_w)
    );
}

/// Copies `pending` then everything read from `r` to `w`; on EOF or error
/// shuts down `w` so the other side sees the end.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(mut r: R, pending: BytesMut, mut w: W) {
    let mut buf = pending;
    loop {
        if !buf.is_empty() {
            let (res, b) = w.write_all(buf).await;
            if res.is_err() {
                break;
            }
            buf = b;
            buf.clear();
        }
        if buf.capacity() < READ_SIZE {
            buf.reserve(READ_SIZE);
        }
        let cap = buf.capacity();
        let (res, slice) = r.read(SliceMut::new(buf, 0, cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = w.shutdown().await;
}
