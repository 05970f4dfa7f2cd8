//! Delta ADS over real gRPC on loopback: an `XdsServer` served by tonic on 127.0.0.1:0 and
//! `XdsClient`s (or a raw client speaking exactly like Istio's ztunnel) connecting to it.

use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use mesh_api::istio::security::Authorization;
use mesh_api::istio::workload::{address, Address, Service, Workload};
use mesh_api::prost::Message;
use mesh_api::type_url::{ADDRESS, AUTHORIZATION};
use mesh_xds::{ClientConfig, Delta, ResourceSet, ServerConfig, XdsClient, XdsServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);
const ZTUNNEL_NODE: &str =
    "ztunnel~10.0.0.1~ztunnel-x7k2p.istio-system~istio-system.svc.cluster.local";

#[test]
fn ztunnel_node_id_has_istio_format() {
    let ip = "10.0.0.1".parse().unwrap();
    assert_eq!(
        mesh_xds::ztunnel_node_id(ip, "ztunnel-x7k2p", "istio-system"),
        ZTUNNEL_NODE
    );
}

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

async fn serve_on(server: &XdsServer, addr: SocketAddr) -> Running {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

fn server() -> XdsServer {
    XdsServer::new(ServerConfig {
        debounce: Duration::from_millis(20),
        ..Default::default()
    })
}

fn workload(uid: &str, name: &str, ip: [u8; 4]) -> prost_types::Any {
    mesh_api::to_any(
        ADDRESS,
        &Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: uid.into(),
                name: name.into(),
                namespace: "default".into(),
                addresses: vec![ip.to_vec()],
                ..Default::default()
            })),
        },
    )
}

fn service(namespace: &str, hostname: &str) -> prost_types::Any {
    mesh_api::to_any(
        ADDRESS,
        &Address {
            r#type: Some(address::Type::Service(Service {
                name: hostname.split('.').next().unwrap().into(),
                namespace: namespace.into(),
                hostname: hostname.into(),
                ..Default::default()
            })),
        },
    )
}

fn policy(namespace: &str, name: &str) -> prost_types::Any {
    mesh_api::to_any(
        AUTHORIZATION,
        &Authorization {
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        },
    )
}

type Updates = mpsc::UnboundedReceiver<(Delta, ResourceSet)>;

/// Starts a client whose callback forwards every accepted update; a workload named "bad" is
/// rejected (NACK), as a proxy rejects config it cannot use.
fn start_client(
    addr: SocketAddr,
    types: &[&str],
) -> (
    Updates,
    std::sync::Arc<mesh_xds::ClientStats>,
    JoinHandle<()>,
) {
    let mut config = ClientConfig::new(format!("http://{addr}"), ZTUNNEL_NODE);
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    for t in types {
        config = config.wildcard(t);
    }
    let client = XdsClient::new(config);
    let stats = client.stats();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(client.run(move |delta: &Delta, all: &ResourceSet| {
        for (name, resource) in &delta.updated {
            if delta.type_url == ADDRESS {
                let decoded: Address = mesh_api::from_any(ADDRESS, &resource.resource)
                    .map_err(|e| format!("{name}: {e}"))?;
                if let Some(address::Type::Workload(w)) = decoded.r#type {
                    if w.name == "bad" {
                        return Err(format!("{name}: workload named bad"));
                    }
                }
            }
        }
        let _ = tx.send((delta.clone(), all.clone()));
        Ok(())
    }));
    (rx, stats, task)
}

async fn next(updates: &mut Updates) -> (Delta, ResourceSet) {
    tokio::time::timeout(WAIT, updates.recv())
        .await
        .expect("an update within the deadline")
        .expect("client running")
}

/// Polls `check` until it holds (bounded by WAIT); the deadline is a failure, not a timing claim.
async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn names(set: &ResourceSet, type_url: &str) -> Vec<String> {
    set.get(type_url)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn updated_names(delta: &Delta) -> Vec<String> {
    delta.updated.iter().map(|(n, _)| n.clone()).collect()
}

#[tokio::test]
async fn wildcard_subscription_receives_everything() {
    let server = server();
    server.update(|b| {
        b.set(ADDRESS, "uid-a", workload("uid-a", "a", [10, 0, 0, 1]));
        b.set(ADDRESS, "uid-b", workload("uid-b", "b", [10, 0, 0, 2]));
        b.set(
            ADDRESS,
            "default/web.default.svc.cluster.local",
            service("default", "web.default.svc.cluster.local"),
        );
        b.set(AUTHORIZATION, "default/allow", policy("default", "allow"));
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let (mut updates, stats, client) = start_client(running.addr, &[ADDRESS, AUTHORIZATION]);

    let mut all = ResourceSet::new();
    while names(&all, ADDRESS).len() < 3 || names(&all, AUTHORIZATION).is_empty() {
        all = next(&mut updates).await.1;
    }
    assert_eq!(
        names(&all, ADDRESS),
        ["default/web.default.svc.cluster.local", "uid-a", "uid-b"]
    );
    assert_eq!(names(&all, AUTHORIZATION), ["default/allow"]);
    eventually("both pushes ACKed", || server.stats().acks == 2).await;
    let s = server.stats();
    assert_eq!((s.responses, s.resources_sent, s.nacks), (2, 4, 0));
    assert_eq!(server.node_stats(ZTUNNEL_NODE).unwrap().resources_sent, 4);
    assert!(stats.connected());
    let connections = server.connections();
    assert_eq!(connections.len(), 1);
    assert_eq!(connections[0].node_id, ZTUNNEL_NODE);
    assert_eq!(
        connections[0].subscriptions,
        // Ordered by type URL.
        [
            (AUTHORIZATION.to_string(), true),
            (ADDRESS.to_string(), true)
        ]
    );
    assert_eq!(
        connections[0].resources_held,
        [(AUTHORIZATION.to_string(), 1), (ADDRESS.to_string(), 3)]
    );
    client.abort();
    running.stop().await;
}

#[tokio::test]
async fn an_update_pushes_only_the_changed_resource_and_batches_bursts() {
    let server = server();
    server.update(|b| {
        for i in 0..20u8 {
            b.set(
                ADDRESS,
                format!("uid-{i}"),
                workload(&format!("uid-{i}"), "w", [10, 0, 1, i]),
            );
        }
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let (mut updates, _stats, client) = start_client(running.addr, &[ADDRESS]);
    let (first, _) = next(&mut updates).await;
    assert_eq!(first.updated.len(), 20);
    eventually("initial ACK", || server.stats().acks == 1).await;
    let before = server.stats();

    // Same content again: nothing to publish.
    assert!(!server.set(ADDRESS, "uid-3", workload("uid-3", "w", [10, 0, 1, 3])));
    // A real change to one resource.
    assert!(server.set(ADDRESS, "uid-3", workload("uid-3", "w", [10, 0, 2, 3])));
    let (delta, all) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["uid-3"]);
    assert!(delta.removed.is_empty());
    let held: Address = mesh_api::from_any(ADDRESS, &all[ADDRESS]["uid-3"].resource).unwrap();
    let Some(address::Type::Workload(w)) = held.r#type else {
        panic!("workload")
    };
    assert_eq!(w.addresses, vec![vec![10, 0, 2, 3]]);
    let after = server.stats();
    assert_eq!(after.responses - before.responses, 1);
    assert_eq!(after.resources_sent - before.resources_sent, 1);

    // A burst of separate publications inside the debounce window goes out as one push.
    for i in 0..5u8 {
        server.set(
            ADDRESS,
            format!("uid-{i}"),
            workload(&format!("uid-{i}"), "w2", [10, 0, 3, i]),
        );
    }
    let (burst, _) = next(&mut updates).await;
    assert_eq!(
        updated_names(&burst),
        ["uid-0", "uid-1", "uid-2", "uid-3", "uid-4"]
    );
    assert_eq!(server.stats().responses - after.responses, 1);
    client.abort();
    running.stop().await;
}

#[tokio::test]
async fn removal_sends_removed_resources() {
    let server = server();
    server.update(|b| {
        b.set(ADDRESS, "uid-a", workload("uid-a", "a", [10, 0, 0, 1]));
        b.set(ADDRESS, "uid-b", workload("uid-b", "b", [10, 0, 0, 2]));
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let (mut updates, _stats, client) = start_client(running.addr, &[ADDRESS]);
    next(&mut updates).await;

    assert!(server.remove(ADDRESS, "uid-a"));
    assert!(!server.remove(ADDRESS, "uid-a"));
    let (delta, all) = next(&mut updates).await;
    assert!(delta.updated.is_empty());
    assert_eq!(delta.removed, ["uid-a"]);
    assert_eq!(names(&all, ADDRESS), ["uid-b"]);

    // replace_type removes what the new full set lacks and adds what is new, in one push.
    server.update(|b| {
        b.replace_type(
            ADDRESS,
            [("uid-c".to_string(), workload("uid-c", "c", [10, 0, 0, 3]))],
        )
    });
    let (delta, all) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["uid-c"]);
    assert_eq!(delta.removed, ["uid-b"]);
    assert_eq!(names(&all, ADDRESS), ["uid-c"]);
    assert_eq!(server.stats().removed_sent, 2);
    client.abort();
    running.stop().await;
}

#[tokio::test]
async fn a_nack_keeps_the_last_good_version_and_is_reported() {
    let server = server();
    server.update(|b| {
        b.set(ADDRESS, "uid-a", workload("uid-a", "good", [10, 0, 0, 1]));
        b.set(ADDRESS, "uid-b", workload("uid-b", "b", [10, 0, 0, 2]));
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let (mut updates, stats, client) = start_client(running.addr, &[ADDRESS]);
    let (_, first) = next(&mut updates).await;
    let good_version = first[ADDRESS]["uid-a"].version.clone();

    server.set(ADDRESS, "uid-a", workload("uid-a", "bad", [10, 0, 0, 1]));
    eventually("the NACK reaches the server", || server.stats().nacks == 1).await;
    let nack = &server.nacks()[0];
    assert_eq!(nack.node_id, ZTUNNEL_NODE);
    assert_eq!(nack.type_url, ADDRESS);
    assert!(
        nack.message.contains("workload named bad"),
        "{}",
        nack.message
    );
    assert_eq!(nack.resources.len(), 1);
    assert_eq!(nack.resources[0].0, "uid-a");
    assert_eq!(stats.nacks(), 1);

    // An unrelated change: the server does not resend the rejected resource, and the
    // client's set still holds the last good version of it.
    server.set(ADDRESS, "uid-b", workload("uid-b", "b", [10, 0, 0, 22]));
    let (delta, all) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["uid-b"]);
    assert_eq!(all[ADDRESS]["uid-a"].version, good_version);

    // Fixing the resource pushes it again and it is accepted.
    server.set(ADDRESS, "uid-a", workload("uid-a", "fixed", [10, 0, 0, 1]));
    let (delta, all) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["uid-a"]);
    assert_ne!(all[ADDRESS]["uid-a"].version, good_version);
    assert_eq!(server.stats().nacks, 1);
    client.abort();
    running.stop().await;
}

#[tokio::test]
async fn restart_resyncs_with_initial_resource_versions_without_a_full_repush() {
    let first_server = server();
    first_server.update(|b| {
        for i in 0..50u8 {
            b.set(
                ADDRESS,
                format!("uid-{i}"),
                workload(&format!("uid-{i}"), "w", [10, 0, 1, i]),
            );
        }
        b.set(AUTHORIZATION, "default/allow", policy("default", "allow"));
    });
    let running = serve_on(&first_server, "127.0.0.1:0".parse().unwrap()).await;
    let addr = running.addr;
    let (mut updates, stats, client) = start_client(addr, &[ADDRESS, AUTHORIZATION]);
    let mut all = ResourceSet::new();
    while names(&all, ADDRESS).len() < 50 || names(&all, AUTHORIZATION).is_empty() {
        all = next(&mut updates).await.1;
    }
    assert_eq!(first_server.stats().resources_sent, 51);

    running.stop().await;
    eventually("the client notices", || !stats.connected()).await;

    // A new controller process rebuilds the same registry, except: one workload changed,
    // one removed, one added.
    let second_server = server();
    second_server.update(|b| {
        for i in 0..50u8 {
            if i == 7 {
                continue;
            }
            let ip = if i == 3 { [10, 0, 9, 3] } else { [10, 0, 1, i] };
            b.set(
                ADDRESS,
                format!("uid-{i}"),
                workload(&format!("uid-{i}"), "w", ip),
            );
        }
        b.set(ADDRESS, "uid-new", workload("uid-new", "w", [10, 0, 5, 5]));
        b.set(AUTHORIZATION, "default/allow", policy("default", "allow"));
    });
    let running = serve_on(&second_server, addr).await;

    let (delta, all) = next(&mut updates).await;
    assert_eq!(delta.type_url, ADDRESS);
    assert_eq!(updated_names(&delta), ["uid-3", "uid-new"]);
    assert_eq!(delta.removed, ["uid-7"]);
    assert_eq!(names(&all, ADDRESS).len(), 50);
    eventually("the resync is ACKed", || second_server.stats().acks == 1).await;
    let s = second_server.stats();
    assert_eq!((s.responses, s.resources_sent, s.removed_sent), (1, 2, 1));
    assert_eq!(stats.connects(), 2);
    client.abort();
    running.stop().await;
}

/// Subscribes exactly the way Istio's ztunnel does: one Delta ADS stream, the node id on the
/// first request, wildcard (empty) subscriptions to Address and Authorization.
#[tokio::test]
async fn a_ztunnel_style_client_gets_decodable_addresses() {
    let server = server();
    server.update(|b| {
        b.set(
            ADDRESS,
            "Kubernetes//Pod/default/web-0",
            workload("Kubernetes//Pod/default/web-0", "web-0", [10, 244, 0, 5]),
        );
        b.set(
            ADDRESS,
            "default/web.default.svc.cluster.local",
            service("default", "web.default.svc.cluster.local"),
        );
        b.set(
            AUTHORIZATION,
            "default/deny-all",
            policy("default", "deny-all"),
        );
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let mut grpc = AggregatedDiscoveryServiceClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    for (i, type_url) in [ADDRESS, AUTHORIZATION].into_iter().enumerate() {
        tx.send(DeltaDiscoveryRequest {
            node: (i == 0).then(|| Node {
                id: ZTUNNEL_NODE.into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut stream = grpc
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut by_type: BTreeMap<String, DeltaDiscoveryResponse> = BTreeMap::new();
    while by_type.len() < 2 {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        tx.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        by_type.insert(response.type_url.clone(), response);
    }
    let addresses = &by_type[ADDRESS];
    let mut seen = Vec::new();
    for resource in &addresses.resources {
        let any = resource.resource.as_ref().unwrap();
        assert_eq!(any.type_url, ADDRESS);
        let decoded = Address::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            mesh_api::address_resource_name(&decoded).as_deref(),
            Some(resource.name.as_str())
        );
        match decoded.r#type.unwrap() {
            address::Type::Workload(w) => {
                assert_eq!(w.addresses, vec![vec![10, 244, 0, 5]]);
                seen.push("workload");
            }
            address::Type::Service(s) => {
                assert_eq!(s.hostname, "web.default.svc.cluster.local");
                seen.push("service");
            }
        }
    }
    seen.sort();
    assert_eq!(seen, ["service", "workload"]);
    let policy = Authorization::decode(
        by_type[AUTHORIZATION].resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(
        mesh_api::authorization_resource_name(&policy),
        "default/deny-all"
    );
    eventually("both ACKs", || {
        server.node_stats(ZTUNNEL_NODE).is_some_and(|s| s.acks == 2)
    })
    .await;
    drop(tx);
    running.stop().await;
}

/// Named subscriptions: only what is asked for, more on subscribe, nothing after unsubscribe.
#[tokio::test]
async fn named_subscriptions_follow_subscribe_and_unsubscribe() {
    let server = server();
    server.update(|b| {
        b.set(AUTHORIZATION, "ns/a", policy("ns", "a"));
        b.set(AUTHORIZATION, "ns/b", policy("ns", "b"));
        b.set(AUTHORIZATION, "ns/c", policy("ns", "c"));
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let mut grpc = AggregatedDiscoveryServiceClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let request = |subscribe: &[&str], unsubscribe: &[&str], nonce: &str| DeltaDiscoveryRequest {
        node: Some(Node {
            id: "waypoint~10.0.0.2~wp.ns~ns.svc.cluster.local".into(),
            ..Default::default()
        }),
        type_url: AUTHORIZATION.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    tx.send(request(&["ns/a"], &[], "")).await.unwrap();
    let mut stream = grpc
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    fn resource_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }
    let first = recv(&mut stream).await;
    assert_eq!(resource_names(&first), ["ns/a"]);
    tx.send(request(&["ns/b"], &[], &first.nonce))
        .await
        .unwrap();
    let second = recv(&mut stream).await;
    assert_eq!(resource_names(&second), ["ns/b"]);
    tx.send(request(&[], &["ns/a"], &second.nonce))
        .await
        .unwrap();
    eventually("two ACKs", || server.stats().acks == 2).await;
    let before = server.stats();
    // ns/a is no longer wanted: changing it pushes nothing; changing ns/b does.
    server.update(|b| {
        b.set(AUTHORIZATION, "ns/a", policy("ns", "a2"));
        b.set(AUTHORIZATION, "ns/c", policy("ns", "c2"));
    });
    server.set(AUTHORIZATION, "ns/b", policy("ns", "b2"));
    let third = recv(&mut stream).await;
    assert_eq!(resource_names(&third), ["ns/b"]);
    assert_eq!(server.stats().resources_sent - before.resources_sent, 1);
    drop(tx);
    running.stop().await;
}

async fn recv(stream: &mut tonic::Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response within the deadline")
        .unwrap()
        .expect("stream open")
}

#[tokio::test]
async fn a_connection_behind_the_change_log_still_gets_every_change() {
    let server = XdsServer::new(ServerConfig {
        debounce: Duration::from_millis(20),
        change_log_capacity: 2,
    });
    server.update(|b| {
        for i in 0..10u8 {
            b.set(
                ADDRESS,
                format!("uid-{i}"),
                workload(&format!("uid-{i}"), "w", [10, 0, 1, i]),
            );
        }
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let (mut updates, _stats, client) = start_client(running.addr, &[ADDRESS]);
    next(&mut updates).await;
    // Six changes in one publication: the log keeps two, so the push compares everything.
    server.update(|b| {
        for i in 0..5u8 {
            b.set(
                ADDRESS,
                format!("uid-{i}"),
                workload(&format!("uid-{i}"), "w", [10, 0, 2, i]),
            );
        }
        b.remove(ADDRESS, "uid-9");
    });
    let (delta, all) = next(&mut updates).await;
    assert_eq!(
        updated_names(&delta),
        ["uid-0", "uid-1", "uid-2", "uid-3", "uid-4"]
    );
    assert_eq!(delta.removed, ["uid-9"]);
    assert_eq!(names(&all, ADDRESS).len(), 9);
    client.abort();
    running.stop().await;
}

#[tokio::test]
async fn bytes_pushed_for_one_change_do_not_grow_with_the_store() {
    let server = server();
    server.update(|b| {
        for i in 0..5000u32 {
            let ip = i.to_be_bytes();
            b.set(
                ADDRESS,
                format!("uid-{i}"),
                workload(&format!("uid-{i}"), "w", [10, ip[1], ip[2], ip[3]]),
            );
        }
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let (mut updates, _stats, client) = start_client(running.addr, &[ADDRESS]);
    let (first, _) = next(&mut updates).await;
    assert_eq!(first.updated.len(), 5000);
    let before = server.stats();
    server.set(
        ADDRESS,
        "uid-4321",
        workload("uid-4321", "w", [10, 9, 9, 9]),
    );
    let (delta, _) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["uid-4321"]);
    let bytes = server.stats().bytes_sent - before.bytes_sent;
    let one_resource = workload("uid-4321", "w", [10, 9, 9, 9]).encoded_len() as u64;
    // The resource, its name, version, type URL and nonce: a fixed overhead, not 5000x.
    assert!(bytes < one_resource + 200, "{bytes} bytes for one change");
    client.abort();
    running.stop().await;
}

/// The data-plane pattern: the callback builds an immutable snapshot from the full set and
/// publishes it with arc-swap; readers keep the last one while the controller is gone.
#[tokio::test]
async fn snapshots_published_with_arc_swap_survive_an_unreachable_server() {
    use arc_swap::ArcSwap;
    use std::sync::Arc;
    type Snapshot = BTreeMap<String, Address>;

    let server = server();
    server.set(ADDRESS, "uid-a", workload("uid-a", "a", [10, 0, 0, 1]));
    server.set(ADDRESS, "uid-b", workload("uid-b", "b", [10, 0, 0, 2]));
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;

    let published: Arc<ArcSwap<Snapshot>> = Arc::new(ArcSwap::from_pointee(Snapshot::new()));
    let mut config =
        ClientConfig::new(format!("http://{}", running.addr), ZTUNNEL_NODE).wildcard(ADDRESS);
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    let client = XdsClient::new(config);
    let stats = client.stats();
    let writer = published.clone();
    let task = tokio::spawn(client.run(move |_delta: &Delta, all: &ResourceSet| {
        let mut snapshot = Snapshot::new();
        for (name, resource) in all.get(ADDRESS).into_iter().flatten() {
            let address =
                mesh_api::from_any(ADDRESS, &resource.resource).map_err(|e| e.to_string())?;
            snapshot.insert(name.clone(), address);
        }
        writer.store(Arc::new(snapshot));
        Ok(())
    }));
    eventually("the first snapshot", || published.load().len() == 2).await;

    running.stop().await;
    // Reconnect attempts fail (nothing listens); the last snapshot keeps serving.
    eventually("failed reconnects", || {
        !stats.connected() && stats.last_error().is_some_and(|e| e.contains("connect"))
    })
    .await;
    let snapshot = published.load();
    assert_eq!(snapshot.keys().collect::<Vec<_>>(), ["uid-a", "uid-b"]);
    task.abort();
}

/// xDS over mutual TLS (Istio's 15012): the proxy verifies the controller against the mesh
/// CA, the controller requires a client certificate from the same CA.
#[tokio::test]
async fn delta_ads_over_mutual_tls() {
    use mesh_xds::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Identity::from_pem(cert.pem(), key.serialize_pem())
    };
    let controller_identity = leaf(vec!["controller.ringmesh.internal".into()]);
    let proxy_identity = leaf(vec![
        "spiffe://cluster.local/ns/istio-system/sa/ztunnel".into()
    ]);

    let server = server();
    server.set(ADDRESS, "uid-a", workload("uid-a", "a", [10, 0, 0, 1]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let tls = ServerTlsConfig::new()
        .identity(controller_identity)
        .client_ca_root(Certificate::from_pem(ca.pem()));
    let serving = tokio::spawn(server.clone().serve_tls(listener, tls, async move {
        let _ = stopped.await;
    }));

    let mut config = ClientConfig::new(format!("https://{addr}"), ZTUNNEL_NODE).wildcard(ADDRESS);
    config.tls = Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("controller.ringmesh.internal")
            .identity(proxy_identity),
    );
    let client = XdsClient::new(config);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(client.run(move |delta: &Delta, _: &ResourceSet| {
        let _ = tx.send(updated_names(delta));
        Ok(())
    }));
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ["uid-a"]);
    task.abort();

    // Without a client certificate the controller refuses the stream.
    let mut config = ClientConfig::new(format!("https://{addr}"), "anonymous").wildcard(ADDRESS);
    config.tls = Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("controller.ringmesh.internal"),
    );
    config.initial_backoff = Duration::from_millis(10);
    let client = XdsClient::new(config);
    let anonymous = client.stats();
    let task = tokio::spawn(client.run(|_: &Delta, _: &ResourceSet| Ok(())));
    eventually("the anonymous client is refused", || {
        anonymous.last_error().is_some()
    })
    .await;
    assert_eq!(anonymous.responses(), 0);
    assert!(server.node_stats("anonymous").is_none());
    task.abort();

    let _ = stop.send(());
    tokio::time::timeout(WAIT, serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Fan-out: one change reaches 100 subscribers, each getting just that resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_reaches_a_hundred_subscribers() {
    let server = server();
    server.update(|b| {
        for i in 0..100u8 {
            b.set(
                ADDRESS,
                format!("uid-{i}"),
                workload(&format!("uid-{i}"), "w", [10, 0, 1, i]),
            );
        }
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let (mut updates, _stats, task) = start_client(running.addr, &[ADDRESS]);
        assert_eq!(next(&mut updates).await.0.updated.len(), 100);
        clients.push((updates, task));
    }
    eventually("all initial ACKs", || server.stats().acks == 100).await;
    let before = server.stats();
    server.set(ADDRESS, "uid-42", workload("uid-42", "w", [10, 0, 9, 42]));
    for (updates, _) in &mut clients {
        assert_eq!(updated_names(&next(updates).await.0), ["uid-42"]);
    }
    let after = server.stats();
    assert_eq!(after.responses - before.responses, 100);
    assert_eq!(after.resources_sent - before.resources_sent, 100);
    for (_, task) in clients {
        task.abort();
    }
    running.stop().await;
}

/// On-demand: a running client adds and drops named resources and whole types.
#[tokio::test]
async fn a_running_client_changes_its_subscriptions() {
    let server = server();
    server.update(|b| {
        b.set(AUTHORIZATION, "ns/a", policy("ns", "a"));
        b.set(AUTHORIZATION, "ns/b", policy("ns", "b"));
        b.set(ADDRESS, "uid-a", workload("uid-a", "a", [10, 0, 0, 1]));
    });
    let running = serve_on(&server, "127.0.0.1:0".parse().unwrap()).await;
    let config = ClientConfig::new(
        format!("http://{}", running.addr),
        "gateway~10.0.0.3~gw.ns~ns.svc.cluster.local",
    )
    .named(AUTHORIZATION, ["ns/a".to_string()]);
    let client = XdsClient::new(config);
    let handle = client.subscriptions();
    let (tx, mut updates) = mpsc::unbounded_channel();
    let task = tokio::spawn(client.run(move |delta: &Delta, all: &ResourceSet| {
        let _ = tx.send((delta.clone(), all.clone()));
        Ok(())
    }));
    let (delta, _) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["ns/a"]);

    assert!(handle.subscribe(AUTHORIZATION, vec!["ns/b".into()]));
    let (delta, all) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["ns/b"]);
    assert_eq!(names(&all, AUTHORIZATION), ["ns/a", "ns/b"]);

    assert!(handle.unsubscribe(AUTHORIZATION, vec!["ns/a".into()]));
    let (delta, all) = next(&mut updates).await;
    assert_eq!(delta.removed, ["ns/a"]);
    assert_eq!(names(&all, AUTHORIZATION), ["ns/b"]);

    assert!(handle.subscribe(ADDRESS, vec![]));
    let (delta, _) = next(&mut updates).await;
    assert_eq!(
        (delta.type_url.as_str(), updated_names(&delta)),
        (ADDRESS, vec!["uid-a".to_string()])
    );

    // ns/a is no longer wanted: its change is not pushed; ns/b's is.
    server.set(AUTHORIZATION, "ns/a", policy("ns", "a2"));
    server.set(AUTHORIZATION, "ns/b", policy("ns", "b2"));
    let (delta, _) = next(&mut updates).await;
    assert_eq!(updated_names(&delta), ["ns/b"]);
    task.abort();
    running.stop().await;
}
