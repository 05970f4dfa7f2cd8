//! Gateway API status conditions, computed by translation and shown on `/status`.

use serde::Serialize;

use crate::snapshot::ObjectRef;

#[derive(Debug, Default, Clone, Serialize)]
pub struct StatusReport {
    pub gateways: Vec<GatewayStatus>,
    pub routes: Vec<RouteStatus>,
    /// Every document rejected while loading or translating, as
    /// `file: Kind namespace/name: field: message`.
    pub config_errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(rename = "observedGeneration")]
    pub observed_generation: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayStatus {
    pub gateway: ObjectRef,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    #[serde(rename = "attachedRoutes")]
    pub attached_routes: u32,
    #[serde(rename = "supportedKinds")]
    pub supported_kinds: Vec<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// "HTTPRoute", ...
    pub kind: String,
    pub route: ObjectRef,
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteParentStatus {
    #[serde(rename = "parentRef")]
    pub parent_ref: ParentRefStatus,
    #[serde(rename = "controllerName")]
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParentRefStatus {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "sectionName", skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}
