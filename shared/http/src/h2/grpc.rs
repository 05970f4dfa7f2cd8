//! gRPC over the engine: recognising gRPC requests and answering the
//! proxy's own errors the way gRPC clients understand them — HTTP 200,
//! "trailers-only" (one HEADERS frame with END_STREAM) carrying
//! `grpc-status` and `grpc-message`, as Envoy does.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

/// gRPC status codes the proxy produces.
pub mod code {
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// `content-type: application/grpc` or `application/grpc+proto` etc.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status the proxy answers with (Envoy's
/// mapping; 504 is the proxy's own timeout, DEADLINE_EXCEEDED, and 429 a
/// local rate limit, RESOURCE_EXHAUSTED).
pub fn grpc_status_for_http(status: u16) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 => code::RESOURCE_EXHAUSTED,
        502 | 503 => code::UNAVAILABLE,
        504 => code::DEADLINE_EXCEEDED,
        500 => code::INTERNAL,
        _ => code::UNKNOWN,
    }
}

/// A trailers-only gRPC answer for an error the proxy generated.
pub fn trailers_only(http_status: u16, message: &str) -> Response<()> {
    trailers_only_status(grpc_status_for_http(http_status), message)
}

/// A trailers-only gRPC answer with this gRPC status (e.g. an injected fault).
pub fn trailers_only_status(grpc_status: u32, message: &str) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(grpc_status));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message.trim_end())) {
        h.insert("grpc-message", v);
    }
    resp
}

/// grpc-message is percent-encoded outside printable ASCII (and '%').
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_map_to_envoys_grpc_statuses() {
        assert_eq!(grpc_status_for_http(404), code::UNIMPLEMENTED);
        assert_eq!(grpc_status_for_http(503), code::UNAVAILABLE);
        assert_eq!(grpc_status_for_http(502), code::UNAVAILABLE);
        assert_eq!(grpc_status_for_http(504), code::DEADLINE_EXCEEDED);
        assert_eq!(grpc_status_for_http(429), code::RESOURCE_EXHAUSTED);
        let r = trailers_only(404, "no route\n");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["grpc-message"], "no route");
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}
