//! Thread-per-core runtime shared by every data-plane program.

pub mod drain;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

pub use drain::Drain;

/// A connection accepted by a worker, handed to the program's handler on the
/// same thread; it stays on this worker until it closes.
pub struct Accepted {
    pub stream: monoio::net::TcpStream,
    pub peer: SocketAddr,
    /// The listener port the connection arrived on.
    pub port: u16,
    pub drain: Drain,
}

/// What a program does with an accepted connection. One handler per worker
/// (not Send): it owns that worker's upstream pools and counters.
pub trait ConnectionHandler: 'static {
    fn handle(self: Rc<Self>, conn: Accepted) -> impl Future<Output = ()> + 'static;
}

/// Something that renders Prometheus text for `/metrics` (summing its
/// per-worker counters at scrape time).
pub trait MetricsSource: Send + Sync + 'static {
    fn render(&self, out: &mut String);
}
