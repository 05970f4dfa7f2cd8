//! Chunked transfer coding: an incremental decoder over a read buffer and
//! the chunk framing we write.

use bytes::{Bytes, BytesMut};

/// Longest chunk-size line (with extensions) or trailer block we accept.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete unit: read more.
    NeedMore,
    /// The terminating chunk and trailers were consumed.
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self { state: State::Size }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `buf` and returns the next piece of payload.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Size => {
                    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > MAX_LINE {
                            return Err(ChunkError("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size_line(&buf[..nl + 1])?;
                    let _ = buf.split_to(nl + 1);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError("missing CRLF after chunk data"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    // Trailers are dropped (we do not forward them); find the empty line.
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.state = State::Done;
                        continue;
                    }
                    match find(buf, b"\r\n\r\n") {
                        Some(i) => {
                            let _ = buf.split_to(i + 4);
                            self.state = State::Done;
                        }
                        None => {
                            if buf.len() > MAX_TRAILERS {
                                return Err(ChunkError("trailers too large"));
                            }
                            return Ok(Decoded::NeedMore);
                        }
                    }
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `1a;ext=1\r\n` → 26. Requires CRLF, at least one hex digit, no overflow.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err(ChunkError("chunk size line without CRLF"));
    };
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut rest = line;
    while let [c, tail @ ..] = rest {
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => break,
        };
        if digits >= 16 {
            return Err(ChunkError("chunk size overflow"));
        }
        size = (size << 4) | u64::from(v);
        digits += 1;
        rest = tail;
    }
    if digits == 0 {
        return Err(ChunkError("invalid chunk size"));
    }
    let rest = super::trim(rest);
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(ChunkError("invalid chunk size"));
    }
    if rest.iter().any(|b| *b == b'\r' || *b == b'\n') {
        return Err(ChunkError("invalid chunk extension"));
    }
    Ok(size)
}

/// `{len:x}\r\n` for a data chunk.
pub fn write_chunk_header(out: &mut BytesMut, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = len;
    loop {
        i -= 1;
        tmp[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
    out.extend_from_slice(b"\r\n");
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], step: usize) -> Result<Vec<u8>, ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Done => return Ok(out),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Err(ChunkError("eof"));
                    }
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_in_any_split() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for step in 1..input.len() {
            assert_eq!(
                decode_all(input, step).unwrap(),
                b"hello world",
                "step {step}"
            );
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(decode_all(b"zz\r\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhelloXX0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"fffffffffffffffff\r\n", 64).is_err());
        assert!(decode_all(b"\r\n", 64).is_err());
        assert!(decode_all(b"5\nhello\r\n0\r\n\r\n", 64).is_err());
    }

    #[test]
    fn writes_hex_sizes() {
        let mut b = BytesMut::new();
        write_chunk_header(&mut b, 0x1a2b);
        assert_eq!(&b[..], b"1a2b\r\n");
        let mut b = BytesMut::new();
        write_chunk_header(&mut b, 0);
        assert_eq!(&b[..], b"0\r\n");
    }
}
