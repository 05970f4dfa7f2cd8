//! Endpoint choice per cluster on one worker: the cluster's load balancer
//! over its endpoints, ejected endpoints skipped (outlier detection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh_balance::hash::hash_bytes;
use mesh_balance::{Balancer, HashKey, LbAlgorithm, OutlierDetector, UpstreamResult};
use mesh_registry::Cluster;
use rand::Rng;

use super::hash_key::{cookie, request_hash, RequestView};
use super::WorkerPolicy;

/// The endpoint chosen for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub addr: SocketAddr,
    /// `set-cookie` value for the response when the hash key is a cookie
    /// with a TTL that the request did not carry (Envoy generates it).
    pub set_cookie: Option<String>,
}

pub(super) struct ClusterRuntime {
    /// The cluster these tables were built for.
    cluster: Arc<Cluster>,
    index: HashMap<SocketAddr, usize>,
    balancer: Balancer,
    outlier: Option<OutlierDetector>,
    /// Attempts in flight on this worker (picked, not yet reported).
    in_flight: u32,
    /// Retries in flight on this worker (the retry budget's numerator).
    pub(super) retries: std::rc::Rc<std::cell::Cell<u32>>,
}

/// No DestinationRule: round robin (the engine's behaviour before policies).
fn algorithm(cluster: &Cluster) -> LbAlgorithm {
    match &cluster.policy.load_balancer {
        Some(lb) => lb.algorithm.clone(),
        None => LbAlgorithm::RoundRobin,
    }
}

impl ClusterRuntime {
    pub(super) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    fn build(cluster: &Arc<Cluster>, previous: Option<&ClusterRuntime>) -> Self {
        let keys: Vec<String> = cluster.endpoints.iter().map(|a| a.to_string()).collect();
        let index: HashMap<SocketAddr, usize> = cluster
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, i))
            .collect();
        let outlier = cluster.policy.outlier_detection.as_ref().map(|config| {
            match previous.and_then(|p| p.outlier.as_ref().map(|o| (p, o))) {
                // Ejections and error counts survive endpoint churn.
                Some((p, o)) if o.config() == config => {
                    o.remap(keys.len(), |i| p.index.get(&cluster.endpoints[i]).copied())
                }
                _ => OutlierDetector::new(config.clone(), keys.len()),
            }
        });
        ClusterRuntime {
            cluster: cluster.clone(),
            index,
            balancer: Balancer::new(&algorithm(cluster), &keys),
            outlier,
            in_flight: 0,
            retries: previous.map(|p| p.retries.clone()).unwrap_or_default(),
        }
    }

    /// Same endpoints and settings: the tables can stay.
    fn still_fits(&self, cluster: &Arc<Cluster>) -> bool {
        Arc::ptr_eq(&self.cluster, cluster)
            || (self.cluster.endpoints == cluster.endpoints
                && self.cluster.policy.load_balancer == cluster.policy.load_balancer
                && self.cluster.policy.outlier_detection == cluster.policy.outlier_detection)
    }
}

impl WorkerPolicy {
    pub(super) fn with_runtime<T>(
        &self,
        cluster: &Arc<Cluster>,
        f: impl FnOnce(&mut ClusterRuntime) -> T,
    ) -> T {
        let mut clusters = self.clusters.borrow_mut();
        let rt = match clusters.get_mut(cluster.name.as_str()) {
            Some(rt) if rt.still_fits(cluster) => {
                rt.cluster = cluster.clone();
                rt
            }
            Some(rt) => {
                *rt = ClusterRuntime::build(cluster, Some(rt));
                rt
            }
            None => clusters
                .entry(cluster.name.clone())
                .or_insert_with(|| ClusterRuntime::build(cluster, None)),
        };
        f(rt)
    }

    /// Chooses the endpoint for one attempt and counts it in flight (pair
    /// every `Some` with one `report`). None: no endpoint available.
    pub fn pick<R: Rng>(
        &self,
        cluster: &Arc<Cluster>,
        req: &dyn RequestView,
        rng: &mut R,
        now: Instant,
    ) -> Option<Picked> {
        if cluster.endpoints.is_empty() {
            return None;
        }
        let hash_key = cluster
            .policy
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.hash_key.as_ref());
        let mut set_cookie = None;
        let hash = match hash_key {
            Some(HashKey::Cookie {
                name,
                path,
                ttl: Some(ttl),
            }) if cookie(req, name).is_none() => {
                let value = format!("{:016x}", rng.random::<u64>());
                set_cookie = Some(format!(
                    "{name}=\"{value}\"; Max-Age={}; Path={}; HttpOnly",
                    ttl.as_secs(),
                    path.as_deref().unwrap_or("/")
                ));
                Some(hash_bytes(value.as_bytes()))
            }
            Some(key) => request_hash(key, req),
            None => None,
        };
        self.with_runtime(cluster, |rt| {
            if let Some(o) = rt.outlier.as_mut() {
                o.refresh(now);
            }
            let outlier = rt.outlier.as_ref();
            let i = rt
                .balancer
                .pick(hash, rng, |i| outlier.is_none_or(|o| o.is_available(i)))?;
            rt.balancer.started(i);
            rt.in_flight += 1;
            Some(Picked {
                addr: rt.cluster.endpoints[i],
                set_cookie,
            })
        })
    }

    /// The attempt to `addr` is over: `result` None when it ended for a
    /// reason that says nothing about the endpoint (the client went away).
    pub fn report(
        &self,
        cluster: &Arc<Cluster>,
        addr: SocketAddr,
        result: Option<UpstreamResult>,
        now: Instant,
    ) {
        self.with_runtime(cluster, |rt| {
            let Some(&i) = rt.index.get(&addr) else {
                return;
            };
            rt.balancer.finished(i);
            rt.in_flight = rt.in_flight.saturating_sub(1);
            if let (Some(o), Some(r)) = (rt.outlier.as_mut(), result) {
                if o.report(i, r, now) {
                    tracing::info!(cluster = %cluster.name, endpoint = %addr, "outlier detection ejected an endpoint");
                }
            }
        })
    }
}
