//! One GRPCRoute → compiled rules in the HTTP engine's terms.
//!
//! gRPC is HTTP/2 with `:path = /<service>/<method>`, so a GRPCMethodMatch becomes a
//! path match and the engine needs nothing gRPC-specific to route it:
//! - Exact with service and method: `PathMatch::Exact("/service/method")`;
//! - Exact with only a service: every method of it, `PathMatch::Prefix("/service")`
//!   (segment-wise, so `/service.v2/...` does not match);
//! - Exact with only a method (implementation-specific support): that method on any
//!   service, `^/[^/]+/method$`;
//! - RegularExpression: `^/(service)/(method)$`, a missing side being `[^/]+`.
//!
//! Filters and backendRefs have the same shape as HTTPRoute's (the spec types are
//! twins), so they are converted and compiled by the HTTPRoute code: one behaviour for
//! header modifiers, mirrors, weights and ReferenceGrants.
//!
//! Precedence (GRPCRouteRule.matches docs) is its own key, since it differs from
//! HTTPRoute's: more characters in a matching service, then in a matching method, then
//! more header matches; then the oldest route, then `namespace/name`, then rule order.

use std::cmp::Reverse;

use mesh_config::gateway_api::experimental::grpcroutes::{
    GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethod, GrpcRouteRulesMatchesMethodType,
};
use mesh_config::gateway_api::experimental::httproutes::HttpRouteRules;
use mesh_config::{GrpcRouteSpec, Object};

use super::backends::{BackendResolver, RefProblem};
use super::hostnames::HostKey;
use super::matches::compile_regex;
use super::routes::{compile_rule, CompiledRule};
use crate::snapshot::{HeaderMatch, ObjectRef, PathMatch, RequestMatcher, StringMatch};

pub const GRPC_ROUTE_KIND: &str = "gateway.networking.k8s.io/GRPCRoute";

/// Per-match precedence inputs: characters of the matched service and method, and
/// the number of header matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcSpecificity {
    pub service_chars: usize,
    pub method_chars: usize,
    pub headers: usize,
}

/// Sortable precedence of one (route, rule, match) inside a host group.
pub type GrpcPrecedenceKey = (
    (u8, Reverse<usize>),
    Reverse<usize>,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

/// A host group's sort key for an entry of either route kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKey {
    Http(super::precedence::PrecedenceKey),
    Grpc(GrpcPrecedenceKey),
}

pub fn grpc_precedence_key(
    source_host: &HostKey,
    s: GrpcSpecificity,
    route_rank: usize,
    rule_index: usize,
    match_index: usize,
) -> GrpcPrecedenceKey {
    (
        source_host.specificity_rank(),
        Reverse(s.service_chars),
        Reverse(s.method_chars),
        Reverse(s.headers),
        route_rank,
        rule_index,
        match_index,
    )
}

pub struct GrpcCompiledRule {
    /// The rule's filters and backends with `matchers` set to the gRPC matches.
    pub compiled: CompiledRule,
    /// One per matcher, same order.
    pub specificity: Vec<GrpcSpecificity>,
}

pub struct GrpcCompiledRoute<'a> {
    pub object: &'a Object<GrpcRouteSpec>,
    pub key: ObjectRef,
    /// Position in (creationTimestamp, namespace/name) order among GRPCRoutes.
    pub rank: usize,
    pub hostnames: Vec<HostKey>,
    pub rules: Vec<GrpcCompiledRule>,
    pub invalid_rules: Vec<String>,
    pub total_rules: usize,
    pub ref_problems: Vec<RefProblem>,
}

pub fn compile_grpc_route<'a>(
    object: &'a Object<GrpcRouteSpec>,
    rank: usize,
    resolver: &mut BackendResolver<'_>,
) -> GrpcCompiledRoute<'a> {
    let key = ObjectRef {
        namespace: object.meta.namespace.clone(),
        name: object.meta.name.clone(),
    };
    let hostnames = object
        .spec
        .hostnames
        .iter()
        .flatten()
        .map(|h| HostKey::parse(h))
        .collect();
    let mut route = GrpcCompiledRoute {
        object,
        key,
        rank,
        hostnames,
        rules: Vec::new(),
        invalid_rules: Vec::new(),
        total_rules: 0,
        ref_problems: Vec::new(),
    };
    let rules = object.spec.rules.as_deref().unwrap_or(&[]);
    route.total_rules = rules.len();
    for (index, rule) in rules.iter().enumerate() {
        match compile_grpc_rule(&route.key, index, rule, resolver, &mut route.ref_problems) {
            Ok(r) => route.rules.push(r),
            Err(message) => route
                .invalid_rules
                .push(format!("rules[{index}]: {message}")),
        }
    }
    route
}

fn compile_grpc_rule(
    route: &ObjectRef,
    rule_index: usize,
    rule: &GrpcRouteRules,
    resolver: &mut BackendResolver<'_>,
    ref_problems: &mut Vec<RefProblem>,
) -> Result<GrpcCompiledRule, String> {
    let (matchers, specificity): (Vec<_>, Vec<_>) = match rule.matches.as_deref() {
        // No matches: every gRPC request.
        None | Some([]) => vec![(any_request(), GrpcSpecificity::default())]
            .into_iter()
            .unzip(),
        Some(ms) => ms
            .iter()
            .enumerate()
            .map(|(i, m)| compile_grpc_match(m).map_err(|e| format!("matches[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip(),
    };
    let as_http = as_http_rule(rule)?;
    let mut compiled = compile_rule(route, rule_index, &as_http, resolver, ref_problems)?;
    compiled.matchers = matchers;
    Ok(GrpcCompiledRule {
        compiled,
        specificity,
    })
}

fn any_request() -> RequestMatcher {
    RequestMatcher {
        path: PathMatch::Prefix("/".into()),
        method: None,
        headers: Vec::new(),
        query_params: Vec::new(),
    }
}

/// The rule's filters and backendRefs as an HTTPRoute rule without matches. The
/// GRPCRoute filter and backendRef types serialize exactly like HTTPRoute's (same
/// field names, a subset of the filter types), so a JSON round trip converts them.
fn as_http_rule(rule: &GrpcRouteRules) -> Result<HttpRouteRules, String> {
    let value = serde_json::json!({
        "filters": rule.filters,
        "backendRefs": rule.backend_refs,
    });
    serde_json::from_value(value).map_err(|e| format!("filters/backendRefs: {e}"))
}

pub fn compile_grpc_match(
    m: &GrpcRouteRulesMatches,
) -> Result<(RequestMatcher, GrpcSpecificity), String> {
    let (path, service_chars, method_chars) = match &m.method {
        None => (PathMatch::Prefix("/".into()), 0, 0),
        Some(method) => method_path(method).map_err(|e| format!("method: {e}"))?,
    };
    // Spec: when several entries name the same header (case-insensitively), only the
    // first one counts.
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for (i, h) in m.headers.iter().flatten().enumerate() {
        let name = h.name.to_ascii_lowercase();
        if name.is_empty() {
            return Err(format!("headers[{i}].name is empty"));
        }
        if headers.iter().any(|x| x.name == name) {
            continue;
        }
        let value = match h
            .r#type
            .as_ref()
            .unwrap_or(&GrpcRouteRulesMatchesHeadersType::Exact)
        {
            GrpcRouteRulesMatchesHeadersType::Exact => StringMatch::Exact(h.value.clone()),
            GrpcRouteRulesMatchesHeadersType::RegularExpression => StringMatch::Regex(
                compile_regex(&h.value).map_err(|e| format!("headers[{i}]: {e}"))?,
            ),
        };
        headers.push(HeaderMatch { name, value });
    }
    let specificity = GrpcSpecificity {
        service_chars,
        method_chars,
        headers: headers.len(),
    };
    Ok((
        RequestMatcher {
            path,
            // gRPC is always POST; the spec has no method (verb) match.
            method: None,
            headers,
            query_params: Vec::new(),
        },
        specificity,
    ))
}

/// GRPCMethodMatch → (path match, service characters, method characters).
fn method_path(m: &GrpcRouteRulesMatchesMethod) -> Result<(PathMatch, usize, usize), String> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        return Err("at least one of service and method must be set".into());
    }
    let chars = (service.map_or(0, str::len), method.map_or(0, str::len));
    let regex_type = matches!(
        m.r#type,
        Some(GrpcRouteRulesMatchesMethodType::RegularExpression)
    );
    if regex_type {
        let service = service.unwrap_or("[^/]+");
        let method = method.unwrap_or("[^/]+");
        let re = compile_regex(&format!("/(?:{service})/(?:{method})"))?;
        return Ok((PathMatch::Regex(re), chars.0, chars.1));
    }
    if let Some(s) = service {
        check_service_name(s)?;
    }
    if let Some(x) = method {
        check_method_name(x)?;
    }
    let path = match (service, method) {
        (Some(s), Some(x)) => PathMatch::Exact(format!("/{s}/{x}")),
        (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
        (None, Some(x)) => {
            PathMatch::Regex(compile_regex(&format!("/[^/]+/{}", regex::escape(x)))?)
        }
        (None, None) => unreachable!("checked above"),
    };
    Ok((path, chars.0, chars.1))
}

/// The CRD's pattern for an Exact service: dot-separated identifiers
/// (`^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`).
fn check_service_name(s: &str) -> Result<(), String> {
    let body = s.strip_prefix('.').unwrap_or(s);
    if !body.is_empty() && body.split('.').all(is_identifier) {
        Ok(())
    } else {
        Err(format!("service {s:?} is not a valid gRPC service name"))
    }
}

/// The CRD's pattern for an Exact method: `^[A-Za-z_][A-Za-z_0-9]*$`.
fn check_method_name(m: &str) -> Result<(), String> {
    if is_identifier(m) {
        Ok(())
    } else {
        Err(format!("method {m:?} is not a valid gRPC method name"))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
