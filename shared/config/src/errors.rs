//! The error type for a rejected document.

use std::path::PathBuf;

/// A document (or one field of it) that was rejected. The rest still loads.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    /// Dotted field path, e.g. `spec.rules[0].matches[0].path.type`.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
