//! The HTTPRoute CORS filter: preflights are answered by the gateway; on
//! other requests from an allowed origin the response gets the allow headers.

use bytes::Bytes;
use mesh_registry::CorsPolicy;

use crate::codec::{Header, Headers, RequestHead};

/// `*`, an exact origin, or an origin with `*` in the host (greedy to the
/// left: `https://*.bar.com` matches `https://a.b.bar.com`).
pub fn origin_allowed(policy: &CorsPolicy, origin: &str) -> bool {
    policy.allow_origins.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        match pattern.split_once('*') {
            None => pattern.eq_ignore_ascii_case(origin),
            Some((prefix, suffix)) => {
                // Bytes, not str slices: a non-ASCII Origin must not split a char.
                let (o, p, s) = (origin.as_bytes(), prefix.as_bytes(), suffix.as_bytes());
                o.len() > p.len() + s.len()
                    && o[..p.len()].eq_ignore_ascii_case(p)
                    && o[o.len() - s.len()..].eq_ignore_ascii_case(s)
                    && !o[p.len()..o.len() - s.len()]
                        .iter()
                        .any(|b| *b == b'/' || *b == b':')
            }
        }
    })
}

/// A CORS preflight: OPTIONS carrying Origin and Access-Control-Request-Method.
pub fn is_preflight(req: &RequestHead) -> bool {
    req.method_is("OPTIONS")
        && req.headers.contains("origin")
        && req.headers.contains("access-control-request-method")
}

fn push(out: &mut Headers, name: &'static str, value: impl Into<Bytes>) {
    out.push(Header::new(
        Bytes::from_static(name.as_bytes()),
        value.into(),
    ));
}

fn list(values: &[String]) -> String {
    values.join(", ")
}

/// Headers of the gateway's answer to a preflight. Empty when the origin is
/// not allowed (the browser then refuses the request).
pub fn preflight_headers(policy: &CorsPolicy, req: &RequestHead) -> Headers {
    let mut out = Headers::default();
    let Some(origin) = req.headers.get_str("origin") else {
        return out;
    };
    if !origin_allowed(policy, origin) {
        return out;
    }
    // Echoing the concrete origin is always correct, and required with credentials.
    push(
        &mut out,
        "access-control-allow-origin",
        Bytes::copy_from_slice(origin.as_bytes()),
    );
    if policy.allow_credentials {
        push(
            &mut out,
            "access-control-allow-credentials",
            Bytes::from_static(b"true"),
        );
    }
    let requested_method = req.headers.get("access-control-request-method").cloned();
    if policy.allow_methods.iter().any(|m| m == "*") {
        if let Some(m) = requested_method {
            push(&mut out, "access-control-allow-methods", m);
        }
    } else if !policy.allow_methods.is_empty() {
        push(
            &mut out,
            "access-control-allow-methods",
            list(&policy.allow_methods),
        );
    }
    if policy.allow_headers.iter().any(|h| h == "*") {
        if let Some(h) = req.headers.joined("access-control-request-headers") {
            push(&mut out, "access-control-allow-headers", h);
        }
    } else if !policy.allow_headers.is_empty() {
        push(
            &mut out,
            "access-control-allow-headers",
            list(&policy.allow_headers),
        );
    }
    if !policy.expose_headers.is_empty() {
        push(
            &mut out,
            "access-control-expose-headers",
            list(&policy.expose_headers),
        );
    }
    if let Some(age) = policy.max_age_seconds {
        push(&mut out, "access-control-max-age", age.to_string());
    }
    out
}

/// Headers added to the upstream's response for a request from an allowed origin.
pub fn response_headers(policy: &CorsPolicy, req: &RequestHead, out: &mut Headers) {
    let Some(origin) = req.headers.get_str("origin") else {
        return;
    };
    if !origin_allowed(policy, origin) {
        return;
    }
    out.remove("access-control-allow-origin");
    push(
        out,
        "access-control-allow-origin",
        Bytes::copy_from_slice(origin.as_bytes()),
    );
    if policy.allow_credentials {
        out.remove("access-control-allow-credentials");
        push(
            out,
            "access-control-allow-credentials",
            Bytes::from_static(b"true"),
        );
    }
    if !policy.expose_headers.is_empty() {
        push(
            out,
            "access-control-expose-headers",
            list(&policy.expose_headers),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn policy() -> CorsPolicy {
        CorsPolicy {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_credentials: true,
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into(), "x-header-2".into()],
            expose_headers: vec!["x-header-3".into(), "x-header-4".into()],
            max_age_seconds: Some(3600),
        }
    }

    fn req(s: &str) -> RequestHead {
        let mut b = BytesMut::from(s);
        crate::codec::request::parse_request(&mut b, 65536)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn origin_patterns() {
        let p = policy();
        assert!(origin_allowed(&p, "https://www.foo.com"));
        assert!(origin_allowed(&p, "https://www.bar.com"));
        assert!(origin_allowed(&p, "https://xpto.www.bar.com"));
        assert!(!origin_allowed(&p, "https://bar.com"));
        assert!(!origin_allowed(&p, "https://foobar.com"));
        assert!(!origin_allowed(&p, "http://www.bar.com"));
        assert!(
            !origin_allowed(&p, "httpsé://x.bar.com"),
            "non-ASCII must not panic"
        );
        assert!(!origin_allowed(&p, "é"));
    }

    #[test]
    fn preflight_answer() {
        let r = req("OPTIONS /cors-1 HTTP/1.1\r\nHost: a\r\nOrigin: https://www.bar.com\r\nAccess-Control-Request-Method: GET\r\n\r\n");
        assert!(is_preflight(&r));
        let h = preflight_headers(&policy(), &r);
        assert_eq!(
            h.get_str("access-control-allow-origin"),
            Some("https://www.bar.com")
        );
        assert_eq!(
            h.get_str("access-control-allow-methods"),
            Some("GET, OPTIONS")
        );
        assert_eq!(
            h.get_str("access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(h.get_str("access-control-max-age"), Some("3600"));
        assert_eq!(h.get_str("access-control-allow-credentials"), Some("true"));

        let r = req("OPTIONS /cors-1 HTTP/1.1\r\nHost: a\r\nOrigin: https://foobar.com\r\nAccess-Control-Request-Method: GET\r\n\r\n");
        assert!(preflight_headers(&policy(), &r).is_empty());
    }

    #[test]
    fn wildcards_echo_the_request() {
        let p = CorsPolicy {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            allow_credentials: true,
            ..Default::default()
        };
        let r = req("OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://other.foo.com\r\nAccess-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: x-header-1, x-header-2\r\n\r\n");
        let h = preflight_headers(&p, &r);
        assert_eq!(
            h.get_str("access-control-allow-origin"),
            Some("https://other.foo.com")
        );
        assert_eq!(h.get_str("access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            h.get_str("access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
    }
}
