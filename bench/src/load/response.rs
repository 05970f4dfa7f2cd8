//! Incremental HTTP/1.1 response parsing for the load generator: the head with
//! httparse, then the body is skipped (never buffered) by a small state
//! machine that understands Content-Length, chunked and read-until-close.

use std::fmt;

/// More header lines than this in one response is treated as garbage.
const MAX_HEADERS: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the status line and headers including the blank line.
    pub header_len: usize,
    pub body: BodyKind,
    /// The server will close the connection after this response.
    pub close: bool,
}

impl ResponseHead {
    /// 1xx responses other than 101 precede the real response.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parse a response head from the start of `buf`. `Ok(None)` means more bytes
/// are needed. `head_request` is true when the request was HEAD (no body
/// follows whatever the headers say).
pub fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<ResponseHead>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let header_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ParseError(format!("bad response head: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let http10 = response.version == Some(0);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ParseError("bad Content-Length".into()))?;
            if content_length.is_some_and(|old| old != v) {
                return Err(ParseError("conflicting Content-Length headers".into()));
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = last_token_is(h.value, b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if contains_token(h.value, b"close") {
                close = true;
            } else if contains_token(h.value, b"keep-alive") {
                close = false;
            }
        }
    }
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body {
        BodyKind::None
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(n) = content_length {
        if n == 0 {
            BodyKind::None
        } else {
            BodyKind::Length(n)
        }
    } else {
        BodyKind::UntilClose
    };
    if body == BodyKind::UntilClose {
        close = true;
    }
    Ok(Some(ResponseHead {
        status,
        header_len,
        body,
        close,
    }))
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|t| t.trim_ascii())
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    tokens(value)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// Skips a response body as bytes arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySkipper {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize {
        size: u64,
        digits: u32,
    },
    ChunkExtension {
        size: u64,
    },
    ChunkSizeLf {
        size: u64,
    },
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// Trailer section; `line_start` when the previous byte ended a line.
    Trailer {
        line_start: bool,
    },
    TrailerLf {
        line_was_empty: bool,
    },
    Done,
}

impl BodySkipper {
    pub fn new(kind: BodyKind) -> BodySkipper {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::ChunkSize { size: 0, digits: 0 },
            BodyKind::UntilClose => State::UntilClose,
        };
        BodySkipper { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when the body ends only when the peer closes.
    pub fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Consume body bytes from the start of `data`; returns how many belonged
    /// to the body (the rest is the next response, if the server pipelines).
    pub fn consume(&mut self, data: &[u8]) -> Result<usize, ParseError> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Done => break,
                State::UntilClose => return Ok(data.len()),
                State::Length(left) => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        State::Done
                    } else {
                        State::Length(left - take)
                    };
                }
                State::ChunkData(left) => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        State::ChunkDataCr
                    } else {
                        State::ChunkData(left - take)
                    };
                }
                _ => {
                    self.step(data[i])?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    /// One byte of chunk framing.
    fn step(&mut self, b: u8) -> Result<(), ParseError> {
        self.state = match self.state {
            State::ChunkSize { size, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 15 {
                        return Err(ParseError("chunk size too large".into()));
                    }
                    let d = (b as char).to_digit(16).expect("matched a hex digit") as u64;
                    State::ChunkSize {
                        size: size * 16 + d,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err(ParseError("missing chunk size".into())),
                b';' | b' ' | b'\t' => State::ChunkExtension { size },
                b'\r' => State::ChunkSizeLf { size },
                b'\n' => Self::after_size_line(size),
                _ => return Err(ParseError(format!("bad byte {b:#04x} in chunk size"))),
            },
            State::ChunkExtension { size } => match b {
                b'\r' => State::ChunkSizeLf { size },
                b'\n' => Self::after_size_line(size),
                _ => State::ChunkExtension { size },
            },
            State::ChunkSizeLf { size } => match b {
                b'\n' => Self::after_size_line(size),
                _ => return Err(ParseError("chunk size line not ended by CRLF".into())),
            },
            State::ChunkDataCr => match b {
                b'\r' => State::ChunkDataLf,
                b'\n' => State::ChunkSize { size: 0, digits: 0 },
                _ => return Err(ParseError("chunk data not followed by CRLF".into())),
            },
            State::ChunkDataLf => match b {
                b'\n' => State::ChunkSize { size: 0, digits: 0 },
                _ => return Err(ParseError("chunk data not followed by CRLF".into())),
            },
            State::Trailer { line_start } => match b {
                b'\r' => State::TrailerLf {
                    line_was_empty: line_start,
                },
                b'\n' if line_start => State::Done,
                b'\n' => State::Trailer { line_start: true },
                _ => State::Trailer { line_start: false },
            },
            State::TrailerLf { line_was_empty } => match b {
                b'\n' if line_was_empty => State::Done,
                b'\n' => State::Trailer { line_start: true },
                _ => return Err(ParseError("bad line ending in trailers".into())),
            },
            other => other,
        };
        Ok(())
    }

    fn after_size_line(size: u64) -> State {
        if size == 0 {
            State::Trailer { line_start: true }
        } else {
            State::ChunkData(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_response() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhelloHTTP/1.1";
        let head = parse_head(raw, false).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.header_len, raw.len() - "helloHTTP/1.1".len());
        assert_eq!(head.body, BodyKind::Length(5));
        assert!(!head.close);
        let mut body = BodySkipper::new(head.body);
        assert_eq!(body.consume(&raw[head.header_len..]).unwrap(), 5);
        assert!(body.is_done());
    }

    #[test]
    fn partial_head_needs_more() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
    }

    #[test]
    fn no_body_cases() {
        let r = parse_head(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, BodyKind::None);
        let r = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::None);
        let r = parse_head(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(r.is_interim());
    }

    #[test]
    fn close_delimited_and_connection_close() {
        let r = parse_head(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, BodyKind::UntilClose);
        assert!(r.close);
        let r = parse_head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.close);
        let r = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(r.close);
        let r = parse_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!r.close);
    }

    const CHUNKED_BODY: &[u8] =
        b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT";

    #[test]
    fn chunked_body_all_at_once() {
        let mut body = BodySkipper::new(BodyKind::Chunked);
        let n = body.consume(CHUNKED_BODY).unwrap();
        assert!(body.is_done());
        assert_eq!(&CHUNKED_BODY[n..], b"NEXT");
    }

    #[test]
    fn chunked_body_byte_by_byte() {
        let mut body = BodySkipper::new(BodyKind::Chunked);
        let mut used = 0;
        for b in CHUNKED_BODY.chunks(1) {
            if body.is_done() {
                break;
            }
            used += body.consume(b).unwrap();
        }
        assert!(body.is_done());
        assert_eq!(used, CHUNKED_BODY.len() - 4);
    }

    #[test]
    fn chunked_without_trailers() {
        let mut body = BodySkipper::new(BodyKind::Chunked);
        assert_eq!(body.consume(b"3\r\nabc\r\n0\r\n\r\n").unwrap(), 13);
        assert!(body.is_done());
    }

    #[test]
    fn bad_chunk_size_is_an_error() {
        let mut body = BodySkipper::new(BodyKind::Chunked);
        assert!(body.consume(b"zz\r\n").is_err());
        let mut body = BodySkipper::new(BodyKind::Chunked);
        assert!(body.consume(b"3\r\nabcX").is_err());
    }

    #[test]
    fn length_body_across_reads() {
        let mut body = BodySkipper::new(BodyKind::Length(10));
        assert_eq!(body.consume(b"1234").unwrap(), 4);
        assert!(!body.is_done());
        assert_eq!(body.consume(b"567890abc").unwrap(), 6);
        assert!(body.is_done());
    }
}
