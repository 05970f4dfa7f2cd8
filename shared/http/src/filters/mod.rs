//! Route filters (Gateway API HTTPRoute filters), applied in the order the
//! route lists them; backend-level filters run after the rule's.

pub mod cors;
pub mod fault;
pub mod headers;
pub mod mirror;
pub(crate) mod plan;
pub mod redirect;
pub mod rewrite;
