//! VirtualService `match` → the engine's matcher (see `virtual_services`
//! for what is supported and refused).

use mesh_config::virtual_service::{HttpMatchRequest, StringMatch};

use super::matches::compile_regex;
use super::virtual_services::{scopes, VsMatcher};
use crate::snapshot::{
    HeaderMatch, PathMatch, QueryParamMatch, RequestMatcher, StringMatch as EngineMatch,
};

pub(super) fn compile_match(m: &HttpMatchRequest, namespace: &str) -> Result<VsMatcher, String> {
    for (what, unsupported) in [
        ("withoutHeaders", !m.without_headers.is_empty()),
        ("sourceLabels", !m.source_labels.is_empty()),
        ("sourceNamespace", m.source_namespace.is_some()),
        ("scheme", m.scheme.is_some()),
    ] {
        if unsupported {
            return Err(format!("{what} is not supported"));
        }
    }
    let ignore_case = m.ignore_uri_case == Some(true);
    let path = match &m.uri {
        None => PathMatch::StringPrefix("/".into()),
        Some(StringMatch { exact: Some(e), .. }) if ignore_case => {
            PathMatch::Regex(case_insensitive(&regex::escape(e))?)
        }
        Some(StringMatch { exact: Some(e), .. }) => PathMatch::Exact(e.clone()),
        Some(StringMatch {
            prefix: Some(p), ..
        }) if ignore_case => {
            PathMatch::Regex(case_insensitive(&format!("{}.*", regex::escape(p)))?)
        }
        Some(StringMatch {
            prefix: Some(p), ..
        }) => PathMatch::StringPrefix(p.clone()),
        Some(StringMatch { regex: Some(r), .. }) => {
            PathMatch::Regex(compile_regex(r).map_err(|e| format!("uri: {e}"))?)
        }
        Some(_) => return Err("uri: exactly one of exact, prefix, regex is required".into()),
    };
    let method = match &m.method {
        None => None,
        Some(StringMatch { exact: Some(e), .. }) => Some(e.to_ascii_uppercase()),
        Some(_) => return Err("method: only exact is supported".into()),
    };
    let mut headers = Vec::new();
    if let Some(authority) = &m.authority {
        headers.push(HeaderMatch {
            name: ":authority".into(),
            value: string_match(authority).map_err(|e| format!("authority: {e}"))?,
        });
    }
    for (name, sm) in &m.headers {
        headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: string_match(sm).map_err(|e| format!("headers.{name}: {e}"))?,
        });
    }
    let mut query_params = Vec::new();
    for (name, sm) in &m.query_params {
        query_params.push(QueryParamMatch {
            name: name.clone(),
            value: string_match(sm).map_err(|e| format!("queryParams.{name}: {e}"))?,
        });
    }
    Ok(VsMatcher {
        matcher: RequestMatcher {
            path,
            method,
            headers,
            query_params,
        },
        port: m.port.and_then(|p| u16::try_from(p).ok()),
        gateways: scopes(&m.gateways, namespace),
    })
}

fn case_insensitive(pattern: &str) -> Result<regex::Regex, String> {
    compile_regex(&format!("(?is:{pattern})")).map_err(|e| format!("uri: {e}"))
}

fn string_match(sm: &StringMatch) -> Result<EngineMatch, String> {
    match (&sm.exact, &sm.prefix, &sm.regex) {
        (Some(e), None, None) => Ok(EngineMatch::Exact(e.clone())),
        (None, Some(p), None) => Ok(EngineMatch::Regex(compile_regex(&format!(
            "(?s:{}.*)",
            regex::escape(p)
        ))?)),
        (None, None, Some(r)) => Ok(EngineMatch::Regex(compile_regex(r)?)),
        _ => Err("exactly one of exact, prefix, regex is required".into()),
    }
}
