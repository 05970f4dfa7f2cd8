//! Serde model of the conformance vector files (README.md and _environment.yaml in the
//! vectors directory describe the schema).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Deserializer};
use serde_yaml_ng::Value;

#[derive(Debug, Deserialize)]
pub struct TestFile {
    pub test: String,
    #[serde(default)]
    pub features: Vec<String>,
    pub target: Target,
    #[serde(default)]
    pub manifests: Vec<Value>,
    #[serde(default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Target {
    /// "namespace/name" of the Gateway.
    pub gateway: String,
    #[serde(default)]
    pub scheme: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Case {
    #[serde(default, deserialize_with = "stringish")]
    pub id: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub target_gateway: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub request: Request,
    #[serde(default)]
    pub backend_sets_response_headers: BTreeMap<String, StringValue>,
    #[serde(default)]
    pub expect: Expect,
    // kind: route_status
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub parent: Option<String>,
    // kind: gateway_listener_status
    #[serde(default)]
    pub gateway: Option<String>,
    // kind: distribution
    #[serde(default)]
    pub samples: Option<usize>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub tolerance_abs: Option<f64>,
    #[serde(default)]
    pub max_attempts: Option<usize>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct Request {
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    /// Ordered as written; header names keep their case.
    #[serde(deserialize_with = "ordered_pairs")]
    pub headers: Vec<(String, String)>,
    pub sni: Option<String>,
    /// gRPC cases: `/service/method` (or `{service, method}`) and the call's metadata.
    pub grpc_method: Option<Value>,
    #[serde(deserialize_with = "ordered_pairs")]
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct Expect {
    pub status: Vec<u16>,
    pub backend: Option<String>,
    pub backend_namespace: Option<String>,
    pub upstream: Option<Upstream>,
    #[serde(deserialize_with = "ordered_pairs")]
    pub response_headers: Vec<(String, String)>,
    pub response_header_alternatives: BTreeMap<String, Vec<StringValue>>,
    pub response_absent_headers: Vec<String>,
    pub ignore_whitespace: bool,
    pub redirect: Option<Redirect>,
    pub answered_by_gateway: bool,
    pub mirrored_to: Vec<Mirror>,
    /// gRPC cases: the expected status code name (`OK`, `UNIMPLEMENTED`).
    pub grpc_status: Option<String>,
    // kind: distribution
    pub backend_fractions: BTreeMap<String, f64>,
    pub backends_receiving_traffic: Option<usize>,
    // kind: route_status
    pub conditions: Vec<ConditionExpect>,
    // kind: gateway_listener_status
    pub listeners: Vec<ListenerExpect>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct Upstream {
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    #[serde(deserialize_with = "ordered_pairs")]
    pub headers: Vec<(String, String)>,
    pub absent_headers: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    #[serde(deserialize_with = "opt_stringish")]
    pub port: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Mirror {
    pub backend: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub path: String,
}

#[derive(Debug, Deserialize, Clone)]
pub struct ConditionExpect {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(deserialize_with = "stringish")]
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct ListenerExpect {
    pub name: String,
    #[serde(rename = "attachedRoutes", default)]
    pub attached_routes: Option<u32>,
    #[serde(rename = "supportedKinds", default)]
    pub supported_kinds: Option<Vec<String>>,
    #[serde(default)]
    pub conditions: Vec<ConditionExpect>,
}

/// A YAML scalar read as text ('3600', 3600 and true all become strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringValue(pub String);

impl<'de> Deserialize<'de> for StringValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        stringish(d).map(StringValue)
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn stringish<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = Value::deserialize(d)?;
    scalar_text(&value).ok_or_else(|| serde::de::Error::custom("expected a scalar"))
}

/// A YAML mapping of scalars, in document order.
fn ordered_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    let value = Value::deserialize(d)?;
    let Value::Mapping(map) = value else {
        if value.is_null() {
            return Ok(Vec::new());
        }
        return Err(serde::de::Error::custom("expected a mapping"));
    };
    map.iter()
        .map(|(k, v)| match (scalar_text(k), scalar_text(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(serde::de::Error::custom("expected scalar keys and values")),
        })
        .collect()
}

fn opt_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Value::deserialize(d)?;
    match value {
        Value::Null => Ok(None),
        other => scalar_text(&other)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("expected a scalar")),
    }
}

/// The shared environment (`_environment.yaml`): namespaces, base gateways and services.
#[derive(Debug, Deserialize)]
pub struct Environment {
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    #[serde(default)]
    pub gateways: BTreeMap<String, GatewaySpec>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct NamespaceSpec {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct GatewaySpec {
    #[serde(default)]
    pub listeners: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub replicas: Option<usize>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(rename = "targetPort", default)]
    pub target_port: Option<Value>,
}

pub fn load_environment(dir: &Path) -> anyhow::Result<Environment> {
    let path = dir.join("_environment.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every `*.yaml` test file in `dir` (not starting with '_'), sorted by file name. A file
/// that cannot be read or parsed comes back as its error, so the run reports it and goes on.
pub type LoadedTest = (String, Result<TestFile, String>);

pub fn load_tests(dir: &Path) -> anyhow::Result<Vec<LoadedTest>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && !name.starts_with('_'))
        .collect();
    names.sort();
    let mut tests = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let test = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))
            .and_then(|text| {
                serde_yaml_ng::from_str::<TestFile>(&text)
                    .map_err(|e| format!("parsing {}: {e}", path.display()))
            });
        tests.push((name, test));
    }
    Ok(tests)
}
