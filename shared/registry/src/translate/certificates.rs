//! HTTPS listener `tls.certificateRefs` → certificates: `kubernetes.io/tls`
//! Secrets (`data` base64 or `stringData`), ReferenceGrant for other namespaces.

use std::sync::Arc;

use mesh_config::gateway_api::experimental::gateways::{
    GatewayListenersTls, GatewayListenersTlsMode,
};
use mesh_config::Resources;
use rustls::sign::CertifiedKey;

use super::backends::GATEWAY_GROUP;
use super::listeners::Problem;

const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

/// The certificate an HTTPS listener serves. Err: the ResolvedRefs=False
/// (reason, message); the listener is then not programmed.
pub fn resolve(
    tls: Option<&GatewayListenersTls>,
    gateway_ns: &str,
    resources: &Resources,
) -> Result<Arc<CertifiedKey>, Problem> {
    let refs = tls
        .and_then(|t| t.certificate_refs.as_deref())
        .unwrap_or(&[]);
    if refs.is_empty() {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener in Terminate mode needs tls.certificateRefs".into(),
        ));
    }
    // Every reference must resolve; the first one is served (one certificate
    // per listener for now).
    let mut first = None;
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let namespace = r.namespace.as_deref().unwrap_or(gateway_ns);
        if !(group.is_empty() || group == "core") || kind != "Secret" {
            return Err((
                "InvalidCertificateRef",
                format!(
                    "certificateRef {group}/{kind} {namespace}/{} is not a Secret",
                    r.name
                ),
            ));
        }
        if namespace != gateway_ns && !granted(resources, gateway_ns, namespace, &r.name) {
            return Err((
                "RefNotPermitted",
                format!(
                    "certificateRef to Secret {namespace}/{} from namespace {gateway_ns} is not permitted by any ReferenceGrant",
                    r.name
                ),
            ));
        }
        let key = secret_certificate(resources, namespace, &r.name)
            .map_err(|message| ("InvalidCertificateRef", message))?;
        first.get_or_insert(key);
    }
    Ok(first.expect("refs is not empty"))
}

/// Passthrough is not served yet (TLSRoute); Terminate is the default.
pub fn is_terminate(tls: Option<&GatewayListenersTls>) -> bool {
    !matches!(
        tls.and_then(|t| t.mode.as_ref()),
        Some(GatewayListenersTlsMode::Passthrough)
    )
}

fn secret_certificate(
    resources: &Resources,
    namespace: &str,
    name: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let secret = resources
        .secrets
        .get(&(namespace.to_string(), name.to_string()))
        .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
    let s = &secret.spec;
    if let Some(t) = s.type_.as_deref() {
        if t != SECRET_TYPE_TLS {
            return Err(format!(
                "Secret {namespace}/{name} has type {t}, not {SECRET_TYPE_TLS}"
            ));
        }
    }
    let field = |key: &str| -> Option<Vec<u8>> {
        // stringData wins over data, as the API server merges it on write.
        s.string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| v.0.clone())
            })
    };
    let cert =
        field("tls.crt").ok_or_else(|| format!("Secret {namespace}/{name} has no tls.crt"))?;
    let key =
        field("tls.key").ok_or_else(|| format!("Secret {namespace}/{name} has no tls.key"))?;
    crate::tls::certified_key_from_pem(&cert, &key)
        .map_err(|e| format!("Secret {namespace}/{name}: {e}"))
}

/// A ReferenceGrant in the Secret's namespace lets Gateways of `from_ns` use it.
fn granted(resources: &Resources, from_ns: &str, to_ns: &str, name: &str) -> bool {
    resources
        .reference_grants
        .values()
        .filter(|g| g.meta.namespace == to_ns)
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == GATEWAY_GROUP && f.kind == "Gateway" && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    (t.group.is_empty() || t.group == "core")
                        && t.kind == "Secret"
                        && t.name.as_deref().is_none_or(|n| n.is_empty() || n == name)
                })
        })
}
