//! The CA and the workload side of issuance.

mod common;

use std::time::{Duration, SystemTime};

use common::{identity, temp_dir, TRUST_DOMAIN};
use mesh_tls::{
    cert_info, generate_key_and_csr, ring_provider, CaError, CertificateAuthority, Identity,
    WorkloadCert, DEFAULT_CERT_LIFETIME,
};
use rustls::pki_types::UnixTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn approx(a: SystemTime, b: SystemTime, slack: Duration) -> bool {
    let d = a.duration_since(b).unwrap_or_else(|e| e.duration());
    d <= slack
}

#[test]
fn signs_a_csr_with_the_identity_as_only_san_for_24h_leaf_first() {
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let id = identity("default", "productpage");
    let request = generate_key_and_csr(&id).unwrap();
    assert!(request
        .csr_pem
        .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let before = SystemTime::now();
    let issued = ca.sign_csr(&request.csr_pem, &id, None).unwrap();

    // [leaf, root], and the PEM form says the same.
    assert_eq!(issued.chain.len(), 2);
    assert_eq!(&issued.chain[1], ca.root_der());
    assert_eq!(issued.chain_pem.len(), 2);
    assert_eq!(issued.chain_pem[1], ca.root_pem());
    let reparsed = mesh_tls::certs_from_pem(&issued.chain_pem.concat(), "chain").unwrap();
    assert_eq!(reparsed, issued.chain);

    // URI SAN only, equal to the identity; empty subject; not a CA; ECDSA P-256.
    let (_, leaf) = X509Certificate::from_der(&issued.chain[0]).unwrap();
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("SAN extension");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("URI:{u}"),
            other => format!("other:{other:?}"),
        })
        .collect();
    assert_eq!(names, vec![format!("URI:{id}")]);
    assert_eq!(leaf.subject().iter().count(), 0, "subject must be empty");
    assert!(!leaf.is_ca());
    assert_eq!(
        leaf.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "EC public key"
    );
    assert_eq!(Identity::from_certificate(&issued.chain[0]).unwrap(), id);

    // 24 h from now.
    let info = cert_info(&issued.chain[0]).unwrap();
    assert!(approx(
        info.not_after,
        before + DEFAULT_CERT_LIFETIME,
        Duration::from_secs(5)
    ));
    assert_eq!(info.not_after, issued.not_after);
    assert!(info.not_before <= before);

    // The chain verifies against the root, for both server and client use.
    let anchors = [webpki::anchor_from_trusted_cert(ca.root_der()).unwrap()];
    let leaf = webpki::EndEntityCert::try_from(&issued.chain[0]).unwrap();
    let algs = ring_provider().signature_verification_algorithms.all;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(algs, &anchors, &[], UnixTime::now(), usage, None, None)
            .expect("leaf chains to the root");
    }

    // The issued certificate matches the workload's key.
    let cert = WorkloadCert::new(request.key, issued.chain, Some(&id)).unwrap();
    let certified = cert.certified_key(&ring_provider()).unwrap();
    certified
        .keys_match()
        .expect("certificate is for the CSR's key");
}

#[test]
fn renewal_is_due_at_half_life() {
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let id = identity("ns1", "sa1");
    let cert = ca.issue_workload_cert(&id).unwrap();
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(lifetime >= DEFAULT_CERT_LIFETIME);
    let half = cert.not_before + lifetime / 2;
    assert_eq!(cert.renew_at(), half);
    assert!(!cert.should_renew(SystemTime::now()));
    assert!(!cert.should_renew(half - Duration::from_secs(1)));
    assert!(cert.should_renew(half));
    assert!(cert.should_renew(cert.not_after));
}

#[test]
fn requested_lifetime_is_honoured_and_capped() {
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let id = identity("ns1", "sa1");
    let csr = generate_key_and_csr(&id).unwrap().csr_pem;
    let now = SystemTime::now();
    let one_hour = ca
        .sign_csr(&csr, &id, Some(Duration::from_secs(3600)))
        .unwrap();
    assert!(approx(
        one_hour.not_after,
        now + Duration::from_secs(3600),
        Duration::from_secs(5)
    ));
    let capped = ca
        .sign_csr(&csr, &id, Some(Duration::from_secs(48 * 3600)))
        .unwrap();
    assert!(approx(
        capped.not_after,
        now + DEFAULT_CERT_LIFETIME,
        Duration::from_secs(5)
    ));
    // Serial numbers are unique per issuance.
    assert_ne!(
        cert_info(&one_hour.chain[0]).unwrap().serial,
        cert_info(&capped.chain[0]).unwrap().serial
    );
}

#[test]
fn refuses_a_csr_for_an_identity_the_caller_does_not_hold() {
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let caller = identity("default", "attacker");
    let victim = identity("kube-system", "admin");
    let csr = generate_key_and_csr(&victim).unwrap().csr_pem;
    let err = ca.sign_csr(&csr, &caller, None).unwrap_err();
    assert!(
        matches!(err, CaError::IdentityNotAuthorized { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/kube-system/sa/admin")
            && msg.contains("only entitled to spiffe://cluster.local/ns/default/sa/attacker"),
        "{msg}"
    );

    // Asking for the entitled identity plus another one is refused too.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let two =
        mesh_tls::csr::csr_pem_with_sans(&key, &[caller.to_string(), victim.to_string()]).unwrap();
    let err = ca.sign_csr(&two, &caller, None).unwrap_err();
    assert!(
        matches!(err, CaError::IdentityNotAuthorized { .. }),
        "{err:?}"
    );

    // And a CSR without any identity.
    let none = mesh_tls::csr::csr_pem_with_sans(&key, &[]).unwrap();
    let err = ca.sign_csr(&none, &caller, None).unwrap_err();
    assert!(
        err.to_string().contains("CSR asks for no identity"),
        "{err}"
    );
}

#[test]
fn garbage_csr_and_pem_give_clear_errors() {
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let id = identity("default", "a");
    for garbage in [
        "",
        "not a pem at all",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAAAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let err = ca.sign_csr(garbage, &id, None).unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{garbage:?}: {err:?}");
        assert!(err.to_string().starts_with("CSR cannot be parsed"), "{err}");
    }
    // A CSR whose signature does not match (tampered body) is refused.
    let csr = generate_key_and_csr(&id).unwrap().csr_pem;
    let mut bytes = csr_der(&csr);
    let n = bytes.len();
    bytes[n - 10] ^= 0xff; // inside the signature
    let tampered = pem_encode("CERTIFICATE REQUEST", &bytes);
    let err = ca.sign_csr(&tampered, &id, None).unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err:?}");

    let err = CertificateAuthority::from_pem("garbage", "garbage").unwrap_err();
    assert!(
        err.to_string().contains("CA certificate: no PEM block"),
        "{err}"
    );
    let err = CertificateAuthority::from_pem(ca.root_pem(), "garbage").unwrap_err();
    assert!(err.to_string().starts_with("CA key"), "{err}");

    let err = WorkloadCert::from_pem("junk", ca.root_pem(), None).unwrap_err();
    assert!(
        err.to_string().contains("workload key: no PEM block"),
        "{err}"
    );
}

#[test]
fn generated_ca_is_written_for_peers_and_loads_back() {
    let dir = temp_dir("ca");
    let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("ca-key.pem"));
    let first =
        CertificateAuthority::load_or_generate(&cert_path, &key_path, TRUST_DOMAIN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "CA key must be private");

    // A second process sharing the files gets the same root and issues certificates that
    // chain to the first one's root.
    let second =
        CertificateAuthority::load_or_generate(&cert_path, &key_path, TRUST_DOMAIN).unwrap();
    assert_eq!(first.root_der(), second.root_der());
    let id = identity("default", "a");
    let issued = second.issue_workload_cert(&id).unwrap();
    let anchors = [webpki::anchor_from_trusted_cert(first.root_der()).unwrap()];
    webpki::EndEntityCert::try_from(&issued.chain[0])
        .unwrap()
        .verify_for_usage(
            ring_provider().signature_verification_algorithms.all,
            &anchors,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("loaded CA signs for the shared root");

    // A key that doesn't belong to the certificate is refused.
    let other = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let other_dir = temp_dir("ca-other");
    other
        .write(&other_dir.join("c.pem"), &other_dir.join("k.pem"))
        .unwrap();
    let err = CertificateAuthority::load(&cert_path, &other_dir.join("k.pem")).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err:?}");
    // A leaf is not a CA.
    let leaf_pem = mesh_tls::cert_to_pem(&issued.chain[0]);
    let err =
        CertificateAuthority::from_pem(&leaf_pem, &std::fs::read_to_string(&key_path).unwrap())
            .unwrap_err();
    assert!(matches!(err, CaError::NotACa), "{err:?}");
    // A missing file names the path.
    let err = CertificateAuthority::load(&dir.join("missing.pem"), &key_path).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other_dir);
}

#[test]
fn workload_cert_from_pem_checks_the_identity() {
    let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
    let id = identity("default", "a");
    let request = generate_key_and_csr(&id).unwrap();
    let issued = ca.sign_csr(&request.csr_pem, &id, None).unwrap();
    let chain_pem = issued.chain_pem.concat();
    let cert = WorkloadCert::from_pem(&request.key_pem, &chain_pem, Some(&id)).unwrap();
    assert_eq!(cert.identity, id);
    assert_eq!(cert.chain.len(), 2);
    let err = WorkloadCert::from_pem(
        &request.key_pem,
        &chain_pem,
        Some(&identity("default", "b")),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected spiffe://cluster.local/ns/default/sa/b"),
        "{err}"
    );
}

fn csr_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    // cert_to_pem produces a CERTIFICATE block; relabel it.
    mesh_tls::cert_to_pem(&rustls::pki_types::CertificateDer::from(der.to_vec()))
        .replace("CERTIFICATE", label)
}
