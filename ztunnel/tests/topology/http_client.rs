//! A keep-alive HTTP/1.1 client in a pod, for tests that send many
//! requests through the mesh and read status, headers and body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::apps::pod_of;
use super::{in_netns, Pod};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Lower-cased head.
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    /// The `pod=NAME` line of a test app's answer.
    pub fn pod(&self) -> &str {
        pod_of(&self.body)
    }
}

/// An HTTP/1.1 client in a pod: one keep-alive connection to an address
/// (a Service VIP), reopened when the proxy closed it.
pub struct Client {
    pod: &'static Pod,
    to: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(pod: &'static Pod, to: &str) -> Self {
        Client {
            pod,
            to: to.parse().unwrap(),
            stream: None,
            buf: Vec::new(),
        }
    }

    /// A socket made in the pod's network namespace stays in it, whichever
    /// thread then uses it.
    fn connect(&mut self) -> std::io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let to = self.to;
            let s = in_netns(&self.pod.netns(), move || {
                TcpStream::connect_timeout(&to, Duration::from_secs(5))
            })
            .join()
            .unwrap()?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            self.buf.clear();
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().unwrap())
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send("GET", path, &[], "")
    }

    pub fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.send("GET", path, headers, "")
    }

    /// One request and its response; panics when the connection ends
    /// without one.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        self.try_send(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} to {}: {e}", self.to))
    }

    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Response> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: svc\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        let result = self.exchange(request.as_bytes());
        if !matches!(&result, Ok(r) if r.header("connection") != Some("close")) {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.connect()?.write_all(request)?;
        let head_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut response = Response {
            status,
            head,
            body: String::new(),
        };
        let len: usize = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no content-length: {}", response.head));
        while self.buf.len() < head_end + len {
            self.fill()?;
        }
        response.body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned();
        self.buf.drain(..head_end + len);
        Ok(response)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.as_mut().unwrap().read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
