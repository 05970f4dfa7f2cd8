//! Istio security kinds (`security.istio.io` v1 and v1beta1) and the Pod
//! annotation ztunnel reads for in-pod capture: small serde structs of our
//! own holding the L4 fields ringmesh enforces. Unknown fields are ignored.
//!
//! Capture annotation: a Pod with `ringmesh.io/netns: /run/netns/NAME` is
//! captured by the ztunnel of its node, which enters that network namespace
//! and listens there on 15001, 15006 and 15008 (Istio's in-pod mode).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Pod annotation naming the pod's network namespace file; its presence
/// means the pod's traffic is captured by ztunnel.
pub const NETNS_ANNOTATION: &str = "ringmesh.io/netns";

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// No selector: the policy applies to every workload of its namespace.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub action: AuthorizationAction,
    /// No rules: an ALLOW policy matches nothing, a DENY policy matches nothing.
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
    /// Istio ambient: a policy attached to a Service (`kind: Service`) or to a
    /// waypoint (`kind: Gateway`) is enforced by the waypoint, not by ztunnel.
    #[serde(default)]
    pub target_refs: Vec<AuthzTargetRef>,
    /// The older single form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<AuthzTargetRef>,
}

impl AuthorizationPolicySpec {
    /// `targetRefs` plus `targetRef`.
    pub fn targets(&self) -> impl Iterator<Item = &AuthzTargetRef> {
        self.target_refs.iter().chain(self.target_ref.iter())
    }
}

impl AuthorizationRule {
    /// Parts outside `to` that ztunnel cannot check at L4 (`when`
    /// conditions, remote IPs, JWT principals): an ALLOW rule with them
    /// never matches at L4, a DENY rule matches on the rest.
    pub fn needs_l7_outside_operations(&self) -> bool {
        !self.when.is_empty()
            || self.from.iter().any(|f| {
                let s = &f.source;
                !s.remote_ip_blocks.is_empty()
                    || !s.not_remote_ip_blocks.is_empty()
                    || !s.request_principals.is_empty()
                    || !s.not_request_principals.is_empty()
            })
    }
}

impl Operation {
    /// Hosts, methods or paths (or their `not` forms): HTTP-only fields.
    pub fn needs_l7(&self) -> bool {
        !self.hosts.is_empty()
            || !self.methods.is_empty()
            || !self.paths.is_empty()
            || !self.not_hosts.is_empty()
            || !self.not_methods.is_empty()
            || !self.not_paths.is_empty()
    }
}

/// One `targetRefs` entry (Gateway API policy attachment).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzTargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
    /// Accepted for compatibility; ztunnel treats it as not enforceable at L4.
    Audit,
    Custom,
}

/// A rule matches when any `from` matches (or there is none) and any `to`
/// matches (or there is none).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Conditions (`key`, `values`, `notValues`); all must hold. L7 only
    /// except `source.ip`, `source.principal`, `source.namespace`,
    /// `destination.port`.
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

/// Fields of one `source`: all that are set must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// The original client address (L7: x-forwarded-for / forwarded).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// JWT principals (L7; ringmesh validates no JWTs, so these never match).
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
}

/// L4 fields of one `operation`: ports are strings in Istio's API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// L7 fields: their presence makes the rule unenforceable at L4.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<PeerAuthenticationMtls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationMtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the namespace / mesh-wide policy (PERMISSIVE at the root).
    #[default]
    Unset,
    Strict,
    Permissive,
    Disable,
}

/// Parses an IP or CIDR as Istio's `ipBlocks` accept it.
pub fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some((ip, prefix))
}
