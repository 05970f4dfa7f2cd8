//! L4 authorization with Istio's semantics, as ztunnel enforces it.
//!
//! Order: a matching DENY policy denies; otherwise, when any ALLOW policy
//! selects the workload, one of its rules must match; when none selects it,
//! the connection is allowed. A policy selects a workload when it is in the
//! workload's namespace (or the root namespace `istio-system`) and has no
//! selector or its `matchLabels` are a subset of the workload's labels.
//!
//! Policies with `targetRefs` are the waypoint's (`mesh_http::policy::authz`)
//! and are not enforced here.
//!
//! L4 only: a rule carrying L7 fields (hosts, methods, paths, `when`) can never
//! match in an ALLOW policy, and matches on its L4 part alone in a DENY
//! policy (denying more, never less, like Istio's ztunnel).
//!
//! Principals are written as Istio writes them, `cluster.local/ns/x/sa/y`
//! (no `spiffe://`); `*`, `prefix*` and `*suffix` are wildcards. A
//! plaintext peer has no principal and no namespace: `principals` and
//! `namespaces` never match it, `notPrincipals`/`notNamespaces` always do.

use std::collections::BTreeMap;
use std::net::IpAddr;

use mesh_config::{
    parse_cidr, AuthorizationAction, AuthorizationPolicySpec, MtlsMode, Resources, Source,
};
use serde::Serialize;

use super::Workload;

/// Istio's root namespace: policies there apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// What is known about a connection when it is authorized.
#[derive(Debug, Clone)]
pub struct ConnectionAttrs<'a> {
    pub source_ip: IpAddr,
    /// The peer's SPIFFE identity (`spiffe://td/ns/x/sa/y`); `None` for plaintext.
    pub source_identity: Option<&'a str>,
    pub destination_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzDecision {
    Allow,
    /// The policy (`namespace/name`) that decided, and why.
    Deny(String),
}

#[derive(Debug, Clone, Serialize)]
struct Policy {
    namespace: String,
    name: String,
    selector: Option<BTreeMap<String, String>>,
    #[serde(skip)]
    spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Serialize)]
struct PeerAuth {
    namespace: String,
    name: String,
    selector: Option<BTreeMap<String, String>>,
    mode: String,
    #[serde(skip)]
    mode_value: MtlsMode,
}

/// `(namespace, name, selector labels, spec)` of a policy decoded from xDS.
pub(crate) type DecodedPolicy = (
    String,
    String,
    Option<BTreeMap<String, String>>,
    AuthorizationPolicySpec,
);

/// All AuthorizationPolicies and PeerAuthentications.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Policies {
    authorization: Vec<Policy>,
    peer_authentication: Vec<PeerAuth>,
}

impl Policies {
    pub fn build(resources: &Resources) -> Self {
        let authorization = resources
            .authorization_policies
            .values()
            // targetRefs (Service or waypoint): enforced by the waypoint at L7.
            .filter(|p| p.spec.targets().next().is_none())
            .map(|p| Policy {
                namespace: p.meta.namespace.clone(),
                name: p.meta.name.clone(),
                selector: p.spec.selector.as_ref().map(|s| s.match_labels.clone()),
                spec: p.spec.clone(),
            })
            .collect();
        let peer_authentication = resources
            .peer_authentications
            .values()
            .map(|p| {
                let mode = p.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default();
                PeerAuth {
                    namespace: p.meta.namespace.clone(),
                    name: p.meta.name.clone(),
                    selector: p.spec.selector.as_ref().map(|s| s.match_labels.clone()),
                    mode: format!("{mode:?}"),
                    mode_value: mode,
                }
            })
            .collect();
        Self {
            authorization,
            peer_authentication,
        }
    }

    /// AuthorizationPolicies decoded from xDS (`crate::xds::reverse`); no
    /// PeerAuthentication (Istio sends STRICT mTLS as converted Authorization
    /// policies instead).
    pub(crate) fn from_authorizations(policies: Vec<DecodedPolicy>) -> Self {
        let authorization = policies
            .into_iter()
            .map(|(namespace, name, selector, spec)| Policy {
                namespace,
                name,
                selector,
                spec,
            })
            .collect();
        Self {
            authorization,
            peer_authentication: Vec::new(),
        }
    }

    /// Decides one connection to `workload`.
    pub fn authorize(&self, workload: &Workload, conn: &ConnectionAttrs<'_>) -> AuthzDecision {
        let selecting = || {
            self.authorization.iter().filter(|p| {
                selects(&p.namespace, p.selector.as_ref(), workload)
                    && matches!(
                        p.spec.action,
                        AuthorizationAction::Allow | AuthorizationAction::Deny
                    )
            })
        };
        for policy in selecting().filter(|p| p.spec.action == AuthorizationAction::Deny) {
            if policy
                .spec
                .rules
                .iter()
                .any(|r| rule_matches(r, conn, true))
            {
                return AuthzDecision::Deny(format!(
                    "denied by DENY policy {}/{}",
                    policy.namespace, policy.name
                ));
            }
        }
        let mut allow_policies = selecting()
            .filter(|p| p.spec.action == AuthorizationAction::Allow)
            .peekable();
        if allow_policies.peek().is_none() {
            return AuthzDecision::Allow;
        }
        let mut names = Vec::new();
        for policy in allow_policies {
            if policy
                .spec
                .rules
                .iter()
                .any(|r| rule_matches(r, conn, false))
            {
                return AuthzDecision::Allow;
            }
            names.push(format!("{}/{}", policy.namespace, policy.name));
        }
        AuthzDecision::Deny(format!(
            "no ALLOW policy matched (selecting: {})",
            names.join(", ")
        ))
    }

    /// The effective mTLS mode: a selecting workload policy, else the
    /// namespace's, else the root namespace's, else PERMISSIVE. UNSET
    /// inherits from the next level.
    pub fn mtls_mode(&self, workload: &Workload) -> MtlsMode {
        let levels = [
            self.peer_authentication
                .iter()
                .filter(|p| p.namespace == workload.namespace && p.selector.is_some())
                .find(|p| selects(&p.namespace, p.selector.as_ref(), workload)),
            self.peer_authentication
                .iter()
                .find(|p| p.namespace == workload.namespace && p.selector.is_none()),
            self.peer_authentication
                .iter()
                .find(|p| p.namespace == ROOT_NAMESPACE && p.selector.is_none()),
        ];
        levels
            .into_iter()
            .flatten()
            .map(|p| p.mode_value)
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive)
    }
}

fn selects(
    namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
    workload: &Workload,
) -> bool {
    let namespace_ok = namespace == workload.namespace || namespace == ROOT_NAMESPACE;
    namespace_ok
        && selector.is_none_or(|labels| {
            labels
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v))
        })
}

fn rule_matches(
    rule: &mesh_config::AuthorizationRule,
    conn: &ConnectionAttrs<'_>,
    deny: bool,
) -> bool {
    if !deny && rule.needs_l7_outside_operations() {
        return false;
    }
    let from_ok = rule.from.is_empty() || rule.from.iter().any(|f| source_matches(&f.source, conn));
    let to_ok = rule.to.is_empty()
        || rule.to.iter().any(|t| {
            let op = &t.operation;
            if op.needs_l7() && !deny {
                return false;
            }
            let port = conn.destination_port.to_string();
            (op.ports.is_empty() || op.ports.contains(&port)) && !op.not_ports.contains(&port)
        });
    from_ok && to_ok
}

fn source_matches(source: &Source, conn: &ConnectionAttrs<'_>) -> bool {
    let principal = conn
        .source_identity
        .map(|id| id.strip_prefix("spiffe://").unwrap_or(id));
    let namespace = principal.and_then(namespace_of);
    let any = |patterns: &[String], value: Option<&str>| {
        value.is_some_and(|v| patterns.iter().any(|p| wildcard_match(p, v)))
    };
    let ip_in = |blocks: &[String]| blocks.iter().any(|b| cidr_contains(b, conn.source_ip));
    (source.principals.is_empty() || any(&source.principals, principal))
        && !any(&source.not_principals, principal)
        && (source.namespaces.is_empty() || any(&source.namespaces, namespace))
        && !any(&source.not_namespaces, namespace)
        && (source.ip_blocks.is_empty() || ip_in(&source.ip_blocks))
        && !ip_in(&source.not_ip_blocks)
}

/// `td/ns/NS/sa/SA` → `NS`.
fn namespace_of(principal: &str) -> Option<&str> {
    let rest = principal.split_once("/ns/")?.1;
    Some(rest.split_once("/sa/").map_or(rest, |(ns, _)| ns))
}

/// Istio's string match: exact, `*` (anything non-empty), `prefix*`, `*suffix`.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

fn cidr_contains(block: &str, ip: IpAddr) -> bool {
    let Some((net, prefix)) = parse_cidr(block) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}
