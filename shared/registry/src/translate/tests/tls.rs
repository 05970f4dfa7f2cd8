//! HTTPS listeners: certificateRefs to Secrets, ReferenceGrant, status, SNI choice.

use super::fixtures::*;
use crate::snapshot::ListenerProtocol;

/// A self-signed certificate for `names`: (cert PEM, key PEM).
fn cert(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// A `kubernetes.io/tls` Secret with stringData.
fn secret(ns: &str, name: &str, (crt, key): &(String, String)) -> String {
    format!(
        "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

/// The same Secret with base64 `data`, as Kubernetes stores it.
fn secret_b64(ns: &str, name: &str, (crt, key): &(String, String)) -> String {
    format!(
        "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(crt.as_bytes()),
        base64(key.as_bytes())
    )
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn listener_condition(
    snap: &crate::Snapshot,
    listener: &str,
    type_: &str,
) -> (String, String, String) {
    let gw = &snap.status.gateways[0];
    let l = gw.listeners.iter().find(|x| x.name == listener).unwrap();
    let c = l.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn https_listeners_pick_the_certificate_by_sni() {
    let a = cert(&["a.example.com"]);
    let wild = cert(&["*.example.com"]);
    let mut y = gateway(
        "infra",
        "gw",
        &[
            "{name: a, port: 443, protocol: HTTPS, hostname: a.example.com, tls: {certificateRefs: [{name: cert-a}]}}",
            "{name: wild, port: 443, protocol: HTTPS, hostname: '*.example.com', tls: {mode: Terminate, certificateRefs: [{kind: Secret, group: '', name: cert-wild}]}}",
        ],
    );
    y += &secret("infra", "cert-a", &a);
    y += &secret_b64("infra", "cert-wild", &wild);
    let snap = snapshot(&y);
    let port = &snap.ports[&443];
    assert_eq!(port.protocol, ListenerProtocol::Https);
    let tls = port.tls.as_ref().expect("TLS settings for port 443");
    assert_eq!(tls.hostnames, vec!["a.example.com", "*.example.com"]);
    assert_eq!(
        listener_condition(&snap, "a", "ResolvedRefs").0,
        "True",
        "{:?}",
        snap.status
    );
    assert_eq!(listener_condition(&snap, "wild", "Programmed").0, "True");
}

#[test]
fn sni_selection_prefers_exact_then_longest_wildcard() {
    use crate::tls::{certified_key_from_pem, SniCertificates};
    let key = |names: &[&str]| {
        let (c, k) = cert(names);
        certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap()
    };
    let (exact, short, long, any) = (
        key(&["a.b.example.com"]),
        key(&["*.example.com"]),
        key(&["*.b.example.com"]),
        key(&["any"]),
    );
    let mut certs = SniCertificates::default();
    certs.add(Some("*.example.com"), short.clone());
    certs.add(Some("a.b.example.com"), exact.clone());
    certs.add(Some("*.b.example.com"), long.clone());
    let same = |got: Option<&std::sync::Arc<rustls::sign::CertifiedKey>>,
                want: &std::sync::Arc<rustls::sign::CertifiedKey>| {
        std::sync::Arc::ptr_eq(got.unwrap(), want)
    };
    assert!(same(certs.select(Some("a.b.example.com")), &exact));
    assert!(same(certs.select(Some("c.b.example.com")), &long));
    assert!(same(certs.select(Some("c.example.com")), &short));
    // No listener matches / no SNI: the first certificate is the default...
    assert!(same(certs.select(Some("other.org")), &short));
    assert!(same(certs.select(None), &short));
    // ...unless a listener without hostname exists.
    certs.add(None, any.clone());
    assert!(same(certs.select(None), &any));
    assert!(same(certs.select(Some("a.b.example.com")), &exact));
}

#[test]
fn missing_or_invalid_certificates_are_resolved_refs_false() {
    let mut y = gateway(
        "infra",
        "gw",
        &[
            "{name: missing, port: 443, protocol: HTTPS, hostname: m.example.com, tls: {certificateRefs: [{name: nope}]}}",
            "{name: garbage, port: 443, protocol: HTTPS, hostname: g.example.com, tls: {certificateRefs: [{name: garbage}]}}",
            "{name: mismatch, port: 443, protocol: HTTPS, hostname: x.example.com, tls: {certificateRefs: [{name: mismatch}]}}",
        ],
    );
    y += "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: garbage, namespace: infra}\ntype: kubernetes.io/tls\nstringData: {tls.crt: not a certificate, tls.key: not a key}\n";
    let (crt, _) = cert(&["x.example.com"]);
    let (_, other_key) = cert(&["y.example.com"]);
    y += &secret("infra", "mismatch", &(crt, other_key));
    let snap = snapshot(&y);
    for (listener, detail) in [
        ("missing", "not found"),
        ("garbage", "tls.crt"),
        ("mismatch", "does not match"),
    ] {
        let (status, reason, message) = listener_condition(&snap, listener, "ResolvedRefs");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "InvalidCertificateRef")
        );
        assert!(message.contains(detail), "{listener}: {message}");
        assert_eq!(listener_condition(&snap, listener, "Programmed").0, "False");
    }
    assert!(!snap.ports.contains_key(&443));
}

#[test]
fn cross_namespace_certificates_need_a_reference_grant() {
    let c = cert(&["a.example.com"]);
    let mut y = gateway(
        "infra",
        "gw",
        &["{name: a, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: shared, namespace: certs}]}}"],
    );
    y += &secret("certs", "shared", &c);
    let denied = snapshot(&y);
    let (status, reason, _) = listener_condition(&denied, "a", "ResolvedRefs");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RefNotPermitted")
    );
    assert!(!denied.ports.contains_key(&443));

    y += "\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: certs}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]\n  to: [{group: '', kind: Secret}]\n";
    let granted = snapshot(&y);
    assert_eq!(listener_condition(&granted, "a", "ResolvedRefs").0, "True");
    assert!(granted.ports[&443].tls.is_some());
}

#[test]
fn http_and_https_on_one_port_conflict() {
    let c = cert(&["a.example.com"]);
    let mut y = gateway(
        "infra",
        "gw",
        &[
            "{name: plain, port: 8443, protocol: HTTP}",
            "{name: tls, port: 8443, protocol: HTTPS, hostname: a.example.com, tls: {certificateRefs: [{name: c}]}}",
        ],
    );
    y += &secret("infra", "c", &c);
    let snap = snapshot(&y);
    let (status, reason, _) = listener_condition(&snap, "tls", "Conflicted");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ProtocolConflict")
    );
    assert_eq!(snap.ports[&8443].protocol, ListenerProtocol::Http);
    assert!(snap.ports[&8443].tls.is_none());
}
