//! Simulated ztunnels for `bench controller-scale`: raw Delta ADS streams that subscribe the
//! way Istio's ztunnel does (wildcard Address then Authorization on one stream, node id
//! `ztunnel~IP~POD.NS~NS.svc.cluster.local` on the first request), ACK every response, and
//! keep only counters (bytes, resources, when a watched name arrived), so 100 of them fit in
//! the bench process at any registry size.

use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_api::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use mesh_api::type_url;
use prost::Message;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What one subscriber has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub responses: u64,
    /// Encoded DeltaDiscoveryResponse bytes (protobuf, before gRPC framing).
    pub bytes: u64,
    pub resources: u64,
    /// When the watched resource name first arrived.
    pub watched_at: Option<Instant>,
    pub error: Option<String>,
}

/// Shared between the subscriber tasks and the bench's measuring code.
#[derive(Default)]
pub struct Fleet {
    pub seen: Vec<Mutex<Seen>>,
    watched: Mutex<Option<String>>,
}

impl Fleet {
    pub fn new(subscribers: usize) -> Arc<Self> {
        Arc::new(Fleet {
            seen: (0..subscribers).map(|_| Mutex::default()).collect(),
            watched: Mutex::new(None),
        })
    }

    /// From now on, each subscriber records when a response carries `name`.
    pub fn watch(&self, name: &str) {
        *self.watched.lock().unwrap() = Some(name.to_string());
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }
}

/// Istio's node id for simulated ztunnel `index` (one per node, IPs from 10.250.0.1).
pub fn node_id(index: usize) -> String {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + index as u32 + 1);
    mesh_xds::ztunnel_node_id(ip.into(), &format!("ztunnel-{index:03}"), "istio-system")
}

/// One stream until it ends; errors are recorded in the fleet, not returned.
pub async fn run_subscriber(xds: SocketAddr, index: usize, fleet: Arc<Fleet>) {
    if let Err(error) = subscribe(xds, index, &fleet).await {
        fleet.seen[index].lock().unwrap().error = Some(error);
    }
}

async fn subscribe(xds: SocketAddr, index: usize, fleet: &Fleet) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect {xds}: {e}"))?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(1 << 30);
    let (tx, rx) = mpsc::channel(16);
    for (i, type_url) in [type_url::ADDRESS, type_url::AUTHORIZATION]
        .into_iter()
        .enumerate()
    {
        let request = DeltaDiscoveryRequest {
            node: (i == 0).then(|| Node {
                id: node_id(index),
                ..Default::default()
            }),
            type_url: type_url.to_string(),
            ..Default::default()
        };
        tx.send(request)
            .await
            .map_err(|_| "request channel closed")?;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("open stream: {s}"))?
        .into_inner();
    while let Some(response) = responses
        .message()
        .await
        .map_err(|s| format!("stream: {s}"))?
    {
        let arrived = Instant::now();
        let watched = fleet.watched.lock().unwrap().clone();
        {
            let mut seen = fleet.seen[index].lock().unwrap();
            seen.responses += 1;
            seen.bytes += response.encoded_len() as u64;
            seen.resources += response.resources.len() as u64;
            if seen.watched_at.is_none()
                && watched.is_some_and(|w| response.resources.iter().any(|r| r.name == w))
            {
                seen.watched_at = Some(arrived);
            }
        }
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| "request channel closed")?;
    }
    Err("stream closed by the controller".into())
}
