//! One tunneled stream's throughput over loopback plain TCP.
//!
//! `cargo run --release -p mesh-hbone --example throughput -- [MiB] [hbone|tcp]`
//!
//! Client thread: app socket → client pipe → HBONE connection. Server thread:
//! HBONE server → server pipe → a sink that discards. `tcp` sends the same
//! bytes straight to the sink, for comparison. Reports Gbit/s and the
//! process's CPU seconds per GiB (from /proc/self/stat).

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_hbone::{
    handler_fn, ClientConfig, Pool, PoolKey, Refusal, Server, ServerConfig, TcpConnector,
    TunnelRequest,
};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, IntoPollIo, Splitable};
use monoio::net::{TcpListener, TcpStream};

fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime")
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let mode = args.next().unwrap_or_else(|| "hbone".into());
    println!("mode {mode}");
    let total = mib << 20;

    // Server thread: sink + HBONE server.
    let (addrs_tx, addrs_rx) = mpsc::channel::<(SocketAddr, SocketAddr)>();
    let (done_tx, done_rx) = mpsc::channel::<(u64, Instant)>();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let sink = TcpListener::bind("127.0.0.1:0").unwrap();
            let sink_addr = sink.local_addr().unwrap();
            monoio::spawn(async move {
                while let Ok((mut stream, _)) = sink.accept().await {
                    let done_tx = done_tx.clone();
                    monoio::spawn(async move {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut got = 0u64;
                        loop {
                            let (res, b) = stream.read(buf).await;
                            buf = b;
                            match res {
                                Ok(0) | Err(_) => break,
                                Ok(n) => got += n as u64,
                            }
                        }
                        let _ = done_tx.send((got, Instant::now()));
                    });
                }
            });
            let hbone = TcpListener::bind("127.0.0.1:0").unwrap();
            addrs_tx
                .send((sink_addr, hbone.local_addr().unwrap()))
                .unwrap();
            let server = Server::new(
                ServerConfig::default(),
                handler_fn(|req: mesh_hbone::ConnectRequest| async move {
                    let stream = TcpStream::connect(req.authority)
                        .await
                        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
                    stream.set_nodelay(true).ok();
                    Ok(stream)
                }),
            );
            while let Ok((stream, _)) = hbone.accept().await {
                stream.set_nodelay(true).ok();
                let server = server.clone();
                monoio::spawn(async move {
                    let _ = server
                        .serve(stream.into_poll_io().unwrap(), Default::default())
                        .await;
                });
            }
        });
    });
    let (sink_addr, hbone_addr) = addrs_rx.recv().unwrap();

    let cpu_before = cpu_seconds();
    let (got, elapsed) = runtime().block_on(async move {
        let block = Bytes::from(vec![0x5au8; 256 * 1024]);
        let mut app = if mode == "tcp" {
            TcpStream::connect(sink_addr).await.unwrap()
        } else {
            let pool = Pool::new(ClientConfig::default(), TcpConnector);
            let apps = TcpListener::bind("127.0.0.1:0").unwrap();
            let app = TcpStream::connect(apps.local_addr().unwrap())
                .await
                .unwrap();
            let (captured, _) = apps.accept().await.unwrap();
            let tunnel = pool
                .connect(&TunnelRequest::new(PoolKey::plain(hbone_addr), sink_addr))
                .await
                .expect("tunnel");
            monoio::spawn(async move {
                let (r, w) = captured.into_split();
                if let Err(err) = tunnel.pipe(r, w).await.result {
                    eprintln!("client pipe: {err}");
                }
            });
            app
        };
        app.set_nodelay(true).ok();
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let (res, _) = app.write_all(block.clone()).await;
            res.expect("app write");
            sent += block.len() as u64;
        }
        app.shutdown().await.unwrap();
        // The sink reports on a std channel; poll it without blocking this
        // runtime (the client pipe still runs here).
        loop {
            if let Ok((got, ended)) = done_rx.try_recv() {
                return (got, ended - started);
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let cpu = cpu_seconds() - cpu_before;
    let gib = got as f64 / (1u64 << 30) as f64;
    println!(
        "{mib} MiB in {:.3} s: {:.2} Gbit/s, {:.3} CPU s/GiB (client+server+app+sink, one process)",
        elapsed.as_secs_f64(),
        got as f64 * 8.0 / elapsed.as_secs_f64() / 1e9,
        cpu / gib
    );
    assert_eq!(got, total, "sink received a different byte count");
}
