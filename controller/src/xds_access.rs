//! Who may subscribe to what over xDS.
//!
//! The workload registry (`istio.workload.Address`, `istio.security.Authorization`) goes to
//! any caller, as istiod serves it. A `ringmesh.l7.v1.Proxy` is one gateway's or waypoint's
//! whole configuration, HTTPS private keys included, so it is tied to the caller's identity
//! the way istiod ties a proxy's config to the identity it authenticated:
//!
//! - **15012 (TLS)**: the caller must present a client certificate issued by the mesh CA
//!   (verified by the TLS layer against the mesh root), and a Proxy goes only to the identity
//!   that runs it: a Gateway `NS/NAME` to `spiffe://TD/ns/NS/sa/NAME-istio` (the service
//!   account Istio creates for a Gateway's deployment, the connected gateway's default), a
//!   waypoint `NS/NAME` to `spiffe://TD/ns/NS/sa/NAME` (Istio's waypoint service account).
//! - **15010 (plaintext)**: nobody can be identified there (a bearer token on a plaintext
//!   connection can be read and replayed by whoever can read the keys it would protect), so a
//!   Proxy carrying a private key is never sent over it; a Proxy without keys is served to
//!   anyone, as istiod serves config on 15010.
//!
//! A withheld resource is counted (`ringmesh_xds_denied_total`), listed in `/status`
//! (`xds.denials`) and logged; the caller's copy, if any, is removed.

use mesh_api::prost::Message;
use mesh_api::ringmesh::l7::v1::{Proxy, ProxyKind};
use mesh_api::type_url;
use mesh_tls::Identity;
use mesh_xds::{Authorizer, Caller, VersionedResource};

/// The transport a listener serves, which decides how callers are held to account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plaintext,
    Tls,
}

pub struct XdsAccess {
    transport: Transport,
    trust_domain: String,
}

impl XdsAccess {
    pub fn new(transport: Transport, trust_domain: &str) -> Self {
        Self {
            transport,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The one identity entitled to `proxy`.
    fn owner(&self, proxy: &Proxy) -> Result<Identity, String> {
        let account = match proxy.kind() {
            ProxyKind::Gateway => format!("{}-istio", proxy.name),
            ProxyKind::Waypoint => proxy.name.clone(),
        };
        Identity::new(&self.trust_domain, &proxy.namespace, &account)
            .map_err(|e| format!("no identity for {}/{}: {e}", proxy.namespace, proxy.name))
    }
}

impl Authorizer for XdsAccess {
    fn authorize(
        &self,
        caller: &Caller,
        type_url: &str,
        _name: &str,
        resource: &VersionedResource,
    ) -> Result<(), String> {
        if type_url != type_url::L7_PROXY {
            return Ok(());
        }
        let proxy = Proxy::decode(resource.resource.value.as_slice())
            .map_err(|e| format!("undecodable Proxy withheld: {e}"))?;
        match self.transport {
            Transport::Plaintext => {
                if carries_private_key(&proxy) {
                    Err(
                        "carries private keys: served only over TLS (15012) to its own identity"
                            .into(),
                    )
                } else {
                    Ok(())
                }
            }
            Transport::Tls => {
                let owner = self.owner(&proxy)?;
                let leaf = caller
                    .peer_certificates
                    .as_ref()
                    .and_then(|chain| chain.first())
                    .ok_or_else(|| format!("no client certificate: only {owner} may receive it"))?;
                let presented = Identity::from_certificate(leaf.as_ref())
                    .map_err(|e| format!("client certificate without a usable identity: {e}"))?;
                if presented == owner {
                    Ok(())
                } else {
                    Err(format!(
                        "caller is {presented}; only {owner} may receive it"
                    ))
                }
            }
        }
    }
}

fn carries_private_key(proxy: &Proxy) -> bool {
    proxy.listeners.iter().any(|l| {
        l.certificate
            .as_ref()
            .is_some_and(|c| !c.private_key.is_empty())
    })
}
