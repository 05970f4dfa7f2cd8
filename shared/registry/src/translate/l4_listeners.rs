//! Listener protocols beyond HTTP/HTTPS: `TLS` (passthrough) and `TCP`.
//! Which protocol a listener has, whether we serve it, and which route kinds
//! it accepts (TLSRoute on TLS, TCPRoute on TCP).

use mesh_config::gateway_api::experimental::gateways::{
    GatewayListeners, GatewayListenersAllowedRoutesKinds, GatewayListenersTlsMode,
};

use super::backends::GATEWAY_GROUP;
use super::listeners::Problem;
use crate::snapshot::ListenerProtocol;

pub const TLS_ROUTE_KIND: &str = "gateway.networking.k8s.io/TLSRoute";
pub const TCP_ROUTE_KIND: &str = "gateway.networking.k8s.io/TCPRoute";

/// The listener's protocol (HTTP for protocols we do not serve: those are
/// rejected by [`protocol_problem`] and never reach a snapshot).
pub fn protocol_of(protocol: &str) -> ListenerProtocol {
    if protocol.eq_ignore_ascii_case("HTTPS") {
        ListenerProtocol::Https
    } else if protocol.eq_ignore_ascii_case("TLS") {
        ListenerProtocol::TlsPassthrough
    } else if protocol.eq_ignore_ascii_case("TCP") {
        ListenerProtocol::Tcp
    } else {
        ListenerProtocol::Http
    }
}

pub fn is_l4(protocol: ListenerProtocol) -> bool {
    matches!(
        protocol,
        ListenerProtocol::TlsPassthrough | ListenerProtocol::Tcp
    )
}

/// Accepted=False for protocols (or TLS modes) we do not serve.
pub fn protocol_problem(l: &GatewayListeners) -> Option<Problem> {
    const SERVED: [&str; 4] = ["HTTP", "HTTPS", "TLS", "TCP"];
    if !SERVED.iter().any(|p| l.protocol.eq_ignore_ascii_case(p)) {
        return Some((
            "UnsupportedProtocol",
            format!(
                "protocol {} is not supported (HTTP, HTTPS, TLS and TCP are)",
                l.protocol
            ),
        ));
    }
    let mode = l.tls.as_ref().and_then(|t| t.mode.as_ref());
    if l.protocol.eq_ignore_ascii_case("TLS")
        && !matches!(mode, Some(GatewayListenersTlsMode::Passthrough))
    {
        return Some((
            "UnsupportedValue",
            "TLS listeners are served in tls.mode Passthrough only (terminate TLS with protocol HTTPS)"
                .into(),
        ));
    }
    None
}

/// supportedKinds and the ResolvedRefs outcome of an L4 listener: its own
/// route kind by default; any other kind listed in allowedRoutes.kinds is
/// InvalidRouteKinds.
pub fn route_kinds(
    protocol: ListenerProtocol,
    allowed: Option<&[GatewayListenersAllowedRoutesKinds]>,
) -> (Vec<String>, Result<(), Problem>) {
    let (own_kind, own) = match protocol {
        ListenerProtocol::TlsPassthrough => ("TLSRoute", TLS_ROUTE_KIND),
        _ => ("TCPRoute", TCP_ROUTE_KIND),
    };
    let kinds = match allowed {
        None | Some([]) => return (vec![own.to_string()], Ok(())),
        Some(kinds) => kinds,
    };
    let mut supported = Vec::new();
    let mut invalid = Vec::new();
    for k in kinds {
        let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
        if group == GATEWAY_GROUP && k.kind == own_kind {
            if supported.is_empty() {
                supported.push(own.to_string());
            }
        } else {
            invalid.push(format!("{group}/{}", k.kind));
        }
    }
    let resolved = if invalid.is_empty() {
        Ok(())
    } else {
        Err((
            "InvalidRouteKinds",
            format!(
                "route kinds not supported on a {} listener: {}",
                if own_kind == "TLSRoute" { "TLS" } else { "TCP" },
                invalid.join(", ")
            ),
        ))
    };
    (supported, resolved)
}
