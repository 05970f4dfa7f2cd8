//! Snapshot types for L4 ports: TLS passthrough (`protocol: TLS`,
//! `tls.mode: Passthrough`, TLSRoute) and TCP (`protocol: TCP`, TCPRoute).
//!
//! A connection is routed once, when it arrives: on a passthrough port by the
//! SNI of its ClientHello (never decrypted), on a TCP port to the port's only
//! route. Listener isolation applies as for HTTP: the SNI first selects the
//! most specific listener (exact, longest wildcard, then the one without a
//! hostname), then the most specific route hostname within that listener.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::snapshot::{wildcard_matches, BackendTarget, ObjectRef};

/// The L4 routing table of one port.
#[derive(Debug, Default, Serialize)]
pub struct L4Routes {
    /// TLS passthrough: listeners by hostname. TCP: only `any` (TCP listeners
    /// have no hostname).
    pub listeners: HostMap<Arc<L4Listener>>,
}

#[derive(Debug, Serialize)]
pub struct L4Listener {
    pub gateway: ObjectRef,
    pub name: String,
    pub hostname: Option<String>,
    /// Route hostnames, already intersected with the listener's hostname; a
    /// hostname claimed by several routes goes to the oldest route.
    pub routes: HostMap<Arc<L4Route>>,
}

/// One TLSRoute or TCPRoute as attached to one listener.
#[derive(Debug, Serialize)]
pub struct L4Route {
    /// `TLSRoute` or `TCPRoute`.
    pub kind: &'static str,
    pub route: ObjectRef,
    /// The backendRefs of all the route's rules (L4 rules have no matches).
    pub backends: Vec<L4Backend>,
    /// Sum of the weights, cached for the pick. 0: every connection is refused.
    pub total_weight: u32,
}

#[derive(Debug, Serialize)]
pub struct L4Backend {
    pub weight: u32,
    /// `Invalid`: connections that pick it are refused (the spec: "rejections
    /// must respect weight").
    pub target: BackendTarget,
}

/// Values keyed by a Gateway API hostname pattern.
#[derive(Debug, Serialize)]
pub struct HostMap<T> {
    pub exact: HashMap<String, T>,
    /// `(suffix including the leading dot, value)`, longest suffix first.
    pub wildcard: Vec<(String, T)>,
    /// The value without a hostname (matches every name, and no SNI).
    pub any: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: None,
        }
    }
}

impl<T> HostMap<T> {
    /// The most specific value for `host` (lower-case); None (no SNI) only
    /// matches the value without hostname.
    pub fn select(&self, host: Option<&str>) -> Option<&T> {
        let Some(host) = host else {
            return self.any.as_ref();
        };
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| wildcard_matches(suffix, host))
            .map(|(_, v)| v)
            .or(self.any.as_ref())
    }

    /// Keeps the wildcard list longest suffix first (then by name, for a
    /// deterministic dump).
    pub fn sort(&mut self) {
        self.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }
}

impl L4Routes {
    /// The route for a connection with this SNI (lower-case; None: no SNI or TCP).
    pub fn route(&self, sni: Option<&str>) -> Option<&Arc<L4Route>> {
        self.listeners.select(sni)?.routes.select(sni)
    }
}

impl L4Route {
    /// Weighted choice; `random` is any uniformly distributed number.
    /// None when every weight is 0 (the connection is refused).
    pub fn pick(&self, random: u64) -> Option<&L4Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut n = random % u64::from(self.total_weight);
        for b in &self.backends {
            let w = u64::from(b.weight);
            if n < w {
                return Some(b);
            }
            n -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(weights: &[u32]) -> L4Route {
        L4Route {
            kind: "TCPRoute",
            route: ObjectRef {
                namespace: "ns".into(),
                name: "r".into(),
            },
            backends: weights
                .iter()
                .map(|&weight| L4Backend {
                    weight,
                    target: BackendTarget::Invalid {
                        reason: format!("w{weight}"),
                    },
                })
                .collect(),
            total_weight: weights.iter().sum(),
        }
    }

    fn reason(b: Option<&L4Backend>) -> Option<&str> {
        match &b?.target {
            BackendTarget::Invalid { reason } => Some(reason),
            BackendTarget::Cluster(_) => None,
        }
    }

    #[test]
    fn pick_follows_weights_and_skips_zero() {
        let r = route(&[1, 0, 3]);
        let picks: Vec<_> = (0..4).map(|n| reason(r.pick(n))).collect();
        assert_eq!(picks, vec![Some("w1"), Some("w3"), Some("w3"), Some("w3")]);
        assert!(route(&[0, 0]).pick(7).is_none());
        assert!(route(&[]).pick(7).is_none());
    }

    #[test]
    fn host_map_prefers_exact_then_longest_wildcard_then_any() {
        let mut m = HostMap::default();
        m.exact.insert("a.example.com".to_string(), 1);
        m.wildcard.push((".example.com".to_string(), 2));
        m.wildcard.push((".b.example.com".to_string(), 3));
        m.sort();
        assert_eq!(m.select(Some("a.example.com")), Some(&1));
        assert_eq!(m.select(Some("x.b.example.com")), Some(&3));
        assert_eq!(m.select(Some("x.example.com")), Some(&2));
        assert_eq!(m.select(Some("example.com")), None);
        assert_eq!(m.select(None), None);
        m.any = Some(4);
        assert_eq!(m.select(Some("other.org")), Some(&4));
        assert_eq!(m.select(None), Some(&4));
    }
}
