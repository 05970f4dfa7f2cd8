//! PeerAuthentication the way istiod sends it to ztunnels: not as its own
//! type but as one static Authorization, `istio-system/istio_converted_static_strict`
//! (DENY, WORKLOAD_SELECTOR, a single match `not_principals: [presence]`: a
//! connection without a peer identity, i.e. plaintext, is denied), published
//! whenever any PeerAuthentication exists and listed in the
//! `authorization_policies` of every workload whose effective mode is STRICT
//! (workload selector policy, else namespace, else root namespace; UNSET
//! inherits), as istiod's ambient index does.
//!
//! Not converted yet: `portLevelMtls` (istiod turns port exceptions into a
//! per-workload converted policy); a workload under STRICT with a PERMISSIVE
//! port stays STRICT on every port (stricter than asked, never looser).

use mesh_api::istio::security::{
    string_match, Action, Authorization, Group, Match, Rules, Scope, StringMatch,
};
use mesh_config::{MtlsMode, Resources};

use crate::workloads::authz::ROOT_NAMESPACE;
use crate::workloads::{Workload, WorkloadRegistry};

/// istiod's name for it (`_` cannot appear in a Kubernetes name, so it never clashes).
pub const STATIC_STRICT_POLICY: &str = "istio_converted_static_strict";

/// `istio-system/istio_converted_static_strict`, as workloads list it.
pub fn static_strict_policy_name() -> String {
    format!("{ROOT_NAMESPACE}/{STATIC_STRICT_POLICY}")
}

/// The static STRICT policy, when the config has any PeerAuthentication.
pub fn static_strict_policy(resources: &Resources) -> Option<Authorization> {
    if resources.peer_authentications.is_empty() {
        return None;
    }
    Some(Authorization {
        name: STATIC_STRICT_POLICY.to_string(),
        namespace: ROOT_NAMESPACE.to_string(),
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        groups: vec![Group {
            rules: vec![Rules {
                matches: vec![Match {
                    not_principals: vec![StringMatch {
                        match_type: Some(string_match::MatchType::Presence(())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
    })
}

/// Whether `workload` must list the static STRICT policy.
pub fn is_strict(registry: &WorkloadRegistry, workload: &Workload) -> bool {
    registry.policies.mtls_mode(workload) == MtlsMode::Strict
}
