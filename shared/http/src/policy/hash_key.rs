//! The consistent-hash key of a request (`loadBalancer.consistentHash`).

use std::net::IpAddr;

use mesh_balance::hash::hash_bytes;
use mesh_balance::HashKey;

/// What the balancer may look at in a request; implemented by the HTTP/1.1
/// head here and by the HTTP/2 path for its request type.
pub trait RequestView {
    /// First value of a header (name lower-case).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The request target, `/path?query`.
    fn path_and_query(&self) -> &[u8];
    fn client_ip(&self) -> IpAddr;
}

/// The key's hash, or None when the request lacks it (then the pick is
/// random, as in Envoy).
pub fn request_hash(key: &HashKey, req: &dyn RequestView) -> Option<u64> {
    match key {
        HashKey::Header(name) => req.header(name).map(hash_bytes),
        HashKey::Cookie { name, .. } => cookie(req, name).map(hash_bytes),
        HashKey::SourceIp => Some(hash_bytes(req.client_ip().to_string().as_bytes())),
        HashKey::QueryParameter(name) => query_param(req.path_and_query(), name).map(hash_bytes),
    }
}

pub(crate) fn cookie<'a>(req: &'a dyn RequestView, name: &str) -> Option<&'a [u8]> {
    let header = req.header("cookie")?;
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|b| *b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| {
            let v = trim(&pair[eq + 1..]);
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v)
        })
    })
}

fn query_param<'a>(target: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let q = target.iter().position(|b| *b == b'?')?;
    target[q + 1..].split(|b| *b == b'&').find_map(|kv| {
        let (k, v) = match kv.iter().position(|b| *b == b'=') {
            Some(i) => (&kv[..i], &kv[i + 1..]),
            None => (kv, &b""[..]),
        };
        (k == name.as_bytes()).then_some(v)
    })
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

impl RequestView for (&crate::codec::RequestHead, IpAddr) {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.headers.get(name).map(|v| &v[..])
    }

    fn path_and_query(&self) -> &[u8] {
        &self.0.path
    }

    fn client_ip(&self) -> IpAddr {
        self.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct View {
        headers: Vec<(&'static str, &'static str)>,
        target: &'static str,
    }

    impl RequestView for View {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn path_and_query(&self) -> &[u8] {
            self.target.as_bytes()
        }
        fn client_ip(&self) -> IpAddr {
            [10, 0, 0, 7].into()
        }
    }

    #[test]
    fn keys_come_from_header_cookie_query_and_source() {
        let v = View {
            headers: vec![
                ("x-user", "alice"),
                ("cookie", "a=1; session=\"s-42\" ; b=2"),
            ],
            target: "/p?x=1&user=bob&y",
        };
        let h = |k: HashKey| request_hash(&k, &v);
        assert_eq!(
            h(HashKey::Header("x-user".into())),
            Some(hash_bytes(b"alice"))
        );
        assert_eq!(h(HashKey::Header("x-none".into())), None);
        let c = |name: &str| HashKey::Cookie {
            name: name.into(),
            path: None,
            ttl: None,
        };
        assert_eq!(h(c("session")), Some(hash_bytes(b"s-42")));
        assert_eq!(h(c("b")), Some(hash_bytes(b"2")));
        assert_eq!(h(c("sess")), None);
        assert_eq!(
            h(HashKey::QueryParameter("user".into())),
            Some(hash_bytes(b"bob"))
        );
        assert_eq!(
            h(HashKey::QueryParameter("y".into())),
            Some(hash_bytes(b""))
        );
        assert_eq!(h(HashKey::QueryParameter("z".into())), None);
        assert_eq!(h(HashKey::SourceIp), Some(hash_bytes(b"10.0.0.7")));
    }
}
