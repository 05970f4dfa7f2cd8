//! The immutable snapshot every data-plane worker reads.
//!
//! Built off the hot path by translation (`translate`), published with arc-swap
//! (`SnapshotHandle`), and read by workers with one `load()` per connection or
//! request. Everything a request needs is resolved here (endpoints, precedence,
//! hostnames) so that the hot path only compares and picks.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::status::StatusReport;

/// `namespace/name` of a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub version: u64,
    /// Every port some served Gateway listens on.
    pub ports: BTreeMap<u16, Arc<PortConfig>>,
    /// Gateway API status conditions computed during translation.
    pub status: StatusReport,
    /// Waypoint only: route tables by destination Service `VIP:port`.
    pub services: crate::service_routes::ServiceRoutes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerProtocol {
    Http,
    /// TLS terminated with the port's certificates ([`PortConfig::tls`]), then HTTP/1.1.
    Https,
    /// TLS passthrough (`protocol: TLS`, `tls.mode: Passthrough`): routed by SNI with
    /// [`ListenerSet::l4`], never decrypted. Not served by the HTTP engine.
    TlsPassthrough,
    /// Plain TCP (`protocol: TCP`): routed with [`ListenerSet::l4`]. Not served by the HTTP engine.
    Tcp,
}

/// All listeners (possibly of several Gateways) that share one port.
#[derive(Debug, Serialize)]
pub struct PortConfig {
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Listener isolation: a request is served only by the listener whose hostname
    /// matches its Host most specifically (exact, then longest wildcard, then none).
    pub listeners: ListenerSet,
    /// HTTPS ports: the TLS settings (certificate by SNI) built at translation.
    #[serde(skip)]
    pub tls: Option<Arc<crate::tls::PortTls>>,
}

#[derive(Debug, Default, Serialize)]
pub struct ListenerSet {
    pub exact: HashMap<String, Arc<Listener>>,
    /// Wildcard listeners as `(suffix including the leading dot, listener)`,
    /// longest suffix first. `*.example.com` is stored as `.example.com`.
    pub wildcard: Vec<(String, Arc<Listener>)>,
    /// The listener without a hostname, if any.
    pub any: Option<Arc<Listener>>,
    /// TLS passthrough and TCP ports: the L4 routes (the HTTP fields above are
    /// then empty). None on HTTP and HTTPS ports.
    pub l4: Option<Arc<crate::l4::L4Routes>>,
}

#[derive(Debug, Serialize)]
pub struct Listener {
    pub gateway: ObjectRef,
    pub name: String,
    pub hostname: Option<String>,
    pub routes: VirtualHosts,
}

/// The routes attached to one listener grouped by the hostname they serve.
/// Hostnames here are already intersected with the listener's hostname.
/// A request is matched only against the most specific host group that
/// matches its Host (exact, then longest wildcard, then `any`).
#[derive(Debug, Default, Serialize)]
pub struct VirtualHosts {
    pub exact: HashMap<String, Arc<RouteTable>>,
    /// `(suffix including the leading dot, table)`, longest suffix first.
    pub wildcard: Vec<(String, Arc<RouteTable>)>,
    pub any: Option<Arc<RouteTable>>,
}

/// Route entries in Gateway API precedence order: the first entry whose
/// matcher accepts the request wins.
#[derive(Debug, Default, Serialize)]
pub struct RouteTable {
    pub entries: Vec<RouteEntry>,
}

#[derive(Debug, Serialize)]
pub struct RouteEntry {
    pub matcher: RequestMatcher,
    pub rule: Arc<RouteRule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestMatcher {
    pub path: PathMatch,
    /// Upper-case method, e.g. "GET".
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
}

#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise prefix: `/v2` matches `/v2` and `/v2/x`, not `/v2x`.
    /// Stored without a trailing slash (except the root `/`).
    Prefix(String),
    /// Compiled anchored (`^(?:...)$`) by translation: it must match the whole path.
    Regex(#[serde(serialize_with = "serialize_regex")] regex::Regex),
    /// Plain string prefix (Istio VirtualService `uri.prefix`): `/v2` also
    /// matches `/v2x`. A prefix rewrite replaces exactly these characters.
    StringPrefix(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    pub value: StringMatch,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryParamMatch {
    /// Exact, case-sensitive parameter name.
    pub name: String,
    pub value: StringMatch,
}

#[derive(Debug, Clone, Serialize)]
pub enum StringMatch {
    Exact(String),
    /// Compiled anchored (`^(?:...)$`) by translation.
    Regex(#[serde(serialize_with = "serialize_regex")] regex::Regex),
}

fn serialize_regex<S: serde::Serializer>(re: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(re.as_str())
}

/// One rule of one route: what happens to a request once it matched.
#[derive(Debug, Serialize)]
pub struct RouteRule {
    /// The HTTPRoute this rule came from, for logs and metrics.
    pub route: ObjectRef,
    pub rule_index: usize,
    /// Filters in the order the route lists them.
    pub filters: Vec<Filter>,
    /// Empty means: no backendRefs were given (500 unless a filter answers,
    /// e.g. a redirect).
    pub backends: Vec<WeightedBackend>,
    /// Sum of the weights, cached for the pick.
    pub total_weight: u32,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
    /// Local rate limit (a LocalRateLimitPolicy targeting the route): shared
    /// buckets, checked before the backend pick; 429 when empty.
    pub rate_limit: Option<Arc<mesh_limits::RateLimiter>>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timeouts {
    /// Whole request, client side: from the request's arrival to the end of the response headers
    /// (includes retries). None = no timeout.
    pub request: Option<Duration>,
    /// One attempt to the backend.
    pub backend_request: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RetryPolicy {
    /// Upstream status codes that trigger a retry.
    pub codes: Vec<u16>,
    /// `grpc-status` values of a response's headers (trailers-only answers)
    /// that trigger a retry (VirtualService `retryOn: unavailable,...`).
    pub grpc_codes: Vec<u32>,
    /// Retry when no connection could be made (HTTPRoute: always).
    pub on_connect_failure: bool,
    /// Retry when the upstream reset or closed before a response, or a try
    /// timed out (HTTPRoute: always).
    pub on_reset: bool,
    /// Number of retries after the first try.
    pub attempts: u32,
    /// Base backoff between tries.
    pub backoff: Option<Duration>,
}

#[derive(Debug, Serialize)]
pub struct WeightedBackend {
    pub weight: u32,
    pub target: BackendTarget,
    /// Backend-level filters (HTTPBackendRef.filters), applied after the rule's.
    pub filters: Vec<Filter>,
}

#[derive(Debug, Serialize)]
pub enum BackendTarget {
    Cluster(Arc<Cluster>),
    /// A backendRef that does not resolve (missing Service, bad kind, not
    /// permitted by a ReferenceGrant): requests picking it get a 500.
    Invalid {
        reason: String,
    },
}

/// A set of interchangeable endpoints: one Service port or ServiceEntry port.
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// `namespace/service:port`.
    pub name: String,
    pub service: ObjectRef,
    pub port: u16,
    /// Ready endpoints. Empty means 503.
    pub endpoints: Vec<SocketAddr>,
    /// The protocol spoken to the endpoints (from the Service port's `appProtocol`).
    pub protocol: UpstreamProtocol,
    /// DestinationRule traffic policy (load balancer, pool limits, outlier
    /// detection, subsets); `Default` when no rule selects the host.
    pub policy: Arc<ClusterPolicy>,
}

/// A DestinationRule's `trafficPolicy` resolved for one cluster (the port's
/// `portLevelSettings` merged over the rule's settings). `Default`: no rule,
/// the engine's defaults (round robin, no limits, no outlier detection).
#[derive(Debug, Default, Serialize)]
pub struct ClusterPolicy {
    /// The DestinationRule this came from.
    pub rule: Option<ObjectRef>,
    pub load_balancer: Option<mesh_balance::LbConfig>,
    pub connection_pool: Option<mesh_balance::PoolLimits>,
    pub outlier_detection: Option<mesh_balance::OutlierConfig>,
    pub tls: Option<UpstreamTlsPolicy>,
    /// The rule's subsets of this cluster by name: clusters whose endpoints
    /// are the pods with the subset's labels, with the subset's policy.
    pub subsets: BTreeMap<String, Arc<Cluster>>,
    /// Circuit-breaker counters shared by every worker: the only mutable
    /// state in a snapshot (it starts at zero with each rebuilt snapshot).
    #[serde(skip)]
    pub counters: Arc<mesh_balance::PoolCounters>,
}

/// DestinationRule `trafficPolicy.tls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamTlsPolicy {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    pub mode: String,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
    /// SIMPLE: the client settings built at translation (roots from
    /// `caCertificates`, SNI, subjectAltNames).
    #[serde(skip)]
    pub client_config: Option<Arc<rustls::ClientConfig>>,
    /// SIMPLE: the name sent as SNI and verified (`sni`, else the rule's host).
    pub server_name: Option<String>,
    /// Why the settings cannot be applied (unreadable CA bundle, unsupported
    /// mode): connections fail closed instead of going out in plaintext.
    pub error: Option<String>,
}

/// How the L7 engine talks to a cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default for `http` or no appProtocol).
    #[default]
    Http1,
    /// HTTP/2 without TLS, prior knowledge (`kubernetes.io/h2c`, `grpc`;
    /// ServiceEntry protocol `HTTP2`/`GRPC`): many streams per connection.
    H2c,
}

impl UpstreamProtocol {
    /// From a Service port's `appProtocol` (or a ServiceEntry port's protocol).
    pub fn from_app_protocol(app_protocol: Option<&str>) -> Self {
        match app_protocol.map(str::to_ascii_lowercase).as_deref() {
            Some("kubernetes.io/h2c" | "h2c" | "grpc" | "http2" | "grpc-web") => Self::H2c,
            _ => Self::Http1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    UrlRewrite(UrlRewrite),
    Mirror(Mirror),
    Cors(Arc<CorsPolicy>),
    /// Fault injection (VirtualService `fault`): delay and/or abort before
    /// the upstream call.
    Fault(Arc<FaultInjection>),
}

/// Envoy's fault filter: the delay first (its own percentage), then the
/// abort (its own percentage), answered locally.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultDelay {
    pub duration: Duration,
    /// Share of requests delayed, 0..=100.
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    /// Share of requests aborted, 0..=100.
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AbortStatus {
    /// This HTTP status (gRPC requests get its gRPC mapping).
    Http(u16),
    /// HTTP 200 with this `grpc-status` (trailers-only for gRPC requests).
    Grpc(u32),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderModifier {
    /// (name as written, value). Set replaces every existing value.
    pub set: Vec<(String, String)>,
    /// Add appends a value (joined with "," by readers when the header exists).
    pub add: Vec<(String, String)>,
    /// Lower-case names.
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replace the matched prefix (the rule's PathPrefix value) with this.
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301 or 302 (default 302).
    pub status: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    pub target: Arc<Cluster>,
    /// Percentage of requests to mirror, 0..=100.
    pub percent: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CorsPolicy {
    /// Origins as written: `*`, exact `https://a.com`, or with a wildcard host `https://*.a.com`.
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: Option<u32>,
}

impl ListenerSet {
    /// Listener isolation: the most specific listener for `host` (port already stripped, lower-case).
    pub fn select(&self, host: &str) -> Option<&Arc<Listener>> {
        if let Some(l) = self.exact.get(host) {
            return Some(l);
        }
        for (suffix, l) in &self.wildcard {
            if wildcard_matches(suffix, host) {
                return Some(l);
            }
        }
        self.any.as_ref()
    }
}

impl VirtualHosts {
    /// The host group for `host` (port already stripped, lower-case).
    pub fn select(&self, host: &str) -> Option<&Arc<RouteTable>> {
        if let Some(t) = self.exact.get(host) {
            return Some(t);
        }
        for (suffix, t) in &self.wildcard {
            if wildcard_matches(suffix, host) {
                return Some(t);
            }
        }
        self.any.as_ref()
    }
}

/// `suffix` is `.example.com` for `*.example.com`; the wildcard needs at least
/// one label in front of it (Gateway API: `*.example.com` does not match `example.com`).
pub fn wildcard_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                if p == "/" {
                    return true;
                }
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::StringPrefix(p) => path.starts_with(p.as_str()),
        }
    }
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == value,
            StringMatch::Regex(re) => re.is_match(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_by_segment() {
        let p = PathMatch::Prefix("/v2".into());
        assert!(p.matches("/v2"));
        assert!(p.matches("/v2/"));
        assert!(p.matches("/v2/example"));
        assert!(!p.matches("/v2example"));
        assert!(!p.matches("/foo/v2"));
        assert!(PathMatch::Prefix("/".into()).matches("/anything"));
    }

    #[test]
    fn regex_path_must_match_whole_path() {
        let p = PathMatch::Regex(regex::Regex::new("^(?:/v[0-9]+)$").unwrap());
        assert!(p.matches("/v12"));
        assert!(!p.matches("/v12/x"));
    }

    #[test]
    fn wildcard_needs_a_label() {
        assert!(wildcard_matches(".example.com", "a.example.com"));
        assert!(wildcard_matches(".example.com", "a.b.example.com"));
        assert!(!wildcard_matches(".example.com", "example.com"));
        assert!(!wildcard_matches(".example.com", "aexample.com"));
    }
}
