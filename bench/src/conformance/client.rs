//! Minimal blocking HTTP/1.1 client for probes: one connection per request,
//! `Connection: close`, explicit Host header.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A probe connection: plain TCP or TLS over TCP (read timeouts are set on the socket).
pub trait ProbeConn: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl ProbeConn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ProbeConn for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// TLS settings of an https probe: the client config (trusting the test
/// certificate) and the server name sent as SNI.
#[derive(Clone)]
pub struct ProbeTls {
    pub config: Arc<rustls::ClientConfig>,
    pub sni: String,
}

#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub host: String,
    /// Request target as sent (path and query).
    pub path: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// All values of a header (name case-insensitive) joined with ',', as the Go harness does.
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

pub fn send(
    addr: SocketAddr,
    req: &HttpRequest,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    send_with(addr, req, timeout, None)
}

/// `send`, over TLS when `tls` is given (the handshake happens with the first write).
pub fn send_with(
    addr: SocketAddr,
    req: &HttpRequest,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Result<HttpResponse, String> {
    let deadline = Instant::now() + timeout;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => exchange(stream, req, deadline),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(tls.sni.clone())
                .map_err(|e| format!("SNI {:?}: {e}", tls.sni))?;
            let conn = rustls::ClientConnection::new(tls.config.clone(), name)
                .map_err(|e| format!("TLS client: {e}"))?;
            let _ = stream.set_read_timeout(Some(timeout));
            exchange(rustls::StreamOwned::new(conn, stream), req, deadline)
        }
    }
}

fn exchange(
    mut stream: impl ProbeConn,
    req: &HttpRequest,
    deadline: Instant,
) -> Result<HttpResponse, String> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, req.path, req.host
    );
    for (name, value) in &req.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("User-Agent: ringmesh-conformance\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    read_response(&mut stream, &req.method, deadline)
}

fn read_some(
    stream: &mut impl ProbeConn,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, String> {
    let now = Instant::now();
    if now >= deadline {
        return Err("timed out waiting for the response".into());
    }
    stream
        .tcp()
        .set_read_timeout(Some(deadline - now))
        .map_err(|e| e.to_string())?;
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE_BYTES {
                return Err("response too large".into());
            }
            Ok(n)
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err("timed out waiting for the response".into())
        }
        // TLS: the server closed TCP without close_notify; the framing decides.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn read_response(
    stream: &mut impl ProbeConn,
    method: &str,
    deadline: Instant,
) -> Result<HttpResponse, String> {
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        // Skip interim 1xx responses (100 Continue).
        let parsed = parse_head(&buf)?;
        if let Some((mut response, head_len)) = parsed {
            if (100..200).contains(&response.status) {
                buf.drain(..head_len);
                continue;
            }
            buf.drain(..head_len);
            let no_body = method.eq_ignore_ascii_case("HEAD")
                || response.status == 204
                || response.status == 304;
            if no_body {
                return Ok(response);
            }
            let chunked = response
                .header_joined("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            let content_length = response
                .header_joined("content-length")
                .map(|v| v.split(',').next().unwrap_or("").trim().parse::<usize>());
            if chunked {
                loop {
                    if let Some(body) = decode_chunked(&buf)? {
                        response.body = body;
                        return Ok(response);
                    }
                    if read_some(stream, &mut buf, deadline)? == 0 {
                        return Err("connection closed inside a chunked body".into());
                    }
                }
            }
            match content_length {
                Some(Ok(n)) => {
                    while buf.len() < n {
                        if read_some(stream, &mut buf, deadline)? == 0 {
                            return Err(format!(
                                "connection closed after {} of {n} body bytes",
                                buf.len()
                            ));
                        }
                    }
                    buf.truncate(n);
                    response.body = buf;
                    return Ok(response);
                }
                Some(Err(_)) => return Err("invalid Content-Length in response".into()),
                None => {
                    while read_some(stream, &mut buf, deadline)? > 0 {}
                    response.body = buf;
                    return Ok(response);
                }
            }
        }
        if read_some(stream, &mut buf, deadline)? == 0 {
            return Err(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                "connection closed inside the response head".into()
            });
        }
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<(HttpResponse, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let response = HttpResponse {
                status: parsed.code.unwrap_or(0),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                body: Vec::new(),
            };
            Ok(Some((response, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("malformed response head: {e}")),
    }
}

/// Decodes a complete chunked body; `None` while incomplete.
pub fn decode_chunked(buf: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + line_len])
            .map_err(|_| "bad chunk size line".to_string())?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        pos += line_len + 2;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let Some(len) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                pos += len + 2;
                if len == 0 {
                    return Ok(Some(body));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoding() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            Some(b"abcde".to_vec())
        );
        assert_eq!(decode_chunked(b"3\r\nab").unwrap(), None);
        assert_eq!(decode_chunked(b"3\r\nabc\r\n0\r\n").unwrap(), None);
        assert!(decode_chunked(b"zz\r\n").is_err());
    }

    #[test]
    fn joined_headers_are_case_insensitive() {
        let response = HttpResponse {
            status: 200,
            headers: vec![
                ("X-A".into(), "1".into()),
                ("x-a".into(), "2".into()),
                ("b".into(), "3".into()),
            ],
            body: vec![],
        };
        assert_eq!(response.header_joined("x-A").as_deref(), Some("1,2"));
        assert_eq!(response.header_joined("c"), None);
    }
}
