//! Test helpers: build Resources from YAML strings and route a request on paper.

use std::path::Path;

use crate::snapshot::{BackendTarget, Filter, RouteRule, Snapshot};
use crate::{translate_loaded, ObjectRef, TranslateOptions};

/// Loads YAML documents (panics on config errors) and translates them.
pub fn snapshot(yaml: &str) -> Snapshot {
    snapshot_with(yaml, &TranslateOptions::default())
}

pub fn snapshot_with(yaml: &str, options: &TranslateOptions) -> Snapshot {
    let loaded = mesh_config::load_strs(&[(Path::new("test.yaml"), yaml)]);
    assert!(
        loaded.errors.is_empty(),
        "config errors: {:?}",
        loaded.errors
    );
    translate_loaded(&loaded, options)
}

/// A request as the engine would see it.
#[derive(Default, Clone)]
pub struct Req<'a> {
    pub port: u16,
    pub host: &'a str,
    pub method: &'a str,
    /// Path with the query string.
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
}

pub fn req<'a>(host: &'a str, path: &'a str) -> Req<'a> {
    Req {
        port: 80,
        host,
        method: "GET",
        path,
        headers: Vec::new(),
    }
}

/// The rule the snapshot picks for `r`, or None (404).
pub fn pick<'s>(snap: &'s Snapshot, r: &Req<'_>) -> Option<&'s RouteRule> {
    let port = snap.ports.get(&r.port)?;
    let host = r.host.rsplit_once(':').map_or(r.host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            r.host
        }
    });
    let host = host.to_ascii_lowercase();
    let listener = port.listeners.select(&host)?;
    let table = listener.routes.select(&host)?;
    let (path, query) = r.path.split_once('?').unwrap_or((r.path, ""));
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    table
        .entries
        .iter()
        .find(|e| {
            let m = &e.matcher;
            m.path.matches(path)
                && m.method
                    .as_deref()
                    .is_none_or(|x| x.eq_ignore_ascii_case(r.method))
                && m.headers.iter().all(|h| {
                    r.headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&h.name))
                        .is_some_and(|(_, v)| h.value.matches(v))
                })
                && m.query_params.iter().all(|q| {
                    params
                        .iter()
                        .find(|(n, _)| *n == q.name)
                        .is_some_and(|(_, v)| q.value.matches(v))
                })
        })
        .map(|e| e.rule.as_ref())
}

/// Service names of the backends with non-zero weight.
pub fn backends(rule: &RouteRule) -> Vec<String> {
    rule.backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| match &b.target {
            BackendTarget::Cluster(c) => c.service.name.clone(),
            BackendTarget::Invalid { reason } => format!("invalid: {reason}"),
        })
        .collect()
}

#[allow(dead_code)] // used by the vector test
pub fn has_redirect(rule: &RouteRule) -> bool {
    rule.filters
        .iter()
        .any(|f| matches!(f, Filter::Redirect(_)))
}

/// The route's conditions for one parent: `[(type, status, reason)]`.
pub fn route_conditions(
    snap: &Snapshot,
    route: &str,
    parent: &str,
) -> Vec<(String, String, String)> {
    let route = parse_ref(route);
    let parent = parse_ref(parent);
    let status = snap
        .status
        .routes
        .iter()
        .find(|r| r.route == route)
        .unwrap_or_else(|| panic!("no status for route {route}"));
    let p = status
        .parents
        .iter()
        .find(|p| p.parent_ref.namespace == parent.namespace && p.parent_ref.name == parent.name)
        .unwrap_or_else(|| panic!("no parent {parent} in status of {route}"));
    p.conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

pub fn condition_of(conds: &[(String, String, String)], type_: &str) -> (String, String) {
    conds
        .iter()
        .find(|c| c.0 == type_)
        .map(|c| (c.1.clone(), c.2.clone()))
        .unwrap_or_else(|| panic!("no {type_} condition in {conds:?}"))
}

pub fn attached_routes(snap: &Snapshot, gateway: &str, listener: &str) -> u32 {
    let gw = parse_ref(gateway);
    snap.status
        .gateways
        .iter()
        .find(|g| g.gateway == gw)
        .and_then(|g| g.listeners.iter().find(|l| l.name == listener))
        .unwrap_or_else(|| panic!("no listener {gateway}/{listener}"))
        .attached_routes
}

pub fn parse_ref(s: &str) -> ObjectRef {
    let (namespace, name) = s.split_once('/').unwrap_or(("default", s));
    ObjectRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// A Service with one port and an EndpointSlice on 127.0.0.1:`target`.
pub fn service(ns: &str, name: &str, port: u16, target: u16) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  ports: [{{port: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-slice
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{port: {target}}}]
endpoints:
- addresses: [127.0.0.1]
"#
    )
}

/// An HTTP Gateway of class ringmesh with listeners given as YAML flow items.
pub fn gateway(ns: &str, name: &str, listeners: &[&str]) -> String {
    let mut s = format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  gatewayClassName: ringmesh\n  listeners:\n"
    );
    for l in listeners {
        s.push_str(&format!("  - {l}\n"));
    }
    s
}
