//! `bench echo --grpc`: the conformance gRPC echo backend (echo-basic's grpcecho):
//! `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho` over cleartext HTTP/2
//! (prior knowledge, as a Service with `appProtocol: kubernetes.io/h2c` is reached).
//!
//! Echo and EchoTwo answer an EchoResponse whose assertions carry the method served, the
//! request metadata, `:authority` and the pod's identity; any other path (EchoThree
//! included, like upstream) is answered UNIMPLEMENTED. Served with h2 directly rather
//! than a tonic server so the backend sees and reports exactly what arrived on the wire.
//!
//! Log line per call, same shape as the HTTP echo (mirror checks read it):
//! `Echoing back request made to /<service>/<method> to client (<remote>)`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use prost::Message;

use super::proto::{Assertions, Context, EchoResponse, Header};

pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
/// Methods the backend implements.
const SERVED: &[&str] = &["Echo", "EchoTwo"];
/// A request message larger than this is refused (the conformance EchoRequest is empty).
const MAX_MESSAGE: usize = 4 << 20;

pub struct GrpcIdentity {
    pub namespace: String,
    pub service: String,
    pub pod: String,
    pub log_requests: bool,
}

/// Serves gRPC on `listener` until the process ends (one current-thread tokio runtime).
pub fn serve(listener: std::net::TcpListener, identity: Arc<GrpcIdentity>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("grpc echo accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let identity = identity.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, remote, identity).await {
                    tracing::debug!("grpc echo connection from {remote}: {e}");
                }
            });
        }
    })
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    identity: Arc<GrpcIdentity>,
) -> Result<(), h2::Error> {
    let mut connection = h2::server::handshake(stream).await?;
    while let Some(next) = connection.accept().await {
        let (request, respond) = next?;
        let identity = identity.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_call(request, respond, remote, &identity).await {
                tracing::debug!("grpc echo call from {remote}: {e}");
            }
        });
    }
    Ok(())
}

/// gRPC status codes used here.
const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const UNIMPLEMENTED: u32 = 12;
const RESOURCE_EXHAUSTED: u32 = 8;

async fn serve_call(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    remote: SocketAddr,
    identity: &GrpcIdentity,
) -> Result<(), h2::Error> {
    let (parts, mut body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Read the whole request (one unary message), returning flow-control credit as we go.
    let mut received = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if received.len() + chunk.len() > MAX_MESSAGE + 5 {
            return trailers_only(&mut respond, RESOURCE_EXHAUSTED, "request too large");
        }
        received.extend_from_slice(&chunk);
    }
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(service, method)| *service == SERVICE && SERVED.contains(method))
        .map(|(_, method)| method.to_string());
    let Some(_method) = method else {
        return trailers_only(
            &mut respond,
            UNIMPLEMENTED,
            &format!("unknown method {path}"),
        );
    };
    if let Err(e) = unframe(&received) {
        return trailers_only(&mut respond, INVALID_ARGUMENT, &e);
    }
    if identity.log_requests {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "Echoing back request made to {path} to client ({remote})"
        );
        let _ = stdout.flush();
    }
    let mut headers = vec![Header {
        key: ":authority".into(),
        value: authority.clone(),
    }];
    for (name, value) in &parts.headers {
        headers.push(Header {
            key: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        });
    }
    let reply = EchoResponse {
        assertions: Some(Assertions {
            fully_qualified_method: path,
            headers,
            authority,
            context: Some(Context {
                namespace: identity.namespace.clone(),
                ingress: String::new(),
                service_name: identity.service.clone(),
                pod: identity.pod.clone(),
            }),
            tls_assertions: None,
        }),
    };
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("static response head");
    let mut send = respond.send_response(response, false)?;
    send.send_data(frame(&reply.encode_to_vec()), false)?;
    send.send_trailers(status_trailers(OK, ""))?;
    Ok(())
}

/// A response without a message: the status travels in the headers (gRPC
/// "Trailers-Only").
fn trailers_only(
    respond: &mut h2::server::SendResponse<Bytes>,
    code: u32,
    message: &str,
) -> Result<(), h2::Error> {
    let mut response = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("static response head");
    response
        .headers_mut()
        .extend(status_trailers(code, message));
    respond.send_response(response, true)?;
    Ok(())
}

fn status_trailers(code: u32, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        // grpc-message is percent-encoded; ours are ASCII without '%', kept printable.
        let printable: String = message
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&printable) {
            trailers.insert("grpc-message", value);
        }
    }
    trailers
}

/// Length-prefixed message: flag 0 (not compressed), u32 big-endian length, bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// The one message of a unary request body.
pub fn unframe(body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err(format!(
            "request body of {} bytes has no message frame",
            body.len()
        ));
    }
    if body[0] != 0 {
        return Err("compressed messages are not supported".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(format!(
            "message frame says {len} bytes, body has {}",
            body.len() - 5
        ));
    }
    Ok(&body[5..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let framed = frame(b"abc");
        assert_eq!(&framed[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(unframe(&framed).unwrap(), b"abc");
        assert!(unframe(&framed[..4]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
        assert!(unframe(&[0, 0, 0, 0, 9, 1]).is_err());
    }

    #[test]
    fn status_trailers_carry_code_and_printable_message() {
        let t = status_trailers(UNIMPLEMENTED, "no\nsuch");
        assert_eq!(t["grpc-status"], "12");
        assert_eq!(t["grpc-message"], "no?such");
    }
}
