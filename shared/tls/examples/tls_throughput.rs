//! One TLS stream's throughput and CPU cost on loopback: our monoio stream against the
//! reference stack (tokio + tokio-rustls), both with the same certificates and ring.
//!
//! cargo run --release -p mesh-tls --example tls_throughput -- [GiB] [write-chunk-KiB] [monoio|tokio|both]
//!
//! Client and server run on two threads (one runtime each); the client writes, the server
//! reads and discards. CPU is the process's user+system time, i.e. both ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_tls::{CertificateAuthority, HboneTls, Identity};

// As in every ringmesh binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Setup {
    client: Arc<HboneTls>,
    server: Arc<HboneTls>,
    server_id: Identity,
}

fn setup() -> Setup {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let client_id = Identity::new("cluster.local", "a", "client").unwrap();
    let server_id = Identity::new("cluster.local", "b", "server").unwrap();
    let mk = |id: &Identity| {
        let cert = ca.issue_workload_cert(id).unwrap();
        Arc::new(HboneTls::from_workload_cert(ca.root_pem(), &cert).unwrap())
    };
    Setup {
        client: mk(&client_id),
        server: mk(&server_id),
        server_id,
    }
}

fn report(name: &str, bytes: u64, wall: Duration, cpu: Duration) {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{name:>8}: {:.2} GiB in {:.2} s = {:.0} MiB/s, CPU {:.2} s = {:.2} CPU-s/GiB",
        gib,
        wall.as_secs_f64(),
        gib * 1024.0 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / gib
    );
}

fn run_monoio(s: &Setup, total: u64, chunk: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_tls = s.server.clone();
    let server = std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut tls = mesh_tls::accept(server_tls.server_config(), tcp)
                .await
                .unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                let r = tls.read(&mut buf).await.unwrap();
                if r == 0 {
                    break n;
                }
                n += r as u64;
            }
        })
    });
    let config = s
        .client
        .client_config(std::slice::from_ref(&s.server_id))
        .unwrap();
    let (start, cpu0) = (Instant::now(), cpu_time());
    let client = std::thread::spawn(move || {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut tls = mesh_tls::connect(config, tcp).await.unwrap();
            let data = vec![0x5au8; chunk];
            let mut sent = 0u64;
            while sent < total {
                tls.write_all(&data).await.unwrap();
                sent += data.len() as u64;
            }
            tls.shutdown().await.unwrap();
        })
    });
    client.join().unwrap();
    let received = server.join().unwrap();
    report("monoio", received, start.elapsed(), cpu_time() - cpu0);
}

fn run_tokio(s: &Setup, total: u64, chunk: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server_config = s.server.server_config();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(server_config)
                .accept(tcp)
                .await
                .unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                let r = tls.read(&mut buf).await.unwrap();
                if r == 0 {
                    break n;
                }
                n += r as u64;
            }
        })
    });
    let config = s
        .client
        .client_config(std::slice::from_ref(&s.server_id))
        .unwrap();
    let (start, cpu0) = (Instant::now(), cpu_time());
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap();
            let data = vec![0x5au8; chunk];
            let mut sent = 0u64;
            while sent < total {
                tls.write_all(&data).await.unwrap();
                sent += data.len() as u64;
            }
            tls.shutdown().await.unwrap();
        })
    });
    client.join().unwrap();
    let received = server.join().unwrap();
    report("tokio", received, start.elapsed(), cpu_time() - cpu0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let chunk_kib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let total = (gib * (1u64 << 30) as f64) as u64;
    let s = setup();
    let which = args.get(3).map(String::as_str).unwrap_or("both");
    for _ in 0..2 {
        if which != "tokio" {
            run_monoio(&s, total, chunk_kib * 1024);
        }
        if which != "monoio" {
            run_tokio(&s, total, chunk_kib * 1024);
        }
    }
}
