//! Certificates of the reference tunnel: issued from the same CA files the
//! ztunnels share, and the same rustls configs (mesh-tls `HboneTls`).

use super::TlsArgs;
use anyhow::Context;
use mesh_tls::rustls::{ClientConfig, ServerConfig};
use mesh_tls::{CertificateAuthority, HboneTls, Identity};
use std::sync::Arc;

fn hbone_tls(args: &TlsArgs) -> anyhow::Result<HboneTls> {
    let ca = CertificateAuthority::load(
        &args.ca_dir.join("root-cert.pem"),
        &args.ca_dir.join("ca-key.pem"),
    )
    .with_context(|| format!("loading the CA from {}", args.ca_dir.display()))?;
    let identity: Identity = args
        .identity
        .parse()
        .with_context(|| format!("--identity {:?}", args.identity))?;
    let cert = ca.issue_workload_cert(&identity)?;
    Ok(HboneTls::from_workload_cert(ca.root_pem(), &cert)?)
}

pub fn server_config(args: &TlsArgs) -> anyhow::Result<Arc<ServerConfig>> {
    Ok(hbone_tls(args)?.server_config())
}

pub fn client_config(args: &TlsArgs, peer_identity: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let peer: Identity = peer_identity
        .parse()
        .with_context(|| format!("--peer-identity {peer_identity:?}"))?;
    Ok(hbone_tls(args)?.client_config(&[peer])?)
}
