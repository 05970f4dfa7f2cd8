//! A tiny HTTP/1.1 server for the admin, metrics and ready endpoints: one
//! request per connection (`Connection: close`), parsed with httparse, on the
//! control thread's tokio runtime. Not for data-plane traffic.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a request the endpoints look at.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Path without the query string.
    pub(crate) path: String,
    /// The raw query string, if any.
    pub(crate) query: Option<String>,
}

impl Request {
    /// The first value of query parameter `name` (no percent-decoding: the
    /// admin parameters are plain words).
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
    /// Runs after the response was written (e.g. start shutdown after
    /// `/quitquitquit` answered).
    pub(crate) after: Option<fn(&crate::control::ControlState)>,
}

impl Response {
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            after: None,
        }
    }

    pub(crate) fn json(body: String) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body,
            after: None,
        }
    }

    pub(crate) fn not_found() -> Self {
        Self::text(404, "not found\n")
    }
}

pub(crate) type Router = fn(&crate::control::ControlState, &Request) -> Response;

/// Accepts forever, one task per connection.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<crate::control::ControlState>,
    router: Router,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &state, router).await {
                        tracing::debug!(error = %e, "admin connection failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    state: &crate::control::ControlState,
    router: Router,
) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(Some(request))) => router(state, &request),
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(RequestError::Io(e))) => return Err(e),
        Ok(Err(RequestError::Bad(why))) => Response::text(400, format!("bad request: {why}\n")),
        Ok(Err(RequestError::TooLarge)) => Response::text(431, "request too large\n"),
        Err(_) => Response::text(408, "request timeout\n"),
    };
    write_response(&mut stream, &response).await?;
    if let Some(after) = response.after {
        after(state);
    }
    Ok(())
}

enum RequestError {
    Io(std::io::Error),
    Bad(String),
    TooLarge,
}

impl From<std::io::Error> for RequestError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads one request head and discards its body (so closing the socket does
/// not reset a client that is still sending). `None`: closed before a request.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, RequestError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(RequestError::Bad("connection closed mid-request".into()))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("GET").to_string();
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), Some(q.to_string())),
                    None => (target.to_string(), None),
                };
                let content_length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if content_length > MAX_BODY {
                    return Err(RequestError::TooLarge);
                }
                let mut remaining = content_length.saturating_sub(buf.len() - head_len);
                while remaining > 0 {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    remaining = remaining.saturating_sub(n);
                }
                return Ok(Some(Request {
                    method,
                    path,
                    query,
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(RequestError::TooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(RequestError::Bad(e.to_string())),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}
