//! The config folder a test runs with: shared environment (namespaces, base Gateways,
//! Services, EndpointSlices pointing at the running echo processes) plus the test's
//! manifests with `{GATEWAY_CLASS_NAME}` substituted.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value as Json};

use super::certs::{test_certificate, TEST_CERT_SECRET};
use super::procs::EchoProcess;
use super::vectors::{Environment, TestFile};

pub const GATEWAY_CLASS: &str = "ringmesh";

/// Services of the environment as (namespace, name, replicas, gRPC echo?): services with
/// a gRPC protocol (`grpc-h2c`) run the gRPC echo, the others the HTTP echo.
pub fn echo_services(env: &Environment) -> Vec<(String, String, usize, bool)> {
    env.services
        .iter()
        .filter_map(|(key, spec)| {
            let (ns, name) = key.split_once('/')?;
            Some((
                ns.to_string(),
                name.to_string(),
                spec.replicas.unwrap_or(1).max(1),
                is_grpc(spec),
            ))
        })
        .collect()
}

fn is_grpc(spec: &super::vectors::ServiceSpec) -> bool {
    spec.protocol
        .as_deref()
        .is_some_and(|p| p.to_ascii_lowercase().contains("grpc"))
}

/// The appProtocol the upstream conformance manifests (conformance/base/manifests.yaml)
/// declare on the gRPC backends' Service port: cleartext HTTP/2 with prior knowledge.
pub const GRPC_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// Base gateways. HTTPS listeners without `tls` get the test certificate's Secret
/// (`_environment.yaml`: all of them use it).
fn base_gateways(env: &Environment) -> Vec<(String, String, Vec<Json>)> {
    env.gateways
        .iter()
        .filter_map(|(key, spec)| {
            let (ns, name) = key.split_once('/')?;
            let listeners: Vec<Json> = spec
                .listeners
                .iter()
                .filter_map(|l| serde_json::to_value(l).ok())
                .map(|mut l| {
                    let https = l.get("protocol").and_then(Json::as_str) == Some("HTTPS");
                    if https && l.get("tls").is_none() {
                        l["tls"] = json!({"certificateRefs": [
                            {"kind": "Secret", "name": TEST_CERT_SECRET}
                        ]});
                    }
                    l
                })
                .collect();
            Some((ns.to_string(), name.to_string(), listeners))
        })
        .collect()
}

/// Every listener hostname of the environment's Gateways (the test certificate covers them).
pub fn listener_hostnames(env: &Environment) -> Vec<String> {
    env.gateways
        .values()
        .flat_map(|g| g.listeners.iter())
        .filter_map(|l| serde_json::to_value(l).ok())
        .filter_map(|l| l.get("hostname")?.as_str().map(str::to_string))
        .collect()
}

/// The test certificate as a `kubernetes.io/tls` Secret in every namespace that has
/// an HTTPS listener.
fn certificate_secrets(env: &Environment) -> anyhow::Result<Vec<Json>> {
    let mut namespaces: Vec<&str> = env
        .gateways
        .iter()
        .filter(|(_, spec)| {
            spec.listeners.iter().any(|l| {
                serde_json::to_value(l)
                    .ok()
                    .is_some_and(|l| l.get("protocol").and_then(Json::as_str) == Some("HTTPS"))
            })
        })
        .filter_map(|(key, _)| key.split_once('/').map(|(ns, _)| ns))
        .collect();
    namespaces.dedup();
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    let cert = test_certificate(&listener_hostnames(env)).map_err(anyhow::Error::msg)?;
    Ok(namespaces
        .into_iter()
        .map(|ns| {
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": TEST_CERT_SECRET, "namespace": ns},
                "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem},
            })
        })
        .collect())
}

pub fn base_documents(env: &Environment, echoes: &[EchoProcess]) -> Vec<Json> {
    let mut docs = vec![json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": "ringmesh.io/gateway-controller"},
    })];
    for (name, spec) in &env.namespaces {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": spec.labels},
        }));
    }
    match certificate_secrets(env) {
        Ok(secrets) => docs.extend(secrets),
        Err(e) => eprintln!("conformance: no test certificate for HTTPS listeners: {e:#}"),
    }
    for (ns, name, listeners) in base_gateways(env) {
        docs.push(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": listeners},
        }));
    }
    for (key, spec) in &env.services {
        let app_protocol = is_grpc(spec).then_some(GRPC_APP_PROTOCOL);
        let Some((ns, name)) = key.split_once('/') else {
            continue;
        };
        let ports: Vec<Json> = spec
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"port": p.port, "protocol": "TCP"});
                if let Some(n) = &p.name {
                    port["name"] = json!(n);
                }
                if let Some(app) = app_protocol {
                    port["appProtocol"] = json!(app);
                }
                if let Some(target) = &p.target_port {
                    if let Ok(target) = serde_json::to_value(target) {
                        port["targetPort"] = target;
                    }
                }
                port
            })
            .collect();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ClusterIP", "ports": ports},
        }));
        // One EndpointSlice per replica: each echo process has its own port.
        let replicas = echoes
            .iter()
            .filter(|e| e.namespace == ns && e.service == name);
        for (index, echo) in replicas.enumerate() {
            let slice_ports: Vec<Json> = spec
                .ports
                .iter()
                .map(|p| {
                    let mut port = json!({"port": echo.port, "protocol": "TCP"});
                    if let Some(n) = &p.name {
                        port["name"] = json!(n);
                    }
                    // The EndpointSlice controller copies the Service port's appProtocol.
                    if let Some(app) = app_protocol {
                        port["appProtocol"] = json!(app);
                    }
                    port
                })
                .collect();
            docs.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{index}"),
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": slice_ports,
                "endpoints": [{
                    "addresses": ["127.0.0.1"],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "targetRef": {"kind": "Pod", "name": echo.pod, "namespace": ns},
                }],
            }));
        }
    }
    docs
}

fn to_yaml_stream(docs: &[Json]) -> anyhow::Result<String> {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(doc)?);
    }
    Ok(out)
}

/// Writes `dir/00-environment.yaml` and `dir/10-test.yaml` (replacing the folder).
pub fn write_config(
    dir: &Path,
    env: &Environment,
    echoes: &[EchoProcess],
    test: &TestFile,
) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("00-environment.yaml"),
        to_yaml_stream(&base_documents(env, echoes))?,
    )?;
    let mut manifests = String::new();
    for manifest in &test.manifests {
        manifests.push_str("---\n");
        manifests.push_str(&serde_yaml_ng::to_string(manifest)?);
    }
    std::fs::write(dir.join("10-test.yaml"), substitute_class(&manifests))?;
    Ok(())
}

pub fn substitute_class(text: &str) -> String {
    text.replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS)
}

/// The listener port requests for `gateway` ("ns/name") go to: its first HTTP listener,
/// from the test's manifests or the environment.
pub fn gateway_http_port(gateway: &str, test: &TestFile, env: &Environment) -> Option<u16> {
    gateway_port(gateway, test, env, "HTTP")
}

/// The port of `gateway`'s first listener with `protocol` (HTTP or HTTPS).
pub fn gateway_port(
    gateway: &str,
    test: &TestFile,
    env: &Environment,
    protocol: &str,
) -> Option<u16> {
    let (ns, name) = gateway.split_once('/')?;
    let from_manifest = test.manifests.iter().find_map(|m| {
        let m = serde_json::to_value(m).ok()?;
        let is_it = m.get("kind")?.as_str()? == "Gateway"
            && m.pointer("/metadata/name")?.as_str()? == name
            && m.pointer("/metadata/namespace")
                .and_then(Json::as_str)
                .unwrap_or("default")
                == ns;
        is_it.then_some(m.pointer("/spec/listeners")?.as_array()?.clone())
    });
    let listeners = match from_manifest {
        Some(listeners) => listeners,
        None => env
            .gateways
            .get(gateway)?
            .listeners
            .iter()
            .filter_map(|l| serde_json::to_value(l).ok())
            .collect(),
    };
    listeners.iter().find_map(|l| {
        (l.get("protocol")?.as_str()? == protocol).then_some(l.get("port")?.as_u64()? as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_placeholder_is_substituted() {
        assert_eq!(
            substitute_class("gatewayClassName: '{GATEWAY_CLASS_NAME}'"),
            "gatewayClassName: 'ringmesh'"
        );
    }
}
