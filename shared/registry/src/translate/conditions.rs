//! Condition constructors and the spec's reason strings.

use crate::status::Condition;

pub const CONTROLLER_NAME: &str = "ringmesh.io/gateway-controller";
pub const HTTP_ROUTE_KIND: &str = "gateway.networking.k8s.io/HTTPRoute";

pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
    }
}
