//! HTTP/1.x wire format: parsing heads with httparse, chunked framing, and
//! serialising heads. Header names and values are `Bytes` slices of the
//! received head, so parsing copies nothing.

pub mod chunked;
pub mod headers;
pub mod request;
pub mod response;
pub(crate) mod wire;

pub use headers::{Header, Headers};
pub use request::RequestHead;
pub use response::ResponseHead;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Read until the peer closes (responses only).
    Eof,
}

/// Why a head could not be parsed; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400 with a short reason.
    Bad(&'static str),
    /// 431: header block larger than allowed.
    TooLarge,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Bad(_) => 400,
            HeadError::TooLarge => 431,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            HeadError::Bad(r) => r,
            HeadError::TooLarge => "request header fields too large",
        }
    }
}

/// Most headers a head may carry.
pub const MAX_HEADERS: usize = 128;

/// Offsets of one parsed header inside the head buffer.
#[derive(Clone, Copy, Default)]
pub(crate) struct HeaderSpan {
    pub name: (usize, usize),
    pub value: (usize, usize),
}

/// Where `part` (a slice httparse returned) lies inside `base`. httparse may
/// hand back a static empty slice (e.g. an empty reason phrase), which lies
/// elsewhere: any slice outside `base` maps to the empty span.
pub(crate) fn span_of(base: &[u8], part: &[u8]) -> (usize, usize) {
    let (b, p) = (base.as_ptr() as usize, part.as_ptr() as usize);
    if p < b || p + part.len() > b + base.len() {
        return (0, 0);
    }
    (p - b, p - b + part.len())
}

pub(crate) fn spans(base: &[u8], parsed: &[httparse::Header<'_>]) -> Vec<HeaderSpan> {
    parsed
        .iter()
        .map(|h| HeaderSpan {
            name: span_of(base, h.name.as_bytes()),
            value: span_of(base, h.value),
        })
        .collect()
}

/// Canonical reason phrase for the status codes we generate.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Parses a Content-Length value list (`5` or `5, 5`); all members must agree.
pub(crate) fn parse_content_length(value: &[u8], current: Option<u64>) -> Result<u64, HeadError> {
    let mut out = current;
    for part in value.split(|b| *b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Bad("invalid content-length"));
        }
        let n = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        match out {
            Some(prev) if prev != n => return Err(HeadError::Bad("conflicting content-length")),
            _ => out = Some(n),
        }
    }
    out.ok_or(HeadError::Bad("invalid content-length"))
}

pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_lists_must_agree() {
        assert_eq!(parse_content_length(b"5", None), Ok(5));
        assert_eq!(parse_content_length(b"5, 5", None), Ok(5));
        assert!(parse_content_length(b"5, 6", None).is_err());
        assert!(parse_content_length(b"6", Some(5)).is_err());
        assert!(parse_content_length(b"-1", None).is_err());
        assert!(parse_content_length(b"", None).is_err());
        assert!(parse_content_length(b"99999999999999999999", None).is_err());
    }

    #[test]
    fn tokens_are_case_insensitive() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has_token(b"keep-alive", "close"));
    }
}

#[cfg(test)]
mod robustness {
    use bytes::BytesMut;
    use rand::{Rng, SeedableRng};

    /// Random and mutated input never panics a parser.
    #[test]
    fn parsers_survive_random_input() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
        let seeds: [&[u8]; 3] = [
            b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"GET http://[::1]:80/x HTTP/1.0\r\nConnection: keep-alive, upgrade\r\nUpgrade: ws\r\n\r\n",
        ];
        for i in 0..20_000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..input.len());
                match rng.random_range(0..3) {
                    0 => input[at] = rng.random(),
                    1 => input.insert(at, rng.random()),
                    _ => {
                        input.remove(at);
                    }
                }
            }
            let mut b = BytesMut::from(&input[..]);
            if let Ok(Some(_)) = super::request::parse_request(&mut b, 1024) {
                let mut d = super::chunked::ChunkedDecoder::default();
                while let Ok(super::chunked::Decoded::Data(_)) = d.decode(&mut b) {}
            }
            let mut b = BytesMut::from(&input[..]);
            let _ = super::response::parse_response(&mut b, 1024, i % 2 == 0);
        }
    }
}
