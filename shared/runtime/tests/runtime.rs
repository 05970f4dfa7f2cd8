//! The runtime against real sockets: listeners follow the snapshot, readiness,
//! metrics, and graceful shutdown with the drain signal.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_registry::{ListenerProtocol, ListenerSet, PortConfig, Snapshot, SnapshotHandle};
use mesh_runtime::{Accepted, ConnectionHandler, IoDriver, MetricsSource, Runtime, RuntimeOptions};
use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

/// Echoes bytes back; an idle connection closes once draining starts.
struct Echo;

impl ConnectionHandler for Echo {
    async fn handle(self: Rc<Self>, conn: Accepted) {
        let Accepted {
            mut stream, drain, ..
        } = conn;
        let mut buf = vec![0u8; 4096];
        loop {
            let read = monoio::select! {
                r = stream.read(buf) => r,
                _ = drain.signaled() => return,
            };
            let (res, b) = read;
            let n = match res {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let (res, mut b) = stream.write_all(b.slice(..n)).await.into_inner_pair();
            if res.is_err() {
                return;
            }
            b.resize(4096, 0);
            buf = b;
        }
    }
}

trait IntoInnerPair<T> {
    fn into_inner_pair(self) -> (std::io::Result<usize>, T);
}

impl IntoInnerPair<Vec<u8>> for (std::io::Result<usize>, monoio::buf::Slice<Vec<u8>>) {
    fn into_inner_pair(self) -> (std::io::Result<usize>, Vec<u8>) {
        (self.0, self.1.into_inner())
    }
}

struct Fixed;

impl MetricsSource for Fixed {
    fn render(&self, out: &mut String) {
        out.push_str("# TYPE test_source_total counter\ntest_source_total 7\n");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Control endpoints on loopback, ports chosen by the kernel.
fn loopback_any_port() -> RuntimeOptions {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    RuntimeOptions {
        admin_addr: any,
        metrics_addr: any,
        ready_addr: any,
        ..RuntimeOptions::default()
    }
}

fn snapshot_with(ports: &[u16]) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for &port in ports {
        snapshot.ports.insert(
            port,
            Arc::new(PortConfig {
                port,
                protocol: ListenerProtocol::Http,
                tls: None,
                listeners: ListenerSet::default(),
            }),
        );
    }
    snapshot
}

/// GET over a fresh connection; returns (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_roundtrip(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    stream.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, payload);
    Ok(())
}

struct Running {
    handle: SnapshotHandle,
    shutdown: mesh_runtime::ShutdownHandle,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    admin: SocketAddr,
    metrics: SocketAddr,
    ready: SocketAddr,
}

fn start(ports: &[u16], workers: usize, drain_timeout: Duration, io_driver: IoDriver) -> Running {
    let handle = mesh_registry::new_handle(Snapshot::default());
    mesh_runtime::publish(&handle, snapshot_with(ports));
    let options = RuntimeOptions {
        workers,
        drain_timeout,
        io_driver,
        ..loopback_any_port()
    };
    let mut runtime = Runtime::new(options, handle.clone());
    runtime.add_metrics(Arc::new(Fixed));
    let addrs = runtime.bind_control().unwrap();
    let shutdown = runtime.shutdown_handle();
    let thread = std::thread::spawn(move || runtime.run(|_| Echo));
    let running = Running {
        handle,
        shutdown,
        thread: Some(thread),
        admin: addrs.admin,
        metrics: addrs.metrics,
        ready: addrs.ready,
    };
    wait_until("ready", Duration::from_secs(10), || {
        assert!(
            !running.thread.as_ref().unwrap().is_finished(),
            "run() returned early"
        );
        matches!(get(running.ready, "/healthz/ready"), Ok((200, _)))
    });
    running
}

impl Running {
    fn stop(mut self) -> (anyhow::Result<()>, Duration) {
        let started = Instant::now();
        self.shutdown.trigger();
        let result = self.thread.take().unwrap().join().unwrap();
        (result, started.elapsed())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shutdown.trigger();
            let _ = t.join();
        }
    }
}

#[test]
fn listeners_follow_the_snapshot_on_io_uring() {
    listeners_follow_the_snapshot(IoDriver::IoUring);
}

#[test]
fn listeners_follow_the_snapshot_on_epoll() {
    listeners_follow_the_snapshot(IoDriver::Epoll);
}

fn listeners_follow_the_snapshot(driver: IoDriver) {
    let (a, b) = (free_port(), free_port());
    let rt = start(&[a], 2, Duration::from_secs(5), driver);

    let mut on_a = TcpStream::connect(("127.0.0.1", a)).unwrap();
    on_a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo_roundtrip(&mut on_a, b"hello").unwrap();
    assert!(
        TcpStream::connect(("127.0.0.1", b)).is_err(),
        "port b not in the snapshot yet"
    );

    // Add b, remove a.
    mesh_runtime::publish(&rt.handle, snapshot_with(&[b]));
    wait_until("port b bound", Duration::from_secs(3), || {
        TcpStream::connect(("127.0.0.1", b)).is_ok()
    });
    wait_until("port a closed", Duration::from_secs(3), || {
        TcpStream::connect(("127.0.0.1", a)).is_err()
    });
    // The connection accepted on a keeps working after its listener closed.
    echo_roundtrip(&mut on_a, b"still here").unwrap();

    let (status, body) = get(rt.admin, "/config_dump").unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["version"], 2);
    assert!(dump["ports"].get(b.to_string()).is_some(), "{body}");

    let (status, body) = get(rt.metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("test_source_total 7\n"), "{body}");
    assert!(body.contains("ringmesh_workers 2\n"), "{body}");
    let on_uring = if driver == IoDriver::Epoll { 0 } else { 2 };
    assert!(
        body.contains(&format!("ringmesh_workers_io_uring {on_uring}\n")),
        "{body}"
    );
    assert!(body.contains("ringmesh_snapshot_version 2\n"), "{body}");
    for worker in 0..2 {
        let bound = format!("ringmesh_worker_listeners_bound{{worker=\"{worker}\"}} 1\n");
        assert!(body.contains(&bound), "{body}");
        let version = format!("ringmesh_worker_snapshot_version{{worker=\"{worker}\"}} 2\n");
        assert!(body.contains(&version), "{body}");
    }
    assert!(
        body.contains("ringmesh_downstream_connections_active 1\n"),
        "{body}"
    );
    assert_eq!(get(rt.metrics, "/nope").unwrap().0, 404);
    assert_eq!(get(rt.admin, "/status").unwrap().0, 200);
    drop(on_a);
    let (result, _) = rt.stop();
    result.unwrap();
}

#[test]
fn shutdown_closes_idle_connections_and_exits_on_io_uring() {
    shutdown_closes_idle_connections_and_exits(IoDriver::IoUring);
}

#[test]
fn shutdown_closes_idle_connections_and_exits_on_epoll() {
    shutdown_closes_idle_connections_and_exits(IoDriver::Epoll);
}

fn shutdown_closes_idle_connections_and_exits(driver: IoDriver) {
    let port = free_port();
    let rt = start(&[port], 2, Duration::from_secs(30), driver);
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo_roundtrip(&mut idle, b"ping").unwrap();

    let (result, took) = rt.stop();
    result.unwrap();
    // Far below the 30 s deadline: the idle connection saw the drain signal.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed by the drain"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "listener closed"
    );
}

#[test]
fn readiness_waits_for_every_port_to_bind() {
    // Someone else holds this port without SO_REUSEPORT: the bind fails.
    let squatter = TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let handle = mesh_registry::new_handle(Snapshot::default());
    mesh_runtime::publish(&handle, snapshot_with(&[taken]));
    let options = RuntimeOptions {
        workers: 1,
        drain_timeout: Duration::from_secs(1),
        ..loopback_any_port()
    };
    let mut runtime = Runtime::new(options, handle);
    let ready = runtime.bind_control().unwrap().ready;
    let shutdown = runtime.shutdown_handle();
    let thread = std::thread::spawn(move || runtime.run(|_| Echo));
    wait_until("ready server up", Duration::from_secs(5), || {
        assert!(!thread.is_finished(), "run() returned early");
        get(ready, "/healthz/ready").is_ok()
    });
    // Give the worker several reconcile rounds; it must stay unready.
    for _ in 0..5 {
        assert_eq!(get(ready, "/healthz/ready").unwrap().0, 503);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once the port is free the retry binds it.
    drop(squatter);
    wait_until("ready after the port freed", Duration::from_secs(5), || {
        matches!(get(ready, "/healthz/ready"), Ok((200, _)))
    });
    shutdown.trigger();
    thread.join().unwrap().unwrap();
}

#[test]
fn taken_admin_address_is_a_start_error() {
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = RuntimeOptions {
        workers: 1,
        admin_addr: squatter.local_addr().unwrap(),
        ..loopback_any_port()
    };
    let runtime = Runtime::new(options, mesh_registry::new_handle(Snapshot::default()));
    let err = runtime.run(|_| Echo).unwrap_err();
    assert!(format!("{err:#}").contains("admin address"), "{err:#}");
}

/// Panics from a task outside any connection once the worker is running.
struct PanicsLater;

impl ConnectionHandler for PanicsLater {
    async fn handle(self: Rc<Self>, _conn: Accepted) {}
}

#[test]
fn a_panicking_worker_shuts_the_process_down() {
    let options = RuntimeOptions {
        workers: 2,
        drain_timeout: Duration::from_secs(2),
        ..loopback_any_port()
    };
    let runtime = Runtime::new(options, mesh_registry::new_handle(Snapshot::default()));
    let started = Instant::now();
    let result = runtime.run(|index| {
        if index == 1 {
            monoio::spawn(async {
                monoio::time::sleep(Duration::from_millis(300)).await;
                panic!("deliberate test panic in a worker task");
            });
        }
        PanicsLater
    });
    let err = result.unwrap_err();
    assert!(format!("{err:#}").contains("panicked"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_panicking_factory_is_a_start_error() {
    let options = RuntimeOptions {
        workers: 2,
        ..loopback_any_port()
    };
    let runtime = Runtime::new(options, mesh_registry::new_handle(Snapshot::default()));
    let result = runtime.run(|index| {
        assert!(index != 1, "deliberate test panic in the handler factory");
        PanicsLater
    });
    let err = result.unwrap_err();
    assert!(format!("{err:#}").contains("start-up"), "{err:#}");
}

/// Programs that accept on their own listeners (ztunnel binds inside pod
/// namespaces) count those connections with `WorkerHandle::track_connection`:
/// shutdown waits for them like for its own; `set_config_dump` replaces the
/// admin `/config_dump`.
#[test]
fn program_owned_connections_are_drained_and_config_dump_is_pluggable() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let handle = mesh_registry::new_handle(Snapshot::default());
    let options = RuntimeOptions {
        workers: 1,
        drain_timeout: Duration::from_secs(30),
        io_driver: IoDriver::Epoll,
        ..loopback_any_port()
    };
    let mut runtime = Runtime::new(options, handle);
    runtime.set_config_dump(Arc::new(|| serde_json::json!({"program": "own-view"})));
    let addrs = runtime.bind_control().unwrap();
    let shutdown = runtime.shutdown_handle();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let draining = Arc::new(AtomicBool::new(false));
    let seen = draining.clone();
    let thread = std::thread::spawn(move || {
        runtime.run(move |_| {
            let worker = mesh_runtime::WorkerHandle::current().expect("on a worker thread");
            let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
            std_listener.set_nonblocking(true).unwrap();
            addr_tx.send(std_listener.local_addr().unwrap()).unwrap();
            let listener = monoio::net::TcpListener::from_std(std_listener).unwrap();
            let seen = seen.clone();
            let drain = worker.drain().clone();
            monoio::spawn(async move {
                drain.signaled().await;
                seen.store(true, Ordering::SeqCst);
            });
            monoio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let guard = worker.track_connection();
                    monoio::spawn(async move {
                        let _guard = guard;
                        let mut buf = vec![0u8; 4096];
                        loop {
                            let (res, b) = stream.read(buf).await;
                            let n = match res {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let (res, mut b) =
                                stream.write_all(b.slice(..n)).await.into_inner_pair();
                            if res.is_err() {
                                return;
                            }
                            b.resize(4096, 0);
                            buf = b;
                        }
                    });
                }
            });
            Echo
        })
    });
    let own = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (status, body) = get(addrs.admin, "/config_dump").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"own-view\""), "{body}");

    let mut conn = TcpStream::connect(own).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    echo_roundtrip(&mut conn, b"before").unwrap();
    shutdown.trigger();
    wait_until("the worker's drain signal", Duration::from_secs(10), || {
        draining.load(Ordering::SeqCst)
    });
    // Draining, yet the tracked connection keeps being served.
    echo_roundtrip(&mut conn, b"during the drain").unwrap();
    assert!(
        !thread.is_finished(),
        "run() returned with a tracked connection open"
    );
    drop(conn);
    thread.join().unwrap().unwrap();
}
