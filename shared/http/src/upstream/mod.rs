//! Upstream (backend) side: connection pool and backend selection.

pub(crate) mod exchange;
pub(crate) mod head;
pub mod pick;
pub mod pool;
