//! Istio's ztunnel xDS types → the [`WorkloadRegistry`] ztunnel serves from:
//! the reverse of this module's parent, used by `ztunnel --xds` (connected mode).
//!
//! - Workload → `workloads::Workload`: uid `NS/NAME` (the registry's own key,
//!   not the xDS uid), the first address (4 or 16 bytes), identity
//!   `spiffe://{trust_domain}/ns/{ns}/sa/{sa}`, node. Captured = tunnel
//!   protocol HBONE. The network namespace path is node-local and never
//!   travels over xDS: it comes from `local_netns` (the ztunnel's own pod
//!   list); a captured pod of another node gets an empty path (it only marks
//!   the pod as reachable over HBONE).
//! - Service + each workload's `services` map → `MeshService` per VIP port,
//!   endpoints `podIP:target_port` (the workload's port, else the Service's
//!   target port, else the service port), sorted.
//! - Service `waypoint` → the registry's waypoint bindings
//!   (`reverse_waypoints.rs`): the waypoint's Service and its workloads, or
//!   a missing waypoint (fail closed).
//! - Authorization → the registry's policy form. Istio's Group is an AND of
//!   Rules, each an OR of Matches; the registry's rule is `from` (OR of
//!   sources) AND `to` (OR of operations), so a Group must have at most one
//!   Rules of source fields and one of destination-port fields. Anything else
//!   (destination IPs, a Match mixing both kinds) is rejected: the caller
//!   NACKs the push and keeps its last registry, rather than enforce a policy
//!   it would get wrong. WORKLOAD_SELECTOR policies apply to the workloads
//!   that list them in `authorization_policies` (xDS carries no labels).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use mesh_api::istio::security::{
    string_match::MatchType, Action, Address as CidrAddress, Authorization, Match, Scope,
    StringMatch,
};
use mesh_api::istio::workload::{address, Address, TunnelProtocol, WorkloadStatus};
use mesh_config::{
    AuthorizationAction, AuthorizationPolicySpec, AuthorizationRule, Operation, RuleFrom, RuleTo,
    Source,
};

use super::reverse_waypoints::{waypoints_of, Members};
use crate::workloads::authz::ROOT_NAMESPACE;
use crate::workloads::{spiffe_identity, MeshService, Policies, Workload, WorkloadRegistry};

/// Network namespace paths of this node's captured pods, by `(namespace, name)`.
pub type LocalNetns = HashMap<(String, String), PathBuf>;

/// The label a decoded workload carries for each WORKLOAD_SELECTOR policy
/// that lists it (`PREFIX` + `NS/NAME`); the policy selects on it.
pub const POLICY_MARKER_LABEL_PREFIX: &str = "xds.ringmesh.io/policy.";

impl WorkloadRegistry {
    /// Builds the registry from decoded xDS resources; `Err` names the first
    /// resource that cannot be used (the caller NACKs).
    pub fn from_xds<'a>(
        addresses: impl IntoIterator<Item = &'a Address>,
        authorizations: impl IntoIterator<Item = &'a Authorization>,
        trust_domain: &str,
        local_netns: &LocalNetns,
    ) -> Result<Self, String> {
        let mut workloads_by_ip = HashMap::new();
        let mut service_ports: Vec<&mesh_api::istio::workload::Service> = Vec::new();
        // Service key `NS/HOSTNAME` → (workload ip, its ports for that service).
        let mut members: Members = HashMap::new();
        for address in addresses {
            match address.r#type.as_ref() {
                Some(address::Type::Workload(w)) => {
                    let Some(workload) = workload_of(w, trust_domain, local_netns)? else {
                        continue;
                    };
                    if w.status == WorkloadStatus::Healthy as i32 {
                        for (key, ports) in &w.services {
                            members.entry(key).or_default().push((workload.ip, ports));
                        }
                    }
                    workloads_by_ip.insert(workload.ip, Arc::new(workload));
                }
                Some(address::Type::Service(s)) => service_ports.push(s),
                None => return Err("an Address holds neither a Workload nor a Service".into()),
            }
        }
        let mut services = HashMap::new();
        for service in service_ports.iter().copied() {
            let key = format!("{}/{}", service.namespace, service.hostname);
            let empty = Vec::new();
            let service_members = members.get(key.as_str()).unwrap_or(&empty);
            for vip in &service.addresses {
                let vip_ip =
                    ip_of(&vip.address).map_err(|e| format!("Service {key}: address {e}"))?;
                for port in &service.ports {
                    let service_port =
                        port_u16(port.service_port).map_err(|e| format!("Service {key}: {e}"))?;
                    let mut endpoints = Vec::new();
                    for (ip, ports) in service_members {
                        for p in ports
                            .ports
                            .iter()
                            .filter(|p| p.service_port == port.service_port)
                        {
                            let target = [p.target_port, port.target_port, port.service_port]
                                .into_iter()
                                .find(|t| *t != 0)
                                .unwrap_or(port.service_port);
                            let target =
                                port_u16(target).map_err(|e| format!("Service {key}: {e}"))?;
                            endpoints.push(SocketAddr::new(*ip, target));
                        }
                    }
                    endpoints.sort();
                    endpoints.dedup();
                    let vip = SocketAddr::new(vip_ip, service_port);
                    services.insert(
                        vip,
                        Arc::new(MeshService {
                            namespace: service.namespace.clone(),
                            name: service.name.clone(),
                            vip,
                            endpoints,
                        }),
                    );
                }
            }
        }
        let waypoints = waypoints_of(&service_ports, &members, &workloads_by_ip)?;
        let policies = authorizations
            .into_iter()
            .map(policy_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            workloads: workloads_by_ip,
            services,
            policies: Policies::from_authorizations(policies),
            waypoints,
        })
    }
}

/// Decodes `(name, Any)` pairs of one type; `Err` names the bad resource.
pub fn decode_all<'a, M: mesh_api::prost::Message + Default>(
    type_url: &str,
    resources: impl IntoIterator<Item = (&'a String, &'a mesh_api::prost_types::Any)>,
) -> Result<Vec<M>, String> {
    resources
        .into_iter()
        .map(|(name, any)| {
            mesh_api::from_any::<M>(type_url, any).map_err(|e| format!("resource {name:?}: {e}"))
        })
        .collect()
}

/// `None` for a workload without an address (nothing can reach it).
fn workload_of(
    w: &mesh_api::istio::workload::Workload,
    trust_domain: &str,
    local_netns: &LocalNetns,
) -> Result<Option<Workload>, String> {
    let Some(first) = w.addresses.first() else {
        return Ok(None);
    };
    let ip = ip_of(first).map_err(|e| format!("Workload {}: address {e}", w.uid))?;
    if w.namespace.is_empty() || w.name.is_empty() {
        return Err(format!("Workload {}: no name or namespace", w.uid));
    }
    let service_account = if w.service_account.is_empty() {
        "default".to_string()
    } else {
        w.service_account.clone()
    };
    let trust_domain = if w.trust_domain.is_empty() {
        trust_domain
    } else {
        &w.trust_domain
    };
    let captured = w.tunnel_protocol == TunnelProtocol::Hbone as i32;
    let netns = captured.then(|| {
        local_netns
            .get(&(w.namespace.clone(), w.name.clone()))
            .cloned()
            .unwrap_or_default()
    });
    let labels: BTreeMap<String, String> = w
        .authorization_policies
        .iter()
        .map(|p| (format!("{POLICY_MARKER_LABEL_PREFIX}{p}"), String::new()))
        .collect();
    Ok(Some(Workload {
        uid: format!("{}/{}", w.namespace, w.name),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        identity: spiffe_identity(trust_domain, &w.namespace, &service_account),
        service_account,
        node: w.node.clone(),
        ip,
        netns,
        labels,
    }))
}

pub(super) fn ip_of(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(bytes).unwrap_or_default(),
        ))),
        16 => Ok(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).unwrap_or_default(),
        ))),
        n => Err(format!("has {n} bytes (expected 4 or 16)")),
    }
}

fn port_u16(port: u32) -> Result<u16, String> {
    u16::try_from(port).map_err(|_| format!("port {port} is out of range"))
}

use crate::workloads::authz::DecodedPolicy as PolicyParts;

fn policy_of(policy: &Authorization) -> Result<PolicyParts, String> {
    let name = format!("{}/{}", policy.namespace, policy.name);
    let err = |why: String| format!("Authorization {name}: {why}");
    let action = match Action::try_from(policy.action) {
        Ok(Action::Allow) => AuthorizationAction::Allow,
        Ok(Action::Deny) => AuthorizationAction::Deny,
        Err(_) => return Err(err(format!("unknown action {}", policy.action))),
    };
    let (namespace, selector) = match Scope::try_from(policy.scope) {
        Ok(Scope::Global) => (ROOT_NAMESPACE.to_string(), None),
        Ok(Scope::Namespace) => (policy.namespace.clone(), None),
        Ok(Scope::WorkloadSelector) => (
            policy.namespace.clone(),
            Some(BTreeMap::from([(
                format!("{POLICY_MARKER_LABEL_PREFIX}{name}"),
                String::new(),
            )])),
        ),
        Err(_) => return Err(err(format!("unknown scope {}", policy.scope))),
    };
    let mut rules = Vec::with_capacity(policy.groups.len());
    for group in &policy.groups {
        let mut rule = AuthorizationRule::default();
        let (mut has_from, mut has_to) = (false, false);
        for rules_entry in &group.rules {
            let kinds: Vec<MatchKind> = rules_entry
                .matches
                .iter()
                .map(match_kind)
                .collect::<Result<_, _>>()
                .map_err(err)?;
            if kinds.contains(&MatchKind::Destination) {
                if has_to || kinds.contains(&MatchKind::Source) {
                    return Err(err(
                        "a group ANDs destination ports with more than one rule set".into(),
                    ));
                }
                has_to = true;
                rule.to = rules_entry
                    .matches
                    .iter()
                    .map(|m| RuleTo {
                        operation: Operation {
                            ports: m.destination_ports.iter().map(u32::to_string).collect(),
                            not_ports: m.not_destination_ports.iter().map(u32::to_string).collect(),
                            ..Default::default()
                        },
                    })
                    .collect();
            } else {
                // Source fields only (or empty matches, which match anything).
                if has_from {
                    return Err(err("a group ANDs more than one set of sources".into()));
                }
                has_from = true;
                rule.from = rules_entry
                    .matches
                    .iter()
                    .map(|m| RuleFrom {
                        source: Source {
                            principals: strings(&m.principals),
                            not_principals: strings(&m.not_principals),
                            namespaces: strings(&m.namespaces),
                            not_namespaces: strings(&m.not_namespaces),
                            ip_blocks: cidrs(&m.source_ips),
                            not_ip_blocks: cidrs(&m.not_source_ips),
                            ..Default::default()
                        },
                    })
                    .collect();
            }
        }
        rules.push(rule);
    }
    Ok((
        namespace,
        policy.name.clone(),
        selector,
        AuthorizationPolicySpec {
            selector: None,
            action,
            rules,
            ..Default::default()
        },
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum MatchKind {
    Source,
    Destination,
}

fn match_kind(m: &Match) -> Result<MatchKind, String> {
    if !m.destination_ips.is_empty() || !m.not_destination_ips.is_empty() {
        return Err("destination IP matches are not supported".into());
    }
    let source = !m.principals.is_empty()
        || !m.not_principals.is_empty()
        || !m.namespaces.is_empty()
        || !m.not_namespaces.is_empty()
        || !m.source_ips.is_empty()
        || !m.not_source_ips.is_empty();
    let destination = !m.destination_ports.is_empty() || !m.not_destination_ports.is_empty();
    match (source, destination) {
        (true, true) => Err("a match mixes source and destination fields".into()),
        (false, true) => Ok(MatchKind::Destination),
        _ => Ok(MatchKind::Source),
    }
}

/// The registry's pattern strings: `*` presence, `p*` prefix, `*s` suffix.
fn strings(matches: &[StringMatch]) -> Vec<String> {
    matches
        .iter()
        .filter_map(|m| match m.match_type.as_ref()? {
            MatchType::Exact(s) => Some(s.clone()),
            MatchType::Prefix(p) => Some(format!("{p}*")),
            MatchType::Suffix(s) => Some(format!("*{s}")),
            MatchType::Presence(()) => Some("*".to_string()),
        })
        .collect()
}

fn cidrs(addresses: &[CidrAddress]) -> Vec<String> {
    addresses
        .iter()
        .filter_map(|a| Some(format!("{}/{}", ip_of(&a.address).ok()?, a.length)))
        .collect()
}
