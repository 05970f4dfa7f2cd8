//! Test apps inside pods: an HTTP/1.1 server that names its pod and echoes
//! the request head it received (used by the waypoint and gateway tests).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{in_netns, Pod};

/// What an app answers a request: its status, after an optional delay.
pub struct Answer {
    pub status: u16,
    pub delay: Duration,
}

/// Decides the [`Answer`] from (pod name, request head). Tests use it to make
/// a pod fail, stall or count what reached it.
pub type Behaviour = Arc<dyn Fn(&str, &str) -> Answer + Send + Sync>;

/// An HTTP/1.1 app: answers every request (keep-alive) with its pod name
/// and the request head it received.
pub fn spawn_http_app(pod: &Pod, port: u16) {
    spawn_http_app_with(
        pod,
        port,
        Arc::new(|_, _| Answer {
            status: 200,
            delay: Duration::ZERO,
        }),
    );
}

/// [`spawn_http_app`] whose status and delay `behaviour` decides per request.
pub fn spawn_http_app_with(pod: &Pod, port: u16, behaviour: Behaviour) {
    let name = pod.name;
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&pod.netns(), move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind app");
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let behaviour = behaviour.clone();
            std::thread::spawn(move || serve_http(stream, name, behaviour));
        }
    });
    rx.recv().unwrap();
}

fn serve_http(mut stream: TcpStream, name: &str, behaviour: Behaviour) {
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
        // A request body (content-length only) is read and dropped.
        let body_len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < body_len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);
        let answer = behaviour(name, &head);
        std::thread::sleep(answer.delay);
        let body = format!("pod={name}\n{head}");
        let close = head.to_ascii_lowercase().contains("connection: close");
        let response = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            answer.status,
            if answer.status == 200 { "OK" } else { "Test" },
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
