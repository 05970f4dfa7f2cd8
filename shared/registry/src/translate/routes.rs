//! One HTTPRoute → its compiled rules (matchers, filters, backends, timeouts,
//! retry), independent of where it attaches.

use std::sync::Arc;

use mesh_config::gateway_api::experimental::httproutes::{HttpRouteRules, HttpRouteRulesRetry};
use mesh_config::{HttpRouteSpec, Object};

use super::backends::{BackendRef, BackendResolver, RefProblem};
use super::duration::{parse_duration, parse_timeout};
use super::filters::{backend_filters_as_rule_filters, compile_filters};
use super::hostnames::HostKey;
use super::matches::{compile_match, match_all};
use crate::snapshot::{
    BackendTarget, ObjectRef, RequestMatcher, RetryPolicy, RouteRule, Timeouts, WeightedBackend,
};

pub struct CompiledRule {
    pub rule: Arc<RouteRule>,
    pub matchers: Vec<RequestMatcher>,
}

pub struct CompiledRoute<'a> {
    pub object: &'a Object<HttpRouteSpec>,
    pub key: ObjectRef,
    /// Position in (creationTimestamp, namespace/name) order: the route tie-break.
    pub rank: usize,
    pub hostnames: Vec<HostKey>,
    /// Valid rules only, in list order (rule_index keeps the original index).
    pub rules: Vec<CompiledRule>,
    /// `rules[i]: message` for every rejected rule.
    pub invalid_rules: Vec<String>,
    pub total_rules: usize,
    /// Unresolved backend or mirror references (the first decides the reason).
    pub ref_problems: Vec<RefProblem>,
}

pub fn compile_route<'a>(
    object: &'a Object<HttpRouteSpec>,
    rank: usize,
    resolver: &mut BackendResolver<'_>,
) -> CompiledRoute<'a> {
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
    let mut compiled = CompiledRoute {
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
    compiled.total_rules = rules.len();
    for (index, rule) in rules.iter().enumerate() {
        match compile_rule(
            &compiled.key,
            index,
            rule,
            resolver,
            &mut compiled.ref_problems,
        ) {
            Ok(r) => compiled.rules.push(r),
            Err(message) => compiled
                .invalid_rules
                .push(format!("rules[{index}]: {message}")),
        }
    }
    compiled
}

pub(super) fn compile_rule(
    route: &ObjectRef,
    rule_index: usize,
    rule: &HttpRouteRules,
    resolver: &mut BackendResolver<'_>,
    ref_problems: &mut Vec<RefProblem>,
) -> Result<CompiledRule, String> {
    let matchers = match rule.matches.as_deref() {
        None | Some([]) => vec![match_all()],
        Some(ms) => ms
            .iter()
            .enumerate()
            .map(|(i, m)| compile_match(m).map_err(|e| format!("matches[{i}]: {e}")))
            .collect::<Result<_, _>>()?,
    };
    let filters = compile_filters(
        rule.filters.as_deref().unwrap_or(&[]),
        &route.namespace,
        resolver,
    )?;
    ref_problems.extend(filters.ref_problems);

    let mut backends = Vec::new();
    for (i, b) in rule.backend_refs.iter().flatten().enumerate() {
        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
        let target = match resolver.resolve(
            &route.namespace,
            BackendRef {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
            },
        ) {
            Ok(cluster) => BackendTarget::Cluster(cluster),
            Err(problem) => {
                let reason = format!("{}: {}", problem.reason(), problem.message());
                ref_problems.push(problem);
                BackendTarget::Invalid { reason }
            }
        };
        let backend_filters = backend_filters_as_rule_filters(b.filters.as_deref().unwrap_or(&[]))
            .map_err(|e| format!("backendRefs[{i}]: {e}"))?;
        let compiled = compile_filters(&backend_filters, &route.namespace, resolver)
            .map_err(|e| format!("backendRefs[{i}].{e}"))?;
        ref_problems.extend(compiled.ref_problems);
        backends.push(WeightedBackend {
            weight,
            target,
            filters: compiled.filters,
        });
    }
    let total_weight = backends.iter().map(|b| b.weight).sum();

    let mut timeouts = Timeouts::default();
    if let Some(t) = &rule.timeouts {
        if let Some(r) = &t.request {
            timeouts.request = parse_timeout(r).map_err(|e| format!("timeouts.request: {e}"))?;
        }
        if let Some(b) = &t.backend_request {
            timeouts.backend_request =
                parse_timeout(b).map_err(|e| format!("timeouts.backendRequest: {e}"))?;
        }
    }
    let retry = rule.retry.as_ref().map(retry_policy).transpose()?;

    Ok(CompiledRule {
        rule: Arc::new(RouteRule {
            route: route.clone(),
            rule_index,
            filters: filters.filters,
            backends,
            total_weight,
            timeouts,
            retry,
            rate_limit: resolver.rate_limits.for_route(route),
        }),
        matchers,
    })
}

/// `attempts` counts retries after the first try (the spec: "maximum number of
/// times an individual request ... should be retried"); default 1 when a retry
/// block is given without it.
fn retry_policy(r: &HttpRouteRulesRetry) -> Result<RetryPolicy, String> {
    let codes = r
        .codes
        .iter()
        .flatten()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| format!("retry.codes: {c} is not a 4xx/5xx status"))
        })
        .collect::<Result<_, _>>()?;
    let attempts = match r.attempts {
        None => 1,
        Some(a) => u32::try_from(a).map_err(|_| format!("retry.attempts: {a} is out of range"))?,
    };
    let backoff = r
        .backoff
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| format!("retry.backoff: {e}"))?;
    Ok(RetryPolicy {
        codes,
        attempts,
        backoff,
        // Gateway API: connection errors are retried whenever a retry is configured.
        on_connect_failure: true,
        on_reset: true,
        grpc_codes: Vec::new(),
    })
}
