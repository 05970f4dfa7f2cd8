//! Test apps inside pods: an HTTP/1.1 server that names its pod and echoes
//! the request head it received (used by the waypoint and gateway tests).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::{in_netns, Pod};

/// An HTTP/1.1 app: answers every request (keep-alive) with its pod name
/// and the request head it received.
pub fn spawn_http_app(pod: &Pod, port: u16) {
    let name = pod.name;
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&pod.netns(), move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind app");
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve_http(stream, name));
        }
    });
    rx.recv().unwrap();
}

fn serve_http(mut stream: TcpStream, name: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let body = format!("pod={name}\n{head}");
        let close = head.to_ascii_lowercase().contains("connection: close");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// The `pod=NAME` line of an app's answer.
pub fn pod_of(response: &str) -> &str {
    response
        .lines()
        .find_map(|l| l.strip_prefix("pod="))
        .unwrap_or_else(|| panic!("no pod= line in {response:?}"))
}
