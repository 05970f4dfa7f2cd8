//! Plain TCP ↔ TCP relaying (passthrough and inbound plaintext), with
//! half-close: EOF on one side becomes shutdown(Write) on the other, and
//! the relay ends when both directions ended.

use std::io;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

const BUF: usize = 64 * 1024;

/// Bytes moved: `(a_to_b, b_to_a)` and the first error, if any.
pub struct Copied {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub error: Option<io::Error>,
}

pub async fn bidirectional(a: TcpStream, b: TcpStream) -> Copied {
    let (mut a_read, mut a_write) = a.into_split();
    let (mut b_read, mut b_write) = b.into_split();
    let (ab, ba) = monoio::join!(
        one_way(&mut a_read, &mut b_write),
        one_way(&mut b_read, &mut a_write)
    );
    let (a_to_b, e1) = ab;
    let (b_to_a, e2) = ba;
    Copied {
        a_to_b,
        b_to_a,
        error: e1.or(e2),
    }
}

async fn one_way<R: AsyncReadRent, W: AsyncWriteRent>(
    read: &mut R,
    write: &mut W,
) -> (u64, Option<io::Error>) {
    let mut total = 0u64;
    let mut buf = BytesMut::with_capacity(BUF);
    loop {
        // monoio reads into the start of an empty buffer (DESIGN.md).
        buf.clear();
        let (res, b) = read.read(buf).await;
        buf = b;
        match res {
            Ok(0) => {
                let _ = write.shutdown().await;
                return (total, None);
            }
            Ok(n) => {
                total += n as u64;
                let (res, b) = write.write_all(buf).await;
                buf = b;
                if let Err(e) = res {
                    return (total, Some(e));
                }
            }
            Err(e) => {
                let _ = write.shutdown().await;
                return (total, Some(e));
            }
        }
    }
}
