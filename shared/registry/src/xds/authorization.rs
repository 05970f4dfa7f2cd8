//! AuthorizationPolicy → `istio.security.Authorization`, the way istiod
//! converts it for ztunnel:
//! - scope: WORKLOAD_SELECTOR with a selector, GLOBAL in the root namespace,
//!   else NAMESPACE;
//! - each rule is a Group; within it the `from` sources form one Rules (any
//!   Match may hold) and the `to` operations another (ANDed with the first);
//! - an ALLOW rule with L7 fields can never match at L4: it is dropped; in a
//!   DENY policy only the L7 fields are dropped (denying more, never less).
//!
//! AUDIT and CUSTOM policies are not sent (ztunnel cannot enforce them),
//! nor policies with `targetRefs` (the waypoint enforces those).

use mesh_api::istio::security::{
    string_match, Action, Address, Authorization, Group, Match, Rules, Scope, StringMatch,
};
use mesh_config::{parse_cidr, AuthorizationAction, AuthorizationPolicySpec, Object};

use super::ip_bytes;
use crate::workloads::authz::ROOT_NAMESPACE;

/// `None` for actions ztunnel does not enforce (AUDIT, CUSTOM).
pub fn authorization_of(policy: &Object<AuthorizationPolicySpec>) -> Option<Authorization> {
    let spec = &policy.spec;
    let action = match spec.action {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        AuthorizationAction::Audit | AuthorizationAction::Custom => return None,
    };
    // Attached to a Service or a waypoint (targetRefs): the waypoint enforces it.
    if spec.targets().next().is_some() {
        return None;
    }
    let scope = if spec.selector.is_some() {
        Scope::WorkloadSelector
    } else if policy.meta.namespace == ROOT_NAMESPACE {
        Scope::Global
    } else {
        Scope::Namespace
    };
    let groups = spec
        .rules
        .iter()
        .filter_map(|rule| group_of(rule, action))
        .collect();
    Some(Authorization {
        name: policy.meta.name.clone(),
        namespace: policy.meta.namespace.clone(),
        scope: scope as i32,
        action: action as i32,
        groups,
    })
}

fn group_of(rule: &mesh_config::AuthorizationRule, action: Action) -> Option<Group> {
    if action == Action::Allow && rule.needs_l7_outside_operations() {
        return None;
    }
    let mut rules = Vec::new();
    if !rule.from.is_empty() {
        rules.push(Rules {
            matches: rule.from.iter().map(|f| source_match(&f.source)).collect(),
        });
    }
    if !rule.to.is_empty() {
        let mut matches = Vec::new();
        for to in &rule.to {
            let op = &to.operation;
            if op.needs_l7() && action == Action::Allow {
                continue;
            }
            matches.push(Match {
                destination_ports: ports(&op.ports),
                not_destination_ports: ports(&op.not_ports),
                ..Default::default()
            });
        }
        if matches.is_empty() {
            // Every operation needed L7: this ALLOW rule can never match.
            return None;
        }
        rules.push(Rules { matches });
    }
    Some(Group { rules })
}

fn source_match(source: &mesh_config::Source) -> Match {
    Match {
        principals: strings(&source.principals),
        not_principals: strings(&source.not_principals),
        namespaces: strings(&source.namespaces),
        not_namespaces: strings(&source.not_namespaces),
        source_ips: cidrs(&source.ip_blocks),
        not_source_ips: cidrs(&source.not_ip_blocks),
        ..Default::default()
    }
}

/// Istio's string forms: `*` presence, `prefix*`, `*suffix`, else exact.
fn strings(patterns: &[String]) -> Vec<StringMatch> {
    patterns
        .iter()
        .map(|p| {
            let match_type = if p == "*" {
                string_match::MatchType::Presence(())
            } else if let Some(prefix) = p.strip_suffix('*') {
                string_match::MatchType::Prefix(prefix.to_string())
            } else if let Some(suffix) = p.strip_prefix('*') {
                string_match::MatchType::Suffix(suffix.to_string())
            } else {
                string_match::MatchType::Exact(p.clone())
            };
            StringMatch {
                match_type: Some(match_type),
            }
        })
        .collect()
}

/// Unparseable blocks are skipped (the loader already reported them).
fn cidrs(blocks: &[String]) -> Vec<Address> {
    blocks
        .iter()
        .filter_map(|b| parse_cidr(b))
        .map(|(ip, length)| Address {
            address: ip_bytes(ip),
            length: u32::from(length),
        })
        .collect()
}

fn ports(ports: &[String]) -> Vec<u32> {
    ports.iter().filter_map(|p| p.trim().parse().ok()).collect()
}
