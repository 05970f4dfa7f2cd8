//! The Gateway API conformance vectors, routed on paper: for every HTTP case
//! of every HTTPRoute vector file, the snapshot must pick a rule (or none)
//! consistent with the expected status/backend/redirect, and the status
//! report must satisfy the `route_status` / `gateway_listener_status` cases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::fixtures::*;
use crate::snapshot::{BackendTarget, Snapshot};
use crate::TranslateOptions;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/gateway-api"
);

/// The shared environment of `_environment.yaml`: namespaces with labels, the
/// three HTTP gateways on port 80, and Services with EndpointSlices on 127.0.0.1.
fn environment() -> String {
    let mut y = String::new();
    for (ns, label) in [
        ("gateway-conformance-infra", "infra"),
        ("gateway-conformance-app-backend", "backend"),
        ("gateway-conformance-web-backend", "backend"),
    ] {
        y += &format!("\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{gateway-conformance: {label}}}}}\n");
    }
    let infra = "gateway-conformance-infra";
    y += &gateway(
        infra,
        "same-namespace",
        &["{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}"],
    );
    y += &gateway(
        infra,
        "all-namespaces",
        &["{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}"],
    );
    y += &gateway(
        infra,
        "backend-namespaces",
        &["{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {gateway-conformance: backend}}}}}"],
    );
    y += &gateway(
        infra,
        "same-namespace-with-https-listener",
        &["{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{kind: Secret, name: tls-validity-checks-certificate}]}}"],
    );
    y += r#"
---
apiVersion: v1
kind: Service
metadata: {name: infra-backend-v1, namespace: gateway-conformance-infra}
spec:
  ports: [{name: first-port, port: 8080, targetPort: 3000}, {name: second-port, port: 8081}, {name: third-port, port: 8082}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: infra-backend-v1-a, namespace: gateway-conformance-infra, labels: {kubernetes.io/service-name: infra-backend-v1}}
addressType: IPv4
ports: [{name: first-port, port: 40001}, {name: second-port, port: 40002}, {name: third-port, port: 40003}]
endpoints: [{addresses: [127.0.0.1]}]
"#;
    for (port, (ns, name)) in (40010u16..).zip([
        (infra, "infra-backend-v2"),
        (infra, "infra-backend-v3"),
        ("gateway-conformance-app-backend", "app-backend-v1"),
        ("gateway-conformance-app-backend", "app-backend-v2"),
        ("gateway-conformance-web-backend", "web-backend"),
    ]) {
        y += &service(ns, name, 8080, port);
    }
    y
}

fn vector_files() -> Option<Vec<PathBuf>> {
    let dir = Path::new(VECTORS);
    if !dir.is_dir() {
        return None;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.starts_with("httproute-") || name.starts_with("gateway-http-"))
                && name.ends_with(".yaml")
        })
        .collect();
    files.sort();
    Some(files)
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Cases checked, and a list of failures.
#[derive(Default)]
struct Tally {
    checked: usize,
    failures: Vec<String>,
}

#[test]
fn conformance_vectors_translate_and_route_on_paper() {
    let Some(files) = vector_files() else {
        eprintln!("conformance vectors not found at {VECTORS}: skipped");
        return;
    };
    assert!(!files.is_empty());
    let env = environment();
    let mut tally = Tally::default();
    for file in &files {
        check_file(file, &env, &mut tally);
    }
    eprintln!(
        "{} vector cases checked on paper, {} failed",
        tally.checked,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "failures:\n{}",
        tally.failures.join("\n")
    );
    assert!(tally.checked > 200, "only {} cases checked", tally.checked);
}

fn check_file(file: &Path, env: &str, tally: &mut Tally) {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let text = std::fs::read_to_string(file).unwrap();
    let vector: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut yaml = env.to_string();
    for m in vector["manifests"].as_sequence().into_iter().flatten() {
        yaml += "\n---\n";
        yaml += &serde_yaml_ng::to_string(m)
            .unwrap()
            .replace("{GATEWAY_CLASS_NAME}", "ringmesh");
    }
    let loaded = mesh_config::load_str(&name, &yaml);
    if !loaded.errors.is_empty() {
        tally
            .failures
            .push(format!("{name}: config errors {:?}", loaded.errors));
        return;
    }
    let default_target = s(&vector["target"], "gateway")
        .unwrap_or("gateway-conformance-infra/same-namespace")
        .to_string();
    let default_port = vector["target"]["listener"]["port"].as_u64().unwrap_or(80) as u16;
    let mut targets = vec![default_target.clone()];
    for case in vector["cases"].as_sequence().into_iter().flatten() {
        if let Some(t) = s(case, "target_gateway") {
            targets.push(t.to_string());
        }
    }
    let snapshots: BTreeMap<String, Snapshot> = targets
        .into_iter()
        .map(|target| {
            let options = TranslateOptions {
                gateway: Some(parse_ref(&target)),
                ..Default::default()
            };
            let snap = crate::translate_loaded(&loaded, &options);
            (target, snap)
        })
        .collect();
    let snapshot_for = |target: &str| -> &Snapshot { &snapshots[target] };

    // Every route of the file that names the target gateway gets a status and
    // the target gateway gets attached routes.
    let target_snapshot = snapshot_for(&default_target);
    let attached: u32 = target_snapshot
        .status
        .gateways
        .iter()
        .flat_map(|g| g.listeners.iter())
        .map(|l| l.attached_routes)
        .sum();
    if attached == 0 && !default_target.ends_with("https-listener") {
        tally
            .failures
            .push(format!("{name}: no route attached to {default_target}"));
    }

    for case in vector["cases"].as_sequence().into_iter().flatten() {
        let id = case["id"].as_u64().unwrap_or(0);
        let here = format!("{name} case {id}");
        let target = s(case, "target_gateway")
            .unwrap_or(&default_target)
            .to_string();
        if target.ends_with("https-listener") || case["request"].get("sni").is_some() {
            continue;
        }
        let snap = snapshot_for(&target);
        tally.checked += 1;
        match s(case, "kind") {
            Some("route_status") => check_route_status(snap, case, &here, tally),
            Some("gateway_listener_status") => check_listener_status(snap, case, &here, tally),
            Some("distribution") => {
                let r = req_from(case, single_port(snap, default_port));
                match pick(snap, &r) {
                    Some(rule) if backends(rule).len() == 2 => {}
                    other => tally.failures.push(format!(
                        "{here}: distribution picked {:?}",
                        other.map(backends)
                    )),
                }
            }
            _ => check_request(snap, case, single_port(snap, default_port), &here, tally),
        }
    }
}

fn single_port(snap: &Snapshot, default_port: u16) -> u16 {
    if snap.ports.len() == 1 {
        *snap.ports.keys().next().unwrap()
    } else {
        default_port
    }
}

fn req_from(case: &Value, port: u16) -> Req<'_> {
    let r = &case["request"];
    Req {
        port,
        host: s(r, "host").unwrap_or(""),
        method: s(r, "method").unwrap_or("GET"),
        path: s(r, "path").unwrap_or("/"),
        headers: r["headers"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?, v.as_str()?)))
            .collect(),
    }
}

fn check_request(snap: &Snapshot, case: &Value, port: u16, here: &str, tally: &mut Tally) {
    let r = req_from(case, port);
    let expect = &case["expect"];
    let statuses: Vec<u64> = expect["status"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let picked = pick(snap, &r);
    let fail = |msg: String| format!("{here} ({} {}{}): {msg}", r.method, r.host, r.path);
    if statuses.contains(&404) {
        if let Some(rule) = picked {
            tally.failures.push(fail(format!(
                "expected 404, picked {}[{}]",
                rule.route, rule.rule_index
            )));
        }
        return;
    }
    let Some(rule) = picked else {
        tally
            .failures
            .push(fail(format!("expected {statuses:?}, nothing matched")));
        return;
    };
    if statuses.iter().any(|s| (300..400).contains(s)) {
        if !has_redirect(rule) {
            tally
                .failures
                .push(fail("expected a redirect filter".into()));
        }
        return;
    }
    if statuses.contains(&500) {
        let invalid = rule.backends.is_empty()
            || rule
                .backends
                .iter()
                .any(|b| matches!(b.target, BackendTarget::Invalid { .. }));
        // A 500 may also be the backend's own answer once retries are exhausted.
        let from_backend = rule.retry.is_some() || r.path.starts_with("/status/");
        if !invalid && !from_backend {
            tally.failures.push(fail(format!(
                "expected 500, picked valid backends {:?}",
                backends(rule)
            )));
        }
        return;
    }
    if let Some(want) = s(expect, "backend") {
        let got = backends(rule);
        if !got.iter().any(|b| b.starts_with(want)) {
            tally.failures.push(fail(format!(
                "expected backend {want}, picked {}[{}] → {got:?}",
                rule.route, rule.rule_index
            )));
        }
    } else if statuses.contains(&200) && rule.backends.is_empty() && !has_redirect(rule) {
        tally
            .failures
            .push(fail("expected 200 but the rule has no backends".into()));
    }
}

fn check_route_status(snap: &Snapshot, case: &Value, here: &str, tally: &mut Tally) {
    let (route, parent) = (s(case, "route").unwrap(), s(case, "parent").unwrap());
    let got = route_conditions(snap, route, parent);
    for want in case["expect"]["conditions"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let t = s(want, "type").unwrap();
        let (status, reason) = condition_of(&got, t);
        if s(want, "status") != Some(status.as_str())
            || s(want, "reason").is_some_and(|r| r != reason)
        {
            tally.failures.push(format!(
                "{here}: {route} {t} = {status}/{reason}, want {want:?}"
            ));
        }
    }
}

fn check_listener_status(snap: &Snapshot, case: &Value, here: &str, tally: &mut Tally) {
    let gateway = s(case, "gateway").unwrap();
    for want in case["expect"]["listeners"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let listener = s(want, "name").unwrap();
        let got = attached_routes(snap, gateway, listener);
        if Some(u64::from(got)) != want["attachedRoutes"].as_u64() {
            tally.failures.push(format!(
                "{here}: {gateway} {listener} attachedRoutes {got}, want {want:?}"
            ));
        }
    }
}
