//! Proxy → snapshot, the small pieces: request matchers, header and path
//! modifiers, optional values.

use mesh_api::ringmesh::l7::v1 as pb;

use super::policy;
use crate::snapshot::{
    HeaderMatch, HeaderModifier, PathMatch, PathModifier, QueryParamMatch, RequestMatcher,
    StringMatch,
};

pub(super) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub(super) fn opt_duration(
    d: &Option<mesh_api::prost_types::Duration>,
    field: &str,
) -> Result<Option<std::time::Duration>, String> {
    d.as_ref()
        .map(|d| policy::from_duration(d, field))
        .transpose()
}

pub(super) fn header_modifier(m: &pb::HeaderModifier) -> HeaderModifier {
    let values = |v: &[pb::HeaderValue]| {
        v.iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect()
    };
    HeaderModifier {
        set: values(&m.set),
        add: values(&m.add),
        remove: m.remove.iter().map(|r| r.to_ascii_lowercase()).collect(),
    }
}

pub(super) fn path_modifier(p: &pb::PathModifier) -> Result<PathModifier, String> {
    use pb::path_modifier::Kind;
    match p.kind.as_ref().ok_or("empty path modifier")? {
        Kind::ReplaceFullPath(s) => Ok(PathModifier::ReplaceFullPath(s.clone())),
        Kind::ReplacePrefixMatch(s) => Ok(PathModifier::ReplacePrefixMatch(s.clone())),
    }
}

/// Regexes arrive anchored (`^(?:...)$`) as translation compiled them, and
/// are compiled with the same (default) limits, so whatever a standalone
/// gateway accepts a connected one accepts too.
pub(super) fn regex(text: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(text).map_err(|e| format!("regex {text:?}: {e}"))
}

pub(super) fn string_match(kind: i32, value: &str) -> Result<StringMatch, String> {
    // HeaderMatch and QueryMatch share the numbering: 0 exact, 1 regex.
    match kind {
        0 => Ok(StringMatch::Exact(value.to_string())),
        1 => Ok(StringMatch::Regex(regex(value)?)),
        k => Err(format!("unknown match kind {k}")),
    }
}

pub(super) fn matcher(m: Option<&pb::RouteMatch>) -> Result<RequestMatcher, String> {
    let Some(m) = m else {
        return Ok(RequestMatcher {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        });
    };
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => match pb::path_match::Kind::try_from(p.kind) {
            Ok(pb::path_match::Kind::Exact) => PathMatch::Exact(p.value.clone()),
            Ok(pb::path_match::Kind::Prefix) => PathMatch::Prefix(p.value.clone()),
            Ok(pb::path_match::Kind::Regex) => PathMatch::Regex(regex(&p.value)?),
            Ok(pb::path_match::Kind::StringPrefix) => PathMatch::StringPrefix(p.value.clone()),
            Err(_) => return Err(format!("unknown path match kind {}", p.kind)),
        },
    };
    Ok(RequestMatcher {
        path,
        method: non_empty(&m.method).map(|s| s.to_ascii_uppercase()),
        headers: m
            .headers
            .iter()
            .map(|h| {
                Ok(HeaderMatch {
                    name: h.name.to_ascii_lowercase(),
                    value: string_match(h.kind, &h.value)?,
                })
            })
            .collect::<Result<_, String>>()?,
        query_params: m
            .query_params
            .iter()
            .map(|q| {
                Ok(QueryParamMatch {
                    name: q.name.clone(),
                    value: string_match(q.kind, &q.value)?,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}
