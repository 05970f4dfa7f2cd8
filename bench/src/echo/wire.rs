//! HTTP/1.1 request framing for the echo backend: head parsing (httparse), body framing
//! (Content-Length / chunked) and a chunked decoder that discards data.

/// Upper bound of a request head; larger heads get 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 128;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    ContentLength(u64),
    Chunked,
}

/// Connection-level facts taken from the head, independent of the handler.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub body: BodyFraming,
    pub keep_alive: bool,
    pub is_head: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FramingError {
    /// 400: conflicting or malformed framing headers.
    BadRequest(&'static str),
}

/// Derives body framing and keep-alive from a parsed request.
pub fn framing_of(req: &httparse::Request<'_, '_>) -> Result<Framing, FramingError> {
    let version = req.version.unwrap_or(1);
    let mut keep_alive = version >= 1;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value)
                .map_err(|_| FramingError::BadRequest("non-ascii Content-Length"))?;
            let value: u64 = text
                .trim()
                .parse()
                .map_err(|_| FramingError::BadRequest("invalid Content-Length"))?;
            if content_length.is_some_and(|previous| previous != value) {
                return Err(FramingError::BadRequest("conflicting Content-Length"));
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let text = std::str::from_utf8(header.value)
                .map_err(|_| FramingError::BadRequest("non-ascii Transfer-Encoding"))?;
            let last = text.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(FramingError::BadRequest("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let body = match (chunked, content_length) {
        (true, Some(_)) => {
            return Err(FramingError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::ContentLength(n),
    };
    Ok(Framing {
        body,
        keep_alive,
        is_head: req.method == Some("HEAD"),
    })
}

/// Incremental chunked-body decoder that throws the payload away.
#[derive(Debug, Default)]
pub struct ChunkedDiscarder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDiscarder {
    /// Consumes as much of `data` as possible; returns bytes consumed.
    /// `is_done()` tells when the terminating chunk and trailers were seen.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, FramingError> {
        let mut pos = 0;
        loop {
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => {
                    let Some(line_end) = find_crlf(&data[pos..]) else {
                        if data.len() - pos > 1024 {
                            return Err(FramingError::BadRequest("chunk size line too long"));
                        }
                        return Ok(pos);
                    };
                    let line = &data[pos..pos + line_end];
                    let size_text = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or(b"")
                        .trim_ascii();
                    let size_text = std::str::from_utf8(size_text)
                        .map_err(|_| FramingError::BadRequest("bad chunk size"))?;
                    if size_text.is_empty() || size_text.len() > 16 {
                        return Err(FramingError::BadRequest("bad chunk size"));
                    }
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|_| FramingError::BadRequest("bad chunk size"))?;
                    pos += line_end + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    let available = (data.len() - pos) as u64;
                    if available == 0 {
                        return Ok(pos);
                    }
                    let take = available.min(remaining);
                    pos += take as usize;
                    self.state = if take == remaining {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - take)
                    };
                }
                ChunkState::DataEnd => {
                    if data.len() - pos < 2 {
                        return Ok(pos);
                    }
                    if &data[pos..pos + 2] != b"\r\n" {
                        return Err(FramingError::BadRequest("missing CRLF after chunk"));
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line_end) = find_crlf(&data[pos..]) else {
                        if data.len() - pos > MAX_HEAD_BYTES {
                            return Err(FramingError::BadRequest("trailers too long"));
                        }
                        return Ok(pos);
                    };
                    pos += line_end + 2;
                    if line_end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, ChunkState::Done)
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: "x-foo-bar" → "X-Foo-Bar". Keys with bytes
/// that are not valid token characters are returned unchanged, as Go does.
pub fn canonical_header_key(name: &str) -> String {
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return name.to_string();
    }
    let mut out = String::with_capacity(name.len());
    let mut upper_next = true;
    for c in name.chars() {
        if upper_next {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        upper_next = c == '-';
    }
    out
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(raw: &[u8]) -> Result<Framing, FramingError> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        framing_of(&req)
    }

    #[test]
    fn framing_rules() {
        let f = framing(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(f.body, BodyFraming::None);
        assert!(f.keep_alive);
        let f =
            framing(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(f.body, BodyFraming::ContentLength(5));
        assert!(!f.keep_alive);
        let f = framing(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(f.body, BodyFraming::Chunked);
        assert!(!f.keep_alive);
        assert!(framing(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        )
        .is_err());
        assert!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n").is_err()
        );
    }

    #[test]
    fn chunked_discarder_handles_split_input() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut decoder = ChunkedDiscarder::default();
            let first = decoder.feed(&body[..split]).unwrap();
            let mut rest = body[first..].to_vec();
            let mut consumed = first;
            while !decoder.is_done() {
                let n = decoder.feed(&rest).unwrap();
                assert!(n > 0, "no progress at split {split}");
                rest.drain(..n);
                consumed += n;
            }
            assert_eq!(&body[consumed..], b"NEXT", "split {split}");
        }
    }

    #[test]
    fn chunked_discarder_rejects_bad_size() {
        assert!(ChunkedDiscarder::default().feed(b"zz\r\n").is_err());
        assert!(ChunkedDiscarder::default().feed(b"3\r\nabcX\r\n").is_err());
    }

    #[test]
    fn canonical_keys() {
        assert_eq!(
            canonical_header_key("x-echo-set-header"),
            "X-Echo-Set-Header"
        );
        assert_eq!(canonical_header_key("USER-AGENT"), "User-Agent");
        assert_eq!(canonical_header_key("bad key"), "bad key");
    }
}
