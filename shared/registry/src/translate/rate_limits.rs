//! LocalRateLimitPolicy → `RouteRule::rate_limit`.
//!
//! A policy targets an HTTPRoute in its own namespace (policy attachment:
//! no cross-namespace targets). Every rule of the route gets its own
//! limiter (an Envoy route each), so `maxTokens` applies per rule. When
//! several policies target one route, the oldest wins (Gateway API's
//! conflict rule) and the others are ignored.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_config::{parse_istio_duration, LocalRateLimitPolicySpec, Object, Resources};
use mesh_limits::{LimitKey, RateLimitConfig, RateLimiter, TokenBucketConfig};

use crate::snapshot::ObjectRef;

pub struct RateLimits<'a> {
    /// (namespace, route name) → the winning policy.
    by_route: HashMap<(&'a str, &'a str), &'a Object<LocalRateLimitPolicySpec>>,
}

impl<'a> RateLimits<'a> {
    pub fn new(resources: &'a Resources) -> Self {
        let mut by_route: HashMap<(&str, &str), &Object<LocalRateLimitPolicySpec>> = HashMap::new();
        for p in resources.local_rate_limits.values() {
            let key = (p.meta.namespace.as_str(), p.spec.target_ref.name.as_str());
            match by_route.get(&key) {
                Some(old) if old.meta.age_key() <= p.meta.age_key() => {}
                _ => {
                    by_route.insert(key, p);
                }
            }
        }
        RateLimits { by_route }
    }

    /// A fresh limiter (its own buckets) for one rule of `route`.
    pub fn for_route(&self, route: &ObjectRef) -> Option<Arc<RateLimiter>> {
        let p = self
            .by_route
            .get(&(route.namespace.as_str(), route.name.as_str()))?;
        let b = &p.spec.token_bucket;
        // Validated at load.
        let fill_interval = parse_istio_duration(&b.fill_interval).ok()?;
        let key = match &p.spec.key {
            Some(k) if k.client_address == Some(true) => LimitKey::ClientAddress,
            Some(k) => k
                .header
                .as_ref()
                .map_or(LimitKey::None, |h| LimitKey::Header(h.to_ascii_lowercase())),
            None => LimitKey::None,
        };
        Some(Arc::new(RateLimiter::new(RateLimitConfig {
            bucket: TokenBucketConfig {
                max_tokens: b.max_tokens,
                tokens_per_fill: b.tokens_per_fill.unwrap_or(b.max_tokens),
                fill_interval,
            },
            key,
            source: format!("{}/{}", p.meta.namespace, p.meta.name),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"
apiVersion: policy.ringmesh.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: newer, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}
  tokenBucket: {maxTokens: 50, fillInterval: 1s}
---
apiVersion: policy.ringmesh.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: older, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  targetRef: {kind: HTTPRoute, name: api}
  tokenBucket: {maxTokens: 5, tokensPerFill: 1, fillInterval: 100ms}
  key: {header: X-Api-Key}
"#;

    #[test]
    fn the_oldest_policy_on_a_route_applies() {
        let loaded = mesh_config::load_str("p.yaml", POLICIES);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let limits = RateLimits::new(&loaded.resources);
        let route = ObjectRef {
            namespace: "shop".into(),
            name: "api".into(),
        };
        let l = limits.for_route(&route).unwrap();
        assert_eq!(l.config.source, "shop/older");
        assert_eq!(l.config.bucket.max_tokens, 5);
        assert_eq!(l.config.bucket.tokens_per_fill, 1);
        assert_eq!(
            l.config.bucket.fill_interval,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(l.config.key, LimitKey::Header("x-api-key".into()));
        let elsewhere = ObjectRef {
            namespace: "other".into(),
            name: "api".into(),
        };
        assert!(limits.for_route(&elsewhere).is_none());
    }

    #[test]
    fn bad_policies_are_rejected_naming_the_field() {
        for (bad, good, field) in [
            (
                "maxTokens: 50",
                "maxTokens: 0",
                "spec.tokenBucket.maxTokens",
            ),
            (
                "fillInterval: 1s",
                "fillInterval: soon",
                "spec.tokenBucket.fillInterval",
            ),
            (
                "kind: HTTPRoute, name: api}\n  tokenBucket: {maxTokens: 50",
                "kind: Service, name: api}\n  tokenBucket: {maxTokens: 50",
                "spec.targetRef",
            ),
            ("maxTokens: 50,", "maxTokenz: 50,", "spec.tokenBucket"),
        ] {
            let text = POLICIES.replacen(bad, good, 1);
            let loaded = mesh_config::load_str("p.yaml", &text);
            assert_eq!(loaded.errors.len(), 1, "{good}: {:?}", loaded.errors);
            assert!(
                loaded.errors[0]
                    .field
                    .as_deref()
                    .is_some_and(|f| f.starts_with(field)),
                "{good}: {:?}",
                loaded.errors
            );
        }
    }
}
