//! RequestRedirect: the Location the gateway answers with.

use mesh_registry::{PathMatch, Redirect};

use super::rewrite::rewrite_path;

pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Location = scheme://host[:port]path. Port: the configured one; else the
/// new scheme's well-known port when the scheme changes; else the listener
/// port. A port equal to the scheme's default is omitted.
pub fn location(
    r: &Redirect,
    request_scheme: &str,
    request_host: &str,
    listener_port: u16,
    target: &[u8],
    matched: &PathMatch,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(request_scheme);
    let host = r.hostname.as_deref().unwrap_or(request_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(s)) => default_port(s),
        (None, None) => Some(listener_port),
    };
    let path = match &r.path {
        Some(m) => rewrite_path(target, m, matched),
        None => target.to_vec(),
    };
    let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 10);
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(host);
    if let Some(p) = port {
        if Some(p) != default_port(scheme) {
            out.push(':');
            out.push_str(&p.to_string());
        }
    }
    out.push_str(&String::from_utf8_lossy(&path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(scheme: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme: scheme.map(Into::into),
            hostname: Some("example.org".into()),
            path: None,
            port,
            status: 302,
        }
    }

    #[test]
    fn port_derivation_follows_the_conformance_vectors() {
        let m = PathMatch::Prefix("/".into());
        let loc = |s, p, listener| location(&redirect(s, p), "http", "gw", listener, b"/x?q=1", &m);
        assert_eq!(loc(None, None, 80), "http://example.org/x?q=1");
        assert_eq!(loc(None, Some(80), 80), "http://example.org/x?q=1");
        assert_eq!(loc(None, Some(8080), 80), "http://example.org:8080/x?q=1");
        assert_eq!(loc(Some("https"), None, 80), "https://example.org/x?q=1");
        assert_eq!(
            loc(Some("https"), Some(443), 80),
            "https://example.org/x?q=1"
        );
        assert_eq!(
            loc(Some("https"), Some(8443), 80),
            "https://example.org:8443/x?q=1"
        );
        assert_eq!(loc(None, None, 8080), "http://example.org:8080/x?q=1");
        assert_eq!(loc(Some("https"), None, 8080), "https://example.org/x?q=1");
        assert_eq!(loc(Some("http"), None, 443), "http://example.org/x?q=1");
    }

    #[test]
    fn hostname_defaults_to_request_host() {
        let r = Redirect {
            scheme: None,
            hostname: None,
            path: Some(mesh_registry::PathModifier::ReplacePrefixMatch(
                "/replacement-prefix".into(),
            )),
            port: None,
            status: 302,
        };
        let m = PathMatch::Prefix("/original-prefix".into());
        assert_eq!(
            location(&r, "http", "gw.local", 80, b"/original-prefix/lemon", &m),
            "http://gw.local/replacement-prefix/lemon"
        );
    }
}
