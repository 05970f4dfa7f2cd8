//! Loading: files and folders → documents → typed objects.
//!
//! Every document is parsed on its own (the file is split on `---` lines
//! first), so one broken document never hides the others, and a YAML syntax
//! error can name its line in the file.
//!
//! Duplicates (same kind, namespace and name): the later one (in sorted path
//! order, then document order) wins, and an error naming both places is
//! recorded so that `/status` shows it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::errors::ConfigError;
use crate::kinds::{Meta, Object, Resolution, Resources, ServiceEntrySpec};
use crate::security::{parse_cidr, AuthorizationPolicySpec, PeerAuthenticationSpec};
use crate::Loaded;

/// Loads a file or a folder (recursively, `.yaml`/`.yml`, sorted paths, many
/// documents per file). Fails only when the path itself cannot be read; bad
/// documents and unreadable files inside a folder become `Loaded::errors`.
pub fn load_path(path: &Path) -> anyhow::Result<Loaded> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read config path {}: {e}", path.display()))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        collect_yaml_files(path, &mut files)?;
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut loader = Loader::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => loader.add_file(&file, &text),
            Err(e) => loader.errors.push(ConfigError {
                file: file.clone(),
                object: None,
                field: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    Ok(loader.finish())
}

/// Loads YAML text as if it were the file `file` (tests, embedded configs).
pub fn load_str(file: impl AsRef<Path>, text: &str) -> Loaded {
    load_strs(&[(file.as_ref(), text)])
}

/// Loads several YAML texts in order, as if they were files.
pub fn load_strs(files: &[(&Path, &str)]) -> Loaded {
    let mut loader = Loader::default();
    for (file, text) in files {
        loader.add_file(file, text);
    }
    loader.finish()
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read folder {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        // Follow symlinks like a plain `stat` would (ConfigMap mounts use them).
        let is_dir = file_type.is_dir() || (file_type.is_symlink() && path.is_dir());
        if is_dir {
            // Skip hidden folders such as Kubernetes' `..data` atomic-writer dirs.
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            collect_yaml_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// One document of a file: its text and the 1-based line it starts on.
struct Document<'a> {
    text: &'a str,
    first_line: usize,
}

/// Splits a YAML stream on document markers (`---` at the start of a line).
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if is_marker {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            // Content after `--- ` on the same line belongs to the next document.
            let rest = if trimmed.len() > 3 && trimmed.starts_with("---") {
                offset + 3
            } else {
                offset + line.len()
            };
            start = rest;
            start_line = index + 1 + usize::from(rest == offset + line.len());
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
    });
    docs
}

#[derive(Default)]
struct Loader {
    resources: Resources,
    errors: Vec<ConfigError>,
    /// (kind, namespace, name) → where it was loaded from, to report duplicates.
    seen: HashMap<(&'static str, String, String), (PathBuf, usize)>,
}

/// Which kind a document is, after looking at apiVersion and kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KnownKind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    TlsRoute,
    TcpRoute,
    Namespace,
    Service,
    EndpointSlice,
    Secret,
    ServiceEntry,
    Pod,
    AuthorizationPolicy,
    PeerAuthentication,
    DestinationRule,
    LocalRateLimitPolicy,
    VirtualService,
}

impl KnownKind {
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let known = match (group, kind) {
            ("gateway.networking.k8s.io", "GatewayClass") => KnownKind::GatewayClass,
            ("gateway.networking.k8s.io", "Gateway") => KnownKind::Gateway,
            ("gateway.networking.k8s.io", "HTTPRoute") => KnownKind::HttpRoute,
            ("gateway.networking.k8s.io", "GRPCRoute") => KnownKind::GrpcRoute,
            ("gateway.networking.k8s.io", "ReferenceGrant") => KnownKind::ReferenceGrant,
            ("gateway.networking.k8s.io", "TLSRoute") => KnownKind::TlsRoute,
            ("gateway.networking.k8s.io", "TCPRoute") => KnownKind::TcpRoute,
            ("", "Namespace") => KnownKind::Namespace,
            ("", "Service") => KnownKind::Service,
            ("", "Secret") => KnownKind::Secret,
            ("discovery.k8s.io", "EndpointSlice") => KnownKind::EndpointSlice,
            ("networking.istio.io", "ServiceEntry") => KnownKind::ServiceEntry,
            ("", "Pod") => KnownKind::Pod,
            ("security.istio.io", "AuthorizationPolicy") => KnownKind::AuthorizationPolicy,
            ("security.istio.io", "PeerAuthentication") => KnownKind::PeerAuthentication,
            ("networking.istio.io", "DestinationRule") => KnownKind::DestinationRule,
            ("networking.istio.io", "VirtualService") => KnownKind::VirtualService,
            ("policy.ringmesh.io", "LocalRateLimitPolicy") => KnownKind::LocalRateLimitPolicy,
            _ => return None,
        };
        let version_ok = match known {
            KnownKind::GatewayClass
            | KnownKind::Gateway
            | KnownKind::HttpRoute
            | KnownKind::GrpcRoute
            | KnownKind::ReferenceGrant => matches!(version, "v1" | "v1beta1"),
            KnownKind::Namespace | KnownKind::Service | KnownKind::Secret | KnownKind::Pod => {
                version == "v1"
            }
            KnownKind::AuthorizationPolicy | KnownKind::PeerAuthentication => {
                matches!(version, "v1" | "v1beta1")
            }
            KnownKind::EndpointSlice => version == "v1",
            KnownKind::LocalRateLimitPolicy => version == "v1alpha1",
            KnownKind::TlsRoute => crate::l4_routes::tls_route_version(version),
            KnownKind::TcpRoute => crate::l4_routes::tcp_route_version(version),
            KnownKind::ServiceEntry | KnownKind::DestinationRule | KnownKind::VirtualService => {
                matches!(version, "v1" | "v1beta1" | "v1alpha3")
            }
        };
        version_ok.then_some(known)
    }

    fn name(self) -> &'static str {
        match self {
            KnownKind::GatewayClass => "GatewayClass",
            KnownKind::Gateway => "Gateway",
            KnownKind::HttpRoute => "HTTPRoute",
            KnownKind::GrpcRoute => "GRPCRoute",
            KnownKind::ReferenceGrant => "ReferenceGrant",
            KnownKind::TlsRoute => "TLSRoute",
            KnownKind::TcpRoute => "TCPRoute",
            KnownKind::Namespace => "Namespace",
            KnownKind::Service => "Service",
            KnownKind::EndpointSlice => "EndpointSlice",
            KnownKind::Secret => "Secret",
            KnownKind::ServiceEntry => "ServiceEntry",
            KnownKind::Pod => "Pod",
            KnownKind::AuthorizationPolicy => "AuthorizationPolicy",
            KnownKind::PeerAuthentication => "PeerAuthentication",
            KnownKind::DestinationRule => "DestinationRule",
            KnownKind::LocalRateLimitPolicy => "LocalRateLimitPolicy",
            KnownKind::VirtualService => "VirtualService",
        }
    }

    fn cluster_scoped(self) -> bool {
        matches!(self, KnownKind::GatewayClass | KnownKind::Namespace)
    }
}

/// Where a document failed: the field path (dotted) and the message.
struct FieldError {
    field: Option<String>,
    message: String,
}

impl FieldError {
    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

/// Deserializes `value` reporting the failing field as `prefix.path`.
fn typed<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix.is_empty(), path == "." || path.is_empty()) {
            (true, true) => None,
            (true, false) => Some(path),
            (false, true) => Some(prefix.to_string()),
            (false, false) => Some(format!("{prefix}.{path}")),
        };
        FieldError {
            field,
            message: e.into_inner().to_string(),
        }
    })
}

impl Loader {
    fn add_file(&mut self, file: &Path, text: &str) {
        for (index, doc) in split_documents(text).into_iter().enumerate() {
            self.add_document(file, index, &doc);
        }
    }

    fn error(&mut self, file: &Path, object: Option<String>, error: FieldError) {
        self.errors.push(ConfigError {
            file: file.to_path_buf(),
            object,
            field: error.field,
            message: error.message,
        });
    }

    fn add_document(&mut self, file: &Path, index: usize, doc: &Document<'_>) {
        let value: Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                let message = match e.location() {
                    Some(loc) => format!(
                        "YAML syntax error at line {}: {e}",
                        doc.first_line + loc.line().saturating_sub(1)
                    ),
                    None => format!("YAML syntax error in document {}: {e}", index + 1),
                };
                self.error(
                    file,
                    None,
                    FieldError {
                        field: None,
                        message,
                    },
                );
                return;
            }
        };
        self.add_value(file, index, doc.first_line, value);
    }

    /// One parsed document (or one item of a `kind: List`).
    fn add_value(&mut self, file: &Path, index: usize, first_line: usize, value: Value) {
        let doc = Document {
            text: "",
            first_line,
        };
        let mut map = match value {
            Value::Null => return,
            Value::Mapping(m) if m.is_empty() => return,
            Value::Mapping(m) => m,
            _ => {
                let message = format!(
                    "document {} (line {}) is not a mapping",
                    index + 1,
                    doc.first_line
                );
                self.error(
                    file,
                    None,
                    FieldError {
                        field: None,
                        message,
                    },
                );
                return;
            }
        };
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let kind_name = map.get("kind").and_then(Value::as_str).map(str::to_string);
        // `kubectl get -o yaml` output: a v1 List whose items are objects.
        if api_version.as_deref() == Some("v1") && kind_name.as_deref() == Some("List") {
            let items = match map.remove("items") {
                Some(Value::Sequence(items)) => items,
                _ => Vec::new(),
            };
            for item in items {
                self.add_value(file, index, first_line, item);
            }
            return;
        }
        let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
            let message = format!(
                "document {} (line {}) needs apiVersion and kind",
                index + 1,
                doc.first_line
            );
            self.error(
                file,
                None,
                FieldError {
                    field: None,
                    message,
                },
            );
            return;
        };
        let Some(kind) = KnownKind::of(&api_version, &kind_name) else {
            tracing::debug!(
                file = %file.display(),
                "skipping unsupported kind {api_version}/{kind_name}"
            );
            return;
        };

        let metadata_value = map
            .get("metadata")
            .cloned()
            .unwrap_or(Value::Mapping(Default::default()));
        let metadata: ObjectMeta = match typed(metadata_value, "metadata") {
            Ok(m) => m,
            Err(e) => {
                self.error(file, Some(kind.name().to_string()), e);
                return;
            }
        };
        let Some(name) = metadata.name.clone().filter(|n| !n.is_empty()) else {
            self.error(
                file,
                Some(kind.name().to_string()),
                FieldError::at("metadata.name", "required"),
            );
            return;
        };
        let namespace = if kind.cluster_scoped() {
            String::new()
        } else {
            metadata
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string())
        };
        let object_name = if kind.cluster_scoped() {
            format!("{} {name}", kind.name())
        } else {
            format!("{} {namespace}/{name}", kind.name())
        };
        let meta = Meta {
            namespace,
            name,
            labels: metadata.labels.clone().unwrap_or_default(),
            generation: metadata.generation.unwrap_or(0),
            created_nanos: metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_nanosecond()),
            file: file.to_path_buf(),
            document: index,
        };

        let spec = map
            .remove("spec")
            .unwrap_or(Value::Mapping(Default::default()));
        let whole = || Value::Mapping(map.clone());
        let result = match kind {
            KnownKind::GatewayClass => {
                typed(spec, "spec").map(|s| insert(&mut self.resources.gateway_classes, &meta, s))
            }
            KnownKind::Gateway => {
                typed(spec, "spec").map(|s| insert(&mut self.resources.gateways, &meta, s))
            }
            KnownKind::HttpRoute => {
                typed(spec, "spec").map(|s| insert(&mut self.resources.http_routes, &meta, s))
            }
            KnownKind::GrpcRoute => {
                typed(spec, "spec").map(|s| insert(&mut self.resources.grpc_routes, &meta, s))
            }
            KnownKind::ReferenceGrant => {
                typed(spec, "spec").map(|s| insert(&mut self.resources.reference_grants, &meta, s))
            }
            KnownKind::TlsRoute => typed(crate::l4_routes::tls_route_spec_defaults(spec), "spec")
                .map(|s| insert(&mut self.resources.tls_routes, &meta, s)),
            KnownKind::TcpRoute => typed(crate::l4_routes::tcp_route_spec_defaults(spec), "spec")
                .map(|s| insert(&mut self.resources.tcp_routes, &meta, s)),
            KnownKind::Namespace => {
                insert(&mut self.resources.namespaces, &meta, ());
                Ok(())
            }
            KnownKind::Service => {
                typed(spec, "spec").map(|s| insert(&mut self.resources.services, &meta, s))
            }
            KnownKind::EndpointSlice => {
                typed(whole(), "").map(|s| insert(&mut self.resources.endpoint_slices, &meta, s))
            }
            KnownKind::Secret => {
                // Secrets keep `data`/`type` at the top level, not under `spec`.
                typed(whole(), "").map(|s| insert(&mut self.resources.secrets, &meta, s))
            }
            KnownKind::ServiceEntry => typed::<ServiceEntrySpec>(spec, "spec")
                .and_then(|s| validate_service_entry(&s).map(|()| s))
                .map(|s| insert(&mut self.resources.service_entries, &meta, s)),
            KnownKind::Pod => {
                // The whole object: annotations, spec and status all matter.
                let mut whole = map.clone();
                whole.insert(Value::from("spec"), spec);
                typed::<k8s_openapi::api::core::v1::Pod>(Value::Mapping(whole), "")
                    .and_then(|p| validate_pod(&p).map(|()| p))
                    .map(|p| insert(&mut self.resources.pods, &meta, p))
            }
            KnownKind::AuthorizationPolicy => typed::<AuthorizationPolicySpec>(spec, "spec")
                .and_then(|s| validate_authorization_policy(&s).map(|()| s))
                .map(|s| insert(&mut self.resources.authorization_policies, &meta, s)),
            KnownKind::PeerAuthentication => typed::<PeerAuthenticationSpec>(spec, "spec")
                .map(|s| insert(&mut self.resources.peer_authentications, &meta, s)),
            KnownKind::DestinationRule => typed::<crate::DestinationRuleSpec>(spec, "spec")
                .and_then(|s| {
                    crate::validate_destination_rule(&s)
                        .map(|()| s)
                        .map_err(|(field, message)| FieldError::at(field, message))
                })
                .map(|s| insert(&mut self.resources.destination_rules, &meta, s)),
            KnownKind::LocalRateLimitPolicy => {
                typed::<crate::LocalRateLimitPolicySpec>(spec, "spec")
                    .and_then(|s| {
                        crate::validate_local_rate_limit(&s)
                            .map(|()| s)
                            .map_err(|(field, message)| FieldError::at(field, message))
                    })
                    .map(|s| insert(&mut self.resources.local_rate_limits, &meta, s))
            }
            KnownKind::VirtualService => typed::<crate::VirtualServiceSpec>(spec, "spec")
                .and_then(|s| {
                    crate::validate_virtual_service(&s)
                        .map(|()| s)
                        .map_err(|(field, message)| FieldError::at(field, message))
                })
                .map(|s| insert(&mut self.resources.virtual_services, &meta, s)),
        };
        match result {
            Err(e) => self.error(file, Some(object_name), e),
            Ok(()) => self.note_duplicate(kind, &meta, object_name),
        }
    }

    fn note_duplicate(&mut self, kind: KnownKind, meta: &Meta, object_name: String) {
        let key = (kind.name(), meta.namespace.clone(), meta.name.clone());
        let here = (meta.file.clone(), meta.document);
        if let Some((file, doc)) = self.seen.insert(key, here) {
            self.errors.push(ConfigError {
                file: meta.file.clone(),
                object: Some(object_name),
                field: None,
                message: format!(
                    "duplicate object: replaces the one in {} (document {}); the later one is used",
                    file.display(),
                    doc + 1
                ),
            });
        }
    }

    fn finish(self) -> Loaded {
        Loaded {
            resources: self.resources,
            errors: self.errors,
        }
    }
}

fn insert<T>(map: &mut BTreeMap<(String, String), Object<T>>, meta: &Meta, spec: T) {
    map.insert(
        (meta.namespace.clone(), meta.name.clone()),
        Object {
            meta: meta.clone(),
            spec,
        },
    );
}

fn validate_service_entry(spec: &ServiceEntrySpec) -> Result<(), FieldError> {
    if spec.resolution == Some(Resolution::Static) {
        for (i, ep) in spec.endpoints.iter().enumerate() {
            if ep.address.parse::<std::net::IpAddr>().is_err() {
                return Err(FieldError::at(
                    format!("spec.endpoints[{i}].address"),
                    format!(
                        "resolution STATIC needs an IP address, got {:?}",
                        ep.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn validate_pod(pod: &k8s_openapi::api::core::v1::Pod) -> Result<(), FieldError> {
    let status = pod.status.as_ref();
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(FieldError::at(
                "status.podIP",
                format!("not an IP address: {ip:?}"),
            ));
        }
    }
    for (i, ip) in status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if ip.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(FieldError::at(
                format!("status.podIPs[{i}].ip"),
                format!("not an IP address: {:?}", ip.ip),
            ));
        }
    }
    let netns = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::security::NETNS_ANNOTATION));
    if let Some(path) = netns {
        if !path.starts_with('/') {
            return Err(FieldError::at(
                format!(
                    "metadata.annotations[{}]",
                    crate::security::NETNS_ANNOTATION
                ),
                format!("must be an absolute path to a network namespace, got {path:?}"),
            ));
        }
    }
    Ok(())
}

fn validate_authorization_policy(spec: &AuthorizationPolicySpec) -> Result<(), FieldError> {
    for (r, rule) in spec.rules.iter().enumerate() {
        for (f, from) in rule.from.iter().enumerate() {
            let blocks = [
                ("ipBlocks", &from.source.ip_blocks),
                ("notIpBlocks", &from.source.not_ip_blocks),
                ("remoteIpBlocks", &from.source.remote_ip_blocks),
                ("notRemoteIpBlocks", &from.source.not_remote_ip_blocks),
            ];
            for (name, list) in blocks {
                for (i, block) in list.iter().enumerate() {
                    if parse_cidr(block).is_none() {
                        return Err(FieldError::at(
                            format!("spec.rules[{r}].from[{f}].source.{name}[{i}]"),
                            format!("not an IP address or CIDR: {block:?}"),
                        ));
                    }
                }
            }
        }
        for (w, condition) in rule.when.iter().enumerate() {
            if !matches!(condition.key.as_str(), "source.ip" | "remote.ip") {
                continue;
            }
            let lists = [
                ("values", &condition.values),
                ("notValues", &condition.not_values),
            ];
            for (name, list) in lists {
                for (i, value) in list.iter().enumerate() {
                    if parse_cidr(value).is_none() {
                        return Err(FieldError::at(
                            format!("spec.rules[{r}].when[{w}].{name}[{i}]"),
                            format!("not an IP address or CIDR: {value:?}"),
                        ));
                    }
                }
            }
        }
        for (t, to) in rule.to.iter().enumerate() {
            let ports = [
                ("ports", &to.operation.ports),
                ("notPorts", &to.operation.not_ports),
            ];
            for (name, list) in ports {
                for (i, port) in list.iter().enumerate() {
                    if port.parse::<u16>().map_or(true, |p| p == 0) {
                        return Err(FieldError::at(
                            format!("spec.rules[{r}].to[{t}].operation.{name}[{i}]"),
                            format!("not a port number (1-65535): {port:?}"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod security_tests;
