//! `policy.ringmesh.io/v1alpha1` `LocalRateLimitPolicy`: our own kind for
//! local rate limits (neither Gateway API nor Istio has one), attached to an
//! HTTPRoute by `targetRef` (Gateway API policy attachment).
//!
//! ```yaml
//! apiVersion: policy.ringmesh.io/v1alpha1
//! kind: LocalRateLimitPolicy
//! metadata: {name: api-limit, namespace: shop}
//! spec:
//!   targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}
//!   tokenBucket: {maxTokens: 100, tokensPerFill: 100, fillInterval: 1s}
//!   key: {header: x-api-key}      # or {clientAddress: true}; omit: one bucket
//! ```

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimitPolicySpec {
    pub target_ref: PolicyTargetRef,
    pub token_bucket: TokenBucketSpec,
    #[serde(default)]
    pub key: Option<RateLimitKeySpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucketSpec {
    pub max_tokens: u32,
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitKeySpec {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub client_address: Option<bool>,
}

pub fn validate_local_rate_limit(spec: &LocalRateLimitPolicySpec) -> Result<(), (String, String)> {
    let t = &spec.target_ref;
    if t.kind != "HTTPRoute"
        || t.group
            .as_deref()
            .is_some_and(|g| g != "gateway.networking.k8s.io")
    {
        return Err((
            "spec.targetRef".into(),
            "only HTTPRoutes (group gateway.networking.k8s.io) can be targeted".into(),
        ));
    }
    let b = &spec.token_bucket;
    if b.max_tokens == 0 {
        return Err((
            "spec.tokenBucket.maxTokens".into(),
            "must be at least 1".into(),
        ));
    }
    if b.tokens_per_fill == Some(0) {
        return Err((
            "spec.tokenBucket.tokensPerFill".into(),
            "must be at least 1".into(),
        ));
    }
    match crate::parse_istio_duration(&b.fill_interval) {
        Ok(d) if d.as_millis() >= 1 => {}
        Ok(_) => {
            return Err((
                "spec.tokenBucket.fillInterval".into(),
                "at least 1ms".into(),
            ))
        }
        Err(e) => return Err(("spec.tokenBucket.fillInterval".into(), e)),
    }
    if let Some(k) = &spec.key {
        if k.header.is_some() == (k.client_address == Some(true)) {
            return Err((
                "spec.key".into(),
                "set exactly one of header, clientAddress".into(),
            ));
        }
    }
    Ok(())
}
