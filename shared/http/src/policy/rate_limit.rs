//! Local rate limits (LocalRateLimitPolicy on the route): 429 with
//! `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset`.

use std::time::Instant;

use bytes::Bytes;
use mesh_limits::{Decision, LimitKey};
use mesh_registry::RouteRule;

use super::RequestView;
use crate::codec::Headers;

/// None: the request may go on (or the route has no limit). Some: it is
/// limited; answer with [`rate_limited_response`] / [`rate_limit_headers`].
pub fn rate_limit(rule: &RouteRule, req: &dyn RequestView, now: Instant) -> Option<Decision> {
    let limiter = rule.rate_limit.as_ref()?;
    let ip;
    let key: &[u8] = match &limiter.config.key {
        LimitKey::None => b"",
        LimitKey::Header(name) => req.header(name).unwrap_or(b""),
        LimitKey::ClientAddress => {
            ip = req.client_ip().to_string();
            ip.as_bytes()
        }
    };
    let d = limiter.check(key, now);
    (!d.allowed).then_some(d)
}

pub fn rate_limit_headers(d: &Decision) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", d.limit.to_string()),
        ("x-ratelimit-remaining", d.remaining.to_string()),
        ("x-ratelimit-reset", d.reset_seconds.to_string()),
    ]
}

/// 429 for the HTTP/1.1 path.
pub fn rate_limited_response(d: &Decision) -> (u16, Headers, &'static str) {
    let mut headers = Headers::default();
    for (name, value) in rate_limit_headers(d) {
        headers.add(Bytes::from_static(name.as_bytes()), Bytes::from(value));
    }
    (429, headers, "local rate limited\n")
}
