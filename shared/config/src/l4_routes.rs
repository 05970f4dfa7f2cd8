//! TLSRoute and TCPRoute (Gateway API L4 routes): the `gateway-api` crate's
//! experimental-channel spec types, like HTTPRoute's.
//!
//! Versions accepted: TLSRoute `v1alpha2`, `v1alpha3` and `v1` (one schema
//! in the crate; `v1alpha2` made `hostnames` optional, so a missing list is
//! read as empty), TCPRoute `v1alpha2`.

pub use gateway_api::experimental::tcproutes::TcpRouteSpec;
pub use gateway_api::experimental::tlsroutes::TlsRouteSpec;

use serde_yaml_ng::Value;

/// TLSRoute API versions we read.
pub(crate) fn tls_route_version(version: &str) -> bool {
    matches!(version, "v1alpha2" | "v1alpha3" | "v1")
}

/// TCPRoute API versions we read.
pub(crate) fn tcp_route_version(version: &str) -> bool {
    version == "v1alpha2"
}

/// `spec` of a TLSRoute with the lists the crate's type requires but older
/// API versions allow to omit (`hostnames`, `rules`) filled in as empty.
pub(crate) fn tls_route_spec_defaults(spec: Value) -> Value {
    with_empty_lists(spec, &["hostnames", "rules"])
}

/// `spec` of a TCPRoute with `rules` filled in as empty when omitted.
pub(crate) fn tcp_route_spec_defaults(spec: Value) -> Value {
    with_empty_lists(spec, &["rules"])
}

fn with_empty_lists(spec: Value, keys: &[&str]) -> Value {
    match spec {
        Value::Mapping(mut map) => {
            for key in keys {
                let key = Value::from(*key);
                if matches!(map.get(&key), None | Some(Value::Null)) {
                    map.insert(key, Value::Sequence(Vec::new()));
                }
            }
            Value::Mapping(map)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    const TLS_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: db, namespace: apps}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: [db.example.com, "*.db.example.com"]
  rules:
  - backendRefs: [{name: db, port: 5432, weight: 3}, {name: db-canary, port: 5432}]
"#;

    const TCP_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: raw, namespace: apps}
spec:
  parentRefs: [{name: edge, port: 9000}]
  rules:
  - backendRefs: [{name: raw, port: 9000}]
"#;

    #[test]
    fn tlsroute_loads_in_every_version() {
        for version in ["v1alpha2", "v1alpha3", "v1"] {
            let text = TLS_ROUTE.replace("v1alpha2", version);
            let loaded = crate::load_str("tls.yaml", &text);
            assert!(loaded.errors.is_empty(), "{version}: {:?}", loaded.errors);
            let route = &loaded.resources.tls_routes[&("apps".into(), "db".into())];
            assert_eq!(route.spec.hostnames.len(), 2);
            let refs = &route.spec.rules[0].backend_refs;
            assert_eq!((refs[0].weight, refs[1].weight), (Some(3), None));
            assert_eq!(
                route.spec.parent_refs.as_ref().unwrap()[0]
                    .section_name
                    .as_deref(),
                Some("tls")
            );
            assert_eq!(loaded.resources.len(), 1);
        }
    }

    #[test]
    fn tlsroute_v1alpha2_without_hostnames_loads() {
        let text = TLS_ROUTE.replace("  hostnames: [db.example.com, \"*.db.example.com\"]\n", "");
        let loaded = crate::load_str("tls.yaml", &text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let route = &loaded.resources.tls_routes[&("apps".into(), "db".into())];
        assert!(route.spec.hostnames.is_empty());
    }

    #[test]
    fn tcproute_loads_and_unknown_versions_are_skipped() {
        let loaded = crate::load_str("tcp.yaml", TCP_ROUTE);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let route = &loaded.resources.tcp_routes[&("apps".into(), "raw".into())];
        assert_eq!(route.spec.rules[0].backend_refs[0].port, Some(9000));
        assert_eq!(route.spec.parent_refs.as_ref().unwrap()[0].port, Some(9000));
        // TCPRoute has no v1 yet: not ours, skipped like any unknown kind.
        let loaded = crate::load_str("tcp.yaml", &TCP_ROUTE.replace("v1alpha2", "v1"));
        assert!(loaded.resources.tcp_routes.is_empty());
        assert!(loaded.errors.is_empty());
    }

    #[test]
    fn bad_l4_route_fields_are_named() {
        let text = TCP_ROUTE.replace("{name: raw, port: 9000}", "{name: raw, port: nine}");
        let loaded = crate::load_str("tcp.yaml", &text);
        assert!(loaded.resources.tcp_routes.is_empty());
        let error = loaded.errors[0].to_string();
        assert!(
            error.starts_with("tcp.yaml: TCPRoute apps/raw: spec.rules[0].backendRefs[0].port"),
            "{error}"
        );
        let text = TLS_ROUTE
            .replace("hostnames: [", "hostnames: {")
            .replace("\"]\n", "\"}\n");
        let loaded = crate::load_str("tls.yaml", &text);
        assert!(loaded.resources.tls_routes.is_empty());
        assert!(
            loaded.errors[0].to_string().contains("spec.hostnames"),
            "{}",
            loaded.errors[0]
        );
    }
}
