//! Response heads from upstreams.

use bytes::{Bytes, BytesMut};

use super::{
    has_token, parse_content_length, spans, BodyKind, HeadError, Header, Headers, MAX_HEADERS,
};

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Bytes,
    pub minor_version: u8,
    pub headers: Headers,
    pub body: BodyKind,
    /// The upstream connection can carry another request afterwards.
    pub keep_alive: bool,
}

/// Parses a response head from the front of `buf`; `head_request` tells
/// whether the request was HEAD (no body follows whatever the headers say).
pub fn parse_response(
    buf: &mut BytesMut,
    max_bytes: usize,
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let (len, status, reason, minor, header_spans) = match res.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_bytes {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Ok(httparse::Status::Complete(len)) => {
            let base: &[u8] = buf;
            let reason = super::span_of(base, res.reason.unwrap_or("").as_bytes());
            (
                len,
                res.code.unwrap_or(0),
                reason,
                res.version.unwrap_or(1),
                spans(base, res.headers),
            )
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Bad("malformed upstream response")),
    };
    let raw = buf.split_to(len).freeze();
    let mut headers = Headers::with_capacity(header_spans.len() + 4);
    for s in &header_spans {
        headers.push(Header {
            name: raw.slice(s.name.0..s.name.1),
            value: raw.slice(s.value.0..s.value.1),
        });
    }
    let reason = if reason.0 == reason.1 {
        Bytes::from_static(super::reason_phrase(status).as_bytes())
    } else {
        raw.slice(reason.0..reason.1)
    };

    let mut content_length = None;
    let mut te: Option<bool> = None;
    let mut close = false;
    let mut keep_alive = false;
    for h in headers.iter() {
        if h.is("content-length") {
            content_length = Some(parse_content_length(&h.value, content_length)?);
        } else if h.is("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(&[]);
            te = Some(super::trim(last).eq_ignore_ascii_case(b"chunked"));
        } else if h.is("connection") {
            close |= has_token(&h.value, "close");
            keep_alive |= has_token(&h.value, "keep-alive");
        }
    }
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::None
    } else {
        match (te, content_length) {
            (Some(true), _) => BodyKind::Chunked,
            (Some(false), _) => BodyKind::Eof,
            (None, Some(0)) => BodyKind::None,
            (None, Some(n)) => BodyKind::Length(n),
            (None, None) => BodyKind::Eof,
        }
    };
    let persistent = if minor == 1 {
        !close
    } else {
        keep_alive && !close
    };
    Ok(Some(ResponseHead {
        status,
        reason,
        minor_version: minor,
        headers,
        body,
        keep_alive: persistent && body != BodyKind::Eof,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_of_responses() {
        let mut b = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        let r = parse_response(&mut b, 1024, false).unwrap().unwrap();
        assert_eq!(
            (r.status, r.body, r.keep_alive),
            (200, BodyKind::Length(2), true)
        );
        assert_eq!(&b[..], b"hi");

        let mut b = BytesMut::from("HTTP/1.1 200 OK\r\n\r\n");
        let r = parse_response(&mut b, 1024, false).unwrap().unwrap();
        assert_eq!((r.body, r.keep_alive), (BodyKind::Eof, false));

        let mut b = BytesMut::from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let r = parse_response(&mut b, 1024, true).unwrap().unwrap();
        assert_eq!(r.body, BodyKind::None, "HEAD responses have no body");

        let mut b = BytesMut::from("HTTP/1.0 204 No Content\r\n\r\n");
        let r = parse_response(&mut b, 1024, false).unwrap().unwrap();
        assert_eq!((r.body, r.keep_alive), (BodyKind::None, false));
    }

    #[test]
    fn missing_reason_phrase_is_fine() {
        for raw in ["HTTP/1.1 204\r\n\r\n", "HTTP/1.1 204 \r\n\r\n"] {
            let mut b = BytesMut::from(raw);
            let r = parse_response(&mut b, 1024, false).unwrap().unwrap();
            assert_eq!(r.status, 204);
            assert_eq!(&r.reason[..], b"No Content");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut b = BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n");
        assert!(parse_response(&mut b, 1024, false).is_err());
    }
}
