//! One access log line per request, Envoy's default format:
//!
//! ```text
//! [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS BYTES_RECEIVED BYTES_SENT DURATION
//! UPSTREAM_SERVICE_TIME "X-FORWARDED-FOR" "USER-AGENT" "X-REQUEST-ID" "AUTHORITY" "UPSTREAM_HOST"
//! ```
//!
//! (one line), logged at INFO on the tracing target `access`, so it is on by
//! default and goes away with `RUST_LOG=info,access=off` or the admin
//! `/logging?level=...` endpoint. Whether it is on is asked once per request
//! ([`RequestLog::capture`]); when off nothing is captured or formatted.
//!
//! Response flags are Envoy's: NR no route, UH no healthy upstream, UF
//! upstream connect failure, URX retries exhausted, UC upstream reset, UT
//! upstream timeout, UO overflow (circuit breaker), RL rate limited, FI
//! fault abort, RBAC denied by AuthorizationPolicy, DC downstream closed,
//! DPE downstream protocol error. Byte counts come from the bodies' framing
//! (`content-length`); streamed bodies without one count 0.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::codec::{BodyKind, RequestHead};

/// The tracing target of access log lines.
pub const TARGET: &str = "access";

/// Whether access log lines are wanted now (one cached callsite check).
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// What a request's line needs, captured when it starts (only when enabled)
/// and completed as the request is served.
#[derive(Debug, Clone)]
pub struct RequestLog {
    start_time: SystemTime,
    method: String,
    path: String,
    protocol: &'static str,
    forwarded_for: Option<String>,
    user_agent: Option<String>,
    pub request_id: Option<String>,
    authority: Option<String>,
    bytes_received: u64,
    pub upstream_host: Option<SocketAddr>,
    /// `x-envoy-upstream-service-time`, milliseconds.
    pub upstream_service_ms: Option<u128>,
    /// Set where the cause is known better than the answer's text tells.
    pub flags: Option<&'static str>,
}

fn text(v: Option<&bytes::Bytes>) -> Option<String> {
    v.map(|v| String::from_utf8_lossy(v).into_owned())
}

impl RequestLog {
    /// None when access logging is off. `protocol`: "HTTP/1.1", "HTTP/2"...
    pub fn capture(req: &RequestHead, protocol: &'static str) -> Option<Self> {
        enabled().then(|| Self::from_request(req, protocol))
    }

    fn from_request(req: &RequestHead, protocol: &'static str) -> Self {
        Self {
            start_time: SystemTime::now(),
            method: String::from_utf8_lossy(&req.method).into_owned(),
            path: String::from_utf8_lossy(&req.path).into_owned(),
            protocol,
            forwarded_for: text(req.headers.get("x-forwarded-for")),
            user_agent: text(req.headers.get("user-agent")),
            request_id: text(req.headers.get("x-request-id")),
            authority: text(req.host_header()),
            bytes_received: match req.body {
                BodyKind::Length(n) => n,
                _ => 0,
            },
            upstream_host: None,
            upstream_service_ms: None,
            flags: None,
        }
    }

    /// A request that could not be parsed (logged with `-` fields).
    pub fn unparsed() -> Option<Self> {
        if !enabled() {
            return None;
        }
        Some(Self {
            start_time: SystemTime::now(),
            method: String::new(),
            path: String::new(),
            protocol: "HTTP/1.1",
            forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            bytes_received: 0,
            upstream_host: None,
            upstream_service_ms: None,
            flags: Some("DPE"),
        })
    }

    /// The finished request's line: `flags` unless the log has its own.
    pub fn emit(&self, status: u16, flags: &str, bytes_sent: u64, start: Instant) {
        let line = self.format(status, flags, bytes_sent, start.elapsed().as_millis());
        tracing::info!(target: "access", "{line}");
    }

    fn format(&self, status: u16, flags: &str, bytes_sent: u64, duration_ms: u128) -> String {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let or_dash = |v: &str| if v.is_empty() { "-" } else { v }.to_string();
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "[{}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\"",
            rfc3339_millis(self.start_time),
            or_dash(&self.method),
            or_dash(&self.path),
            self.protocol,
            status,
            self.flags.unwrap_or(flags),
            self.bytes_received,
            bytes_sent,
            duration_ms,
            self.upstream_service_ms
                .map_or_else(|| "-".to_string(), |ms| ms.to_string()),
            dash(&self.forwarded_for),
            dash(&self.user_agent),
            dash(&self.request_id),
            dash(&self.authority),
            self.upstream_host
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
        );
        line
    }
}

/// `x-envoy-upstream-service-time` as the engine wrote it, else 0.
pub fn service_time_of(headers: &crate::codec::Headers) -> u128 {
    headers
        .get_str("x-envoy-upstream-service-time")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Emits `log` (if any) for an answer the proxy wrote itself.
pub fn local_answer(log: Option<RequestLog>, status: u16, body: &str, start: Instant) {
    if let Some(log) = log {
        log.emit(
            status,
            flags_for_local(status, body),
            body.len() as u64,
            start,
        );
    }
}

/// The flag of an answer the engine generated, from its (constant) text.
pub fn flags_for_local(status: u16, body: &str) -> &'static str {
    match (status, body) {
        (_, "no route\n") => "NR",
        (_, "no healthy upstream\n") => "UH",
        (_, "upstream request timeout\n") => "UT",
        (502, "upstream connect error or reset before headers\n") => "UF",
        (503, "upstream connect error or reset before headers\n") => "URX",
        (_, crate::policy::OVERFLOW_BODY) => "UO",
        (_, crate::filters::fault::ABORT_BODY) => "FI",
        (_, crate::policy::authz::DENIED_BODY) => "RBAC",
        (429, _) => "RL",
        _ => "-",
    }
}

/// `2026-12-08T01:02:03.456Z` (Envoy's START_TIME).
fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn envoy_default_format() {
        let mut buf = bytes::BytesMut::from(
            &b"POST /api?x=1 HTTP/1.1\r\nHost: echo.apps\r\nuser-agent: curl/8\r\nx-forwarded-for: 10.0.0.1\r\ncontent-length: 5\r\n\r\n"[..],
        );
        let req = crate::codec::request::parse_request(&mut buf, 4096)
            .unwrap()
            .unwrap();
        let mut log = RequestLog {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_155_723_456),
            ..RequestLog::from_request(&req, "HTTP/1.1")
        };
        log.upstream_host = Some("10.0.1.2:8080".parse().unwrap());
        log.upstream_service_ms = Some(3);
        log.request_id = Some("abc".into());
        assert_eq!(
            log.format(200, "-", 12, 7),
            "[2025-12-08T01:02:03.456Z] \"POST /api?x=1 HTTP/1.1\" 200 - 5 12 7 3 \"10.0.0.1\" \"curl/8\" \"abc\" \"echo.apps\" \"10.0.1.2:8080\""
        );
        assert_eq!(flags_for_local(404, "no route\n"), "NR");
        assert_eq!(
            flags_for_local(502, "upstream connect error or reset before headers\n"),
            "UF"
        );
        assert_eq!(flags_for_local(403, "RBAC: access denied"), "RBAC");
    }
}
