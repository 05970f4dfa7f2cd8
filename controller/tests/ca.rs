//! CreateCertificate against the real controller binary: a CSR for a pod on
//! the caller's node is signed (chain leaf first, root last); one for a pod on
//! another node, or without a node, is refused with a clear status. The caller
//! must present its node's bootstrap token; 15012 serves TLS that clients
//! verify against the mesh root by DNS name or IP.

mod support;

use mesh_api::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_api::istio::v1::auth::IstioCertificateRequest;
use mesh_api::prost_types::{value::Kind, Struct, Value};
use mesh_tls::Identity;
use support::*;

const TOKENS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: ringmesh-node-tokens, namespace: istio-system}
stringData: {node1: secret-1, node2: secret-2}
"#;

fn request(csr: &str, node: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    with_token(raw_request(csr, node), "secret-1")
}

fn with_token<T>(mut request: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn raw_request(csr: &str, node: Option<&str>) -> tonic::Request<IstioCertificateRequest> {
    tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_string(),
        validity_duration: 3600,
        metadata: node.map(|n| Struct {
            fields: [(
                "node".to_string(),
                Value {
                    kind: Some(Kind::StringValue(n.to_string())),
                },
            )]
            .into(),
        }),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_signs_only_identities_of_pods_on_the_callers_node() {
    let dir = temp_dir("ca");
    write_file(&dir.join("base.yaml"), BASE);
    write_file(&dir.join("tokens.yaml"), TOKENS);
    let controller = ControllerProcess::start(&dir, "127.0.0.1:0");
    let mut client = IstioCertificateServiceClient::connect(format!("http://{}", controller.xds))
        .await
        .unwrap();
    // Pod a (sa-a) runs on node1.
    let identity = Identity::new("cluster.local", "apps", "sa-a").unwrap();
    let csr = mesh_tls::generate_key_and_csr(&identity).unwrap();

    let chain = client
        .create_certificate(request(&csr.csr_pem, Some("node1")))
        .await
        .expect("signed for node1")
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2, "leaf and root");
    let leaf = &mesh_tls::certs_from_pem(&chain[0], "leaf").unwrap()[0];
    assert_eq!(Identity::from_certificate(leaf).unwrap(), identity);
    let root = &mesh_tls::certs_from_pem(&chain[1], "root").unwrap()[0];
    assert!(mesh_tls::cert_info(root).unwrap().is_ca, "last is the root");

    // node2, authenticated as node2, asks for a pod that runs on node1.
    let refused = client
        .create_certificate(with_token(
            raw_request(&csr.csr_pem, Some("node2")),
            "secret-2",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("node2") && refused.message().contains("sa-a"),
        "{refused:?}"
    );

    let anonymous = client
        .create_certificate(request(&csr.csr_pem, None))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);

    // Caller authentication: no token, another node's token, a node without one.
    let no_token = client
        .create_certificate(raw_request(&csr.csr_pem, Some("node1")))
        .await
        .unwrap_err();
    assert_eq!(
        no_token.code(),
        tonic::Code::Unauthenticated,
        "{no_token:?}"
    );
    assert!(no_token.message().contains("Bearer"), "{no_token:?}");
    let stolen = client
        .create_certificate(with_token(
            raw_request(&csr.csr_pem, Some("node1")),
            "secret-2",
        ))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), tonic::Code::Unauthenticated, "{stolen:?}");
    let unknown_node = client
        .create_certificate(request(&csr.csr_pem, Some("node9")))
        .await
        .unwrap_err();
    assert_eq!(unknown_node.code(), tonic::Code::PermissionDenied);

    // Without the Secret, the CA signs for nobody (polled: the reload is async).
    std::fs::remove_file(dir.join("tokens.yaml")).unwrap();
    let start = std::time::Instant::now();
    let closed = loop {
        let result = client
            .create_certificate(request(&csr.csr_pem, Some("node1")))
            .await;
        match result {
            Err(status) if status.code() == tonic::Code::Unauthenticated => break status,
            other => assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "still signing without the Secret: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        closed.message().contains("ringmesh-node-tokens"),
        "{closed:?}"
    );
    write_file(&dir.join("tokens.yaml"), TOKENS);

    let start = std::time::Instant::now();
    let garbage = loop {
        let status = client
            .create_certificate(request("not a csr", Some("node1")))
            .await
            .unwrap_err();
        if status.code() != tonic::Code::Unauthenticated
            || start.elapsed() > std::time::Duration::from_secs(5)
        {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    let _ = std::fs::remove_dir_all(&dir);
}

/// 15012: TLS whose serving certificate chains to the mesh root and names the
/// controller's Service DNS name and 127.0.0.1; mesh_xds::CaClient over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_over_tls_with_the_ca_client() {
    let dir = temp_dir("ca-tls");
    write_file(&dir.join("base.yaml"), BASE);
    write_file(&dir.join("tokens.yaml"), TOKENS);
    let controller = ControllerProcess::start(&dir, "127.0.0.1:0");
    let identity = Identity::new("cluster.local", "apps", "sa-b").unwrap();

    // Bootstrap the root over plaintext (in a cluster it is a mounted ConfigMap).
    let mut plain = mesh_xds::CaClientConfig::new(format!("http://{}", controller.xds), "node2");
    plain.token = Some("secret-2".into());
    let issued = mesh_xds::CaClient::new(plain)
        .unwrap()
        .issue(&identity)
        .await
        .expect("plaintext issuance");
    assert_eq!(issued.cert.identity, identity);
    assert_eq!(issued.cert.chain.len(), 2);
    let root = issued.root_pem.clone();

    let over_tls = |domain: Option<&str>| {
        let mut tls = mesh_xds::ClientTlsConfig::new()
            .ca_certificate(mesh_xds::Certificate::from_pem(root.clone()));
        if let Some(domain) = domain {
            tls = tls.domain_name(domain);
        }
        let mut config =
            mesh_xds::CaClientConfig::new(format!("https://{}", controller.xds_tls), "node2");
        config.tls = Some(tls);
        config.token = Some("secret-2".into());
        config.timeout = std::time::Duration::from_secs(5);
        mesh_xds::CaClient::new(config).unwrap()
    };
    // By DNS name, and by IP (the URI's host).
    for domain in [Some("ringmesh-controller.istio-system.svc"), None] {
        let issued = over_tls(domain)
            .issue(&identity)
            .await
            .unwrap_or_else(|e| panic!("TLS issuance with {domain:?}: {e}"));
        assert_eq!(issued.root_pem, root);
        let now = std::time::SystemTime::now();
        assert!(!issued.cert.should_renew(now));
        assert!(issued.cert.renew_at() > now);
    }
    // A name the certificate does not carry is refused by the client.
    let wrong = over_tls(Some("evil.example"))
        .issue(&identity)
        .await
        .unwrap_err();
    assert!(!wrong.is_empty());
    // A root the server's certificate does not chain to is refused too.
    let foreign = mesh_tls::CertificateAuthority::generate("cluster.local").unwrap();
    let mut config =
        mesh_xds::CaClientConfig::new(format!("https://{}", controller.xds_tls), "node2");
    config.tls = Some(
        mesh_xds::ClientTlsConfig::new()
            .ca_certificate(mesh_xds::Certificate::from_pem(foreign.root_pem()))
            .domain_name("ringmesh-controller.istio-system.svc"),
    );
    config.token = Some("secret-2".into());
    assert!(mesh_xds::CaClient::new(config)
        .unwrap()
        .issue(&identity)
        .await
        .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
