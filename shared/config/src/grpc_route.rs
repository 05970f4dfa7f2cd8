//! GRPCRoute (`gateway.networking.k8s.io/v1`): the `gateway-api` crate's
//! experimental-channel spec type, like HTTPRoute's, so consumers see the
//! spec's field names and enums unchanged.

pub use gateway_api::experimental::grpcroutes::GrpcRouteSpec;

#[cfg(test)]
mod tests {
    use gateway_api::experimental::grpcroutes::{
        GrpcRouteRulesFiltersType, GrpcRouteRulesMatchesMethodType,
    };

    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{name: gw}]
  hostnames: [grpc.example.com]
  rules:
  - matches:
    - method: {service: pkg.Echo, method: Say, type: Exact}
      headers: [{name: version, value: two}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-a, value: b}]}
    backendRefs: [{name: echo, port: 8080, weight: 3}]
"#;

    #[test]
    fn grpcroute_loads_with_its_spec_fields() {
        let loaded = crate::load_str("grpc.yaml", ROUTE);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let route = &loaded.resources.grpc_routes[&("apps".into(), "echo".into())];
        let rule = &route.spec.rules.as_ref().unwrap()[0];
        let method = rule.matches.as_ref().unwrap()[0].method.as_ref().unwrap();
        assert_eq!(method.service.as_deref(), Some("pkg.Echo"));
        assert_eq!(method.r#type, Some(GrpcRouteRulesMatchesMethodType::Exact));
        assert_eq!(
            rule.filters.as_ref().unwrap()[0].r#type,
            GrpcRouteRulesFiltersType::RequestHeaderModifier
        );
        assert_eq!(rule.backend_refs.as_ref().unwrap()[0].weight, Some(3));
        assert_eq!(loaded.resources.len(), 1);
    }

    #[test]
    fn bad_grpcroute_field_is_named() {
        let text = ROUTE.replace("type: Exact", "type: Prefix");
        let loaded = crate::load_str("grpc.yaml", &text);
        assert!(loaded.resources.grpc_routes.is_empty());
        assert_eq!(loaded.errors.len(), 1);
        let error = loaded.errors[0].to_string();
        assert!(
            error.starts_with(
                "grpc.yaml: GRPCRoute apps/echo: spec.rules[0].matches[0].method.type"
            ),
            "{error}"
        );
    }
}
