//! End-to-end: two "nodes", pods in their own network namespaces with
//! istio-cni's capture rules, one ztunnel per node, real traffic.
//! `mesh_topology` re-runs this binary's `mesh_topology_inside` under
//! `unshare -Urnm`; it is skipped (with a message) where the tools or user
//! namespaces are missing.

mod topology;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use topology::*;

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");

const POD_A: Pod = Pod {
    name: "a",
    node: 1,
    ip: "10.0.1.2",
    captured: true,
};
const POD_B: Pod = Pod {
    name: "b",
    node: 2,
    ip: "10.0.2.2",
    captured: true,
};
/// Outside the mesh (on node1): not in the config, no capture rules.
const POD_C: Pod = Pod {
    name: "c",
    node: 1,
    ip: "10.0.1.3",
    captured: false,
};
const B_APP: &str = "10.0.2.2:8080";
const VIP: &str = "10.96.0.10:80";

#[test]
fn mesh_topology() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED mesh_topology: {why} (scripts/test.sh installs iproute2/iptables)");
        return;
    }
    run_inside_namespaces("mesh_topology_inside");
}

fn config(b_service_account: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: apps
  labels: {{app: a}}
  annotations: {{ringmesh.io/netns: /run/netns/zt-a}}
spec: {{nodeName: node1, serviceAccountName: sa-a, containers: []}}
status: {{podIP: 10.0.1.2}}
---
apiVersion: v1
kind: Pod
metadata:
  name: b
  namespace: apps
  labels: {{app: b}}
  annotations: {{ringmesh.io/netns: /run/netns/zt-b}}
spec: {{nodeName: node2, serviceAccountName: {b_service_account}, containers: []}}
status: {{podIP: 10.0.2.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: b, namespace: apps}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: b}}
  ports: [{{port: 80, targetPort: 8080}}]
---
{extra}
"#
    )
}

const DENY_A: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-a, namespace: apps}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/apps/sa/sa-a]}}]}]
"#;

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: apps}
spec: {mtls: {mode: STRICT}}
"#;

/// Echo server: echoes until EOF, then half-closes; records client addresses.
fn spawn_echo(pod: &Pod, port: u16) -> Arc<Mutex<Vec<SocketAddr>>> {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&pod.netns(), move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind echo");
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            seen.lock().unwrap().push(stream.peer_addr().unwrap());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    rx.recv().unwrap();
    peers
}

/// From inside `pod`: connect, send `data`, half-close, read to EOF.
fn exchange(pod: &Pod, to: &str, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&pod.netns(), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&data)?;
        s.shutdown(Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })
    .join()
    .unwrap()
}

/// Whether a TCP connection from inside `pod` to `to` is accepted (closed at once).
fn connects(pod: &Pod, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&pod.netns(), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
    })
    .join()
    .unwrap()
}

/// Retries `exchange` until it echoes, or fails after `limit`.
fn wait_echo(pod: &Pod, to: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if exchange(pod, to, b"ping".to_vec()).is_ok_and(|r| r == b"ping") {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no echo from {to} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Streams `total` bytes each way through `to`, checksumming both directions.
fn bulk(pod: &Pod, to: &str, total: usize) -> (u64, u64, usize) {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(&pod.netns(), move || {
        let s = TcpStream::connect(to).unwrap();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let mut sum = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut x = 0x9e3779b97f4a7c15u64;
            let mut sent = 0;
            while sent < total {
                for b in chunk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let n = chunk.len().min(total - sent);
                sum = checksum(sum, &chunk[..n]);
                writer.write_all(&chunk[..n]).unwrap();
                sent += n;
            }
            writer.shutdown(Shutdown::Write).unwrap();
            sum
        });
        let mut reader = s;
        reader
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let (mut sum, mut got) = (0u64, 0usize);
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sum = checksum(sum, &buf[..n]);
            got += n;
        }
        (sender.join().unwrap(), sum, got)
    })
    .join()
    .unwrap()
}

fn checksum(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h
}

/// From inside `pod`: an HBONE client presenting pod A's identity with a
/// certificate from `ca` (trusting `root_pem`), tunnels "hbone" to pod B's
/// app and reads the echo.
fn hbone_client_echo(
    pod: &Pod,
    ca: mesh_tls::CertificateAuthority,
    root_pem: String,
) -> Result<Vec<u8>, String> {
    in_netns(&pod.netns(), move || {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("monoio runtime")
            .block_on(async move {
                use monoio::io::{AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};
                let me: mesh_tls::Identity =
                    "spiffe://cluster.local/ns/apps/sa/sa-a".parse().unwrap();
                let cert = ca.issue_workload_cert(&me).map_err(|e| e.to_string())?;
                let tls = std::sync::Arc::new(
                    mesh_tls::HboneTls::from_workload_cert(&root_pem, &cert)
                        .map_err(|e| e.to_string())?,
                );
                let connector = mesh_hbone::connect_fn(move |key: mesh_hbone::PoolKey| {
                    let tls = tls.clone();
                    async move {
                        let tcp = monoio::net::TcpStream::connect(key.destination).await?;
                        let expected: mesh_tls::Identity =
                            "spiffe://cluster.local/ns/apps/sa/sa-b".parse().unwrap();
                        let config = tls
                            .client_config(&[expected])
                            .map_err(std::io::Error::other)?;
                        mesh_tls::connect(config, tcp)
                            .await
                            .map_err(std::io::Error::other)
                    }
                });
                let pool = mesh_hbone::Pool::new(mesh_hbone::ClientConfig::default(), connector);
                let key = mesh_hbone::PoolKey::new(
                    Some("spiffe://cluster.local/ns/apps/sa/sa-a".into()),
                    Some("spiffe://cluster.local/ns/apps/sa/sa-b".into()),
                    "10.0.2.2:15008".parse().unwrap(),
                );
                let request = mesh_hbone::TunnelRequest::new(key, B_APP.parse().unwrap());
                let tunnel = monoio::time::timeout(Duration::from_secs(10), pool.connect(&request))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                // A local socket pair carries the bytes into the tunnel.
                let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let mut app = monoio::net::TcpStream::connect(addr).await.unwrap();
                let (inner, _) = listener.accept().await.unwrap();
                let (read, write) = monoio::io::Splitable::into_split(inner);
                monoio::spawn(tunnel.pipe(read, write));
                let (res, _) = app.write_all(b"hbone".to_vec()).await;
                res.map_err(|e| e.to_string())?;
                app.shutdown().await.map_err(|e| e.to_string())?;
                let (res, buf) = app.read_exact(vec![0u8; 5]).await;
                res.map_err(|e| e.to_string())?;
                Ok(buf)
            })
    })
    .join()
    .unwrap()
}

fn write_config(path: &Path, text: &str) {
    // Write then rename: the watcher never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by mesh_topology"]
fn mesh_topology_inside() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    build(&[POD_A, POD_B, POD_C]);
    let dir = std::env::temp_dir().join(format!("ringmesh-zt-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("node1")).unwrap();
    std::fs::create_dir_all(dir.join("node2")).unwrap();
    let (cfg1, cfg2) = (dir.join("node1/mesh.yaml"), dir.join("node2/mesh.yaml"));
    write_config(&cfg1, &config("sa-b", ""));
    write_config(&cfg2, &config("sa-b", ""));
    let ca = dir.join("ca");

    let peers_b = spawn_echo(&POD_B, 8080);
    let peers_c = spawn_echo(&POD_C, 9000);
    let z1 = Ztunnel::start(ZTUNNEL, &cfg1, 1, &ca);
    let mut z2 = Ztunnel::start(ZTUNNEL, &cfg2, 2, &ca);

    // 0. The config dump shows what each node serves.
    let dump = z1.config_dump();
    assert!(dump.starts_with("HTTP/1.1 200"), "{dump}");
    assert!(
        dump.contains("\"captured_pods\": [\n    \"apps/a\"\n  ]"),
        "{dump}"
    );
    assert!(dump.contains("\"10.96.0.10:80\""), "{dump}");
    assert!(z2.config_dump().contains("\"apps/b\""));
    // The admin port's /config_dump serves the same registry (not the
    // runtime's empty gateway snapshot).
    let admin_dump = z1.admin_config_dump();
    assert!(admin_dump.starts_with("HTTP/1.1 200"), "{admin_dump}");
    assert!(
        admin_dump.contains("\"captured_pods\": [\n    \"apps/a\"\n  ]"),
        "{admin_dump}"
    );
    assert!(admin_dump.contains("\"10.96.0.10:80\""), "{admin_dump}");
    assert!(admin_dump.contains("\"node\": \"node1\""), "{admin_dump}");
    assert!(z2.admin_config_dump().contains("\"apps/b\""));
    eprintln!("ok: admin /config_dump lists the workloads");

    // 1. Outside the mesh: plain passthrough from the captured pod A.
    wait_echo(&POD_A, "10.0.1.3:9000", Duration::from_secs(5));
    assert_eq!(
        peers_c.lock().unwrap().last().unwrap().ip().to_string(),
        POD_A.ip
    );
    eprintln!("ok: passthrough to a pod outside the mesh");

    // 2. Service VIP → pod B through both ztunnels (HBONE, mTLS).
    wait_echo(&POD_A, VIP, Duration::from_secs(5));
    let m1 = z1.metrics();
    assert!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("connection_security_policy", "mutual_tls"),
                ("destination_workload", "b")
            ]
        ) >= 1,
        "{m1}"
    );
    let m2 = z2.metrics();
    assert!(
        metric_sum(
            &m2,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", "spiffe://cluster.local/ns/apps/sa/sa-a")
            ]
        ) >= 1,
        "{m2}"
    );
    eprintln!("ok: VIP through both ztunnels over HBONE");

    // 3. The app sees pod A's address as the source.
    let last = *peers_b.lock().unwrap().last().unwrap();
    assert_eq!(last.ip().to_string(), POD_A.ip, "source address not kept");
    eprintln!("ok: source address kept ({last})");

    // 4. Half-close: request, FIN, then the whole response.
    let request = b"request then FIN".to_vec();
    assert_eq!(exchange(&POD_A, VIP, request.clone()).unwrap(), request);
    eprintln!("ok: half-close");

    // 5. 100 MiB each way, same checksum.
    let total = 100 << 20;
    let started = Instant::now();
    let (sent, received, got) = bulk(&POD_A, VIP, total);
    assert_eq!(got, total);
    assert_eq!(sent, received, "checksum differs");
    eprintln!("ok: 100 MiB each way in {:?}", started.elapsed());

    // 6. Many concurrent connections share few HBONE connections.
    let before = metric_sum(
        &z1.metrics(),
        "ringmesh_ztunnel_hbone_connections_opened_total",
        &[],
    );
    let n = 1000;
    in_netns(&POD_A.netns(), move || {
        let vip: SocketAddr = VIP.parse().unwrap();
        let mut conns: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(vip).expect("connect"))
            .collect();
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(format!("{i:08}").as_bytes()).unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let mut got = [0u8; 8];
            c.read_exact(&mut got).unwrap();
            assert_eq!(&got, format!("{i:08}").as_bytes());
        }
    })
    .join()
    .unwrap();
    let m1 = z1.metrics();
    let opened = metric_sum(&m1, "ringmesh_ztunnel_hbone_connections_opened_total", &[]) - before;
    // 1000 streams at 100 per connection, per worker (2): about 10 each.
    assert!(opened <= 24, "{opened} HBONE connections for {n} streams");
    eprintln!("ok: {n} concurrent connections over {opened} new HBONE connections");

    // 7. A DENY policy refuses the connection and counts it.
    write_config(&cfg2, &config("sa-b", DENY_A));
    let deadline = Instant::now() + Duration::from_secs(10);
    while exchange(&POD_A, VIP, b"ping".to_vec()).is_ok_and(|r| r == b"ping") {
        assert!(Instant::now() < deadline, "DENY policy never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m2 = z2.metrics();
    assert!(
        metric_sum(
            &m2,
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination"), ("response_flags", "DENY")]
        ) >= 1,
        "{m2}"
    );
    let m1 = z1.metrics();
    assert!(
        metric_sum(
            &m1,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source"), ("response_flags", "DENY")]
        ) >= 1,
        "{m1}"
    );
    write_config(&cfg2, &config("sa-b", ""));
    wait_echo(&POD_A, VIP, Duration::from_secs(10));
    eprintln!("ok: DENY policy refuses and is counted; removing it allows again");

    // 8. A peer presenting the wrong identity is refused: node1 now expects
    //    pod B to be `sa/impostor`, node2 still presents `sa/sa-b`.
    write_config(&cfg1, &config("impostor", ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    while exchange(&POD_A, VIP, b"ping".to_vec()).is_ok_and(|r| r == b"ping") {
        assert!(Instant::now() < deadline, "wrong identity was accepted");
        std::thread::sleep(Duration::from_millis(50));
    }
    write_config(&cfg1, &config("sa-b", ""));
    wait_echo(&POD_A, VIP, Duration::from_secs(10));
    eprintln!("ok: wrong peer identity refused");

    // 8b. The server side refuses a client it cannot trust: an HBONE client
    //     in pod C claiming pod A's identity with a certificate from another
    //     CA is refused; the same client with a mesh certificate gets through.
    let mesh_ca =
        mesh_tls::CertificateAuthority::load(&ca.join("root-cert.pem"), &ca.join("ca-key.pem"))
            .unwrap();
    let foreign_ca = mesh_tls::CertificateAuthority::generate("cluster.local").unwrap();
    let foreign = hbone_client_echo(&POD_C, foreign_ca, mesh_ca.root_pem().to_string());
    assert!(foreign.is_err(), "a foreign CA's certificate was accepted");
    let mesh_ca =
        mesh_tls::CertificateAuthority::load(&ca.join("root-cert.pem"), &ca.join("ca-key.pem"))
            .unwrap();
    let root = mesh_ca.root_pem().to_string();
    assert_eq!(hbone_client_echo(&POD_C, mesh_ca, root).unwrap(), b"hbone");
    eprintln!(
        "ok: HBONE client with an untrusted certificate refused ({})",
        foreign.unwrap_err()
    );

    // 9. Inbound plaintext (15006) from outside the mesh keeps the source.
    wait_echo(&POD_C, B_APP, Duration::from_secs(5));
    let last = *peers_b.lock().unwrap().last().unwrap();
    assert_eq!(last.ip().to_string(), POD_C.ip);
    eprintln!("ok: inbound plaintext from outside the mesh");

    // 9b. PeerAuthentication STRICT refuses plaintext; HBONE still works.
    write_config(&cfg2, &config("sa-b", STRICT));
    let deadline = Instant::now() + Duration::from_secs(10);
    while exchange(&POD_C, B_APP, b"ping".to_vec()).is_ok_and(|r| r == b"ping") {
        assert!(Instant::now() < deadline, "STRICT never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_echo(&POD_A, VIP, Duration::from_secs(5));
    let m2 = z2.metrics();
    assert!(
        metric_sum(
            &m2,
            "istio_tcp_connections_opened_total",
            &[
                ("connection_security_policy", "none"),
                ("response_flags", "DENY")
            ]
        ) >= 1,
        "{m2}"
    );
    write_config(&cfg2, &config("sa-b", ""));
    wait_echo(&POD_C, B_APP, Duration::from_secs(10));
    eprintln!("ok: PeerAuthentication STRICT refuses plaintext, not HBONE");

    // 10. Restart node2's ztunnel: new connections succeed within 2 s.
    let restarted = Instant::now();
    z2.restart();
    let waited = wait_echo(&POD_A, VIP, Duration::from_secs(2));
    eprintln!(
        "ok: after restart, a new connection succeeded {:?} after start ({waited:?} polling)",
        restarted.elapsed()
    );

    // 11. SIGTERM drains: a tunneled connection open when both ztunnels get
    //     SIGTERM still completes its exchange, then both exit 0.
    let vip: SocketAddr = VIP.parse().unwrap();
    let mut conn = in_netns(&POD_A.netns(), move || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(5))
    })
    .join()
    .unwrap()
    .expect("connect to the VIP");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"before").unwrap();
    let mut got = [0u8; 6];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"before", "the tunnel works before the signal");
    let mut z1 = z1;
    z1.terminate();
    z2.terminate();
    // Wait until both processes took the signal (ready turns 503 draining)
    // and their workers stopped accepting in the pods (new connections are
    // refused): from then on only the drain keeps them alive.
    let deadline = Instant::now() + Duration::from_secs(10);
    for z in [&z1, &z2] {
        while !z
            .ready_status()
            .is_some_and(|status| status.contains("503"))
        {
            assert!(
                Instant::now() < deadline,
                "node{} never started draining",
                z.node
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Probed with plaintext from pod C (inbound 15006 of pods A and B), so
    // the probes open no HBONE stream next to the tunneled connection.
    for (pod, to) in [(&POD_C, "10.0.1.2:8080"), (&POD_C, B_APP)] {
        while connects(pod, to) {
            assert!(
                Instant::now() < deadline,
                "{to} still accepted while draining"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    conn.write_all(b" and after").unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b" and after", "the exchange finished after SIGTERM");
    drop(conn);
    let status1 = z1.wait_exit();
    let status2 = z2.wait_exit();
    assert!(status1.success(), "node1 ztunnel exited with {status1}");
    assert!(status2.success(), "node2 ztunnel exited with {status2}");
    eprintln!("ok: SIGTERM drains an open tunneled connection, then exits 0");

    drop(z1);
    drop(z2);
    let _ = std::fs::remove_dir_all(&dir);
}
