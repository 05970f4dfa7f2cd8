//! Backend choice: weighted random over the rule's backends, then
//! per-worker round robin over the chosen cluster's endpoints.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use mesh_registry::{Cluster, RouteRule, WeightedBackend};
use rand::Rng;

/// None when every weight is zero (or there are no backends).
pub fn pick_backend<'a, R: Rng>(rule: &'a RouteRule, rng: &mut R) -> Option<&'a WeightedBackend> {
    let total: u32 = if rule.total_weight > 0 {
        rule.total_weight
    } else {
        rule.backends.iter().map(|b| b.weight).sum()
    };
    if total == 0 {
        return None;
    }
    if rule.backends.len() == 1 {
        return Some(&rule.backends[0]);
    }
    let mut n = rng.random_range(0..total);
    for b in &rule.backends {
        if n < b.weight {
            return Some(b);
        }
        n -= b.weight;
    }
    rule.backends.iter().rev().find(|b| b.weight > 0)
}

/// The endpoint for one attempt through the cluster's traffic policy (load
/// balancer, hash key from the request, ejected endpoints skipped). Pair
/// with `h.policy.report(..)` once the attempt is over.
pub(crate) fn pick_for_request(
    h: &crate::HttpHandler,
    cluster: &std::sync::Arc<Cluster>,
    req: &crate::codec::RequestHead,
    client_ip: std::net::IpAddr,
) -> Option<crate::policy::Picked> {
    let now = std::time::Instant::now();
    h.policy
        .pick(cluster, &(req, client_ip), &mut *h.rng.borrow_mut(), now)
}

pub fn pick_endpoint(
    cluster: &Cluster,
    positions: &RefCell<HashMap<String, usize>>,
) -> Option<SocketAddr> {
    let n = cluster.endpoints.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return Some(cluster.endpoints[0]);
    }
    let mut positions = positions.borrow_mut();
    let i = match positions.get_mut(cluster.name.as_str()) {
        Some(i) => {
            *i = i.wrapping_add(1);
            *i
        }
        None => {
            positions.insert(cluster.name.clone(), 0);
            0
        }
    };
    Some(cluster.endpoints[i % n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_registry::{BackendTarget, ObjectRef, Timeouts};
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::sync::Arc;

    fn cluster(name: &str, n: u16) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.into(),
            service: ObjectRef {
                namespace: "ns".into(),
                name: name.into(),
            },
            port: 80,
            endpoints: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i)))
                .collect(),
            protocol: Default::default(),
            policy: Default::default(),
        })
    }

    fn rule(weights: &[u32]) -> RouteRule {
        RouteRule {
            route: ObjectRef {
                namespace: "ns".into(),
                name: "r".into(),
            },
            rule_index: 0,
            filters: vec![],
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| WeightedBackend {
                    weight: *w,
                    target: BackendTarget::Cluster(cluster(&format!("c{i}"), 1)),
                    filters: vec![],
                })
                .collect(),
            total_weight: weights.iter().sum(),
            timeouts: Timeouts::default(),
            retry: None,
            rate_limit: None,
        }
    }

    fn name(b: &WeightedBackend) -> &str {
        match &b.target {
            BackendTarget::Cluster(c) => &c.name,
            BackendTarget::Invalid { .. } => "invalid",
        }
    }

    #[test]
    fn weights_are_respected_and_zero_is_never_picked() {
        let r = rule(&[70, 0, 30]);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            *counts
                .entry(name(pick_backend(&r, &mut rng).unwrap()).to_string())
                .or_insert(0) += 1;
        }
        assert!(!counts.contains_key("c1"));
        let c0 = counts["c0"];
        assert!((6500..7500).contains(&c0), "{counts:?}");
        assert!(pick_backend(&rule(&[0, 0]), &mut rng).is_none());
        assert!(pick_backend(&rule(&[]), &mut rng).is_none());
    }

    #[test]
    fn round_robin_per_cluster() {
        let c = cluster("rr", 3);
        let positions = RefCell::new(HashMap::new());
        let picks: Vec<u16> = (0..6)
            .map(|_| pick_endpoint(&c, &positions).unwrap().port())
            .collect();
        assert_eq!(picks, vec![1000, 1001, 1002, 1000, 1001, 1002]);
        assert!(pick_endpoint(&cluster("none", 0), &positions).is_none());
    }
}
