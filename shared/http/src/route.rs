//! Route selection: port → listener (isolation) → host group → first
//! matching entry in precedence order.

use mesh_registry::{HeaderMatch, QueryParamMatch, RequestMatcher, RouteEntry, Snapshot};

use crate::codec::RequestHead;

/// Host for routing: port stripped, lower-case. Borrowed when already lower-case.
pub fn routing_host(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let host = if raw.first() == Some(&b'[') {
        match raw.iter().position(|b| *b == b']') {
            Some(i) => &raw[..=i],
            None => raw,
        }
    } else {
        match raw.iter().rposition(|b| *b == b':') {
            Some(i) => &raw[..i],
            None => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    match std::str::from_utf8(host) {
        Ok(s) if !s.bytes().any(|b| b.is_ascii_uppercase()) => std::borrow::Cow::Borrowed(s),
        Ok(s) => std::borrow::Cow::Owned(s.to_ascii_lowercase()),
        Err(_) => std::borrow::Cow::Borrowed(""),
    }
}

/// The route entry serving this request, or None (404).
pub fn select<'a>(
    snapshot: &'a Snapshot,
    port: u16,
    host: &str,
    req: &RequestHead,
) -> Option<&'a RouteEntry> {
    let port_config = snapshot.ports.get(&port)?;
    let listener = port_config.listeners.select(host)?;
    let table = listener.routes.select(host)?;
    let path = std::str::from_utf8(req.path_only()).ok()?;
    table
        .entries
        .iter()
        .find(|e| matches(&e.matcher, path, req))
}

pub fn matches(m: &RequestMatcher, path: &str, req: &RequestHead) -> bool {
    if let Some(method) = &m.method {
        if req.method.as_ref() != method.as_bytes() {
            return false;
        }
    }
    if !m.path.matches(path) {
        return false;
    }
    m.headers.iter().all(|h| header_matches(h, req))
        && m.query_params.iter().all(|q| query_matches(q, req))
}

fn header_matches(h: &HeaderMatch, req: &RequestHead) -> bool {
    match req.headers.get(&h.name) {
        Some(v) => std::str::from_utf8(v).is_ok_and(|v| h.value.matches(v)),
        None => false,
    }
}

fn query_matches(q: &QueryParamMatch, req: &RequestHead) -> bool {
    let Some(query) = req.query() else {
        return false;
    };
    // The first occurrence of a parameter decides (Gateway API: implementations
    // SHOULD match the first value).
    for pair in query.split(|b| *b == b'&') {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        if name == q.name.as_bytes() {
            return std::str::from_utf8(value).is_ok_and(|v| q.value.matches(v));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_stripped_and_lowercased() {
        assert_eq!(routing_host(b"Example.COM:8080"), "example.com");
        assert_eq!(routing_host(b"example.com"), "example.com");
        assert_eq!(routing_host(b"[::1]:80"), "[::1]");
        assert_eq!(routing_host(b"a.example.com."), "a.example.com");
    }
}
