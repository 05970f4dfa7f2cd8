//! TCP routes against the real binary: weights split connections, bytes flow
//! both ways with half-close, and listeners added or removed while running
//! bind or close without disturbing open connections.

mod l4_common;
mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use l4_common::*;
use support::{free_port, get, wait_for, Gateway, TempConfig};

fn tcp_route(name: &str, section: Option<&str>, backends: &str) -> String {
    let parent = match section {
        Some(s) => format!("{{name: gw, sectionName: {s}}}"),
        None => "{name: gw}".to_string(),
    };
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  parentRefs: [{parent}]\n  rules: [{{backendRefs: [{backends}]}}]\n"
    )
}

fn tcp_listener(name: &str, port: u16) -> String {
    format!("{{name: {name}, port: {port}, protocol: TCP}}")
}

#[test]
fn weights_split_connections_and_half_close_passes_through() {
    let (a, b, c) = (tcp_backend("a"), tcp_backend("b"), tcp_backend("c"));
    let port = free_port();
    let mut y = GATEWAY_CLASS.to_string();
    y += &gateway(&[tcp_listener("tcp", port)]);
    y += &service("a", a);
    y += &service("b", b);
    y += &service("c", c);
    y += &tcp_route(
        "split",
        None,
        "{name: a, port: 8000, weight: 3}, {name: b, port: 8000, weight: 1}, {name: c, port: 8000, weight: 0}",
    );
    let config = TempConfig::new();
    config.write("gw.yaml", &y);
    let gw = Gateway::with_config(config.path()).start();

    // Half-close: the client's FIN reaches the backend (which then closes),
    // and everything the backend sent after it still arrives.
    let (mut s, name) = tcp_connect(port).unwrap();
    let payload = vec![b'x'; 200_000];
    let back = send_and_finish(&mut s, &payload).unwrap();
    assert!(name == "a" || name == "b", "{name}");
    assert_eq!(back.len(), payload.len());

    const CONNECTIONS: usize = 1000;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..CONNECTIONS {
        let (_s, name) = tcp_connect(port).unwrap();
        *seen.entry(name).or_default() += 1;
    }
    let a_share = seen.get("a").copied().unwrap_or(0);
    assert!(
        (700..=800).contains(&a_share),
        "weights 3:1 over {CONNECTIONS} connections: {seen:?}"
    );
    assert_eq!(seen.get("c"), None, "weight 0 is never picked: {seen:?}");
    assert_eq!(a_share + seen.get("b").copied().unwrap_or(0), CONNECTIONS);

    let metrics = || get(gw.metrics, "/metrics").unwrap().body;
    wait_for(
        "every connection counted as closed",
        Duration::from_secs(10),
        || {
            let text = metrics();
            let closed = |svc: &str| {
                metric(
                    &text,
                    "istio_tcp_connections_closed_total{",
                    &[
                        "request_protocol=\"tcp\"",
                        &format!("destination_service_name=\"{svc}\""),
                    ],
                )
                .unwrap_or(0)
            };
            closed("a") + closed("b") == CONNECTIONS as u64 + 1
        },
    );
    let text = metrics();
    let sent: u64 = ["a", "b"]
        .iter()
        .filter_map(|svc| {
            metric(
                &text,
                "istio_tcp_sent_bytes_total{",
                &[&format!("destination_service_name=\"{svc}\"")],
            )
        })
        .sum();
    assert_eq!(sent, payload.len() as u64, "{text}");
}

#[test]
fn listeners_added_and_removed_live_leave_other_connections_alone() {
    let echo_port = tcp_backend("echo");
    let (first, second) = (free_port(), free_port());
    let config_with = |listeners: &[String]| {
        let mut y = GATEWAY_CLASS.to_string();
        y += &gateway(listeners);
        y += &service("echo", echo_port);
        // No sectionName: the route attaches to every TCP listener.
        y += &tcp_route("echo", None, "{name: echo, port: 8000}");
        y
    };
    let config = TempConfig::new();
    config.write("gw.yaml", &config_with(&[tcp_listener("first", first)]));
    let gw = Gateway::with_config(config.path()).start();

    let (mut on_first, name) = tcp_connect(first).unwrap();
    assert_eq!(name, "echo");
    echo(&mut on_first, "before").unwrap();
    assert!(
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], second))).is_err(),
        "nothing listens on the second port yet"
    );

    // Add a listener: it binds, and the open connection on the first port is untouched.
    let version = gw.version();
    config.write(
        "gw.yaml",
        &config_with(&[tcp_listener("first", first), tcp_listener("second", second)]),
    );
    gw.wait_version_above(version);
    wait_for("the new listener accepts", Duration::from_secs(10), || {
        tcp_connect(second).is_ok_and(|(_, name)| name == "echo")
    });
    echo(&mut on_first, "after adding").unwrap();
    let (mut on_second, _) = tcp_connect(second).unwrap();
    echo(&mut on_second, "hello second").unwrap();

    // Remove it: new connections are refused, open ones on both ports continue.
    let version = gw.version();
    config.write("gw.yaml", &config_with(&[tcp_listener("first", first)]));
    gw.wait_version_above(version);
    wait_for(
        "the removed listener to close",
        Duration::from_secs(10),
        || TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], second))).is_err(),
    );
    echo(&mut on_first, "after removing").unwrap();
    echo(&mut on_second, "still open").unwrap();
    let (_, name) = tcp_connect(first).unwrap();
    assert_eq!(name, "echo");
}

#[test]
fn bytes_flow_both_ways_on_the_epoll_driver_too() {
    // Bytes are moved with splice(2): io_uring ops by default, the syscall on epoll.
    let backend = tcp_backend("a");
    let port = free_port();
    let mut y = GATEWAY_CLASS.to_string();
    y += &gateway(&[tcp_listener("tcp", port)]);
    y += &service("a", backend);
    y += &tcp_route("a", Some("tcp"), "{name: a, port: 8000}");
    let config = TempConfig::new();
    config.write("gw.yaml", &y);
    let _gw = Gateway::with_config(config.path())
        .arg("--io-driver")
        .arg("epoll")
        .start();
    let (mut s, name) = tcp_connect(port).unwrap();
    assert_eq!(name, "a");
    echo(&mut s, "interactive").unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let back = send_and_finish(&mut s, &payload).unwrap();
    assert!(back == payload, "echoed {} bytes", back.len());
}
