//! Upstream (backend) side: connection pool and backend selection.

pub mod pick;
pub mod pool;
