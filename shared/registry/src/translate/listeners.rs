//! Served Gateways and their listeners: validation, conflicts, allowedRoutes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use mesh_config::gateway_api::experimental::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector,
};
use mesh_config::{GatewaySpec, Object, Resources};

use super::backends::GATEWAY_GROUP;
use super::conditions::HTTP_ROUTE_KIND;
use super::grpc::GRPC_ROUTE_KIND;
use super::hostnames::HostKey;
use super::TranslateOptions;
use crate::snapshot::{ListenerProtocol, ObjectRef};

pub enum AllowedNamespaces {
    Same,
    All,
    Selector(GatewayListenersAllowedRoutesNamespacesSelector),
}

/// A failed condition: (reason, message).
pub type Problem = (&'static str, String);

pub struct ListenerCtx {
    pub name: String,
    pub port: u16,
    pub hostname: HostKey,
    pub allowed: AllowedNamespaces,
    /// HTTPRoute is among the allowed kinds.
    pub allows_http_route: bool,
    /// GRPCRoute is among the allowed kinds.
    pub allows_grpc_route: bool,
    pub supported_kinds: Vec<String>,
    /// Err = Accepted=False (and not programmed).
    pub accepted: Result<(), Problem>,
    /// Err = ResolvedRefs=False.
    pub resolved_refs: Result<(), Problem>,
    /// Some = Conflicted=True with this reason and message.
    pub conflicted: Option<Problem>,
    /// HTTP or HTTPS (the port's protocol).
    pub protocol: ListenerProtocol,
    /// HTTPS: the certificate served (Err: ResolvedRefs=False, not programmed).
    pub certificate: Option<Result<Arc<rustls::sign::CertifiedKey>, Problem>>,
    /// Routes attached (each counted once) for `attachedRoutes`.
    pub attached: HashSet<ObjectRef>,
    /// (index of the compiled route, intersected hostnames).
    pub attachments: Vec<(usize, Vec<crate::translate::hostnames::HostKey>)>,
    /// GRPCRoutes: (index of the compiled GRPCRoute, intersected hostnames).
    pub grpc_attachments: Vec<(usize, Vec<crate::translate::hostnames::HostKey>)>,
}

impl ListenerCtx {
    /// Serves traffic: accepted and not conflicted.
    pub fn serves(&self) -> bool {
        self.accepted.is_ok()
            && self.conflicted.is_none()
            && !matches!(self.certificate, Some(Err(_)))
    }
}

pub struct GatewayCtx<'a> {
    pub object: &'a Object<GatewaySpec>,
    pub key: ObjectRef,
    pub listeners: Vec<ListenerCtx>,
}

/// Gateways of our class (and only `options.gateway` when set), oldest first,
/// with listeners validated and conflicts marked on the later listener.
pub fn collect<'a>(resources: &'a Resources, options: &TranslateOptions) -> Vec<GatewayCtx<'a>> {
    let mut gateways: Vec<&Object<GatewaySpec>> = resources
        .gateways
        .values()
        .filter(|g| g.spec.gateway_class_name == options.gateway_class)
        .filter(|g| {
            options
                .gateway
                .as_ref()
                .is_none_or(|want| want.namespace == g.meta.namespace && want.name == g.meta.name)
        })
        .collect();
    gateways.sort_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()));

    let mut taken: HashSet<(u16, HostKey)> = HashSet::new();
    // The protocol of the first accepted listener on each port.
    let mut port_protocol: HashMap<u16, ListenerProtocol> = HashMap::new();
    let mut out = Vec::new();
    for g in gateways {
        let key = ObjectRef {
            namespace: g.meta.namespace.clone(),
            name: g.meta.name.clone(),
        };
        let mut listeners = Vec::new();
        for l in &g.spec.listeners {
            let mut ctx = listener(l, &g.meta.namespace, resources);
            let first_protocol = ctx
                .accepted
                .is_ok()
                .then(|| *port_protocol.entry(ctx.port).or_insert(ctx.protocol));
            if first_protocol.is_some_and(|p| p != ctx.protocol) {
                ctx.conflicted = Some((
                    "ProtocolConflict",
                    format!(
                        "another listener on port {} uses a different protocol",
                        ctx.port
                    ),
                ));
            } else if ctx.accepted.is_ok() && !taken.insert((ctx.port, ctx.hostname.clone())) {
                ctx.conflicted = Some((
                    "HostnameConflict",
                    format!(
                        "another listener on port {} already serves hostname {}",
                        ctx.port,
                        ctx.hostname.display().unwrap_or_else(|| "(any)".into())
                    ),
                ));
            }
            listeners.push(ctx);
        }
        out.push(GatewayCtx {
            object: g,
            key,
            listeners,
        });
    }
    out
}

fn listener(l: &GatewayListeners, gateway_ns: &str, resources: &Resources) -> ListenerCtx {
    let port = u16::try_from(l.port).ok().filter(|p| *p != 0);
    let mut accepted = Ok(());
    let https = l.protocol.eq_ignore_ascii_case("HTTPS");
    let protocol = super::l4_listeners::protocol_of(&l.protocol);
    if let Some(problem) = super::l4_listeners::protocol_problem(l) {
        accepted = Err(problem);
    } else if https && !super::certificates::is_terminate(l.tls.as_ref()) {
        accepted = Err((
            "UnsupportedValue",
            "tls.mode Passthrough is not supported on HTTPS listeners (use protocol TLS)".into(),
        ));
    } else if port.is_none() {
        accepted = Err((
            "PortUnavailable",
            format!("port {} is out of range", l.port),
        ));
    }
    let hostname = l
        .hostname
        .as_deref()
        .map(HostKey::parse)
        .unwrap_or(HostKey::Any);

    let allowed_routes = l.allowed_routes.as_ref();
    let allowed = match allowed_routes.and_then(|a| a.namespaces.as_ref()) {
        None => AllowedNamespaces::Same,
        Some(ns) => match ns
            .from
            .as_ref()
            .unwrap_or(&GatewayListenersAllowedRoutesNamespacesFrom::Same)
        {
            GatewayListenersAllowedRoutesNamespacesFrom::Same => AllowedNamespaces::Same,
            GatewayListenersAllowedRoutesNamespacesFrom::All => AllowedNamespaces::All,
            GatewayListenersAllowedRoutesNamespacesFrom::Selector => {
                AllowedNamespaces::Selector(ns.selector.clone().unwrap_or_default())
            }
        },
    };

    let mut resolved_refs = Ok(());
    let mut supported_kinds = Vec::new();
    match allowed_routes.and_then(|a| a.kinds.as_deref()) {
        None | Some([]) => {
            supported_kinds.push(HTTP_ROUTE_KIND.to_string());
            supported_kinds.push(GRPC_ROUTE_KIND.to_string());
        }
        Some(kinds) => {
            let mut invalid = Vec::new();
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                let known = match k.kind.as_str() {
                    "HTTPRoute" => Some(HTTP_ROUTE_KIND),
                    "GRPCRoute" => Some(GRPC_ROUTE_KIND),
                    _ => None,
                };
                if let Some(known) = known.filter(|_| group == GATEWAY_GROUP) {
                    if !supported_kinds.iter().any(|s| s == known) {
                        supported_kinds.push(known.to_string());
                    }
                } else {
                    invalid.push(format!("{group}/{}", k.kind));
                }
            }
            if !invalid.is_empty() {
                resolved_refs = Err((
                    "InvalidRouteKinds",
                    format!("unsupported route kinds: {}", invalid.join(", ")),
                ));
            }
        }
    }
    if accepted.is_err() {
        supported_kinds.clear();
    }
    let certificate = (https && accepted.is_ok())
        .then(|| super::certificates::resolve(l.tls.as_ref(), gateway_ns, resources));
    if let Some(Err(problem)) = &certificate {
        // An invalid route kind and an invalid certificate both make ResolvedRefs
        // False; the certificate problem is the one that stops serving.
        resolved_refs = Err(problem.clone());
    }
    let allows_http_route = supported_kinds.iter().any(|k| k == HTTP_ROUTE_KIND);
    let allows_grpc_route = supported_kinds.iter().any(|k| k == GRPC_ROUTE_KIND);
    // TLS passthrough and TCP listeners take only their own L4 route kind.
    let l4 = super::l4_listeners::is_l4(protocol);
    if l4 {
        let kinds = allowed_routes.and_then(|a| a.kinds.as_deref());
        (supported_kinds, resolved_refs) = super::l4_listeners::route_kinds(protocol, kinds);
        if accepted.is_err() {
            supported_kinds.clear();
        }
    }
    let allows_http_route = allows_http_route && !l4;
    let allows_grpc_route = allows_grpc_route && !l4;
    ListenerCtx {
        name: l.name.clone(),
        port: port.unwrap_or(0),
        hostname,
        allowed,
        allows_http_route,
        allows_grpc_route,
        supported_kinds,
        accepted,
        resolved_refs,
        conflicted: None,
        protocol,
        certificate,
        attached: HashSet::new(),
        attachments: Vec::new(),
        grpc_attachments: Vec::new(),
    }
}

impl ListenerCtx {
    /// allowedRoutes.namespaces for a route in `route_ns` on a Gateway in `gateway_ns`.
    pub fn allows_namespace(
        &self,
        gateway_ns: &str,
        route_ns: &str,
        resources: &Resources,
    ) -> bool {
        match &self.allowed {
            AllowedNamespaces::Same => gateway_ns == route_ns,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(sel) => {
                selector_matches(sel, &resources.namespace_labels(route_ns))
            }
        }
    }
}

/// Kubernetes label selector semantics; an unknown operator matches nothing.
pub fn selector_matches(
    sel: &GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}
