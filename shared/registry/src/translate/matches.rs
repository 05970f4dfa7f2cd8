//! HTTPRouteMatch → RequestMatcher.

use mesh_config::gateway_api::experimental::httproutes::{
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};

use crate::snapshot::{HeaderMatch, PathMatch, QueryParamMatch, RequestMatcher, StringMatch};

/// The implicit match of a rule without matches: PathPrefix "/".
pub fn match_all() -> RequestMatcher {
    RequestMatcher {
        path: PathMatch::Prefix("/".into()),
        method: None,
        headers: Vec::new(),
        query_params: Vec::new(),
    }
}

/// Anchors and compiles a Gateway API regular expression (whole-value match).
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

pub fn compile_match(m: &HttpRouteRulesMatches) -> Result<RequestMatcher, String> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            match p
                .r#type
                .as_ref()
                .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => {
                    if !value.starts_with('/') {
                        return Err(format!("path {value:?} must start with '/'"));
                    }
                    PathMatch::Exact(value.to_string())
                }
                HttpRouteRulesMatchesPathType::PathPrefix => {
                    if !value.starts_with('/') {
                        return Err(format!("path prefix {value:?} must start with '/'"));
                    }
                    let trimmed = value.trim_end_matches('/');
                    PathMatch::Prefix(if trimmed.is_empty() {
                        "/".into()
                    } else {
                        trimmed.to_string()
                    })
                }
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    PathMatch::Regex(compile_regex(value)?)
                }
            }
        }
    };
    // Spec: when several matches name the same header (case-insensitively) or
    // query parameter, only the first one counts.
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        if headers.iter().any(|x| x.name == name) {
            continue;
        }
        let value = match h
            .r#type
            .as_ref()
            .unwrap_or(&HttpRouteRulesMatchesHeadersType::Exact)
        {
            HttpRouteRulesMatchesHeadersType::Exact => StringMatch::Exact(h.value.clone()),
            HttpRouteRulesMatchesHeadersType::RegularExpression => {
                StringMatch::Regex(compile_regex(&h.value)?)
            }
        };
        headers.push(HeaderMatch { name, value });
    }
    let mut query_params: Vec<QueryParamMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        if query_params.iter().any(|x| x.name == q.name) {
            continue;
        }
        let value = match q
            .r#type
            .as_ref()
            .unwrap_or(&HttpRouteRulesMatchesQueryParamsType::Exact)
        {
            HttpRouteRulesMatchesQueryParamsType::Exact => StringMatch::Exact(q.value.clone()),
            HttpRouteRulesMatchesQueryParamsType::RegularExpression => {
                StringMatch::Regex(compile_regex(&q.value)?)
            }
        };
        query_params.push(QueryParamMatch {
            name: q.name.clone(),
            value,
        });
    }
    Ok(RequestMatcher {
        path,
        method: m.method.as_ref().map(|x| method_name(x).to_string()),
        headers,
        query_params,
    })
}

fn method_name(m: &HttpRouteRulesMatchesMethod) -> &'static str {
    match m {
        HttpRouteRulesMatchesMethod::Get => "GET",
        HttpRouteRulesMatchesMethod::Head => "HEAD",
        HttpRouteRulesMatchesMethod::Post => "POST",
        HttpRouteRulesMatchesMethod::Put => "PUT",
        HttpRouteRulesMatchesMethod::Delete => "DELETE",
        HttpRouteRulesMatchesMethod::Connect => "CONNECT",
        HttpRouteRulesMatchesMethod::Options => "OPTIONS",
        HttpRouteRulesMatchesMethod::Trace => "TRACE",
        HttpRouteRulesMatchesMethod::Patch => "PATCH",
    }
}
