//! How this worker opens a new upstream connection: each address is given
//! a [`Transport`] by the program's lookup (the waypoint: HBONE to mesh
//! workloads; the gateway: `super::transport`), then dialled here.
//!
//! The choice is per worker thread: a program that wants more than plain
//! TCP calls [`install_upstream_connector`] on each worker before serving.
//! Without one, every connection is plain TCP; the connect path costs one
//! thread-local read (per new connection, not per request).
//!
//! HBONE tunnels ride pooled mTLS connections that present our identity and
//! verify the far end's; the pool key is (our identity, its identity, the
//! HBONE address), so a waypoint and a pod never share a connection.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mesh_hbone::{ClientConfig, Connect, Pool, PoolKey, Tunnel, TunnelRequest};
use mesh_tls::rustls::pki_types::ServerName;
use mesh_tls::{HboneTls, Identity, TlsStream};
use monoio::net::TcpStream;

use super::connect::{connect_tcp, HboneStream, UpstreamStream, HBONE_PORT};
use super::tunnel_io::PollTunnel;
use crate::io::Io;
use crate::tls::TlsIo;

/// How one upstream address is reached.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp,
    /// A CONNECT stream to the address (`:authority`) through the HBONE
    /// listener at `via` (`podIP:15008`, or a waypoint's), whose
    /// certificate must prove `identity`.
    Hbone {
        via: SocketAddr,
        identity: Arc<str>,
    },
    /// TLS we originate (DestinationRule `tls.mode: SIMPLE`).
    Tls {
        config: Arc<mesh_tls::rustls::ClientConfig>,
        /// Sent as SNI (a DNS name) and verified.
        server_name: ServerName<'static>,
    },
    /// Not reachable as configured (fail closed); the reason is logged.
    Refuse(Arc<str>),
}

/// The transport of each upstream address, asked once per new connection.
pub type TransportLookup = Box<dyn Fn(SocketAddr) -> Transport>;

/// Who a destination IP is in the mesh: its SPIFFE identity when it is a
/// workload reachable over HBONE, None for anything else (plain TCP then).
pub type IdentityLookup = Box<dyn Fn(IpAddr) -> Option<Arc<str>>>;

/// One worker's upstream side: its HBONE pool (when it has a mesh
/// identity) and the lookup that picks each address's transport.
pub struct UpstreamConnector {
    hbone: Option<HbonePool>,
    transport_of: TransportLookup,
}

/// The waypoint's name for the connector it installs.
pub type HboneUpstream = UpstreamConnector;

struct HbonePool {
    pool: Pool<MtlsConnector>,
    source_identity: Arc<str>,
}

impl UpstreamConnector {
    /// HBONE to the mesh workloads `identity_of` knows (`podIP:15008`,
    /// verifying that identity), plain TCP to anything else. `tls`: our
    /// certificate (presented) and the mesh roots (trusted).
    pub fn new(tls: Arc<HboneTls>, identity_of: IdentityLookup) -> Self {
        Self::with_transports(
            Some(tls),
            Box::new(move |addr| match identity_of(addr.ip()) {
                Some(identity) => Transport::Hbone {
                    via: SocketAddr::new(addr.ip(), HBONE_PORT),
                    identity,
                },
                None => Transport::Tcp,
            }),
        )
    }

    /// Any transport per address. Without `tls` (no mesh identity), HBONE
    /// transports are refused.
    pub fn with_transports(tls: Option<Arc<HboneTls>>, transport_of: TransportLookup) -> Self {
        let hbone = tls.map(|tls| HbonePool {
            source_identity: tls.cert_store().identity().to_string().into(),
            pool: Pool::new(ClientConfig::default(), MtlsConnector { tls }),
        });
        Self {
            hbone,
            transport_of,
        }
    }

    /// A new connection to `endpoint` over the transport the lookup gives it.
    pub async fn connect(&self, endpoint: SocketAddr, timeout: Duration) -> io::Result<Io> {
        match (self.transport_of)(endpoint) {
            Transport::Tcp => connect_tcp(endpoint, timeout).await,
            Transport::Hbone { via, identity } => {
                self.connect_hbone(endpoint, via, identity, timeout).await
            }
            Transport::Tls {
                config,
                server_name,
            } => connect_tls(endpoint, config, server_name, timeout).await,
            Transport::Refuse(reason) => {
                tracing::warn!(%endpoint, "upstream connection refused: {reason}");
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    reason.to_string(),
                ))
            }
        }
    }

    async fn connect_hbone(
        &self,
        authority: SocketAddr,
        via: SocketAddr,
        identity: Arc<str>,
        timeout: Duration,
    ) -> io::Result<Io> {
        let tunnel = self.open_tunnel(authority, via, identity, timeout).await?;
        let (reader, writer) = tunnel.into_io();
        Ok(Io::new(UpstreamStream::Hbone(HboneStream::new(
            reader, writer,
        ))))
    }

    /// A CONNECT stream to `authority` through the HBONE listener at `via`.
    async fn open_tunnel(
        &self,
        authority: SocketAddr,
        via: SocketAddr,
        identity: Arc<str>,
        timeout: Duration,
    ) -> io::Result<Tunnel> {
        let Some(hbone) = &self.hbone else {
            tracing::warn!(%authority, "upstream needs HBONE, but this proxy has no mesh identity");
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no mesh identity for HBONE",
            ));
        };
        let key = PoolKey::new(Some(hbone.source_identity.clone()), Some(identity), via);
        let request = TunnelRequest::new(key, authority);
        match monoio::time::timeout(timeout, hbone.pool.connect(&request)).await {
            Ok(Ok(tunnel)) => Ok(tunnel),
            Ok(Err(e)) => {
                tracing::debug!(%authority, %via, error = %e, "HBONE upstream refused");
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    e.to_string(),
                ))
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HBONE connect timed out",
            )),
        }
    }
}

/// TCP, then a TLS handshake within the same deadline; a failed handshake
/// is logged with the reason (an untrusted or misnamed certificate shows
/// up here, as a 503 to the client).
async fn connect_tls(
    endpoint: SocketAddr,
    config: Arc<mesh_tls::rustls::ClientConfig>,
    server_name: ServerName<'static>,
    timeout: Duration,
) -> io::Result<Io> {
    let name = server_name.to_str().into_owned();
    let handshake = async {
        let tcp = TcpStream::connect_addr(endpoint).await?;
        tcp.set_nodelay(true)?;
        mesh_tls::connect_plain(config, server_name, tcp)
            .await
            .map_err(io::Error::from)
    };
    match monoio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Ok(Io::new(UpstreamStream::Tls(Box::new(TlsIo(stream))))),
        Ok(Err(e)) => {
            tracing::warn!(%endpoint, server_name = %name, "upstream TLS handshake failed: {e}");
            Err(e)
        }
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "upstream TLS connect timed out",
        )),
    }
}

/// Pooled HBONE connections: TCP to the HBONE address, then mTLS verifying
/// the pool key's destination identity.
struct MtlsConnector {
    tls: Arc<HboneTls>,
}

impl Connect for MtlsConnector {
    type Io = TlsStream;

    async fn connect(&self, key: &PoolKey) -> io::Result<TlsStream> {
        let expected: Identity = key
            .destination_identity
            .as_deref()
            .ok_or_else(|| io::Error::other("no destination identity"))?
            .parse()
            .map_err(|e| io::Error::other(format!("bad destination identity: {e}")))?;
        let tcp = TcpStream::connect_addr(key.destination).await?;
        tcp.set_nodelay(true)?;
        let config = self
            .tls
            .client_config(std::slice::from_ref(&expected))
            .map_err(io::Error::other)?;
        mesh_tls::connect(config, tcp)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))
    }
}

thread_local! {
    /// This worker's connector, if its program installed one.
    static CONNECTOR: RefCell<Option<Rc<UpstreamConnector>>> = const { RefCell::new(None) };
}

/// Makes every upstream connection this worker thread opens from now on go
/// through `connector`.
pub fn install_upstream_connector(connector: UpstreamConnector) {
    CONNECTOR.with(|c| *c.borrow_mut() = Some(Rc::new(connector)));
}

/// The waypoint's name for [`install_upstream_connector`].
pub fn install_hbone_upstream(connector: UpstreamConnector) {
    install_upstream_connector(connector);
}

/// The transport this worker's connector gives `addr` (plain TCP without
/// one). For callers that dial themselves (the h2c pool).
pub(crate) fn transport_for(addr: SocketAddr) -> Transport {
    match CONNECTOR.with(|c| c.borrow().clone()) {
        None => Transport::Tcp,
        Some(connector) => (connector.transport_of)(addr),
    }
}

/// A CONNECT stream through this worker's HBONE pool, with tokio's I/O
/// traits (HTTP/2 inside HBONE, for the h2 pool).
pub(crate) async fn hbone_poll_tunnel(
    authority: SocketAddr,
    via: SocketAddr,
    identity: Arc<str>,
    timeout: Duration,
) -> io::Result<PollTunnel> {
    let Some(connector) = CONNECTOR.with(|c| c.borrow().clone()) else {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "no upstream connector on this worker",
        ));
    };
    let tunnel = connector
        .open_tunnel(authority, via, identity, timeout)
        .await?;
    Ok(PollTunnel::new(tunnel))
}

/// A new upstream connection to `addr`, the way this worker is set up for.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Io> {
    match CONNECTOR.with(|c| c.borrow().clone()) {
        None => connect_tcp(addr, timeout).await,
        Some(connector) => connector.connect(addr, timeout).await,
    }
}
