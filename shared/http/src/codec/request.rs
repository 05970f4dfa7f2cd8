//! Request heads: parse (httparse), validate framing, and expose what the
//! proxy needs (path, authority, keep-alive, upgrade, expect).

use bytes::{Bytes, BytesMut};

use super::{has_token, parse_content_length, spans, BodyKind, HeadError, Headers, MAX_HEADERS};
use crate::codec::Header;

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Bytes,
    /// Origin-form target: path plus optional `?query` (`*` for asterisk-form).
    pub path: Bytes,
    /// Authority of an absolute-form target (`GET http://a.example/x`).
    pub authority: Option<Bytes>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
    pub body: BodyKind,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Upgrade` value when the request asks for a protocol upgrade.
    pub upgrade: Option<Bytes>,
}

impl RequestHead {
    pub fn method_is(&self, m: &str) -> bool {
        self.method.as_ref() == m.as_bytes()
    }

    /// Path without the query.
    pub fn path_only(&self) -> &[u8] {
        match self.path.iter().position(|b| *b == b'?') {
            Some(i) => &self.path[..i],
            None => &self.path,
        }
    }

    pub fn query(&self) -> Option<&[u8]> {
        self.path
            .iter()
            .position(|b| *b == b'?')
            .map(|i| &self.path[i + 1..])
    }

    /// Host as the client addressed it: absolute-form authority, else Host.
    pub fn host_header(&self) -> Option<&Bytes> {
        self.authority.as_ref().or_else(|| self.headers.get("host"))
    }
}

/// Parses one request head from the front of `buf`. On success the head's
/// bytes are split off `buf` (what follows stays: body or the next request).
/// `Ok(None)`: incomplete, read more.
pub fn parse_request(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let (len, method, target, minor, header_spans) = match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_bytes {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Ok(httparse::Status::Complete(len)) => {
            if len > max_bytes {
                return Err(HeadError::TooLarge);
            }
            let base: &[u8] = buf;
            let method = super::span_of(base, req.method.unwrap_or("").as_bytes());
            let target = super::span_of(base, req.path.unwrap_or("").as_bytes());
            (
                len,
                method,
                target,
                req.version.unwrap_or(1),
                spans(base, req.headers),
            )
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::HeaderName) => return Err(HeadError::Bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(HeadError::Bad("invalid header value")),
        Err(httparse::Error::Version) => return Err(HeadError::Bad("unsupported HTTP version")),
        Err(_) => return Err(HeadError::Bad("malformed request line")),
    };
    let raw = buf.split_to(len).freeze();
    let mut headers = Headers::with_capacity(header_spans.len() + 4);
    for s in &header_spans {
        headers.push(Header {
            name: raw.slice(s.name.0..s.name.1),
            value: raw.slice(s.value.0..s.value.1),
        });
    }
    let method = raw.slice(method.0..method.1);
    let target = raw.slice(target.0..target.1);
    build(method, target, minor, headers).map(Some)
}

fn build(
    method: Bytes,
    target: Bytes,
    minor: u8,
    headers: Headers,
) -> Result<RequestHead, HeadError> {
    if method.as_ref() == b"CONNECT" {
        return Err(HeadError::Bad("CONNECT is not supported"));
    }
    let (path, authority) = split_target(&target)?;

    let mut content_length = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut connection_upgrade = false;
    let mut expect_continue = false;
    let mut upgrade = None;
    let mut hosts = 0;
    for h in headers.iter() {
        if h.is("content-length") {
            content_length = Some(parse_content_length(&h.value, content_length)?);
        } else if h.is("transfer-encoding") {
            has_te = true;
            // Only `chunked` alone is accepted: anything else cannot be framed safely.
            chunked = !chunked && super::trim(&h.value).eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Err(HeadError::Bad("unsupported transfer-encoding"));
            }
        } else if h.is("connection") {
            connection_close |= has_token(&h.value, "close");
            connection_keep_alive |= has_token(&h.value, "keep-alive");
            connection_upgrade |= has_token(&h.value, "upgrade");
        } else if h.is("expect") {
            expect_continue = super::trim(&h.value).eq_ignore_ascii_case(b"100-continue");
        } else if h.is("upgrade") {
            upgrade = Some(h.value.clone());
        } else if h.is("host") {
            hosts += 1;
        }
    }
    if hosts > 1 {
        return Err(HeadError::Bad("multiple host headers"));
    }
    if minor == 1 && hosts == 0 && authority.is_none() {
        return Err(HeadError::Bad("missing host header"));
    }
    if has_te && content_length.is_some() {
        return Err(HeadError::Bad("both content-length and transfer-encoding"));
    }
    if has_te && minor == 0 {
        return Err(HeadError::Bad("transfer-encoding in HTTP/1.0"));
    }
    let body = if chunked {
        BodyKind::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    let keep_alive = if minor == 1 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };
    Ok(RequestHead {
        method,
        path,
        authority,
        minor_version: minor,
        headers,
        body,
        keep_alive,
        expect_continue: expect_continue && minor == 1 && body != BodyKind::None,
        upgrade: if connection_upgrade && minor == 1 {
            upgrade
        } else {
            None
        },
    })
}

/// Splits a request target into origin-form path and (absolute-form) authority.
fn split_target(target: &Bytes) -> Result<(Bytes, Option<Bytes>), HeadError> {
    if target.first() == Some(&b'/') || target.as_ref() == b"*" {
        return Ok((target.clone(), None));
    }
    let rest_start = if starts_with_ignore_case(target, b"http://") {
        7
    } else if starts_with_ignore_case(target, b"https://") {
        8
    } else {
        return Err(HeadError::Bad("invalid request target"));
    };
    let rest = &target[rest_start..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    if end == 0 {
        return Err(HeadError::Bad("invalid request target"));
    }
    let authority = target.slice(rest_start..rest_start + end);
    let path = if rest_start + end == target.len() {
        Bytes::from_static(b"/")
    } else if rest[end] == b'?' {
        let mut p = Vec::with_capacity(target.len() - rest_start - end + 1);
        p.push(b'/');
        p.extend_from_slice(&rest[end..]);
        Bytes::from(p)
    } else {
        target.slice(rest_start + end..)
    };
    Ok((path, Some(authority)))
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut b = BytesMut::from(s);
        parse_request(&mut b, 64 * 1024)
    }

    #[test]
    fn parses_and_leaves_the_body() {
        let mut b = BytesMut::from(
            "POST /a?x=1 HTTP/1.1\r\nHost: A.com\r\nContent-Length: 3\r\n\r\nabcGET",
        );
        let h = parse_request(&mut b, 1024).unwrap().unwrap();
        assert_eq!(&h.method[..], b"POST");
        assert_eq!(h.path_only(), b"/a");
        assert_eq!(h.query(), Some(&b"x=1"[..]));
        assert_eq!(h.body, BodyKind::Length(3));
        assert!(h.keep_alive);
        assert_eq!(&b[..], b"abcGET");
    }

    #[test]
    fn partial_heads_wait_and_oversized_heads_fail() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
        let mut b =
            BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(200)).as_str());
        assert_eq!(parse_request(&mut b, 100).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn hostile_framing_is_rejected() {
        let both =
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(both).unwrap_err().status(), 400);
        let dup = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(parse(dup).unwrap_err().status(), 400);
        let same = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(parse(same).unwrap().unwrap().body, BodyKind::Length(3));
        assert!(parse("garbage\r\n\r\n").is_err());
        assert!(parse("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").is_err());
        assert!(parse("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n").is_err());
        assert!(
            parse("GET / HTTP/1.1\r\n\r\n").is_err(),
            "HTTP/1.1 needs Host"
        );
        let te = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert!(parse(te).is_err());
    }

    #[test]
    fn absolute_form_gives_authority() {
        let h = parse("GET http://Example.com:8080?q=1 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.authority.as_deref(), Some(&b"Example.com:8080"[..]));
        assert_eq!(&h.path[..], b"/?q=1");
    }

    #[test]
    fn http10_keep_alive_only_when_asked() {
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn upgrade_and_expect() {
        let h = parse(
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.upgrade.as_deref(), Some(&b"websocket"[..]));
        let h =
            parse("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.expect_continue);
    }
}
