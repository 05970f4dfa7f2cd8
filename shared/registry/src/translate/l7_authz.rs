//! L7 AuthorizationPolicy for the waypoint, the Istio ambient way: a policy
//! whose `targetRefs` name a Service (`kind: Service`, same namespace) or
//! this waypoint (`kind: Gateway`, its name, same namespace) is compiled
//! into the Service port's [`L7Authz`], which the engine evaluates per
//! request (`mesh_http::policy::authz`). Selector-based policies stay
//! ztunnel's (`workloads::authz`), which in turn ignores targetRef policies.
//!
//! Compilation keeps Istio's forms (`*`, `prefix*`, `*suffix`, exact) as
//! strings and parses CIDRs once. Condition keys ringmesh cannot evaluate
//! (JWT claims, `request.auth.*`...) become [`ConditionKey::Unsupported`]:
//! such a rule never matches in an ALLOW policy and matches on its other
//! parts in a DENY policy (denying more, never less).

use std::net::IpAddr;

use mesh_config::{
    parse_cidr, AuthorizationAction, AuthorizationPolicySpec, AuthzTargetRef, Object, Resources,
};
use serde::Serialize;

use crate::snapshot::ObjectRef;

/// The policies one Service port enforces, by action (AUDIT is ignored).
#[derive(Debug, Default, Clone, Serialize)]
pub struct L7Authz {
    /// CUSTOM policies (`namespace/name`): ringmesh has no external
    /// authorizer, so their presence refuses every request (fail closed).
    pub custom: Vec<String>,
    pub deny: Vec<L7Policy>,
    pub allow: Vec<L7Policy>,
}

impl L7Authz {
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty() && self.deny.is_empty() && self.allow.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct L7Policy {
    /// `namespace/name`, for the log line and the access log.
    pub name: String,
    /// A policy matches when any rule matches; no rules match nothing.
    pub rules: Vec<L7Rule>,
}

/// Matches when any `from` matches (or none is given), any `to` matches
/// (or none), and every `when` holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct L7Rule {
    pub from: Vec<L7Source>,
    pub to: Vec<L7Operation>,
    pub when: Vec<L7Condition>,
}

/// All set fields must match. Principals are written `td/ns/x/sa/y`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct L7Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<IpBlock>,
    pub not_ip_blocks: Vec<IpBlock>,
    pub remote_ip_blocks: Vec<IpBlock>,
    pub not_remote_ip_blocks: Vec<IpBlock>,
    /// JWT principals: no JWT is validated, so a request has none.
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
}

/// All set fields must match.
#[derive(Debug, Clone, Default, Serialize)]
pub struct L7Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct L7Condition {
    pub key: ConditionKey,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ConditionKey {
    /// `request.headers[NAME]` (name lower-cased).
    RequestHeader(String),
    SourceIp,
    RemoteIp,
    SourcePrincipal,
    SourceNamespace,
    DestinationPort,
    /// A key ringmesh does not evaluate (kept for the dump).
    Unsupported(String),
}

/// An IP network; an unparseable block is kept as `None` and matches nothing.
#[derive(Debug, Clone, Serialize)]
pub struct IpBlock {
    pub text: String,
    #[serde(skip)]
    pub network: Option<(IpAddr, u8)>,
}

impl IpBlock {
    pub fn parse(text: &str) -> Self {
        Self {
            text: text.to_string(),
            network: parse_cidr(text),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let Some((net, prefix)) = self.network else {
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
}

/// The L7 policies of Service `service` served by waypoint `waypoint`;
/// None when no policy targets either.
pub fn l7_authz_for(
    resources: &Resources,
    waypoint: &ObjectRef,
    service: &ObjectRef,
) -> Option<L7Authz> {
    let mut policies: Vec<&Object<AuthorizationPolicySpec>> = resources
        .authorization_policies
        .values()
        .filter(|p| {
            p.spec
                .targets()
                .any(|t| targets(t, &p.meta.namespace, waypoint, service))
        })
        .collect();
    if policies.is_empty() {
        return None;
    }
    policies
        .sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
    let mut authz = L7Authz::default();
    for p in policies {
        let name = format!("{}/{}", p.meta.namespace, p.meta.name);
        let compiled = || L7Policy {
            name: name.clone(),
            rules: p.spec.rules.iter().map(compile_rule).collect(),
        };
        match p.spec.action {
            AuthorizationAction::Allow => authz.allow.push(compiled()),
            AuthorizationAction::Deny => authz.deny.push(compiled()),
            AuthorizationAction::Custom => {
                // Logged once per (re)load; every request is then refused.
                tracing::warn!(
                    policy = %name,
                    service = %format_args!("{}/{}", service.namespace, service.name),
                    "AuthorizationPolicy action CUSTOM is not supported (no external authorizer): requests to this Service are refused"
                );
                authz.custom.push(name)
            }
            AuthorizationAction::Audit => {}
        }
    }
    Some(authz)
}

fn targets(t: &AuthzTargetRef, namespace: &str, waypoint: &ObjectRef, service: &ObjectRef) -> bool {
    match t.kind.as_str() {
        "Service" => {
            matches!(t.group.as_str(), "" | "core")
                && namespace == service.namespace
                && t.name == service.name
        }
        "Gateway" => {
            t.group == "gateway.networking.k8s.io"
                && namespace == waypoint.namespace
                && t.name == waypoint.name
        }
        _ => false,
    }
}

fn compile_rule(rule: &mesh_config::AuthorizationRule) -> L7Rule {
    L7Rule {
        from: rule
            .from
            .iter()
            .map(|f| {
                let s = &f.source;
                L7Source {
                    principals: s.principals.clone(),
                    not_principals: s.not_principals.clone(),
                    namespaces: s.namespaces.clone(),
                    not_namespaces: s.not_namespaces.clone(),
                    ip_blocks: blocks(&s.ip_blocks),
                    not_ip_blocks: blocks(&s.not_ip_blocks),
                    remote_ip_blocks: blocks(&s.remote_ip_blocks),
                    not_remote_ip_blocks: blocks(&s.not_remote_ip_blocks),
                    request_principals: s.request_principals.clone(),
                    not_request_principals: s.not_request_principals.clone(),
                }
            })
            .collect(),
        to: rule
            .to
            .iter()
            .map(|t| {
                let o = &t.operation;
                L7Operation {
                    hosts: o.hosts.clone(),
                    not_hosts: o.not_hosts.clone(),
                    ports: o.ports.clone(),
                    not_ports: o.not_ports.clone(),
                    methods: o.methods.clone(),
                    not_methods: o.not_methods.clone(),
                    paths: o.paths.clone(),
                    not_paths: o.not_paths.clone(),
                }
            })
            .collect(),
        when: rule
            .when
            .iter()
            .map(|c| L7Condition {
                key: condition_key(&c.key),
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            })
            .collect(),
    }
}

fn condition_key(key: &str) -> ConditionKey {
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        return ConditionKey::RequestHeader(name.to_ascii_lowercase());
    }
    match key {
        "source.ip" => ConditionKey::SourceIp,
        "remote.ip" => ConditionKey::RemoteIp,
        "source.principal" => ConditionKey::SourcePrincipal,
        "source.namespace" => ConditionKey::SourceNamespace,
        "destination.port" => ConditionKey::DestinationPort,
        other => ConditionKey::Unsupported(other.to_string()),
    }
}

fn blocks(texts: &[String]) -> Vec<IpBlock> {
    texts.iter().map(|t| IpBlock::parse(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::load_str;

    const CONFIG: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-service, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/allowed*"], methods: [GET]}}]
    when: [{key: "request.headers[X-Team]", values: [blue]}, {key: "request.auth.claims[iss]", values: [x]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-waypoint, namespace: apps}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/apps/sa/bad"], ipBlocks: [10.0.0.0/8, 192.168.0.0/16]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: apps}
spec:
  targetRef: {kind: Service, group: "", name: echo}
  action: CUSTOM
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-service, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: other}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-namespace, namespace: elsewhere}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-selector, namespace: apps}
spec:
  selector: {matchLabels: {app: echo}}
"#;

    fn obj(ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn policies_targeting_the_service_or_the_waypoint_are_compiled() {
        let loaded = load_str("a.yaml", CONFIG);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let authz = l7_authz_for(
            &loaded.resources,
            &obj("apps", "waypoint"),
            &obj("apps", "echo"),
        )
        .unwrap();
        assert_eq!(authz.custom, vec!["apps/custom".to_string()]);
        assert_eq!(authz.allow.len(), 1, "{authz:?}");
        assert_eq!(authz.allow[0].name, "apps/on-service");
        let when = &authz.allow[0].rules[0].when;
        assert_eq!(when[0].key, ConditionKey::RequestHeader("x-team".into()));
        assert!(matches!(when[1].key, ConditionKey::Unsupported(_)));
        assert_eq!(authz.deny.len(), 1);
        let source = &authz.deny[0].rules[0].from[0];
        assert!(source.ip_blocks[0].contains("10.1.2.3".parse().unwrap()));
        assert!(!source.ip_blocks[1].contains("10.1.2.3".parse().unwrap()));
        assert!(l7_authz_for(
            &loaded.resources,
            &obj("apps", "wp2"),
            &obj("apps", "unbound")
        )
        .is_none());
    }
}
