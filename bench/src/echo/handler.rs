//! The echo-basic request handlers: default JSON echo, `/status/NNN`, `/retry/...`,
//! `/health`, `?delay=` and `X-Echo-Set-Header`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::duration::parse_go_duration;
use super::wire::{canonical_header_key, reason_phrase};

/// What the backend is, as reported in every echo body.
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub http_port: String,
    /// When set, every request gets this constant 200 body (benchmark mode).
    pub fixed_response: Option<Vec<u8>>,
    /// Print the "Echoing back request made to" line for every echoed request.
    pub log_requests: bool,
}

/// Failure counters of `/retry/` per uuid, shared by all workers (the Go server keeps one map).
#[derive(Default)]
pub struct RetryState {
    attempts: Mutex<HashMap<String, u64>>,
}

impl RetryState {
    fn next_attempt(&self, uuid: &str) -> u64 {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        // Bound memory: a benchmark hammering /retry/ with fresh uuids must not grow forever.
        if attempts.len() > 100_000 {
            attempts.clear();
        }
        let counter = attempts.entry(uuid.to_string()).or_insert(0);
        *counter += 1;
        *counter
    }
}

/// The outcome of handling one request, computed before its body is read.
pub enum Action {
    /// Write these response bytes (after sleeping `delay` if set).
    Respond {
        delay: Option<Duration>,
        bytes: Vec<u8>,
    },
    /// Append the prebuilt fixed response.
    Fixed,
    /// Sleep then reset the connection (SO_LINGER 0) without answering.
    Reset { delay: Option<Duration> },
}

pub struct RequestView<'a> {
    pub method: &'a str,
    /// RequestURI as sent (path and query).
    pub target: &'a str,
    pub version: u8,
    pub headers: &'a [httparse::Header<'a>],
    pub remote: &'a str,
    pub keep_alive: bool,
    pub is_head: bool,
}

pub fn handle(req: &RequestView<'_>, identity: &Identity, retries: &RetryState) -> Action {
    if identity.fixed_response.is_some() {
        return Action::Fixed;
    }
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.target, ""),
    };
    if path == "/health" {
        return Action::Respond {
            delay: None,
            bytes: simple_response(200, b"OK", req),
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
            let status: u16 = code.parse().unwrap_or(500);
            return Action::Respond {
                delay: None,
                bytes: simple_response(status, b"", req),
            };
        }
    }
    let params = parse_query(query);
    if path.starts_with("/retry/") || path == "/retry" {
        if let Some(action) = retry_action(&params, req, retries, identity.log_requests) {
            return action;
        }
    }
    let delay = match params.get("delay") {
        Some(text) => match parse_go_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                return Action::Respond {
                    delay: None,
                    bytes: simple_response(400, format!("invalid delay: {e}").as_bytes(), req),
                }
            }
        },
        None => None,
    };
    Action::Respond {
        delay,
        bytes: echo_response(req, identity),
    }
}

/// `/retry/?uuid=&succeedAfter=&responseCode=&delayRetry=`: the first `succeedAfter`
/// requests of a uuid fail; `None` means "echo normally".
fn retry_action(
    params: &HashMap<String, String>,
    req: &RequestView<'_>,
    retries: &RetryState,
    log: bool,
) -> Option<Action> {
    let bad = |msg: &str| {
        Some(Action::Respond {
            delay: None,
            bytes: simple_response(400, msg.as_bytes(), req),
        })
    };
    let Some(uuid) = params.get("uuid").filter(|u| !u.is_empty()) else {
        return bad("missing uuid");
    };
    let Some(succeed_after) = params
        .get("succeedAfter")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return bad("missing or invalid succeedAfter");
    };
    let response_code = match params.get("responseCode") {
        Some(v) => match v.parse::<u16>() {
            Ok(code) if (100..1000).contains(&code) => Some(code),
            _ => return bad("invalid responseCode"),
        },
        None => None,
    };
    let delay = match params.get("delayRetry") {
        Some(v) => match parse_go_duration(v) {
            Ok(d) => Some(d),
            Err(_) => return bad("invalid delayRetry"),
        },
        None => None,
    };
    let attempt = retries.next_attempt(uuid);
    if attempt > succeed_after {
        return None;
    }
    if log {
        use std::io::Write;
        // Not the "Echoing back" prefix: mirror assertions must not count failed attempts.
        let outcome = response_code.map_or("reset".to_string(), |c| c.to_string());
        let line = format!(
            "Retry attempt {attempt} of uuid {uuid} failing with {outcome} to client ({})\n",
            req.remote
        );
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
    Some(match response_code {
        Some(code) => Action::Respond {
            delay,
            bytes: simple_response(code, b"", req),
        },
        None => Action::Reset { delay },
    })
}

pub fn parse_query(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // First value wins, like Go's url.Values.Get.
        out.entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Response headers requested with `X-Echo-Set-Header: Name1:val1,Name2:val2`, name case
/// preserved, repeated names comma-joined (echo-basic's writeEchoResponseHeaders).
fn requested_response_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for header in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-echo-set-header"))
    {
        let value = String::from_utf8_lossy(header.value);
        for pair in value.split(',') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once(':').unwrap_or((pair, ""));
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                continue;
            }
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(value);
                }
                None => out.push((name.to_string(), value.to_string())),
            }
        }
    }
    out
}

fn echo_response(req: &RequestView<'_>, identity: &Identity) -> Vec<u8> {
    let body = echo_json(req, identity);
    if identity.log_requests {
        use std::io::Write;
        // One write per line so concurrent workers never interleave partial lines.
        let line = format!(
            "Echoing back request made to {} to client ({})\n",
            req.target, req.remote
        );
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
    let mut out = Vec::with_capacity(body.len() + 256);
    write_head(
        &mut out,
        200,
        body.len(),
        Some("application/json"),
        &requested_response_headers(req.headers),
        req.keep_alive,
    );
    if !req.is_head {
        out.extend_from_slice(&body);
    }
    out
}

/// echo-basic's JSON body, written directly (field order of its Go struct, header map
/// keys sorted like Go's encoder) to keep the echo path cheap for benchmarks.
fn echo_json(req: &RequestView<'_>, identity: &Identity) -> Vec<u8> {
    let mut host: &[u8] = b"";
    let mut headers: Vec<(String, &[u8])> = Vec::with_capacity(req.headers.len());
    for header in req.headers {
        if header.name.eq_ignore_ascii_case("host") {
            // Go moves Host out of the header map into Request.Host.
            host = header.value;
        } else if !header.name.eq_ignore_ascii_case("transfer-encoding") {
            // (Go moves Transfer-Encoding into Request.TransferEncoding as well.)
            headers.push((canonical_header_key(header.name), header.value));
        }
    }
    // Stable: values of one name keep their order.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(256 + 64 * headers.len());
    let string = |out: &mut Vec<u8>, text: &str| {
        let _ = serde_json::to_writer(&mut *out, text);
    };
    out.extend_from_slice(b"{\"path\":");
    string(&mut out, req.target);
    out.extend_from_slice(b",\"host\":");
    string(&mut out, &String::from_utf8_lossy(host));
    out.extend_from_slice(b",\"method\":");
    string(&mut out, req.method);
    out.extend_from_slice(
        format!(",\"proto\":\"HTTP/1.{}\",\"headers\":{{", req.version).as_bytes(),
    );
    let mut previous: Option<&str> = None;
    for (name, value) in &headers {
        if previous == Some(name.as_str()) {
            out.push(b',');
        } else {
            if previous.is_some() {
                out.extend_from_slice(b"],");
            }
            string(&mut out, name);
            out.extend_from_slice(b":[");
        }
        string(&mut out, &String::from_utf8_lossy(value));
        previous = Some(name.as_str());
    }
    if previous.is_some() {
        out.push(b']');
    }
    out.extend_from_slice(b"},\"namespace\":");
    string(&mut out, &identity.namespace);
    out.extend_from_slice(b",\"ingress\":\"\",\"service\":\"\",\"pod\":");
    string(&mut out, &identity.pod);
    out.extend_from_slice(b",\"httpPort\":");
    string(&mut out, &identity.http_port);
    out.push(b'}');
    out
}

fn simple_response(status: u16, body: &[u8], req: &RequestView<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 160);
    let content_type = (!body.is_empty()).then_some("text/plain; charset=utf-8");
    write_head(
        &mut out,
        status,
        body.len(),
        content_type,
        &requested_response_headers(req.headers),
        req.keep_alive,
    );
    if !req.is_head {
        out.extend_from_slice(body);
    }
    out
}

pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_length: usize,
    content_type: Option<&str>,
    extra: &[(String, String)],
    keep_alive: bool,
) {
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    if let Some(ct) = content_type {
        let _ = write!(
            out,
            "Content-Type: {ct}\r\nX-Content-Type-Options: nosniff\r\n"
        );
    }
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    let _ = write!(out, "Content-Length: {content_length}\r\n\r\n");
}

/// Prebuilt response for `--fixed-response N` (keep-alive form).
pub fn fixed_response_bytes(body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body_len + 128);
    write_head(&mut out, 200, body_len, Some("text/plain"), &[], true);
    out.resize(out.len() + body_len, b'x');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_header_parsing_preserves_case_and_joins() {
        let headers = [httparse::Header {
            name: "X-Echo-Set-Header",
            value: b"X-Foo: a, x-bar:b,X-Foo:c",
        }];
        assert_eq!(
            requested_response_headers(&headers),
            vec![
                ("X-Foo".to_string(), "a,c".to_string()),
                ("x-bar".to_string(), "b".to_string())
            ]
        );
        let empty = [httparse::Header {
            name: "X-Echo-Set-Header",
            value: b"",
        }];
        assert!(requested_response_headers(&empty).is_empty());
    }

    #[test]
    fn echo_json_is_valid_and_groups_headers() {
        let headers = [
            httparse::Header {
                name: "Host",
                value: b"h\"x",
            },
            httparse::Header {
                name: "x-b",
                value: b"2",
            },
            httparse::Header {
                name: "X-A",
                value: b"1",
            },
            httparse::Header {
                name: "x-b",
                value: b"3",
            },
        ];
        let req = RequestView {
            method: "GET",
            target: "/p?q=\\",
            version: 1,
            headers: &headers,
            remote: "r",
            keep_alive: true,
            is_head: false,
        };
        let identity = Identity {
            namespace: "ns".into(),
            pod: "pod".into(),
            http_port: "1".into(),
            fixed_response: None,
            log_requests: false,
        };
        let json: serde_json::Value = serde_json::from_slice(&echo_json(&req, &identity)).unwrap();
        assert_eq!(json["host"], "h\"x");
        assert_eq!(json["path"], "/p?q=\\");
        assert_eq!(
            json["headers"],
            serde_json::json!({"X-A": ["1"], "X-B": ["2", "3"]})
        );
        assert_eq!(json["namespace"], "ns");
        assert_eq!(json["pod"], "pod");
        assert_eq!(json["httpPort"], "1");
        assert_eq!(json["proto"], "HTTP/1.1");
    }

    #[test]
    fn query_parsing() {
        let q = parse_query("a=1&b=x%20y&a=2&c");
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "x y");
        assert_eq!(q["c"], "");
    }

    #[test]
    fn retry_counts_per_uuid() {
        let state = RetryState::default();
        assert_eq!(state.next_attempt("u1"), 1);
        assert_eq!(state.next_attempt("u1"), 2);
        assert_eq!(state.next_attempt("u2"), 1);
    }
}
