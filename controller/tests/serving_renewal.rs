//! The 15012 serving certificate is renewed at half-life in place: with a
//! 4 s lifetime, a new handshake soon gets a different certificate (still
//! chaining to the mesh root), while an xDS stream opened before the renewal
//! stays up (never reconnects) and keeps receiving pushes.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::type_url;
use mesh_xds::{Certificate, ClientConfig, ClientTlsConfig, Delta, XdsClient};
use support::*;
use tokio::sync::mpsc;

/// The leaf certificate a fresh TLS handshake with `addr` gets, verified against `root_pem`.
async fn serving_leaf(addr: std::net::SocketAddr, root_pem: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in mesh_tls::certs_from_pem(root_pem, "root").unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake verified against the mesh root");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_is_renewed_without_dropping_streams() {
    let dir = temp_dir("serving-renewal");
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    write_file(&config.join("base.yaml"), BASE);
    let root = dir.join("root-cert.pem");
    let controller = ControllerProcess::start_with(
        &config,
        "127.0.0.1:0",
        &[
            "--ca-cert".into(),
            root.display().to_string(),
            "--ca-key".into(),
            dir.join("ca-key.pem").display().to_string(),
            "--xds-tls-cert-lifetime".into(),
            "4".into(),
        ],
    );
    let root_pem = std::fs::read_to_string(&root).unwrap();

    // A stream over TLS, opened before any renewal.
    let mut client_config = ClientConfig::new(
        format!("https://{}", controller.xds_tls),
        "ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local",
    )
    .wildcard(type_url::ADDRESS);
    client_config.tls = Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root_pem.clone()))
            .domain_name("localhost"),
    );
    let client = XdsClient::new(client_config);
    let stats = client.stats();
    let (tx, mut deltas) = mpsc::unbounded_channel::<Delta>();
    let task = tokio::spawn(client.run(move |delta, _| {
        let _ = tx.send(delta.clone());
        Ok(())
    }));
    tokio::time::timeout(Duration::from_secs(5), deltas.recv())
        .await
        .expect("initial push")
        .unwrap();

    let first = serving_leaf(controller.xds_tls, &root_pem).await;
    let started = Instant::now();
    loop {
        if serving_leaf(controller.xds_tls, &root_pem).await != first {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the serving certificate was never renewed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(controller.metric("ringmesh_controller_serving_certs_issued_total") >= 2);

    // The stream from before the renewal is the same one and still gets pushes.
    write_file(
        &config.join("more.yaml"),
        &pod("late", "10.0.0.77", "node1", "late"),
    );
    let delta = tokio::time::timeout(Duration::from_secs(5), deltas.recv())
        .await
        .expect("push after the renewal")
        .unwrap();
    assert!(
        delta.updated.iter().any(|(n, _)| n.contains("/late")),
        "{delta:?}"
    );
    assert_eq!(stats.connects(), 1, "the stream never reconnected");
    task.abort();
}
