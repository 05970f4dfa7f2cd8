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
