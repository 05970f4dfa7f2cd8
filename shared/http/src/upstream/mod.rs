//! Upstream (backend) side: connection pool and backend selection.

pub mod connect;
pub mod connector;
pub(crate) mod exchange;
pub mod h2pool;
pub(crate) mod head;
pub mod pick;
pub mod pool;
pub mod transport;
pub mod tunnel_io;
