//! An ordered header list. Names keep the case they arrived with; lookups are
//! case-insensitive. Values are `Bytes` (slices of the received head, or owned
//! when a filter adds them).

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Bytes,
    pub value: Bytes,
}

impl Header {
    pub fn new(name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// First value of `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().find(|h| h.is(name)).map(|h| &h.value)
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|h| h.is(name))
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.0.iter().filter(move |h| h.is(name)).map(|h| &h.value)
    }

    /// All values of `name` joined with "," (how readers see repeated headers).
    pub fn joined(&self, name: &str) -> Option<Bytes> {
        let mut values = self.get_all(name);
        let first = values.next()?.clone();
        let mut rest = values.peekable();
        if rest.peek().is_none() {
            return Some(first);
        }
        let mut out = BytesMut::from(&first[..]);
        for v in rest {
            out.put_u8(b',');
            out.extend_from_slice(v);
        }
        Some(out.freeze())
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.is(name));
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        let name = name.into();
        if let Ok(n) = std::str::from_utf8(&name) {
            let n = n.to_owned();
            self.remove(&n);
        }
        self.0.push(Header::new(name, value));
    }

    /// Appends one more header line (readers join repeated lines with ",").
    pub fn add(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.0.push(Header::new(name, value));
    }

    pub fn push(&mut self, header: Header) {
        self.0.push(header);
    }
}

/// Writes `name: value\r\n`.
pub fn write_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A header value a filter wants to write must not smuggle a line break.
pub fn is_valid_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}

/// RFC 9110 token characters, for header names coming from configuration.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_add_remove_are_case_insensitive() {
        let mut h = Headers::default();
        h.add("X-A", "1");
        h.add("x-a", "2");
        assert_eq!(h.joined("X-a").unwrap(), Bytes::from_static(b"1,2"));
        h.set("x-A", "3");
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-a").unwrap(), &Bytes::from_static(b"3"));
        h.remove("X-A");
        assert!(h.is_empty());
    }

    #[test]
    fn values_with_line_breaks_are_invalid() {
        assert!(is_valid_value(b"ok value\t1"));
        assert!(!is_valid_value(b"a\r\nx: y"));
        assert!(is_valid_name(b"X-Header"));
        assert!(!is_valid_name(b"X Header"));
    }
}
