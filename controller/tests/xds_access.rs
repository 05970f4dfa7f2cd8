//! Who gets a Gateway's `ringmesh.l7.v1.Proxy` (it carries the HTTPS private key): over
//! plaintext nobody (the denial is in `/status` and `/metrics`); over TLS only a caller whose
//! mesh certificate names the gateway's identity, not one without a certificate nor one
//! with another workload's. The workload registry stays open to anyone.

mod support;

use std::time::Duration;

use mesh_api::type_url;
use mesh_registry::xds::l7;
use mesh_tls::Identity;
use mesh_xds::{
    CaClient, CaClientConfig, Certificate, ClientConfig, ClientIdentity, ClientTlsConfig, Delta,
    IssuedCert, XdsClient,
};
use support::*;
use tokio::sync::mpsc;

fn config() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["secure.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: ringmesh
  listeners:
  - {{name: https, port: 8443, protocol: HTTPS, hostname: secure.example.com, tls: {{certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: infra}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}---
apiVersion: v1
kind: Pod
metadata: {{name: edge-gw, namespace: infra}}
spec: {{nodeName: gw-node, serviceAccountName: edge-istio, containers: []}}
status: {{podIP: 10.0.0.20}}
---
apiVersion: v1
kind: Pod
metadata: {{name: intruder, namespace: infra}}
spec: {{nodeName: gw-node, serviceAccountName: intruder, containers: []}}
status: {{podIP: 10.0.0.21}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ringmesh-node-tokens, namespace: istio-system}}
stringData: {{gw-node: token-of-gw-node}}
",
        indent(&cert.pem()),
        indent(&key.serialize_pem())
    )
}

struct Subscriber {
    deltas: mpsc::UnboundedReceiver<Delta>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes to the Gateway's Proxy and, wildcard, to the workload registry.
    fn connect(address: String, tls: Option<(&str, Option<&IssuedCert>)>) -> Self {
        let mut config = ClientConfig::new(
            address,
            "router~10.0.0.20~edge-gw.infra~infra.svc.cluster.local",
        )
        .named(type_url::L7_PROXY, ["infra/edge".to_string()])
        .wildcard(type_url::ADDRESS);
        if let Some((root, issued)) = tls {
            config.tls = Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(root))
                    .domain_name("localhost"),
            );
            if let Some(issued) = issued {
                let identity = ClientIdentity::default();
                identity.set_issued(issued);
                config.client_identity = Some(identity);
            }
        }
        config.max_backoff = Duration::from_millis(300);
        let (tx, deltas) = mpsc::unbounded_channel();
        let task = tokio::spawn(XdsClient::new(config).run(move |delta, _all| {
            let _ = tx.send(delta.clone());
            Ok(())
        }));
        Self { deltas, task }
    }

    /// Type URLs received within `limit` (until it is quiet that long).
    async fn received(&mut self, limit: Duration) -> Vec<Delta> {
        let mut out = Vec::new();
        while let Ok(Some(delta)) = tokio::time::timeout(limit, self.deltas.recv()).await {
            out.push(delta);
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn proxies(deltas: &[Delta]) -> Vec<&Delta> {
    deltas
        .iter()
        .filter(|d| d.type_url == type_url::L7_PROXY)
        .collect()
}

fn has_addresses(deltas: &[Delta]) -> bool {
    deltas
        .iter()
        .any(|d| d.type_url == type_url::ADDRESS && !d.updated.is_empty())
}

async fn issue(controller: &ControllerProcess, account: &str) -> IssuedCert {
    let mut config = CaClientConfig::new(format!("http://{}", controller.xds), "gw-node");
    config.token = Some("token-of-gw-node".into());
    let identity = Identity::new("cluster.local", "infra", account).unwrap();
    CaClient::new(config)
        .unwrap()
        .issue(&identity)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_proxy_goes_only_to_its_own_identity_over_tls() {
    let dir = temp_dir("xds-access");
    write_file(&dir.join("config.yaml"), &config());
    let controller = ControllerProcess::start(&dir, "127.0.0.1:0");
    assert_eq!(controller.status()["resources"]["proxies"], 1);
    let quiet = Duration::from_millis(800);

    // Plaintext: the registry, never the keys.
    let mut plain = Subscriber::connect(format!("http://{}", controller.xds), None);
    let got = plain.received(quiet).await;
    assert!(has_addresses(&got), "the registry is served: {got:?}");
    assert!(proxies(&got).is_empty(), "no Proxy over plaintext: {got:?}");
    let status = controller.wait_status(Duration::from_secs(5), |s| {
        s["xds"]["denials"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    });
    let denial = &status["xds"]["denials"][0];
    assert_eq!(denial["name"], "infra/edge");
    assert_eq!(denial["type_url"], type_url::L7_PROXY);
    assert!(
        denial["reason"].as_str().unwrap().contains("private keys"),
        "{denial}"
    );
    assert_eq!(controller.metric("ringmesh_xds_denied_total"), 1);
    drop(plain);

    let edge = issue(&controller, "edge-istio").await;
    let intruder = issue(&controller, "intruder").await;
    let root = edge.root_pem.clone();
    let tls_address = format!("https://{}", controller.xds_tls);

    // TLS without a client certificate: still the registry only.
    let mut anonymous = Subscriber::connect(tls_address.clone(), Some((&root, None)));
    let got = anonymous.received(quiet).await;
    assert!(has_addresses(&got), "{got:?}");
    assert!(proxies(&got).is_empty(), "{got:?}");
    drop(anonymous);

    // Another workload's certificate, from the same CA and node: refused by identity.
    let mut other = Subscriber::connect(tls_address.clone(), Some((&root, Some(&intruder))));
    let got = other.received(quiet).await;
    assert!(has_addresses(&got), "{got:?}");
    assert!(proxies(&got).is_empty(), "{got:?}");
    drop(other);
    let status = controller.status();
    let reasons: Vec<&str> = status["xds"]["denials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[1].contains("no client certificate"), "{reasons:?}");
    assert!(
        reasons[2].contains("caller is spiffe://cluster.local/ns/infra/sa/intruder")
            && reasons[2].contains("only spiffe://cluster.local/ns/infra/sa/edge-istio"),
        "{reasons:?}"
    );
    assert_eq!(controller.metric("ringmesh_xds_denied_total"), 3);

    // The gateway's own identity gets its Proxy, key included.
    let mut gateway = Subscriber::connect(tls_address, Some((&root, Some(&edge))));
    let got = gateway.received(quiet).await;
    let proxy_deltas = proxies(&got);
    assert_eq!(proxy_deltas.len(), 1, "{got:?}");
    let (name, resource) = &proxy_deltas[0].updated[0];
    assert_eq!(name, "infra/edge");
    let proxy = l7::decode(name, &resource.resource).unwrap();
    let certificate = proxy.listeners[0].certificate.as_ref().unwrap();
    assert!(!certificate.private_key.is_empty());
    assert_eq!(controller.metric("ringmesh_xds_denied_total"), 3);
}
