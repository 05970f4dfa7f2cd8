//! VirtualService policies → the engine's: `headers`, `fault`, `retries`,
//! `corsPolicy` (see `virtual_services` for the mapping).

use mesh_config::parse_istio_duration;
use mesh_config::virtual_service::HeaderOperations;

use crate::snapshot::{
    AbortStatus, CorsPolicy, FaultAbort, FaultDelay, FaultInjection, HeaderModifier, RetryPolicy,
};

pub(super) fn header_modifier(ops: &HeaderOperations) -> HeaderModifier {
    HeaderModifier {
        set: ops
            .set
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        add: ops
            .add
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        remove: ops.remove.iter().map(|k| k.to_ascii_lowercase()).collect(),
    }
}

pub(super) fn fault(
    f: &mesh_config::virtual_service::HttpFaultInjection,
) -> Result<FaultInjection, String> {
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let text = d
                .fixed_delay
                .as_deref()
                .ok_or("fault.delay.fixedDelay: required")?;
            let duration =
                parse_istio_duration(text).map_err(|e| format!("fault.delay.fixedDelay: {e}"))?;
            let percent = d
                .percentage
                .as_ref()
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            Some(FaultDelay { duration, percent })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let status = match (&a.http_status, &a.grpc_status) {
                (Some(s), _) => AbortStatus::Http(
                    u16::try_from(*s).map_err(|_| format!("fault.abort.httpStatus: {s}"))?,
                ),
                (None, Some(g)) => AbortStatus::Grpc(
                    mesh_config::virtual_service::grpc_status_code(g)
                        .map_err(|e| format!("fault.abort.grpcStatus: {e}"))?,
                ),
                (None, None) => return Err("fault.abort: httpStatus or grpcStatus required".into()),
            };
            let percent = a.percentage.as_ref().map_or(100.0, |p| p.value);
            Some(FaultAbort { status, percent })
        }
    };
    Ok(FaultInjection { delay, abort })
}

/// Istio's default `retryOn` when `retries` gives none.
const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,503";

pub(super) fn retry_policy(
    r: &mesh_config::virtual_service::HttpRetry,
) -> Result<Option<RetryPolicy>, String> {
    let attempts = u32::try_from(r.attempts.unwrap_or(2))
        .map_err(|_| "retries.attempts: must not be negative".to_string())?;
    if attempts == 0 {
        return Ok(None);
    }
    let mut p = RetryPolicy {
        attempts,
        backoff: r
            .backoff
            .as_deref()
            .map(parse_istio_duration)
            .transpose()
            .map_err(|e| format!("retries.backoff: {e}"))?,
        ..Default::default()
    };
    let retry_on = r.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON);
    for cond in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match cond {
            "5xx" => {
                p.codes.extend(500..=599);
                p.on_connect_failure = true;
                p.on_reset = true;
            }
            "gateway-error" => {
                p.codes.extend([502, 503, 504]);
                p.on_connect_failure = true;
                p.on_reset = true;
            }
            "connect-failure" => p.on_connect_failure = true,
            "reset" => {
                p.on_reset = true;
                p.on_connect_failure = true;
            }
            "retriable-4xx" => p.codes.push(409),
            // Not told apart from other resets; and codes listed in retryOn are the retriable ones.
            "refused-stream" | "retriable-status-codes" => {}
            "cancelled" => p.grpc_codes.push(1),
            "deadline-exceeded" => p.grpc_codes.push(4),
            "resource-exhausted" => p.grpc_codes.push(8),
            "internal" => p.grpc_codes.push(13),
            "unavailable" => p.grpc_codes.push(14),
            other => match other.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => p.codes.push(code),
                _ => return Err(format!("retries.retryOn: unknown condition {other:?}")),
            },
        }
    }
    p.codes.sort_unstable();
    p.codes.dedup();
    p.grpc_codes.sort_unstable();
    p.grpc_codes.dedup();
    Ok(Some(p))
}

/// Origins as the engine matches them: exact ones, `*` for "any" (`*` or
/// the regex `.*`); prefix and other regex origins are refused.
pub(super) fn cors(c: &mesh_config::virtual_service::CorsPolicy) -> Result<CorsPolicy, String> {
    let mut allow_origins = c.allow_origin.clone();
    for (i, o) in c.allow_origins.iter().enumerate() {
        match (&o.exact, &o.prefix, &o.regex) {
            (Some(e), None, None) => allow_origins.push(e.clone()),
            (None, None, Some(r)) if r == ".*" || r == "*" => allow_origins.push("*".into()),
            _ => {
                return Err(format!(
                "corsPolicy.allowOrigins[{i}]: only exact origins (or regex \".*\") are supported"
            ))
            }
        }
    }
    let max_age_seconds = c
        .max_age
        .as_deref()
        .map(parse_istio_duration)
        .transpose()
        .map_err(|e| format!("corsPolicy.maxAge: {e}"))?
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    Ok(CorsPolicy {
        allow_origins,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age_seconds,
    })
}
