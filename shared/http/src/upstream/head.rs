//! The request head sent upstream: hop-by-hop headers dropped, forwarding
//! headers added, body framing chosen.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};

use crate::body::OutFraming;
use crate::codec::headers::write_header;
use crate::codec::wire::{connection_listed, is_hop_by_hop, is_listed, write_decimal};
use crate::codec::{BodyKind, RequestHead};

/// How the request body goes upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamBody {
    /// Buffered (possibly empty): content-length of the buffer.
    Buffered(usize),
    Length(u64),
    Chunked,
}

impl UpstreamBody {
    /// A buffered body goes with its buffer's length; a streamed one keeps the
    /// client's length, or is chunked when the client's length is unknown.
    pub(crate) fn for_request(buffered: Option<&bytes::Bytes>, body: BodyKind) -> Self {
        match (buffered, body) {
            (Some(b), _) => UpstreamBody::Buffered(b.len()),
            (None, BodyKind::Length(n)) => UpstreamBody::Length(n),
            (None, _) => UpstreamBody::Chunked,
        }
    }

    /// How the streamed body's bytes are written upstream.
    pub(crate) fn framing(self) -> OutFraming {
        if self == UpstreamBody::Chunked {
            OutFraming::Chunked
        } else {
            OutFraming::Raw
        }
    }
}

/// The `x-request-id` to add upstream: empty when the client sent one, else a
/// new random UUID written into `buf`.
pub(crate) fn new_request_id<'a>(
    headers: &crate::codec::Headers,
    rng: &mut impl rand::Rng,
    buf: &'a mut [u8; 36],
) -> &'a [u8] {
    if headers.contains("x-request-id") {
        return &[];
    }
    let random: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(random)
        .into_uuid()
        .hyphenated()
        .encode_lower(buf);
    buf
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write_upstream_head(
    out: &mut BytesMut,
    req: &RequestHead,
    client_ip: IpAddr,
    body: UpstreamBody,
    close: bool,
    request_id: &[u8],
    scheme: &str,
) {
    out.extend_from_slice(&req.method);
    out.put_u8(b' ');
    out.extend_from_slice(&req.path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let listed = connection_listed(&req.headers);
    let mut has_host = false;
    let mut forwarded_for: Option<Vec<u8>> = None;
    for hdr in req.headers.iter() {
        let name = &hdr.name[..];
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || (!listed.is_empty() && is_listed(&listed, name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let v = forwarded_for.get_or_insert_with(Vec::new);
            if !v.is_empty() {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(&hdr.value);
            continue;
        }
        has_host |= name.eq_ignore_ascii_case(b"host");
        write_header(out, name, &hdr.value);
    }
    if !has_host {
        if let Some(a) = &req.authority {
            write_header(out, b"host", a);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(v) = forwarded_for {
        out.extend_from_slice(&v);
        out.extend_from_slice(b", ");
    }
    // Formatting into the buffer directly: no temporary String.
    let _ = write!(out, "{client_ip}");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"x-forwarded-proto: ");
    out.extend_from_slice(scheme.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !request_id.is_empty() {
        write_header(out, b"x-request-id", request_id);
    }
    match body {
        UpstreamBody::Buffered(0) => {
            if !req.method_is("GET")
                && !req.method_is("HEAD")
                && req.headers.contains("content-length")
            {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        UpstreamBody::Buffered(n) => {
            out.extend_from_slice(b"content-length: ");
            write_decimal(out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
        UpstreamBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        UpstreamBody::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if let Some(u) = &req.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        write_header(out, b"upgrade", u);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn req(s: &str) -> RequestHead {
        let mut b = BytesMut::from(s);
        crate::codec::request::parse_request(&mut b, 65536)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_adds_forwarding() {
        let r = req("POST /p HTTP/1.1\r\nHost: a.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nTransfer-Encoding: chunked\r\nX-Keep: y\r\n\r\n");
        let mut out = BytesMut::new();
        write_upstream_head(
            &mut out,
            &r,
            "10.0.0.1".parse().unwrap(),
            UpstreamBody::Chunked,
            false,
            b"id-1",
            "http",
        );
        let s = String::from_utf8(out.to_vec()).unwrap();
        assert!(s.starts_with("POST /p HTTP/1.1\r\n"));
        assert!(s.contains("Host: a.com\r\n"));
        assert!(s.contains("X-Keep: y\r\n"));
        assert!(s.contains("x-forwarded-for: 1.1.1.1, 10.0.0.1\r\n"));
        assert!(s.contains("x-forwarded-proto: http\r\n"));
        assert!(s.contains("x-request-id: id-1\r\n"));
        assert!(s.contains("transfer-encoding: chunked\r\n"));
        for gone in [
            "X-Secret",
            "Keep-Alive",
            "TE:",
            "Connection",
            "X-Forwarded-Proto: https",
        ] {
            assert!(!s.contains(gone), "{gone} in {s}");
        }
    }
}
