//! What to load: the URL (scheme picks the protocol) and the request bytes.
//!
//! `http://` and `https://` are HTTP/1.1 (or HTTP/2 with `--h2c` / `--h2`, see
//! `Protocol::Http2`); `tcp://` is the raw TCP echo/bulk mode. TLS is a property
//! of the target (`https://`), orthogonal to the HTTP version.

use anyhow::{anyhow, bail, Context};
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (over TCP or TLS).
    Http1,
    /// HTTP/2: prior knowledge over TCP (h2c) or ALPN h2 over TLS.
    Http2,
    /// Raw TCP: write a payload, read the same number of bytes back.
    TcpEcho,
    /// Raw TCP: write continuously and read whatever comes back, for throughput.
    TcpBulk,
}

impl Protocol {
    /// fortio's RunType.
    pub fn run_type(self) -> &'static str {
        match self {
            Protocol::Http1 | Protocol::Http2 => "HTTP",
            Protocol::TcpEcho | Protocol::TcpBulk => "TCP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// `https://`: TLS to the target.
    pub tls: bool,
    /// The host part of the URL without brackets or port (the default TLS SNI).
    pub host: String,
    /// Value of the Host header (port omitted when it is the scheme's default).
    pub authority: String,
    /// Path and query, at least "/".
    pub path: String,
}

/// Parse `http[s]://host[:port][/path]` or `tcp://host:port` and resolve the host.
pub fn parse_target(url: &str) -> anyhow::Result<Target> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("{url}: expected scheme://host[:port][/path]"))?;
    let (protocol, tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" => (Protocol::Http1, false, Some(80)),
        "https" => (Protocol::Http1, true, Some(443)),
        "tcp" => (Protocol::TcpEcho, false, None),
        "h2" | "h2c" => {
            bail!("{url}: use https:// with --h2 (ALPN h2) or http:// with --h2c (prior knowledge)")
        }
        other => bail!("{url}: unknown scheme {other:?} (use http://, https:// or tcp://)"),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        bail!("{url}: missing host");
    }
    let (host, port) =
        split_host_port(authority).with_context(|| format!("{url}: bad host:port"))?;
    let port = match (port, default_port) {
        (Some(p), _) => p,
        (None, Some(p)) => p,
        (None, None) => bail!("{url}: a port is required for {scheme}://"),
    };
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{url}: {host} has no address"))?;
    let authority = if Some(port) == default_port {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    Ok(Target {
        url: url.to_string(),
        protocol,
        addr,
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        authority,
        path,
    })
}

fn split_host_port(authority: &str) -> anyhow::Result<(&str, Option<u16>)> {
    // [v6]:port, [v6], host:port, host
    if let Some(end) = authority.find(']') {
        let host = &authority[..=end];
        return match &authority[end + 1..] {
            "" => Ok((host, None)),
            p => Ok((
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| anyhow!("junk after ]"))?
                        .parse()?,
                ),
            )),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((
            h,
            Some(p.parse().with_context(|| format!("bad port {p:?}"))?),
        )),
        None => Ok((authority, None)),
    }
}

/// What to send in each HTTP/1.1 request.
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    pub method: String,
    /// Extra headers as (name, value); a Host given here replaces the URL's.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Ask the server to close after each response (new connection per request).
    pub close: bool,
}

/// Parse a `-H "Name: value"` argument.
pub fn parse_header(arg: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = arg
        .split_once(':')
        .ok_or_else(|| anyhow!("header {arg:?}: expected \"Name: value\""))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        bail!("header {arg:?}: bad header name");
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        bail!("header {arg:?}: value must not contain CR or LF");
    }
    Ok((name.to_string(), value.to_string()))
}

/// The exact bytes of one request; every request of a run is identical.
pub fn build_request(target: &Target, spec: &RequestSpec) -> Vec<u8> {
    let method = if spec.method.is_empty() {
        "GET"
    } else {
        spec.method.as_str()
    };
    let mut out = Vec::with_capacity(256 + spec.body.len());
    out.extend_from_slice(format!("{method} {} HTTP/1.1\r\n", target.path).as_bytes());
    let has = |name: &str| {
        spec.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    if !has("host") {
        out.extend_from_slice(format!("Host: {}\r\n", target.authority).as_bytes());
    }
    if !has("user-agent") {
        out.extend_from_slice(
            concat!(
                "User-Agent: ringmesh-bench/",
                env!("CARGO_PKG_VERSION"),
                "\r\n"
            )
            .as_bytes(),
        );
    }
    for (n, v) in &spec.headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    let needs_length = !spec.body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if needs_length && !has("content-length") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", spec.body.len()).as_bytes());
    }
    if spec.close && !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&spec.body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let t = parse_target("http://127.0.0.1:8080/a/b?c=d").unwrap();
        assert_eq!(t.protocol, Protocol::Http1);
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/a/b?c=d");
        let t = parse_target("http://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.authority, "127.0.0.1");
        assert_eq!(t.path, "/");
        let t = parse_target("http://127.0.0.1:81?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
        let t = parse_target("http://[::1]:9000/").unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(t.host, "::1");
        assert!(!t.tls);
    }

    #[test]
    fn parses_https_urls() {
        let t = parse_target("https://localhost/x").unwrap();
        assert!(t.tls);
        assert_eq!(t.protocol, Protocol::Http1);
        assert_eq!(t.addr.port(), 443);
        assert_eq!(t.authority, "localhost");
        assert_eq!(t.host, "localhost");
        let t = parse_target("https://127.0.0.1:8443/").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8443");
        assert_eq!(t.host, "127.0.0.1");
    }

    #[test]
    fn rejects_bad_urls_with_a_reason() {
        for bad in [
            "127.0.0.1:80",
            "ftp://x/",
            "http:///path",
            "http://h:notaport/",
            "tcp://127.0.0.1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        let e = parse_target("h2c://127.0.0.1/").unwrap_err().to_string();
        assert!(e.contains("--h2c"), "{e}");
    }

    #[test]
    fn builds_get_and_post() {
        let t = parse_target("http://127.0.0.1:8080/x").unwrap();
        let get = build_request(&t, &RequestSpec::default());
        let text = String::from_utf8(get).unwrap();
        assert!(
            text.starts_with("GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        assert!(!text.contains("Content-Length"));

        let spec = RequestSpec {
            method: "POST".into(),
            headers: vec![
                parse_header("Host: example.com").unwrap(),
                parse_header("X-A:  b ").unwrap(),
            ],
            body: b"hello".to_vec(),
            close: true,
        };
        let text = String::from_utf8(build_request(&t, &spec)).unwrap();
        assert!(text.starts_with("POST /x HTTP/1.1\r\n"));
        assert!(text.contains("Host: example.com\r\n") && !text.contains("127.0.0.1"));
        assert!(text.contains("X-A: b\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nhello"));
        // The request parses as HTTP.
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(text.as_bytes()).unwrap().is_complete());
    }

    #[test]
    fn header_argument_validation() {
        assert!(parse_header("NoColon").is_err());
        assert!(parse_header(": v").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert_eq!(parse_header("a:b").unwrap(), ("a".into(), "b".into()));
    }
}
