//! HTTP/2 ↔ the engine's HTTP/1-shaped heads: a client's h2 request becomes a
//! [`RequestHead`] (so routing, filters and the upstream writer are the ones
//! HTTP/1.1 uses), and a response's [`Headers`] become an h2 header map
//! without the connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2).

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::codec::wire::{connection_listed, is_hop_by_hop, is_listed};
use crate::codec::{parse_content_length, BodyKind, Header, Headers, RequestHead};

/// A request head from an h2 request's pseudo-headers and fields.
/// `end_stream`: the HEADERS frame ended the stream (no body).
pub fn request_head(
    parts: &http::request::Parts,
    end_stream: bool,
) -> Result<RequestHead, &'static str> {
    if parts.method == http::Method::CONNECT {
        return Err("CONNECT is not supported");
    }
    let path = match parts.uri.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => Bytes::copy_from_slice(pq.as_str().as_bytes()),
        _ if parts.method == http::Method::OPTIONS => Bytes::from_static(b"*"),
        _ => return Err("missing :path"),
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| Bytes::copy_from_slice(a.as_str().as_bytes()));
    let mut headers = Headers::with_capacity(parts.headers.len() + 4);
    let mut content_length = None;
    let mut cookie: Option<BytesMut> = None;
    for (name, value) in &parts.headers {
        if *name == http::header::CONTENT_LENGTH {
            content_length = Some(
                parse_content_length(value.as_bytes(), content_length)
                    .map_err(|_| "invalid content-length")?,
            );
        }
        if *name == http::header::COOKIE {
            // h2 may split cookies into many fields; HTTP/1.1 wants one line
            // joined with "; " (RFC 9113 §8.2.3).
            let c = cookie.get_or_insert_with(BytesMut::new);
            if !c.is_empty() {
                c.extend_from_slice(b"; ");
            }
            c.extend_from_slice(value.as_bytes());
            continue;
        }
        // :authority wins over a Host field (RFC 9113 §8.3.1).
        if authority.is_some() && *name == http::header::HOST {
            continue;
        }
        headers.push(Header {
            name: Bytes::copy_from_slice(name.as_str().as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        });
    }
    if let Some(c) = cookie {
        headers.push(Header::new(Bytes::from_static(b"cookie"), c.freeze()));
    }
    if authority.is_none() && !headers.contains("host") {
        return Err("missing :authority");
    }
    let body = match content_length {
        _ if end_stream => BodyKind::None,
        Some(0) => BodyKind::None,
        Some(n) => BodyKind::Length(n),
        None => BodyKind::Chunked,
    };
    Ok(RequestHead {
        method: Bytes::copy_from_slice(parts.method.as_str().as_bytes()),
        path,
        authority,
        minor_version: 1,
        headers,
        body,
        keep_alive: true,
        expect_continue: false,
        upgrade: None,
    })
}

/// Response (or trailer) fields for h2: hop-by-hop and Connection-listed
/// fields dropped, names lower-cased; a field h2 cannot carry is skipped.
/// `content_length`: the body's length when known (kept for clients that
/// show progress).
pub fn header_map(headers: &Headers, content_length: Option<u64>) -> HeaderMap {
    let listed = connection_listed(headers);
    let mut map = HeaderMap::with_capacity(headers.len() + 1);
    for h in headers.iter() {
        if is_hop_by_hop(&h.name) || (!listed.is_empty() && is_listed(&listed, &h.name)) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&h.name),
            HeaderValue::from_bytes(&h.value),
        ) {
            map.append(name, value);
        }
    }
    if let Some(n) = content_length {
        map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    map
}

/// An h2 header map as the engine's header list (for response filters and
/// CORS, which work on [`Headers`]).
pub fn headers_from_map(map: &HeaderMap) -> Headers {
    let mut out = Headers::with_capacity(map.len());
    for (name, value) in map {
        out.push(Header {
            name: Bytes::copy_from_slice(name.as_str().as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn pseudo_headers_become_a_request_head() {
        let p = parts(
            http::Request::post("https://example.com:8443/a/b?x=1")
                .header("content-length", "5")
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .header("host", "ignored.example")
                .body(())
                .unwrap(),
        );
        let head = request_head(&p, false).unwrap();
        assert_eq!(&head.method[..], b"POST");
        assert_eq!(&head.path[..], b"/a/b?x=1");
        assert_eq!(head.host_header().unwrap().as_ref(), b"example.com:8443");
        assert_eq!(head.body, BodyKind::Length(5));
        assert_eq!(head.headers.get("cookie").unwrap().as_ref(), b"a=1; b=2");
        assert!(!head.headers.contains("host"));
        let head = request_head(&p, true).unwrap();
        assert_eq!(head.body, BodyKind::None);
    }

    #[test]
    fn unknown_length_streams_chunked_and_connect_is_refused() {
        let p = parts(http::Request::put("http://h/x").body(()).unwrap());
        assert_eq!(request_head(&p, false).unwrap().body, BodyKind::Chunked);
        let c = parts(http::Request::connect("h:443").body(()).unwrap());
        assert!(request_head(&c, false).is_err());
    }

    #[test]
    fn connection_specific_fields_are_dropped() {
        let mut h = Headers::default();
        h.add("Connection", "close, X-Secret");
        h.add("X-Secret", "1");
        h.add("Transfer-Encoding", "chunked");
        h.add("Keep-Alive", "5");
        h.add("X-Keep", "yes");
        h.add("bad name", "x");
        let map = header_map(&h, Some(12));
        assert_eq!(map.len(), 2, "{map:?}");
        assert_eq!(map["x-keep"], "yes");
        assert_eq!(map["content-length"], "12");
    }
}
