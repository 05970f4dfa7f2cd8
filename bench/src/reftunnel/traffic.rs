//! Plain-TCP traffic tools of the HBONE benchmark (blocking std sockets; they
//! run on the load CPU inside the pod namespaces). Every connection ends with
//! the sink's byte count so that the sender knows everything arrived.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 256 * 1024;

pub fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("sink listening on {}", listener.local_addr()?);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            if let Err(e) = drain_and_answer(conn) {
                tracing::warn!("sink connection: {e}");
            }
        });
    }
    Ok(())
}

fn drain_and_answer(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    conn.write_all(format!("{total}\n").as_bytes())?;
    conn.shutdown(Shutdown::Write)
}

/// Sends `len` bytes on `conn`, half-closes, returns the count the sink reports.
fn send_and_count(mut conn: TcpStream, len: u64) -> anyhow::Result<u64> {
    conn.set_nodelay(true)?;
    let buf = vec![0x5au8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        conn.write_all(&buf[..n])?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    parse_count(&answer)
}

pub fn parse_count(answer: &str) -> anyhow::Result<u64> {
    answer
        .trim()
        .parse()
        .with_context(|| format!("sink answered {answer:?}, expected a byte count"))
}

/// Prints `{"bytes":N,"seconds":S}` once the sink has counted all `bytes`.
pub fn blast(connect: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let conn = TcpStream::connect(connect).with_context(|| format!("connecting to {connect}"))?;
    let got = send_and_count(conn, bytes)?;
    let seconds = start.elapsed().as_secs_f64();
    if got != bytes {
        bail!("sent {bytes} bytes, the sink counted {got}");
    }
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "seconds": seconds})
    );
    Ok(())
}

/// Prints `{"connections":N,"errors":E,"seconds":S}`.
pub fn connrate(
    connect: SocketAddr,
    duration: Duration,
    concurrency: usize,
    request_size: usize,
) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (done, errors) = (done.clone(), errors.clone());
            std::thread::spawn(move || {
                while start.elapsed() < duration {
                    let ok = TcpStream::connect(connect)
                        .map_err(anyhow::Error::from)
                        .and_then(|c| send_and_count(c, request_size as u64))
                        .is_ok_and(|n| n == request_size as u64);
                    let counter = if ok { &done } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "connections": done.load(Ordering::Relaxed),
            "errors": errors.load(Ordering::Relaxed),
            "seconds": seconds,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_answer_parses_or_explains() {
        assert_eq!(parse_count("1048576\n").unwrap(), 1_048_576);
        assert!(parse_count("").is_err());
        assert!(parse_count("12x").is_err());
    }
}
