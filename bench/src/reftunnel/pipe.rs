//! Bytes between a TCP socket and an h2 stream, both directions, with
//! half-close: TCP EOF ends the h2 stream, the h2 stream's end shuts down the
//! TCP write side. h2 flow control: capacity is reserved before sending and
//! released once a received chunk is written out.

use super::READ_BUF;
use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use std::future::poll_fn;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn h2_err(e: h2::Error) -> io::Error {
    io::Error::other(e)
}

pub async fn pipe(tcp: TcpStream, send: SendStream<Bytes>, recv: RecvStream) -> io::Result<()> {
    let (rd, wr) = tcp.into_split();
    tokio::try_join!(tcp_to_h2(rd, send), h2_to_tcp(recv, wr))?;
    Ok(())
}

async fn tcp_to_h2(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut send: SendStream<Bytes>,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(READ_BUF);
        if rd.read_buf(&mut buf).await? == 0 {
            return send.send_data(Bytes::new(), true).map_err(h2_err);
        }
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or_else(|| io::Error::other("h2 stream closed"))?
                .map_err(h2_err)?;
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            send.send_data(chunk, false).map_err(h2_err)?;
        }
    }
}

async fn h2_to_tcp(
    mut recv: RecvStream,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
) -> io::Result<()> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_err)?;
        wr.write_all(&chunk).await?;
        // Errors only when the stream is gone, which the next data() reports.
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    wr.shutdown().await
}
