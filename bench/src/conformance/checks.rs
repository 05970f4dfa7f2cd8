//! Response checks with the official harness semantics (`harness_semantics` in
//! _environment.yaml): status lists with 408/504 interchangeable, upstream request checks
//! against the echo JSON, response headers and redirect Location comparison.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::client::HttpResponse;
use super::vectors::{Expect, Redirect};

/// What the probe actually sent (placeholders already substituted).
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: String,
    pub path: String,
    /// The Host the case set explicitly (`request.host`), if any.
    pub explicit_host: Option<String>,
    /// Headers the case set (not the always-sent X-Echo-Set-Header).
    pub headers: Vec<(String, String)>,
    pub scheme: String,
}

/// The echo backend's JSON body (echo-basic's RequestAssertions).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EchoBody {
    pub path: String,
    pub host: String,
    pub method: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub namespace: String,
    pub pod: String,
}

impl EchoBody {
    /// Empty (all fields "") when the body is not echo JSON: the response did not come
    /// from an echo backend.
    pub fn parse(body: &[u8]) -> EchoBody {
        serde_json::from_slice(body).unwrap_or_default()
    }

    pub fn header_joined(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, values)| values.join(","))
    }
}

pub fn is_timeout_status(status: u16) -> bool {
    status == 408 || status == 504
}

pub fn status_matches(expected: &[u16], actual: u16) -> bool {
    expected.contains(&actual)
        || (is_timeout_status(actual) && expected.iter().any(|s| is_timeout_status(*s)))
}

/// Checks one HTTP response against a case's expectations.
pub fn check_http(expect: &Expect, sent: &Sent, response: &HttpResponse) -> Result<(), String> {
    if !status_matches(&expect.status, response.status) {
        let echo = EchoBody::parse(&response.body);
        let from = if echo.pod.is_empty() {
            String::new()
        } else {
            format!(" (from {} path {})", echo.pod, echo.path)
        };
        return Err(format!(
            "expected status {:?}, got {}{from}",
            expect.status, response.status
        ));
    }
    if response.status == 200 || response.status == 204 {
        check_upstream(expect, sent, response)?;
        check_response_headers(expect, response)?;
    } else if (300..400).contains(&response.status) {
        if let Some(redirect) = &expect.redirect {
            let location = response
                .header_joined("location")
                .ok_or_else(|| format!("{} without a Location header", response.status))?;
            check_redirect(redirect, sent, &location)?;
        }
    }
    Ok(())
}

fn check_upstream(expect: &Expect, sent: &Sent, response: &HttpResponse) -> Result<(), String> {
    let echo = EchoBody::parse(&response.body);
    if expect.answered_by_gateway {
        if !echo.namespace.is_empty() || !echo.pod.is_empty() {
            return Err(format!(
                "expected the gateway to answer, but echo backend {} did (path {})",
                echo.pod, echo.path
            ));
        }
        return Ok(());
    }
    let (method, host, path, headers, absent) = match &expect.upstream {
        Some(up) => (
            up.method.clone().unwrap_or_else(|| "GET".to_string()),
            up.host.clone().unwrap_or_default(),
            up.path.clone().unwrap_or_default(),
            up.headers.clone(),
            up.absent_headers.clone(),
        ),
        None => (
            sent.method.clone(),
            sent.explicit_host.clone().unwrap_or_default(),
            sent.path.clone(),
            sent.headers.clone(),
            Vec::new(),
        ),
    };
    let expected_namespace = expect.backend_namespace.clone().unwrap_or_default();
    if echo.namespace != expected_namespace {
        return Err(if echo.namespace.is_empty() {
            format!(
                "expected a response from an echo backend in {expected_namespace:?}, got a non-echo {} body {:?}",
                response.status,
                truncate(&String::from_utf8_lossy(&response.body), 120)
            )
        } else {
            format!(
                "expected backend namespace {expected_namespace:?}, got {:?}",
                echo.namespace
            )
        });
    }
    if let Some(prefix) = &expect.backend {
        if !echo.pod.starts_with(prefix.as_str()) {
            return Err(format!("expected backend {prefix}, got pod {}", echo.pod));
        }
    }
    if !host.is_empty() && echo.host != host {
        return Err(format!(
            "expected upstream host {host:?}, got {:?}",
            echo.host
        ));
    }
    if echo.path != path {
        return Err(format!(
            "expected upstream path {path:?}, got {:?}",
            echo.path
        ));
    }
    if echo.method != method {
        return Err(format!(
            "expected upstream method {method}, got {}",
            echo.method
        ));
    }
    for (name, expected_value) in &headers {
        match echo.header_joined(name) {
            Some(actual) if actual == *expected_value => {}
            Some(actual) => {
                return Err(format!(
                    "expected upstream header {name}: {expected_value:?}, got {actual:?}"
                ))
            }
            None => {
                return Err(format!(
                    "expected upstream header {name}: {expected_value:?}, header missing"
                ))
            }
        }
    }
    for name in &absent {
        if let Some(actual) = echo.header_joined(name) {
            return Err(format!(
                "expected upstream header {name} to be absent, got {actual:?}"
            ));
        }
    }
    Ok(())
}

fn without_spaces(text: &str) -> String {
    text.chars().filter(|c| *c != ' ').collect()
}

fn check_response_headers(expect: &Expect, response: &HttpResponse) -> Result<(), String> {
    let normalise = |text: &str| {
        if expect.ignore_whitespace {
            without_spaces(text)
        } else {
            text.to_string()
        }
    };
    for (name, expected) in &expect.response_headers {
        match response.header_joined(name) {
            Some(actual) if normalise(&actual) == normalise(expected) => {}
            Some(actual) => {
                return Err(format!(
                    "expected response header {name}: {expected:?}, got {actual:?}"
                ))
            }
            None => {
                return Err(format!(
                    "expected response header {name}: {expected:?}, header missing"
                ))
            }
        }
    }
    for (name, alternatives) in &expect.response_header_alternatives {
        let listed: Vec<&str> = alternatives.iter().map(|a| a.0.as_str()).collect();
        match response.header_joined(name) {
            Some(actual)
                if listed
                    .iter()
                    .any(|alt| normalise(alt) == normalise(&actual)) => {}
            Some(actual) => {
                return Err(format!(
                    "expected response header {name} to be one of {listed:?}, got {actual:?}"
                ))
            }
            None => {
                return Err(format!(
                    "expected response header {name} (one of {listed:?}), header missing"
                ))
            }
        }
    }
    for name in &expect.response_absent_headers {
        if let Some(actual) = response.header_joined(name) {
            return Err(format!(
                "expected response header {name} to be absent, got {actual:?}"
            ));
        }
    }
    Ok(())
}

/// The parts of a Location URL the harness compares (Go's url.URL Scheme/Hostname/Port/Path).
#[derive(Debug, PartialEq, Eq, Default)]
pub struct LocationParts {
    pub scheme: String,
    pub host: String,
    pub port: String,
    pub path: String,
}

pub fn parse_location(location: &str) -> LocationParts {
    let mut parts = LocationParts::default();
    let mut rest = location.trim();
    if let Some((scheme, after)) = rest.split_once("://") {
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            parts.scheme = scheme.to_ascii_lowercase();
            rest = after;
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            rest = &rest[authority_end..];
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            if let Some(stripped) = authority.strip_prefix('[') {
                // [v6]:port
                let (host, after) = stripped.split_once(']').unwrap_or((stripped, ""));
                parts.host = host.to_string();
                parts.port = after.strip_prefix(':').unwrap_or("").to_string();
            } else if let Some((host, port)) = authority.rsplit_once(':') {
                parts.host = host.to_string();
                parts.port = port.to_string();
            } else {
                parts.host = authority.to_string();
            }
        }
    }
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    parts.path = rest[..path_end].to_string();
    parts
}

fn default_port(scheme: &str) -> &'static str {
    match scheme {
        "https" => "443",
        _ => "80",
    }
}

pub fn check_redirect(expected: &Redirect, sent: &Sent, location: &str) -> Result<(), String> {
    let actual = parse_location(location);
    let scheme = expected
        .scheme
        .clone()
        .unwrap_or_else(|| sent.scheme.clone());
    if actual.scheme != scheme {
        return Err(format!(
            "expected redirect scheme {scheme:?}, got {:?} (Location {location:?})",
            actual.scheme
        ));
    }
    if let Some(host) = &expected.host {
        if !actual.host.eq_ignore_ascii_case(host) {
            return Err(format!(
                "expected redirect host {host:?}, got {:?} (Location {location:?})",
                actual.host
            ));
        }
    }
    let port_ok = match &expected.port {
        Some(port) => {
            actual.port == *port || (actual.port.is_empty() && port == default_port(&scheme))
        }
        None => actual.port.is_empty() || actual.port == default_port(&scheme),
    };
    if !port_ok {
        return Err(format!(
            "expected redirect port {:?}, got {:?} (Location {location:?})",
            expected.port.clone().unwrap_or_default(),
            actual.port
        ));
    }
    let request_path = sent.path.split('?').next().unwrap_or("").to_string();
    let path = expected.path.clone().unwrap_or(request_path);
    if actual.path != path {
        return Err(format!(
            "expected redirect path {path:?}, got {:?} (Location {location:?})",
            actual.path
        ));
    }
    Ok(())
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Backend identity for distribution checks: the pod name without its last two
/// '-'-separated segments (ReplicaSet hash and pod suffix).
pub fn backend_identity(pod: &str) -> String {
    let mut parts: Vec<&str> = pod.split('-').collect();
    if parts.len() > 2 {
        parts.truncate(parts.len() - 2);
    }
    parts.join("-")
}

/// Compares observed per-backend counts with expected fractions.
pub fn check_distribution(
    counts: &BTreeMap<String, usize>,
    expected: &BTreeMap<String, f64>,
    tolerance: f64,
    backends_receiving_traffic: Option<usize>,
) -> Result<(), String> {
    let total: usize = counts.values().sum();
    if total == 0 {
        return Err("no successful responses".into());
    }
    let mut problems = Vec::new();
    for (backend, fraction) in expected {
        let observed = *counts.get(backend).unwrap_or(&0) as f64 / total as f64;
        if *fraction == 0.0 && observed > 0.0 {
            problems.push(format!("{backend} got {observed:.3} but has weight 0"));
        } else if (observed - fraction).abs() > tolerance {
            problems.push(format!(
                "{backend} got {observed:.3}, expected {fraction:.3}±{tolerance}"
            ));
        }
    }
    for backend in counts.keys() {
        if !expected.contains_key(backend) {
            problems.push(format!("unexpected backend {backend} received traffic"));
        }
    }
    if let Some(want) = backends_receiving_traffic {
        let got = counts.values().filter(|c| **c > 0).count();
        if got != want {
            problems.push(format!("{got} backends received traffic, expected {want}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} (counts {counts:?})", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::vectors::Upstream;

    fn sent(path: &str) -> Sent {
        Sent {
            method: "GET".into(),
            path: path.into(),
            explicit_host: None,
            headers: vec![],
            scheme: "http".into(),
        }
    }

    fn echo_response(
        status: u16,
        path: &str,
        pod: &str,
        headers: &[(&str, &[&str])],
    ) -> HttpResponse {
        let headers: BTreeMap<String, Vec<String>> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        let body = serde_json::json!({
            "path": path, "host": "127.0.0.1", "method": "GET", "headers": headers,
            "namespace": "gateway-conformance-infra", "pod": pod,
        });
        HttpResponse {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap(),
        }
    }

    #[test]
    fn timeout_codes_are_interchangeable() {
        assert!(status_matches(&[504], 408));
        assert!(status_matches(&[408, 504], 504));
        assert!(!status_matches(&[500], 504));
        assert!(!status_matches(&[200], 408));
        assert!(status_matches(&[500, 503], 503));
    }

    #[test]
    fn default_upstream_checks_path_and_backend() {
        let expect = Expect {
            status: vec![200],
            backend: Some("infra-backend-v1".into()),
            backend_namespace: Some("gateway-conformance-infra".into()),
            ..Default::default()
        };
        let ok = echo_response(200, "/a?b=c", "infra-backend-v1-abc-xyz", &[]);
        assert!(check_http(&expect, &sent("/a?b=c"), &ok).is_ok());
        let wrong_backend = echo_response(200, "/a?b=c", "infra-backend-v2-abc-xyz", &[]);
        assert!(check_http(&expect, &sent("/a?b=c"), &wrong_backend)
            .unwrap_err()
            .contains("expected backend"));
        let wrong_path = echo_response(200, "/a", "infra-backend-v1-abc-xyz", &[]);
        assert!(check_http(&expect, &sent("/a?b=c"), &wrong_path).is_err());
        let not_echo = HttpResponse {
            status: 200,
            headers: vec![],
            body: b"hello".to_vec(),
        };
        assert!(check_http(&expect, &sent("/a?b=c"), &not_echo).is_err());
    }

    #[test]
    fn upstream_headers_are_joined_and_case_insensitive() {
        let expect = Expect {
            status: vec![200],
            backend_namespace: Some("gateway-conformance-infra".into()),
            upstream: Some(Upstream {
                path: Some("/p".into()),
                headers: vec![("x-header-add-append".into(), "a,b".into())],
                absent_headers: vec!["X-Header-Remove".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let good = echo_response(
            200,
            "/p",
            "pod-a-b",
            &[("X-Header-Add-Append", &["a", "b"])],
        );
        assert!(check_http(&expect, &sent("/p"), &good).is_ok());
        let present = echo_response(
            200,
            "/p",
            "pod-a-b",
            &[
                ("X-Header-Add-Append", &["a", "b"]),
                ("X-Header-Remove", &["v"]),
            ],
        );
        assert!(check_http(&expect, &sent("/p"), &present)
            .unwrap_err()
            .contains("absent"));
    }

    #[test]
    fn gateway_answered_responses_must_not_come_from_echo() {
        let expect = Expect {
            status: vec![200, 204],
            answered_by_gateway: true,
            response_header_alternatives: [(
                "access-control-allow-methods".to_string(),
                vec![
                    crate::conformance::vectors::StringValue("GET, OPTIONS".into()),
                    crate::conformance::vectors::StringValue("OPTIONS, GET".into()),
                ],
            )]
            .into_iter()
            .collect(),
            ignore_whitespace: true,
            ..Default::default()
        };
        let gateway = HttpResponse {
            status: 204,
            headers: vec![("Access-Control-Allow-Methods".into(), "OPTIONS,GET".into())],
            body: vec![],
        };
        assert!(check_http(&expect, &sent("/cors"), &gateway).is_ok());
        let echoed = echo_response(200, "/cors", "infra-backend-v1-a-b", &[]);
        assert!(check_http(&expect, &sent("/cors"), &echoed).is_err());
    }

    #[test]
    fn location_parsing() {
        assert_eq!(
            parse_location("https://example.org:8443/a/b?x=1"),
            LocationParts {
                scheme: "https".into(),
                host: "example.org".into(),
                port: "8443".into(),
                path: "/a/b".into()
            }
        );
        assert_eq!(parse_location("http://h/").port, "");
        assert_eq!(parse_location("/relative?q").path, "/relative");
        assert_eq!(parse_location("http://[::1]:80/x").host, "::1");
    }

    #[test]
    fn redirect_defaults() {
        let expected = Redirect {
            scheme: Some("http".into()),
            host: Some("example.org".into()),
            port: None,
            path: None,
        };
        let s = sent("/orig?x=y");
        assert!(check_redirect(&expected, &s, "http://example.org/orig").is_ok());
        assert!(check_redirect(&expected, &s, "http://example.org:80/orig").is_ok());
        assert!(check_redirect(&expected, &s, "http://example.org:8080/orig").is_err());
        assert!(check_redirect(&expected, &s, "https://example.org/orig").is_err());
        assert!(check_redirect(&expected, &s, "http://example.org/other").is_err());
        let with_port = Redirect {
            port: Some("8443".into()),
            scheme: Some("https".into()),
            ..expected.clone()
        };
        assert!(check_redirect(&with_port, &s, "https://example.org:8443/orig").is_ok());
        assert!(check_redirect(&with_port, &s, "https://example.org/orig").is_err());
    }

    #[test]
    fn distribution_maths() {
        let expected: BTreeMap<String, f64> = [
            ("infra-backend-v1".to_string(), 0.7),
            ("infra-backend-v2".to_string(), 0.3),
            ("infra-backend-v3".to_string(), 0.0),
        ]
        .into_iter()
        .collect();
        let counts = |a: usize, b: usize, c: usize| -> BTreeMap<String, usize> {
            [
                ("infra-backend-v1".to_string(), a),
                ("infra-backend-v2".to_string(), b),
                ("infra-backend-v3".to_string(), c),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
        };
        assert!(check_distribution(&counts(352, 148, 0), &expected, 0.05, Some(2)).is_ok());
        assert!(check_distribution(&counts(250, 250, 0), &expected, 0.05, Some(2)).is_err());
        assert!(check_distribution(&counts(350, 149, 1), &expected, 0.05, Some(2)).is_err());
        assert_eq!(
            backend_identity("infra-backend-v1-7f9c6d5b8-x2k4p"),
            "infra-backend-v1"
        );
    }
}
