//! HBONE over mesh-tls: mutual TLS with SPIFFE identities, the pool key's
//! identities choosing the client certificate and the expected server.

mod common;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use mesh_hbone::{
    connect_fn, ClientConfig, ClientError, Pool, PoolKey, Server, ServerConfig, TunnelRequest,
};
use mesh_tls::{CertificateAuthority, HboneTls, Identity};
use monoio::net::TcpStream;

const TRUST_DOMAIN: &str = "cluster.local";

fn identity(ns: &str, sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, ns, sa).unwrap()
}

fn tls_for(ca: &CertificateAuthority, id: &Identity) -> Arc<HboneTls> {
    Arc::new(
        HboneTls::from_workload_cert(ca.root_pem(), &ca.issue_workload_cert(id).unwrap()).unwrap(),
    )
}

/// An HBONE server behind mTLS: the verified client identity goes to the handler.
fn spawn_tls_hbone_server(tls: Arc<HboneTls>, server: Server<Upstreams>) -> SocketAddr {
    let (listener, addr) = listener();
    monoio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, server) = (tls.clone(), server.clone());
            monoio::spawn(async move {
                let Ok(stream) = mesh_tls::accept(tls.server_config(), tcp).await else {
                    return;
                };
                let connection = mesh_hbone::ConnectionInfo {
                    peer_identity: Some(stream.peer_identity().to_string().into()),
                    peer_addr: stream.peer_addr().ok(),
                    local_addr: stream.local_addr().ok(),
                };
                let _ = server.serve(stream, connection).await;
            });
        }
    });
    addr
}

/// The pool's connector: present the key's source identity, require the
/// key's destination identity.
fn tls_pool(clients: HashMap<String, Arc<HboneTls>>) -> Pool<impl mesh_hbone::Connect> {
    let clients = Rc::new(clients);
    Pool::new(
        ClientConfig::default(),
        connect_fn(move |key: PoolKey| {
            let clients = clients.clone();
            async move {
                let invalid =
                    |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
                let source = key
                    .source_identity
                    .as_deref()
                    .ok_or_else(|| invalid("no source identity"))?;
                let tls = clients
                    .get(source)
                    .ok_or_else(|| invalid("no certificate for source"))?;
                let expected: Identity = key
                    .destination_identity
                    .as_deref()
                    .ok_or_else(|| invalid("no destination identity"))?
                    .parse()
                    .map_err(|_| invalid("bad destination identity"))?;
                let config = tls
                    .client_config(&[expected])
                    .map_err(|e| invalid(&e.to_string()))?;
                let tcp = TcpStream::connect(key.destination).await?;
                tcp.set_nodelay(true)?;
                Ok(mesh_tls::connect(config, tcp).await?)
            }
        }),
    )
}

fn key(source: &Identity, destination: &Identity, addr: SocketAddr) -> PoolKey {
    PoolKey::new(
        Some(source.to_string().into()),
        Some(destination.to_string().into()),
        addr,
    )
}

#[test]
fn hbone_over_mutual_tls_carries_identities_and_data() {
    run(async {
        let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
        let (client_a, client_b, server_id, stranger) = (
            identity("app-a", "sa-a"),
            identity("app-b", "sa-b"),
            identity("app-s", "server"),
            identity("app-x", "stranger"),
        );
        let server = Server::new(ServerConfig::default(), Upstreams::new());
        let hbone = spawn_tls_hbone_server(tls_for(&ca, &server_id), server.clone());
        let echo = spawn_echo();
        let pool = tls_pool(HashMap::from([
            (client_a.to_string(), tls_for(&ca, &client_a)),
            (client_b.to_string(), tls_for(&ca, &client_b)),
        ]));

        // 8 MiB each way through TLS + HBONE, checksummed.
        let mut tunnel = pool
            .connect(&TunnelRequest::new(key(&client_a, &server_id, hbone), echo))
            .await
            .expect("tunnel over mTLS");
        let mut pattern = Pattern::new(42);
        let mut sent = Checksum::default();
        let mut received = Checksum::default();
        for _ in 0..32 {
            let chunk = pattern.fill(256 * 1024);
            sent.update(&chunk);
            tunnel.send(Bytes::from(chunk)).await.unwrap();
            while received.len < sent.len {
                received.update(&tunnel.recv().await.unwrap().unwrap());
            }
        }
        tunnel.finish().unwrap();
        assert!(tunnel.recv().await.is_none());
        assert_eq!(received.value(), sent.value());

        // Another source identity is another pool key: its own connection,
        // and the server sees that identity.
        let other = pool
            .connect(&TunnelRequest::new(key(&client_b, &server_id, hbone), echo))
            .await
            .expect("second identity");
        assert_ne!(other.connection_id(), tunnel.connection_id());
        assert_eq!(pool.connections_opened(), 2);
        let peers: Vec<Option<String>> = server
            .handler()
            .seen
            .borrow()
            .iter()
            .map(|r| r.peer_identity.as_deref().map(str::to_owned))
            .collect();
        assert_eq!(
            peers,
            vec![Some(client_a.to_string()), Some(client_b.to_string())]
        );

        // Expecting an identity the server does not have fails the dial.
        let err = pool
            .connect(&TunnelRequest::new(key(&client_a, &stranger, hbone), echo))
            .await
            .err()
            .expect("wrong server identity refused");
        assert!(matches!(err, ClientError::Connect(_)), "{err}");
        assert_eq!(server.handler().seen.borrow().len(), 2);
    });
}

#[test]
fn hbone_server_rejects_clients_without_mesh_certificates() {
    run(async {
        let ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
        let other_ca = CertificateAuthority::generate(TRUST_DOMAIN).unwrap();
        let (client_id, server_id) = (identity("app-a", "sa-a"), identity("app-s", "server"));
        let server = Server::new(ServerConfig::default(), Upstreams::new());
        let hbone = spawn_tls_hbone_server(tls_for(&ca, &server_id), server.clone());
        let echo = spawn_echo();
        // The client trusts the server's CA but its own certificate comes from another CA.
        let mixed = Arc::new(
            HboneTls::from_workload_cert(
                ca.root_pem(),
                &other_ca.issue_workload_cert(&client_id).unwrap(),
            )
            .unwrap(),
        );
        let pool = tls_pool(HashMap::from([(client_id.to_string(), mixed)]));
        let result = pool
            .connect(&TunnelRequest::new(
                key(&client_id, &server_id, hbone),
                echo,
            ))
            .await;
        assert!(
            result.is_err(),
            "server must refuse a client certificate from another CA"
        );
        assert!(server.handler().seen.borrow().is_empty());
    });
}
