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

/// [`select`], or for a connection scoped to a destination Service (the
/// waypoint: `service` is the tunnel's `VIP:port`) the first matching entry
/// of that Service's table; a Service the snapshot does not know gets None (404).
pub fn select_scoped<'a>(
    snapshot: &'a Snapshot,
    service: Option<std::net::SocketAddr>,
    port: u16,
    host: &str,
    req: &RequestHead,
) -> Option<&'a RouteEntry> {
    let Some(vip) = service else {
        return select(snapshot, port, host, req);
    };
    let table = &snapshot.services.get(vip)?.table;
    let path = std::str::from_utf8(req.path_only()).ok()?;
    table
        .entries
        .iter()
        .find(|e| matches(&e.matcher, path, req))
}

/// HTTPS: the TLS server name and the Host select different listeners of the
/// port (the connection's certificate was chosen for another listener), which
/// calls for 421 Misdirected Request.
pub fn misdirected(snapshot: &Snapshot, port: u16, sni: &str, host: &str) -> bool {
    let Some(port_config) = snapshot.ports.get(&port) else {
        return false;
    };
    let by_sni = port_config.listeners.select(sni);
    let by_host = port_config.listeners.select(host);
    match (by_sni, by_host) {
        (Some(a), Some(b)) => !std::sync::Arc::ptr_eq(a, b),
        // The Host matches no listener: the route lookup answers 404.
        (_, None) => false,
        (None, Some(_)) => true,
    }
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
    // `:authority` (VirtualService `authority` matches): the Host as the client addressed it.
    let value = if h.name == ":authority" {
        req.host_header()
    } else {
        req.headers.get(&h.name)
    };
    match value {
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
    fn an_authority_match_reads_the_host_as_addressed() {
        let mut buf = bytes::BytesMut::from(&b"GET /x HTTP/1.1\r\nHost: app.test:8080\r\n\r\n"[..]);
        let req = crate::codec::request::parse_request(&mut buf, 4096)
            .unwrap()
            .unwrap();
        let m = |value: &str| HeaderMatch {
            name: ":authority".into(),
            value: mesh_registry::StringMatch::Exact(value.into()),
        };
        assert!(header_matches(&m("app.test:8080"), &req));
        assert!(!header_matches(&m("app.test"), &req));
    }

    #[test]
    fn host_port_is_stripped_and_lowercased() {
        assert_eq!(routing_host(b"Example.COM:8080"), "example.com");
        assert_eq!(routing_host(b"example.com"), "example.com");
        assert_eq!(routing_host(b"[::1]:80"), "[::1]");
        assert_eq!(routing_host(b"a.example.com."), "a.example.com");
    }
}

/// RFC 3986 dot-segment removal on the path part of `target` (the query is
/// kept as is), so `/public/../admin` is routed and forwarded as `/admin`
/// (what Istio's default BASE normalization does). None when nothing changes,
/// which is the cheap common case.
pub fn normalize_path(target: &[u8]) -> Option<Vec<u8>> {
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, &b""[..]),
    };
    if !path.starts_with(b"/") || !has_dot_segment(path) {
        return None;
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut parts = path[1..].split(|b| *b == b'/').peekable();
    let mut trailing_slash = false;
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            b"." => trailing_slash = last,
            b".." => {
                segments.pop();
                trailing_slash = last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(target.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(query);
    Some(out)
}

fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|b| *b == b'/').any(|s| s == b"." || s == b"..")
}

#[cfg(test)]
mod normalize_tests {
    use super::normalize_path;

    fn n(s: &str) -> String {
        normalize_path(s.as_bytes())
            .map_or_else(|| s.to_string(), |v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(n("/public/../admin"), "/admin");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/."), "/a/b/");
        assert_eq!(n("/../../x?y=/../z"), "/x?y=/../z");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/a/..b/c"), "/a/..b/c");
        assert!(normalize_path(b"/plain/path?q=1").is_none());
        assert!(normalize_path(b"*").is_none());
    }
}
