//! L7 AuthorizationPolicy, evaluated per request in the waypoint with
//! Envoy RBAC's semantics as Istio configures it:
//! CUSTOM (no external authorizer here: refuse) → DENY (any matching policy
//! denies) → ALLOW (when any ALLOW policy applies, one must match; none
//! applying allows). The compiled policies come from
//! `mesh_registry::translate::l7_authz`.
//!
//! String forms are Istio's: `*` (present, non-empty), `prefix*`,
//! `*suffix`, else exact. `not*` fields hold when the value is absent.
//! A condition key ringmesh does not evaluate never matches in an ALLOW
//! rule and is skipped in a DENY rule (denying more, never less).

use std::net::IpAddr;

use mesh_registry::translate::l7_authz::{
    ConditionKey, IpBlock, L7Condition, L7Operation, L7Rule, L7Source,
};
use mesh_registry::L7Authz;

use crate::codec::RequestHead;

/// Envoy's body for a request its RBAC filter denied.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What the policy sees of one request.
pub struct RequestAttrs<'a> {
    /// The HBONE peer's SPIFFE identity (`spiffe://td/ns/x/sa/y` or without
    /// the scheme); None for a plaintext peer.
    pub peer_identity: Option<&'a str>,
    /// The connection's source (the client pod the tunnel speaks for).
    pub source_ip: IpAddr,
    /// The original client (first `x-forwarded-for` hop, else `source_ip`).
    pub remote_ip: IpAddr,
    /// The destination Service port.
    pub destination_port: u16,
    pub req: &'a RequestHead,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzVerdict {
    Allow,
    /// Why, naming the policy (`namespace/name`).
    Deny(String),
}

/// Decides one request.
pub fn authorize(authz: &L7Authz, a: &RequestAttrs<'_>) -> AuthzVerdict {
    if let Some(custom) = authz.custom.first() {
        return AuthzVerdict::Deny(format!(
            "CUSTOM policy {custom}: no external authorizer is configured"
        ));
    }
    let attrs = Attrs::new(a);
    for policy in &authz.deny {
        if policy.rules.iter().any(|r| rule_matches(r, &attrs, true)) {
            return AuthzVerdict::Deny(format!("denied by DENY policy {}", policy.name));
        }
    }
    if authz.allow.is_empty() {
        return AuthzVerdict::Allow;
    }
    for policy in &authz.allow {
        if policy.rules.iter().any(|r| rule_matches(r, &attrs, false)) {
            return AuthzVerdict::Allow;
        }
    }
    let names: Vec<&str> = authz.allow.iter().map(|p| p.name.as_str()).collect();
    AuthzVerdict::Deny(format!("no ALLOW policy matched ({})", names.join(", ")))
}

/// The request's attributes in the forms the rules compare.
struct Attrs<'a> {
    principal: Option<&'a str>,
    namespace: Option<&'a str>,
    source_ip: IpAddr,
    remote_ip: IpAddr,
    port: String,
    method: &'a str,
    path: &'a str,
    /// Host without port, lower-case.
    host: String,
    req: &'a RequestHead,
}

impl<'a> Attrs<'a> {
    fn new(a: &RequestAttrs<'a>) -> Self {
        let principal = a
            .peer_identity
            .map(|id| id.strip_prefix("spiffe://").unwrap_or(id));
        let raw_host = a.req.host_header().map(|h| &h[..]).unwrap_or_default();
        Self {
            principal,
            namespace: principal.and_then(namespace_of),
            source_ip: a.source_ip,
            remote_ip: a.remote_ip,
            port: a.destination_port.to_string(),
            method: std::str::from_utf8(&a.req.method).unwrap_or(""),
            path: std::str::from_utf8(a.req.path_only()).unwrap_or(""),
            host: crate::route::routing_host(raw_host).into_owned(),
            req: a.req,
        }
    }
}

fn rule_matches(rule: &L7Rule, a: &Attrs<'_>, deny: bool) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, a)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, a)))
        && rule.when.iter().all(|c| condition_holds(c, a, deny))
}

fn source_matches(s: &L7Source, a: &Attrs<'_>) -> bool {
    let in_blocks = |blocks: &[IpBlock], ip: IpAddr| blocks.iter().any(|b| b.contains(ip));
    positive(&s.principals, a.principal)
        && !any(&s.not_principals, a.principal)
        && positive(&s.namespaces, a.namespace)
        && !any(&s.not_namespaces, a.namespace)
        && (s.ip_blocks.is_empty() || in_blocks(&s.ip_blocks, a.source_ip))
        && !in_blocks(&s.not_ip_blocks, a.source_ip)
        && (s.remote_ip_blocks.is_empty() || in_blocks(&s.remote_ip_blocks, a.remote_ip))
        && !in_blocks(&s.not_remote_ip_blocks, a.remote_ip)
        // No JWT is validated: there is never a request principal.
        && s.request_principals.is_empty()
}

fn operation_matches(o: &L7Operation, a: &Attrs<'_>) -> bool {
    let host_any = |patterns: &[String]| {
        patterns
            .iter()
            .any(|p| wildcard_match(&p.to_ascii_lowercase(), &a.host))
    };
    (o.hosts.is_empty() || host_any(&o.hosts))
        && !host_any(&o.not_hosts)
        && positive(&o.ports, Some(&a.port))
        && !any(&o.not_ports, Some(&a.port))
        && positive(&o.methods, Some(a.method))
        && !any(&o.not_methods, Some(a.method))
        && positive(&o.paths, Some(a.path))
        && !any(&o.not_paths, Some(a.path))
}

fn condition_holds(c: &L7Condition, a: &Attrs<'_>, deny: bool) -> bool {
    let value: Option<std::borrow::Cow<'_, str>> = match &c.key {
        ConditionKey::RequestHeader(name) => a
            .req
            .headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(Into::into),
        ConditionKey::SourcePrincipal => a.principal.map(Into::into),
        ConditionKey::SourceNamespace => a.namespace.map(Into::into),
        ConditionKey::DestinationPort => Some(a.port.as_str().into()),
        ConditionKey::SourceIp | ConditionKey::RemoteIp => {
            let ip = if c.key == ConditionKey::SourceIp {
                a.source_ip
            } else {
                a.remote_ip
            };
            let in_list = |list: &[String]| list.iter().any(|t| IpBlock::parse(t).contains(ip));
            return (c.values.is_empty() || in_list(&c.values)) && !in_list(&c.not_values);
        }
        ConditionKey::Unsupported(_) => return deny,
    };
    let value = value.as_deref();
    positive(&c.values, value) && !any(&c.not_values, value)
}

/// An empty list holds; otherwise the value must be present and match one.
fn positive(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || any(patterns, value)
}

fn any(patterns: &[String], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| wildcard_match(p, v)))
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

/// The original client for `remote.ip`/`remoteIpBlocks`: the first
/// `x-forwarded-for` entry when it parses, else the connection's source.
pub fn remote_ip(req: &RequestHead, source: IpAddr) -> IpAddr {
    req.headers
        .get("x-forwarded-for")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse().ok())
        .unwrap_or(source)
}

/// The engine's hook (HTTP/1.1 and HTTP/2): the Service-scoped request
/// (waypoint) checked against its Service's policies. Some = deny: answer
/// 403 [`DENIED_BODY`] (gRPC: PERMISSION_DENIED), recorded against the
/// returned destination (the Service port, named like its default cluster
/// so denials and served requests share one `destination_service`).
pub(crate) fn check_request(
    h: &crate::HttpHandler,
    snapshot: &mesh_registry::Snapshot,
    service: Option<std::net::SocketAddr>,
    peer_identity: Option<&str>,
    source_ip: IpAddr,
    req: &RequestHead,
) -> Option<mesh_registry::Cluster> {
    let vip = service?;
    let route = snapshot.services.get(vip)?;
    let authz = route.authz.as_deref()?;
    let attrs = RequestAttrs {
        peer_identity,
        source_ip,
        remote_ip: remote_ip(req, source_ip),
        destination_port: vip.port(),
        req,
    };
    match authorize(authz, &attrs) {
        AuthzVerdict::Allow => None,
        AuthzVerdict::Deny(reason) => {
            h.metrics.authz_denied();
            tracing::debug!(
                service = %format_args!("{}/{}", route.service.namespace, route.service.name),
                peer = peer_identity.unwrap_or("-"),
                %source_ip,
                %reason,
                "request denied by AuthorizationPolicy"
            );
            Some(mesh_registry::Cluster {
                name: format!(
                    "{}/{}:{}",
                    route.service.namespace, route.service.name, route.port
                ),
                service: route.service.clone(),
                port: route.port,
                endpoints: Vec::new(),
                protocol: Default::default(),
                policy: Default::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_registry::ObjectRef;

    fn authz(yaml: &str) -> L7Authz {
        let loaded = mesh_config::load_str("a.yaml", yaml);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let obj = |ns: &str, n: &str| ObjectRef {
            namespace: ns.into(),
            name: n.into(),
        };
        mesh_registry::translate::l7_authz::l7_authz_for(
            &loaded.resources,
            &obj("apps", "waypoint"),
            &obj("apps", "echo"),
        )
        .expect("a policy targets apps/echo")
    }

    fn request(text: &str) -> RequestHead {
        let mut buf = bytes::BytesMut::from(text.as_bytes());
        crate::codec::request::parse_request(&mut buf, 8192)
            .unwrap()
            .unwrap()
    }

    fn decide(authz: &L7Authz, identity: Option<&str>, text: &str) -> bool {
        let req = request(text);
        let ip: IpAddr = "10.0.1.5".parse().unwrap();
        let attrs = RequestAttrs {
            peer_identity: identity,
            source_ip: ip,
            remote_ip: remote_ip(&req, ip),
            destination_port: 80,
            req: &req,
        };
        authorize(authz, &attrs) == AuthzVerdict::Allow
    }

    const GOOD: Option<&str> = Some("spiffe://cluster.local/ns/apps/sa/client");
    const BAD: Option<&str> = Some("spiffe://cluster.local/ns/other/sa/bad");

    fn policy(action: &str, rules: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: apps}}\nspec:\n  targetRefs: [{{kind: Service, group: \"\", name: echo}}]\n  action: {action}\n  rules: {rules}\n"
        )
    }

    #[test]
    fn allow_on_paths_and_methods_with_istio_forms() {
        let a = authz(&policy(
            "ALLOW",
            r#"[{to: [{operation: {paths: ["/allowed", "/api/*", "*.css"], methods: [GET, HEAD]}}]}]"#,
        ));
        assert!(decide(
            &a,
            GOOD,
            "GET /allowed HTTP/1.1\r\nHost: echo\r\n\r\n"
        ));
        assert!(decide(
            &a,
            GOOD,
            "GET /allowed?q=1 HTTP/1.1\r\nHost: echo\r\n\r\n"
        ));
        assert!(decide(
            &a,
            GOOD,
            "HEAD /api/x/y HTTP/1.1\r\nHost: echo\r\n\r\n"
        ));
        assert!(decide(
            &a,
            GOOD,
            "GET /site/a.css HTTP/1.1\r\nHost: echo\r\n\r\n"
        ));
        assert!(!decide(
            &a,
            GOOD,
            "GET /allowed/more HTTP/1.1\r\nHost: echo\r\n\r\n"
        ));
        assert!(!decide(
            &a,
            GOOD,
            "POST /allowed HTTP/1.1\r\nHost: echo\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!decide(
            &a,
            GOOD,
            "GET /other HTTP/1.1\r\nHost: echo\r\n\r\n"
        ));
    }

    #[test]
    fn deny_by_principal_and_namespace_wins_over_allow() {
        let mut a = authz(&policy(
            "DENY",
            r#"[{from: [{source: {principals: ["cluster.local/ns/other/*"]}}]}]"#,
        ));
        assert!(decide(&a, GOOD, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"));
        assert!(!decide(&a, BAD, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"));
        // An ALLOW that would admit everyone does not override the DENY.
        let allow_all = authz(&policy("ALLOW", "[{}]"));
        a.allow = allow_all.allow;
        assert!(!decide(&a, BAD, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"));
        assert!(decide(&a, GOOD, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"));
        let ns = authz(&policy(
            "ALLOW",
            r#"[{from: [{source: {namespaces: [apps], notPrincipals: ["*/sa/blocked"]}}]}]"#,
        ));
        assert!(decide(&ns, GOOD, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"));
        assert!(!decide(&ns, BAD, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"));
        assert!(!decide(&ns, None, "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"));
        let blocked = Some("spiffe://cluster.local/ns/apps/sa/blocked");
        assert!(!decide(
            &ns,
            blocked,
            "GET / HTTP/1.1\r\nHost: echo\r\n\r\n"
        ));
    }

    #[test]
    fn conditions_hosts_ports_and_ip_blocks() {
        let a = authz(&policy(
            "ALLOW",
            r#"[{to: [{operation: {hosts: ["*.example.com"], notPaths: ["/admin*"], ports: ["80"]}}],
                 when: [{key: "request.headers[x-team]", values: [blue, "gr*"]},
                        {key: source.namespace, notValues: [other]},
                        {key: destination.port, values: ["80"]}],
                 from: [{source: {ipBlocks: [10.0.0.0/16], remoteIpBlocks: [192.168.0.0/16]}}]}]"#,
        ));
        let ok = "GET /x HTTP/1.1\r\nHost: A.Example.com:80\r\nx-team: green\r\nx-forwarded-for: 192.168.1.1, 10.0.0.1\r\n\r\n";
        assert!(decide(&a, GOOD, ok));
        assert!(!decide(&a, BAD, ok), "source.namespace notValues");
        assert!(!decide(&a, GOOD, &ok.replace("/x", "/admin/x")), "notPaths");
        assert!(
            !decide(&a, GOOD, &ok.replace("green", "red")),
            "header value"
        );
        assert!(
            !decide(&a, GOOD, &ok.replace("x-team: green\r\n", "")),
            "header absent"
        );
        assert!(
            !decide(&a, GOOD, &ok.replace("A.Example.com", "other.test")),
            "host"
        );
        assert!(
            !decide(&a, GOOD, &ok.replace("192.168.1.1", "172.16.0.1")),
            "remoteIpBlocks"
        );
    }

    #[test]
    fn unsupported_conditions_custom_and_audit() {
        let allow = authz(&policy(
            "ALLOW",
            r#"[{when: [{key: "request.auth.claims[iss]", values: [x]}]}]"#,
        ));
        assert!(!decide(&allow, GOOD, "GET / HTTP/1.1\r\nHost: e\r\n\r\n"));
        let deny = authz(&policy(
            "DENY",
            r#"[{when: [{key: "request.auth.claims[iss]", values: [x]}]}]"#,
        ));
        assert!(!decide(&deny, GOOD, "GET / HTTP/1.1\r\nHost: e\r\n\r\n"));
        let audit = authz(&policy("AUDIT", "[{}]"));
        assert!(decide(&audit, GOOD, "GET / HTTP/1.1\r\nHost: e\r\n\r\n"));
        let custom = authz(&policy("CUSTOM", "[{}]"));
        assert!(!decide(&custom, GOOD, "GET / HTTP/1.1\r\nHost: e\r\n\r\n"));
    }
}
