//! CreateCertificate against the real controller binary: a CSR for a pod on
//! the caller's node is signed (chain leaf first, root last); one for a pod on
//! another node, or without a node, is refused with a clear status.

mod support;

use mesh_api::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use mesh_api::istio::v1::auth::IstioCertificateRequest;
use mesh_api::prost_types::{value::Kind, Struct, Value};
use mesh_tls::Identity;
use support::*;

fn request(csr: &str, node: Option<&str>) -> IstioCertificateRequest {
    IstioCertificateRequest {
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_signs_only_identities_of_pods_on_the_callers_node() {
    let dir = temp_dir("ca");
    write_file(&dir.join("base.yaml"), BASE);
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

    let refused = client
        .create_certificate(request(&csr.csr_pem, Some("node2")))
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

    let garbage = client
        .create_certificate(request("not a csr", Some("node1")))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    let _ = std::fs::remove_dir_all(&dir);
}
