//! Translation: configuration resources → snapshot (+ status).

use mesh_config::Resources;

use crate::snapshot::{ObjectRef, Snapshot};

#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// Serve Gateways of this class (`ringmesh` by default).
    pub gateway_class: String,
    /// Serve only this Gateway.
    pub gateway: Option<ObjectRef>,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        Self {
            gateway_class: "ringmesh".into(),
            gateway: None,
        }
    }
}

/// Builds the snapshot for the selected Gateways. Never fails: problems become
/// status conditions and `status.config_errors`. `version` is left at 0 for
/// the publisher to set.
pub fn translate(_resources: &Resources, _options: &TranslateOptions) -> Snapshot {
    Snapshot::default()
}
