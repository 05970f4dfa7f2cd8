//! Per-worker pool of HBONE connections, after Istio ztunnel's pool.rs.
//!
//! - Keyed by (source identity, destination identity, destination address):
//!   a connection is only shared by tunnels that would authenticate the same.
//! - A connection carries streams up to the smaller of our cap and the peer's
//!   SETTINGS_MAX_CONCURRENT_STREAMS; past that, another connection opens.
//! - No burst of duplicates: while a connection for a key is being opened,
//!   later callers wait for it instead of dialing too. A failed attempt fails
//!   everyone who waited for it (they would have failed the same way).
//! - Connections that errored, got GOAWAY, stopped answering PINGs or sat
//!   idle past `idle_timeout` leave the pool (a GOAWAY as soon as it is read);
//!   their open streams finish.
//!
//! Not `Send`: each worker thread owns its pool, no locks on the hot path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use monoio::time::{sleep, Sleep};

use crate::client::{self, Attempt, ClientError, Connect, Tunnel, TunnelRequest};
use crate::event::Event;
use crate::keepalive::{poll_ping_roundtrip, Keepalive};
use crate::settings::H2Settings;

/// Which connections a tunnel may share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Our workload's identity (the client certificate to present).
    pub source_identity: Option<Arc<str>>,
    /// The identity the server must prove.
    pub destination_identity: Option<Arc<str>>,
    /// The HBONE endpoint to dial (e.g. `podIP:15008`).
    pub destination: SocketAddr,
}

impl PoolKey {
    pub fn new(
        source_identity: Option<Arc<str>>,
        destination_identity: Option<Arc<str>>,
        destination: SocketAddr,
    ) -> Self {
        Self {
            source_identity,
            destination_identity,
            destination,
        }
    }

    /// No identities: plain HBONE to `destination`.
    pub fn plain(destination: SocketAddr) -> Self {
        Self::new(None, None, destination)
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub h2: H2Settings,
    /// Our own cap on streams per connection (Istio's default is 100); the
    /// peer's SETTINGS_MAX_CONCURRENT_STREAMS applies when lower.
    pub max_streams_per_connection: usize,
    /// Time allowed to make the connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// A connection without streams for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            h2: H2Settings::default(),
            max_streams_per_connection: 100,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Attempts on distinct connections before giving up on a tunnel whose
/// stream was refused unprocessed (GOAWAY races).
const MAX_ATTEMPTS: usize = 3;

/// The per-worker HBONE client. Cheap to clone (clones share the pool).
/// Needs a monoio runtime with its timer enabled.
pub struct Pool<C> {
    inner: Rc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<C> {
    connector: C,
    config: ClientConfig,
    keys: RefCell<HashMap<PoolKey, KeyConnections>>,
    next_id: Cell<u64>,
    opened: Cell<u64>,
}

#[derive(Default)]
struct KeyConnections {
    live: Vec<Rc<PooledConnection>>,
    opening: Option<Rc<Opening>>,
}

/// A connection attempt others can wait on.
#[derive(Default)]
struct Opening {
    done: Rc<Event>,
    error: RefCell<Option<ClientError>>,
}

struct PooledConnection {
    id: u64,
    send: SendRequest<Bytes>,
    cap: usize,
    streams: Cell<usize>,
    retired: Cell<bool>,
    /// The driver task, woken when the last stream ends (idle timer).
    driver: RefCell<Option<Waker>>,
}

impl PooledConnection {
    fn has_capacity(&self) -> bool {
        !self.retired.get()
            && self.streams.get() < self.cap.min(self.send.current_max_send_streams())
    }
}

/// A stream slot on a pooled connection, released on drop.
pub struct Lease {
    connection: Rc<PooledConnection>,
}

impl Lease {
    fn new(connection: &Rc<PooledConnection>) -> Self {
        connection.streams.set(connection.streams.get() + 1);
        Self {
            connection: connection.clone(),
        }
    }

    pub fn connection_id(&self) -> u64 {
        self.connection.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let streams = self.connection.streams.get() - 1;
        self.connection.streams.set(streams);
        if streams == 0 {
            if let Some(driver) = self.connection.driver.borrow().as_ref() {
                driver.wake_by_ref();
            }
        }
    }
}

impl<C: Connect> Pool<C> {
    pub fn new(config: ClientConfig, connector: C) -> Self {
        Self {
            inner: Rc::new(Inner {
                connector,
                config,
                keys: RefCell::new(HashMap::new()),
                next_id: Cell::new(1),
                opened: Cell::new(0),
            }),
        }
    }

    /// Opens a tunnel: a CONNECT stream on a pooled connection for
    /// `request.key`, made if needed. Errors carry the status of a refusal.
    pub async fn connect(&self, request: &TunnelRequest) -> Result<Tunnel, ClientError> {
        let mut last_refusal = None;
        for _ in 0..MAX_ATTEMPTS {
            let lease = self.checkout(&request.key).await?;
            let connection = lease.connection.clone();
            match client::open_stream(&connection.send, request, lease).await {
                Attempt::Open(tunnel) => return Ok(tunnel),
                Attempt::Failed(err) => return Err(err),
                Attempt::Retry(err) => {
                    tracing::debug!(id = connection.id, %err, "HBONE connection cannot take streams; retiring it");
                    retire(&self.inner, &request.key, &connection);
                    last_refusal = Some(err);
                }
            }
        }
        Err(ClientError::Stream(last_refusal.expect("MAX_ATTEMPTS > 0")))
    }

    /// Live (usable) connections across all keys.
    pub fn connection_count(&self) -> usize {
        self.inner
            .keys
            .borrow()
            .values()
            .map(|k| k.live.len())
            .sum()
    }

    /// Live connections for one key.
    pub fn connections_for(&self, key: &PoolKey) -> usize {
        self.inner
            .keys
            .borrow()
            .get(key)
            .map_or(0, |k| k.live.len())
    }

    /// Connections successfully opened since the pool was made.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.get()
    }

    /// Reserves a stream slot on a connection with room, opening one (or
    /// waiting for the one being opened) when none has room.
    async fn checkout(&self, key: &PoolKey) -> Result<Lease, ClientError> {
        loop {
            let opening = {
                let mut keys = self.inner.keys.borrow_mut();
                let entry = keys.entry(key.clone()).or_default();
                if let Some(connection) = entry.live.iter().find(|c| c.has_capacity()) {
                    return Ok(Lease::new(connection));
                }
                match &entry.opening {
                    Some(opening) => opening.clone(),
                    None => {
                        let opening = Rc::new(Opening::default());
                        entry.opening = Some(opening.clone());
                        // Its own task: the attempt completes for the waiters
                        // even if this caller gives up.
                        monoio::spawn(run_connection(
                            self.inner.clone(),
                            key.clone(),
                            opening.clone(),
                        ));
                        opening
                    }
                }
            };
            opening.done.wait().await;
            let failed = opening.error.borrow().as_ref().map(clone_error);
            if let Some(err) = failed {
                return Err(err);
            }
        }
    }
}

fn clone_error(err: &ClientError) -> ClientError {
    match err {
        ClientError::Connect(err) => ClientError::Connect(err.clone()),
        ClientError::Handshake(err) => ClientError::Handshake(err.clone()),
        other => ClientError::Handshake(other.to_string().into()),
    }
}

fn retire<C>(inner: &Inner<C>, key: &PoolKey, connection: &Rc<PooledConnection>) {
    connection.retired.set(true);
    let mut keys = inner.keys.borrow_mut();
    if let Some(entry) = keys.get_mut(key) {
        entry.live.retain(|c| !Rc::ptr_eq(c, connection));
        if entry.live.is_empty() && entry.opening.is_none() {
            keys.remove(key);
        }
    }
}

/// Makes one connection, publishes it to the pool once the peer's SETTINGS
/// are known, then drives it (h2 I/O, keepalive, idle timeout) until it ends.
async fn run_connection<C: Connect>(inner: Rc<Inner<C>>, key: PoolKey, opening: Rc<Opening>) {
    let settings = inner.config.h2.clone();
    let cap = inner.config.max_streams_per_connection;
    let established = async {
        let io = monoio::time::timeout(inner.config.connect_timeout, inner.connector.connect(&key))
            .await
            .map_err(|_| {
                ClientError::Connect(Arc::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            })?
            .map_err(|err| ClientError::Connect(Arc::new(err)))?;
        let handshake = async {
            let (send, mut conn) = settings
                .client_builder(cap)
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|err| ClientError::Handshake(err.to_string().into()))?;
            let mut ping = conn.ping_pong().expect("ping_pong is taken once, here");
            // Drive the connection until a PING round trip proves the peer's
            // SETTINGS (sent before anything else) were applied.
            let mut sent = false;
            poll_fn(|cx| {
                if let Poll::Ready(result) = Pin::new(&mut conn).poll(cx) {
                    let reason = match result {
                        Ok(()) => "closed during handshake".to_string(),
                        Err(err) => err.to_string(),
                    };
                    return Poll::Ready(Err(ClientError::Handshake(reason.into())));
                }
                poll_ping_roundtrip(&mut ping, &mut sent, cx)
                    .map_err(|err| ClientError::Handshake(err.to_string().into()))
            })
            .await?;
            Ok::<_, ClientError>((send, conn, ping))
        };
        monoio::time::timeout(settings.handshake_timeout, handshake)
            .await
            .map_err(|_| ClientError::Handshake("HTTP/2 handshake timed out".into()))?
    }
    .await;

    let (send, mut conn, ping) = match established {
        Ok(parts) => parts,
        Err(err) => {
            tracing::debug!(destination = %key.destination, %err, "HBONE connection failed");
            *opening.error.borrow_mut() = Some(err);
            finish_opening(&inner, &key, None);
            opening.done.fire();
            return;
        }
    };

    let id = inner.next_id.get();
    inner.next_id.set(id + 1);
    inner.opened.set(inner.opened.get() + 1);
    let connection = Rc::new(PooledConnection {
        id,
        send,
        cap,
        streams: Cell::new(0),
        retired: Cell::new(false),
        driver: RefCell::new(None),
    });
    finish_opening(&inner, &key, Some(connection.clone()));
    opening.done.fire();
    drop(opening);

    let mut keepalive = settings
        .keepalive_interval
        .map(|interval| Keepalive::new(ping, interval, settings.keepalive_timeout));
    let idle_timeout = inner.config.idle_timeout;
    let mut idle_timer: Option<Pin<Box<Sleep>>> = None;
    let ended = poll_fn(|cx| {
        *connection.driver.borrow_mut() = Some(cx.waker().clone());
        if let Poll::Ready(result) = Pin::new(&mut conn).poll(cx) {
            return Poll::Ready(result.map_err(|err| err.to_string()));
        }
        // After a GOAWAY (or a connection error) h2 refuses new streams at
        // once: leave the pool now rather than at the next caller's attempt.
        // Open streams keep running on this driver.
        if !connection.retired.get()
            && matches!(connection.send.clone().poll_ready(cx), Poll::Ready(Err(_)))
        {
            tracing::debug!(id, destination = %key.destination, "HBONE connection going away");
            retire(&inner, &key, &connection);
        }
        if let Some(keepalive) = keepalive.as_mut() {
            if let Poll::Ready(err) = keepalive.poll(cx) {
                return Poll::Ready(Err(err.to_string()));
            }
        }
        if connection.streams.get() == 0 {
            let timer = idle_timer.get_or_insert_with(|| Box::pin(sleep(idle_timeout)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        } else {
            // Busy again: the idle clock restarts at the next quiet moment.
            idle_timer = None;
        }
        Poll::Pending
    })
    .await;
    match &ended {
        Ok(()) => tracing::debug!(id, destination = %key.destination, "HBONE connection closed"),
        Err(err) => {
            tracing::debug!(id, destination = %key.destination, %err, "HBONE connection ended")
        }
    }
    retire(&inner, &key, &connection);
    connection.driver.borrow_mut().take();
}

fn finish_opening<C>(inner: &Inner<C>, key: &PoolKey, connection: Option<Rc<PooledConnection>>) {
    let mut keys = inner.keys.borrow_mut();
    let entry = keys.entry(key.clone()).or_default();
    entry.opening = None;
    match connection {
        Some(connection) => entry.live.push(connection),
        None if entry.live.is_empty() => {
            keys.remove(key);
        }
        None => {}
    }
}
