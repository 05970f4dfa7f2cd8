//! Gateway API match precedence, as one sortable key per (route, rule, match).
//!
//! Order (GEP-713 / HTTPRouteRule docs), continuing on ties:
//! 1. host group: rules from a route hostname with more characters in a
//!    non-wildcard hostname, then more characters in a matching hostname
//!    (only matters once less specific routes are copied into a more
//!    specific host group);
//! 2. Exact path; then RegularExpression paths (implementation-specific: we
//!    put them after Exact and before any PathPrefix, longer pattern first);
//!    then PathPrefix, longest first;
//! 3. a method match; 4. more header matches; 5. more query param matches;
//! 6. the oldest route (creationTimestamp), then `namespace/name` alphabetical
//!    (both folded into the route's rank);
//! 7. rule order within the route; 8. match order within the rule.

use std::cmp::Reverse;

use crate::snapshot::{PathMatch, RequestMatcher};

use super::hostnames::HostKey;

pub type PrecedenceKey = (
    (u8, Reverse<usize>),
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

/// `route_rank`: position of the route in (creationTimestamp, namespace/name) order.
pub fn precedence_key(
    source_host: &HostKey,
    m: &RequestMatcher,
    route_rank: usize,
    rule_index: usize,
    match_index: usize,
) -> PrecedenceKey {
    let (path_class, path_len) = match &m.path {
        PathMatch::Exact(p) => (0, p.len()),
        PathMatch::Regex(re) => (1, re.as_str().len()),
        PathMatch::Prefix(p) | PathMatch::StringPrefix(p) => (2, p.len()),
    };
    (
        source_host.specificity_rank(),
        path_class,
        Reverse(path_len),
        // false sorts first: a method match wins.
        m.method.is_none(),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
        route_rank,
        rule_index,
        match_index,
    )
}
