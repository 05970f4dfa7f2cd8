//! Istio `VirtualService` (networking.istio.io v1/v1beta1/v1alpha3).
//!
//! Our own serde types, Istio's camelCase field names, unknown fields
//! rejected (a typo is an error naming the field, not a silently ignored
//! setting), like `DestinationRule`. `tcp` and `tls` sections are kept as
//! raw YAML: only `http` routes are translated (the registry's
//! `translate/virtual_services.rs` lists what applies and what is refused).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::destination_rule::parse_istio_duration;
pub use crate::destination_rule::PortSelector;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts the routes apply to: a Service short name
    /// (`reviews`, qualified with the VirtualService's namespace), an FQDN,
    /// `*.suffix` or `*`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where the routes apply: `mesh` (waypoints; the default when empty) and
    /// Gateways as `namespace/name` or `name` (the VirtualService's namespace).
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tls: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub tcp: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    /// Any one of these matches (OR); empty matches every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub delegate: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// Exactly one of `exact`, `prefix`, `regex` (RE2 syntax, whole value).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Header name (any case) → match.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: Option<bool>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    /// Relative share; absent means the remainder (Istio: a single
    /// destination gets 100, several must all carry weights).
    #[serde(default)]
    pub weight: Option<i32>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: Option<i32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Comma-separated Envoy retry conditions and HTTP status codes.
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub exponential_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer form of `percentage`.
    #[serde(default)]
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<u32>,
    /// A gRPC status name (`UNAVAILABLE`) or number.
    #[serde(default)]
    pub grpc_status: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub http2_error: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    pub destination: Destination,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated: exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// gRPC status names as Istio writes them in `fault.abort.grpcStatus`.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The numeric gRPC status of `grpcStatus` (a name or a number 0-16).
pub fn grpc_status_code(value: &serde_yaml_ng::Value) -> Result<u32, String> {
    let code = match value {
        serde_yaml_ng::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_yaml_ng::Value::String(s) => GRPC_STATUS_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s.trim()))
            .map(|i| i as u32)
            .or_else(|| s.trim().parse().ok()),
        _ => None,
    };
    code.filter(|c| *c <= 16)
        .ok_or_else(|| format!("not a gRPC status (a name like UNAVAILABLE, or 0-16): {value:?}"))
}

/// Envoy retry conditions Istio accepts in `retryOn` that we apply.
pub const RETRY_CONDITIONS: [&str; 12] = [
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Checks what serde cannot: one kind per string match, durations,
/// percentages, statuses, weights, retry conditions. Errors name the field
/// (`spec.` prefixed).
pub fn validate_virtual_service(spec: &VirtualServiceSpec) -> Result<(), (String, String)> {
    if spec.hosts.iter().all(|h| h.trim().is_empty()) {
        return Err(("spec.hosts".into(), "at least one host is required".into()));
    }
    for (i, route) in spec.http.iter().enumerate() {
        validate_route(route, &format!("spec.http[{i}]"))?;
    }
    Ok(())
}

fn validate_route(r: &HttpRoute, at: &str) -> Result<(), (String, String)> {
    for (i, m) in r.matches.iter().enumerate() {
        let at = format!("{at}.match[{i}]");
        let single = [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ];
        for (name, sm) in single {
            if let Some(sm) = sm {
                validate_string_match(sm, &format!("{at}.{name}"))?;
            }
        }
        let maps = [
            ("headers", &m.headers),
            ("queryParams", &m.query_params),
            ("withoutHeaders", &m.without_headers),
        ];
        for (name, map) in maps {
            for (key, sm) in map {
                validate_string_match(sm, &format!("{at}.{name}.{key}"))?;
            }
        }
        if m.port.is_some_and(|p| !(1..=65535).contains(&p)) {
            return Err((format!("{at}.port"), "a port 1-65535".into()));
        }
    }
    let answers = !r.route.is_empty() || r.redirect.is_some() || r.direct_response.is_some();
    if !answers && r.delegate.is_none() {
        return Err((
            format!("{at}.route"),
            "a route, redirect or directResponse is required".into(),
        ));
    }
    if r.redirect.is_some() && !r.route.is_empty() {
        return Err((
            format!("{at}.redirect"),
            "redirect and route are mutually exclusive".into(),
        ));
    }
    for (i, d) in r.route.iter().enumerate() {
        let at = format!("{at}.route[{i}]");
        validate_destination(&d.destination, &format!("{at}.destination"))?;
        if d.weight.is_some_and(|w| !(0..=100).contains(&w)) {
            return Err((format!("{at}.weight"), "a weight 0-100".into()));
        }
    }
    if r.route.len() > 1 && r.route.iter().any(|d| d.weight.is_none()) {
        // Istio: with several destinations every one needs its weight.
        return Err((
            format!("{at}.route"),
            "every destination needs a weight when there are several".into(),
        ));
    }
    if let Some(redirect) = &r.redirect {
        if let Some(code) = redirect.redirect_code {
            if !matches!(code, 301 | 302 | 303 | 307 | 308) {
                return Err((
                    format!("{at}.redirect.redirectCode"),
                    format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
                ));
            }
        }
        if redirect.port.is_some_and(|p| !(1..=65535).contains(&p)) {
            return Err((format!("{at}.redirect.port"), "a port 1-65535".into()));
        }
    }
    duration(&r.timeout, format!("{at}.timeout"))?;
    if let Some(retry) = &r.retries {
        let at = format!("{at}.retries");
        if retry.attempts.is_some_and(|a| a < 0) {
            return Err((format!("{at}.attempts"), "must not be negative".into()));
        }
        duration(&retry.per_try_timeout, format!("{at}.perTryTimeout"))?;
        duration(&retry.backoff, format!("{at}.backoff"))?;
        for cond in retry.retry_on.iter().flat_map(|s| s.split(',')) {
            let cond = cond.trim();
            let is_status = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !cond.is_empty() && !is_status && !RETRY_CONDITIONS.contains(&cond) {
                return Err((
                    format!("{at}.retryOn"),
                    format!(
                        "unknown retry condition {cond:?} (known: {}, or a status code)",
                        RETRY_CONDITIONS.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(fault) = &r.fault {
        let at = format!("{at}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            return Err((at, "a delay or an abort is required".into()));
        }
        if let Some(d) = &fault.delay {
            let at = format!("{at}.delay");
            match (&d.fixed_delay, &d.exponential_delay) {
                (Some(_), _) => duration(&d.fixed_delay, format!("{at}.fixedDelay"))?,
                (None, Some(_)) => {
                    return Err((
                        format!("{at}.exponentialDelay"),
                        "not supported (Istio does not implement it either); use fixedDelay".into(),
                    ))
                }
                (None, None) => return Err((format!("{at}.fixedDelay"), "required".into())),
            }
            percent(&d.percentage, format!("{at}.percentage"))?;
            if d.percent.is_some_and(|p| p > 100) {
                return Err((format!("{at}.percent"), "a percentage 0-100".into()));
            }
        }
        if let Some(a) = &fault.abort {
            let at = format!("{at}.abort");
            match (&a.http_status, &a.grpc_status, &a.http2_error) {
                (Some(s), None, None) => {
                    if !(200..=599).contains(s) {
                        return Err((
                            format!("{at}.httpStatus"),
                            format!("{s} is not an HTTP status (200-599)"),
                        ));
                    }
                }
                (None, Some(g), None) => {
                    grpc_status_code(g).map_err(|e| (format!("{at}.grpcStatus"), e))?;
                }
                (None, None, Some(_)) => {
                    return Err((
                        format!("{at}.http2Error"),
                        "not supported; use httpStatus or grpcStatus".into(),
                    ))
                }
                _ => {
                    return Err((
                        at,
                        "exactly one of httpStatus, grpcStatus, http2Error is required".into(),
                    ))
                }
            }
            percent(&a.percentage, format!("{at}.percentage"))?;
        }
    }
    if let Some(c) = &r.cors_policy {
        for (i, o) in c.allow_origins.iter().enumerate() {
            validate_string_match(o, &format!("{at}.corsPolicy.allowOrigins[{i}]"))?;
        }
        duration(&c.max_age, format!("{at}.corsPolicy.maxAge"))?;
    }
    if let Some(m) = &r.mirror {
        validate_destination(m, &format!("{at}.mirror"))?;
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let at = format!("{at}.mirrors[{i}]");
        validate_destination(&m.destination, &format!("{at}.destination"))?;
        percent(&m.percentage, format!("{at}.percentage"))?;
    }
    percent(&r.mirror_percentage, format!("{at}.mirrorPercentage"))?;
    if r.mirror_percent.is_some_and(|p| p > 100) {
        return Err((format!("{at}.mirrorPercent"), "a percentage 0-100".into()));
    }
    Ok(())
}

fn validate_string_match(m: &StringMatch, at: &str) -> Result<(), (String, String)> {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        return Err((
            at.to_string(),
            "exactly one of exact, prefix, regex is required".into(),
        ));
    }
    Ok(())
}

fn validate_destination(d: &Destination, at: &str) -> Result<(), (String, String)> {
    if d.host.trim().is_empty() {
        return Err((format!("{at}.host"), "required".into()));
    }
    if let Some(p) = &d.port {
        if !(1..=65535).contains(&p.number) {
            return Err((format!("{at}.port.number"), "a port 1-65535".into()));
        }
    }
    Ok(())
}

fn duration(value: &Option<String>, at: String) -> Result<(), (String, String)> {
    match value {
        Some(v) => parse_istio_duration(v).map(|_| ()).map_err(|e| (at, e)),
        None => Ok(()),
    }
}

fn percent(value: &Option<Percent>, at: String) -> Result<(), (String, String)> {
    match value {
        Some(p) if !(0.0..=100.0).contains(&p.value) => {
            Err((format!("{at}.value"), "a percentage 0-100".into()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  gateways: [mesh, shop/edge]
  http:
  - name: canary
    match:
    - uri: {prefix: /api}
      headers: {x-user: {exact: jason}}
      queryParams: {debug: {regex: "1|true"}}
      method: {exact: GET}
      ignoreUriCase: true
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 80
      headers: {response: {set: {x-canary: "yes"}}}
    - destination: {host: reviews, subset: v1}
      weight: 20
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,gateway-error,unavailable,409"}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 10}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5.5}}
    mirror: {host: reviews-shadow}
    mirrorPercentage: {value: 50}
    rewrite: {uri: /v2, authority: reviews.internal}
    headers:
      request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
  - route:
    - destination: {host: reviews, subset: v1}
"#;

    #[test]
    fn a_full_virtual_service_loads_in_every_istio_version() {
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let text = VS.replace(
                "networking.istio.io/v1",
                &format!("networking.istio.io/{version}"),
            );
            let loaded = load_str("vs.yaml", &text);
            assert!(loaded.errors.is_empty(), "{version}: {:?}", loaded.errors);
            let vs = &loaded.resources.virtual_services[&("shop".into(), "reviews".into())];
            assert_eq!(vs.spec.http.len(), 2);
            let canary = &vs.spec.http[0];
            assert_eq!(
                canary.matches[0].uri.as_ref().unwrap().prefix.as_deref(),
                Some("/api")
            );
            assert_eq!(canary.route[0].weight, Some(80));
            let abort = canary.fault.as_ref().unwrap().abort.as_ref().unwrap();
            assert_eq!(
                super::grpc_status_code(abort.grpc_status.as_ref().unwrap()),
                Ok(14)
            );
        }
    }

    #[test]
    fn mistakes_are_rejected_naming_the_object_and_field() {
        for (from, to, field) in [
            ("prefix: /api", "prefx: /api", "spec.http[0].match[0].uri"),
            (
                "{prefix: /api}",
                "{prefix: /api, exact: /x}",
                "spec.http[0].match[0].uri",
            ),
            ("timeout: 2s", "timeout: 2 seconds", "spec.http[0].timeout"),
            (
                "fixedDelay: 100ms",
                "fixedDelay: soon",
                "spec.http[0].fault.delay.fixedDelay",
            ),
            (
                "grpcStatus: UNAVAILABLE",
                "grpcStatus: SOMETIMES",
                "spec.http[0].fault.abort.grpcStatus",
            ),
            (
                "value: 5.5",
                "value: 105",
                "spec.http[0].fault.abort.percentage.value",
            ),
            ("409\"", "sometimes\"", "spec.http[0].retries.retryOn"),
            ("weight: 20", "weight: 200", "spec.http[0].route[1].weight"),
            ("      weight: 20\n", "", "spec.http[0].route"),
            ("hosts: [reviews]", "hosts: []", "spec.hosts"),
        ] {
            assert!(VS.contains(from), "{from}");
            let loaded = load_str("vs.yaml", &VS.replacen(from, to, 1));
            assert_eq!(loaded.errors.len(), 1, "{from}: {:?}", loaded.errors);
            let e = &loaded.errors[0];
            assert_eq!(e.object.as_deref(), Some("VirtualService shop/reviews"));
            assert!(
                e.field.as_deref().is_some_and(|f| f.starts_with(field)),
                "{from}: {e:?}"
            );
            assert!(loaded.resources.virtual_services.is_empty());
        }
    }
}
