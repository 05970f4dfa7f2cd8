//! Applying a rule's filters to one request: what to change in place, what
//! to do later (response headers, CORS, mirrors), or a local answer instead.

use bytes::Bytes;
use mesh_registry::{CorsPolicy, FaultInjection, Filter, HeaderModifier, Mirror, RouteEntry};

use crate::codec::{Headers, RequestHead};
use crate::filters::{cors, headers as header_filter, redirect, rewrite};
use crate::route::routing_host;

/// What the filters decided besides modifying the request.
#[derive(Default)]
pub(crate) struct Plan<'a> {
    pub(crate) response_modifiers: Vec<&'a HeaderModifier>,
    pub(crate) cors: Option<&'a CorsPolicy>,
    pub(crate) mirrors: Vec<&'a Mirror>,
    /// Fault injection to run before the upstream call (`filters::fault`).
    pub(crate) fault: Option<&'a FaultInjection>,
}

/// The gateway answers instead of forwarding.
pub(crate) enum LocalAnswer {
    Redirect { status: u16, location: String },
    Preflight(Headers),
}

pub(crate) fn apply_filters<'a>(
    filters: &'a [Filter],
    entry: &RouteEntry,
    req: &mut RequestHead,
    plan: &mut Plan<'a>,
    listener_port: u16,
    scheme: &str,
) -> Option<LocalAnswer> {
    for f in filters {
        match f {
            Filter::RequestHeaders(m) => header_filter::apply(&mut req.headers, m),
            Filter::ResponseHeaders(m) => plan.response_modifiers.push(m),
            Filter::Redirect(r) => {
                let host_raw = req.host_header().cloned().unwrap_or_default();
                let host = routing_host(&host_raw);
                let location = redirect::location(
                    r,
                    scheme,
                    &host,
                    listener_port,
                    &req.path,
                    &entry.matcher.path,
                );
                let status = if r.status == 0 { 302 } else { r.status };
                return Some(LocalAnswer::Redirect { status, location });
            }
            Filter::UrlRewrite(u) => {
                if let Some(host) = &u.hostname {
                    req.authority = None;
                    req.headers.set(
                        Bytes::from_static(b"host"),
                        Bytes::copy_from_slice(host.as_bytes()),
                    );
                }
                if let Some(p) = &u.path {
                    req.path =
                        Bytes::from(rewrite::rewrite_path(&req.path, p, &entry.matcher.path));
                }
            }
            Filter::Mirror(m) => plan.mirrors.push(m),
            Filter::Fault(f) => plan.fault = Some(f),
            Filter::Cors(p) => {
                if cors::is_preflight(req) {
                    return Some(LocalAnswer::Preflight(cors::preflight_headers(p, req)));
                }
                plan.cors = Some(p);
            }
        }
    }
    None
}
