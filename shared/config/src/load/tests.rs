use super::*;

const ROUTE_AND_SERVICE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: good
  namespace: apps
  creationTimestamp: "2024-01-02T03:04:05Z"
  generation: 3
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
---
apiVersion: v1
kind: Service
metadata: {name: svc}
spec:
  ports: [{name: http, port: 8080}]
"#;

#[test]
fn loads_multi_document_yaml_with_defaults() {
    let loaded = load_str("a.yaml", ROUTE_AND_SERVICE);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let route = &loaded.resources.http_routes[&("apps".into(), "good".into())];
    assert_eq!(route.meta.generation, 3);
    assert_eq!(
        route.meta.created_nanos,
        Some(1_704_164_645_000_000_000i128)
    );
    let svc = &loaded.resources.services[&("default".into(), "svc".into())];
    assert_eq!(svc.meta.namespace, "default");
    assert_eq!(svc.spec.ports.as_ref().unwrap()[0].port, 8080);
}

#[test]
fn bad_field_is_named_and_other_documents_still_load() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: ns1}
spec:
  rules:
  - matches:
    - path: {type: Prefix, value: /a}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: ns1}
spec:
  ports: [{port: 80}]
"#;
    let loaded = load_str("dir/routes.yaml", text);
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    let err = &loaded.errors[0];
    assert_eq!(err.object.as_deref(), Some("HTTPRoute ns1/broken"));
    assert_eq!(
        err.field.as_deref(),
        Some("spec.rules[0].matches[0].path.type")
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(
            "dir/routes.yaml: HTTPRoute ns1/broken: spec.rules[0].matches[0].path.type: "
        ),
        "{shown}"
    );
    assert!(shown.contains("Prefix"), "{shown}");
    assert!(loaded.resources.http_routes.is_empty());
    assert_eq!(loaded.resources.services.len(), 1);
}

#[test]
fn syntax_error_names_file_line_and_keeps_other_documents() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: [b\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n";
    let loaded = load_str("x.yaml", text);
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    let msg = loaded.errors[0].to_string();
    assert!(
        msg.starts_with("x.yaml: YAML syntax error at line "),
        "{msg}"
    );
    // The broken document starts on line 5; its error is on line 7 or 8.
    let line: usize = msg["x.yaml: YAML syntax error at line ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((7..=8).contains(&line), "{msg}");
    assert_eq!(loaded.resources.namespaces.len(), 2);
}

#[test]
fn unknown_kinds_and_empty_documents_are_skipped() {
    let text = "---\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\n# just a comment\n";
    let loaded = load_str("x.yaml", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert!(loaded.resources.is_empty());
}

#[test]
fn duplicate_later_wins_with_error_naming_both() {
    let a = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {v: one}}\n";
    let b = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {v: two}}\n";
    let loaded = load_strs(&[(Path::new("a.yaml"), a), (Path::new("b.yaml"), b)]);
    assert_eq!(loaded.errors.len(), 1);
    let msg = loaded.errors[0].to_string();
    assert!(msg.starts_with("b.yaml: Namespace n: duplicate"), "{msg}");
    assert!(msg.contains("a.yaml"), "{msg}");
    assert_eq!(loaded.resources.namespace_labels("n")["v"], "two");
    assert_eq!(
        loaded.resources.namespace_labels("n")["kubernetes.io/metadata.name"],
        "n"
    );
}

#[test]
fn service_entry_static_endpoints_must_be_ips() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: apps}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {http: 9000}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: bad, namespace: apps}
spec:
  hosts: [bad.example.com]
  resolution: STATIC
  endpoints:
  - address: not-an-ip
"#;
    let loaded = load_str("se.yaml", text);
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    assert_eq!(
        loaded.errors[0].field.as_deref(),
        Some("spec.endpoints[0].address")
    );
    let se = &loaded.resources.service_entries[&("apps".into(), "ext".into())];
    assert_eq!(se.spec.endpoints[0].ports["http"], 9000);
    assert_eq!(se.spec.resolution, Some(Resolution::Static));
}

#[test]
fn endpoint_slices_and_secrets_load_whole_objects() {
    let text = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-abc
  namespace: apps
  labels: {kubernetes.io/service-name: svc}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {ready: true}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: apps}
type: kubernetes.io/tls
stringData: {tls.crt: x, tls.key: y}
"#;
    let loaded = load_str("eps.yaml", text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let slice = &loaded.resources.endpoint_slices[&("apps".into(), "svc-abc".into())];
    assert_eq!(slice.spec.endpoints[0].addresses[0], "127.0.0.1");
    assert_eq!(slice.meta.labels["kubernetes.io/service-name"], "svc");
    assert_eq!(loaded.resources.secrets.len(), 1);
}

#[test]
fn missing_name_is_an_error() {
    let loaded = load_str(
        "x.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {}\nspec: {}\n",
    );
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.errors[0].field.as_deref(), Some("metadata.name"));
}

#[test]
fn folder_is_read_recursively_in_sorted_order() {
    let dir = std::env::temp_dir().join(format!("mesh-config-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {from: b}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sub/c.yml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {from: c}}\n",
    )
    .unwrap();
    std::fs::write(dir.join("ignored.txt"), "not yaml: [").unwrap();
    let loaded = load_path(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // b.yaml sorts before sub/c.yml, so c wins and the duplicate is reported.
    assert_eq!(loaded.resources.namespace_labels("n")["from"], "c");
    assert_eq!(loaded.errors.len(), 1);
    assert!(load_path(Path::new("/nonexistent/ringmesh")).is_err());
}

#[test]
fn splits_documents_with_line_numbers() {
    let docs = split_documents("a: 1\n---\nb: 2\n--- c: 3\n");
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0].first_line, 1);
    assert_eq!(docs[1].first_line, 3);
    assert_eq!(docs[1].text, "b: 2\n");
    assert_eq!(docs[2].first_line, 4);
    assert_eq!(docs[2].text.trim(), "c: 3");
}

#[test]
fn v1_list_items_are_loaded() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: a}
- apiVersion: v1
  kind: Service
  metadata: {name: s, namespace: a}
  spec: {ports: [{port: "x"}]}
"#;
    let loaded = load_str("list.yaml", text);
    assert_eq!(loaded.resources.namespaces.len(), 1);
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.errors[0].object.as_deref(), Some("Service a/s"));
}
