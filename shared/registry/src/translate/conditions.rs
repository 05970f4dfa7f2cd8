//! Condition constructors and the spec's reason strings.

use super::backends::RefProblem;
use crate::snapshot::ObjectRef;
use crate::status::{Condition, ParentRefStatus, RouteParentStatus};

pub const CONTROLLER_NAME: &str = "ringmesh.io/gateway-controller";
pub const HTTP_ROUTE_KIND: &str = "gateway.networking.k8s.io/HTTPRoute";

pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
    }
}

/// How a route fared against the listeners one of its parentRefs selects, in
/// the order the spec checks: a listener matched the ref, one allowed the
/// route, one shared a hostname with it.
pub struct ParentAttachment {
    pub matched: bool,
    pub allowed: bool,
    pub attached: bool,
}

/// The conditions of an HTTPRoute or GRPCRoute for one parent: Accepted (the
/// first failure in spec order), ResolvedRefs, and PartiallyInvalid when some
/// rules were dropped. `rules_ok`: at least one rule survived (or there were none).
pub fn route_parent_conditions(
    attachment: ParentAttachment,
    rules_ok: bool,
    invalid_rules: &[String],
    ref_problems: &[RefProblem],
    generation: i64,
) -> Vec<Condition> {
    let accepted = if !attachment.matched {
        no_matching_parent(generation)
    } else if !attachment.allowed {
        condition(
            "Accepted",
            false,
            "NotAllowedByListeners",
            "no matching listener allows this route",
            generation,
        )
    } else if !attachment.attached {
        no_matching_listener_hostname(generation)
    } else if !rules_ok {
        condition(
            "Accepted",
            false,
            "UnsupportedValue",
            invalid_rules.join("; "),
            generation,
        )
    } else {
        route_accepted(generation)
    };
    let mut conditions = vec![accepted, resolved_refs(ref_problems, generation)];
    if rules_ok && !invalid_rules.is_empty() {
        conditions.push(condition(
            "PartiallyInvalid",
            true,
            "UnsupportedValue",
            format!("dropped invalid rules: {}", invalid_rules.join("; ")),
            generation,
        ));
    }
    conditions
}

pub fn no_matching_parent(generation: i64) -> Condition {
    condition(
        "Accepted",
        false,
        "NoMatchingParent",
        "no listener matches the parentRef's sectionName/port",
        generation,
    )
}

pub fn no_matching_listener_hostname(generation: i64) -> Condition {
    condition(
        "Accepted",
        false,
        "NoMatchingListenerHostname",
        "no listener hostname intersects the route's hostnames",
        generation,
    )
}

pub fn route_accepted(generation: i64) -> Condition {
    condition("Accepted", true, "Accepted", "route accepted", generation)
}

/// ResolvedRefs: the first unresolved reference, else resolved.
pub fn resolved_refs(ref_problems: &[RefProblem], generation: i64) -> Condition {
    match ref_problems.first() {
        Some(p) => condition("ResolvedRefs", false, p.reason(), p.message(), generation),
        None => condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "all references resolved",
            generation,
        ),
    }
}

/// A route's status entry for one Gateway parent.
pub fn parent_status(
    gateway: ObjectRef,
    section_name: Option<String>,
    port: Option<i32>,
    conditions: Vec<Condition>,
) -> RouteParentStatus {
    RouteParentStatus {
        parent_ref: ParentRefStatus {
            namespace: gateway.namespace,
            name: gateway.name,
            section_name,
            port: port.and_then(|p| u16::try_from(p).ok()),
        },
        controller_name: CONTROLLER_NAME.into(),
        conditions,
    }
}
