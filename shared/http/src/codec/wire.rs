//! Small HTTP/1 wire helpers shared by the proxy paths: hop-by-hop header
//! rules and allocation-free status-line / decimal writers.

use bytes::{BufMut, Bytes, BytesMut};

use super::Headers;

/// Headers that describe one connection, never forwarded as they are.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Names listed in Connection (other than the standard tokens) are hop-by-hop too.
pub(crate) fn connection_listed(headers: &Headers) -> Vec<Bytes> {
    let mut out = Vec::new();
    for v in headers.get_all("connection") {
        for token in v.split(|b| *b == b',') {
            let t = crate::codec::trim(token);
            if !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"upgrade")
            {
                out.push(v.slice_ref(t));
            }
        }
    }
    out
}

pub(crate) fn is_listed(list: &[Bytes], name: &[u8]) -> bool {
    list.iter().any(|l| l.eq_ignore_ascii_case(name))
}

pub(crate) fn write_status_line(out: &mut BytesMut, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let s = status.min(999);
    out.put_u8(b'0' + (s / 100) as u8);
    out.put_u8(b'0' + (s / 10 % 10) as u8);
    out.put_u8(b'0' + (s % 10) as u8);
    out.put_u8(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn write_decimal(out: &mut BytesMut, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}
