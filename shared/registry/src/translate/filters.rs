//! HTTPRouteFilter → snapshot Filter.

use std::sync::Arc;

use mesh_config::gateway_api::experimental::httproutes::{
    HttpRouteRulesBackendRefsFilters, HttpRouteRulesFilters, HttpRouteRulesFiltersCors,
    HttpRouteRulesFiltersRequestHeaderModifier, HttpRouteRulesFiltersRequestMirror,
    HttpRouteRulesFiltersRequestRedirect, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersResponseHeaderModifier,
    HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewrite,
    HttpRouteRulesFiltersUrlRewritePathType,
};

use super::backends::{BackendRef, BackendResolver, RefProblem};
use crate::snapshot::{
    CorsPolicy, Filter, HeaderModifier, Mirror, PathModifier, Redirect, UrlRewrite,
};

/// The outcome of compiling a rule's filters.
#[derive(Default)]
pub struct CompiledFilters {
    pub filters: Vec<Filter>,
    /// Mirror targets that did not resolve (the mirror is dropped; the route
    /// reports ResolvedRefs=False).
    pub ref_problems: Vec<RefProblem>,
}

/// Compiles filters; Err = the rule is invalid (reason UnsupportedValue).
pub fn compile_filters(
    filters: &[HttpRouteRulesFilters],
    route_namespace: &str,
    resolver: &mut BackendResolver<'_>,
) -> Result<CompiledFilters, String> {
    let mut out = CompiledFilters::default();
    for (i, f) in filters.iter().enumerate() {
        let missing =
            |field: &str| format!("filters[{i}]: type {:?} needs field {field}", f.r#type);
        let filter = match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                Filter::RequestHeaders(request_headers(
                    f.request_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("requestHeaderModifier"))?,
                ))
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                Filter::ResponseHeaders(response_headers(
                    f.response_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("responseHeaderModifier"))?,
                ))
            }
            HttpRouteRulesFiltersType::RequestRedirect => Filter::Redirect(redirect(
                f.request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("requestRedirect"))?,
            )?),
            HttpRouteRulesFiltersType::UrlRewrite => Filter::UrlRewrite(url_rewrite(
                f.url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("urlRewrite"))?,
            )?),
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("requestMirror"))?;
                match mirror(m, route_namespace, resolver)? {
                    Ok(filter) => filter,
                    Err(problem) => {
                        out.ref_problems.push(problem);
                        continue;
                    }
                }
            }
            HttpRouteRulesFiltersType::Cors => Filter::Cors(Arc::new(cors(
                f.cors.as_ref().ok_or_else(|| missing("cors"))?,
            ))),
            HttpRouteRulesFiltersType::ExtensionRef | HttpRouteRulesFiltersType::ExternalAuth => {
                return Err(format!(
                    "filters[{i}]: filter type {:?} is not supported",
                    f.r#type
                ));
            }
        };
        out.filters.push(filter);
    }
    Ok(out)
}

/// Backend-level filters have the same shape as rule filters but a distinct
/// generated type; convert through JSON (off the hot path).
pub fn backend_filters_as_rule_filters(
    filters: &[HttpRouteRulesBackendRefsFilters],
) -> Result<Vec<HttpRouteRulesFilters>, String> {
    filters
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .and_then(serde_json::from_value)
                .map_err(|e| format!("backend filter: {e}"))
        })
        .collect()
}

/// The request and response header modifiers are distinct generated types with
/// identical fields, so one macro body serves both.
macro_rules! header_modifier {
    ($m:expr) => {
        HeaderModifier {
            set: $m
                .set
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            add: $m
                .add
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            remove: $m
                .remove
                .iter()
                .flatten()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    };
}

fn request_headers(m: &HttpRouteRulesFiltersRequestHeaderModifier) -> HeaderModifier {
    header_modifier!(m)
}

fn response_headers(m: &HttpRouteRulesFiltersResponseHeaderModifier) -> HeaderModifier {
    header_modifier!(m)
}

fn path_modifier(
    kind_is_full: bool,
    full: Option<&String>,
    prefix: Option<&String>,
) -> Result<PathModifier, String> {
    if kind_is_full {
        full.map(|p| PathModifier::ReplaceFullPath(p.clone()))
            .ok_or_else(|| "path type ReplaceFullPath needs replaceFullPath".to_string())
    } else {
        prefix
            .map(|p| PathModifier::ReplacePrefixMatch(p.clone()))
            .ok_or_else(|| "path type ReplacePrefixMatch needs replacePrefixMatch".to_string())
    }
}

fn redirect(r: &HttpRouteRulesFiltersRequestRedirect) -> Result<Redirect, String> {
    let status = match r.status_code {
        None => 302,
        Some(code @ (301 | 302 | 303 | 307 | 308)) => code as u16,
        Some(other) => return Err(format!("redirect statusCode {other} is not supported")),
    };
    let port = match r.port {
        None => None,
        Some(p) => Some(
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("redirect port {p} is out of range"))?,
        ),
    };
    let path = match &r.path {
        None => None,
        Some(p) => Some(path_modifier(
            p.r#type == HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
            p.replace_full_path.as_ref(),
            p.replace_prefix_match.as_ref(),
        )?),
    };
    Ok(Redirect {
        scheme: r.scheme.as_ref().map(|s| match s {
            HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
            HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
        }),
        hostname: r.hostname.clone(),
        path,
        port,
        status,
    })
}

fn url_rewrite(r: &HttpRouteRulesFiltersUrlRewrite) -> Result<UrlRewrite, String> {
    let path = match &r.path {
        None => None,
        Some(p) => Some(path_modifier(
            p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
            p.replace_full_path.as_ref(),
            p.replace_prefix_match.as_ref(),
        )?),
    };
    Ok(UrlRewrite {
        hostname: r.hostname.clone(),
        path,
    })
}

/// Outer Err: invalid filter (rule rejected); inner Err: unresolved target.
fn mirror(
    m: &HttpRouteRulesFiltersRequestMirror,
    route_namespace: &str,
    resolver: &mut BackendResolver<'_>,
) -> Result<Result<Filter, RefProblem>, String> {
    let percent = match (&m.percent, &m.fraction) {
        (Some(p), _) => f64::from(*p),
        (None, Some(f)) => {
            let denominator = f.denominator.unwrap_or(100);
            if denominator <= 0 {
                return Err("requestMirror.fraction.denominator must be positive".into());
            }
            f64::from(f.numerator) * 100.0 / f64::from(denominator)
        }
        (None, None) => 100.0,
    };
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!(
            "requestMirror percentage {percent} is out of 0..=100"
        ));
    }
    let b = &m.backend_ref;
    let target = resolver.resolve(
        route_namespace,
        BackendRef {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        },
    );
    Ok(target.map(|target| Filter::Mirror(Mirror { target, percent })))
}

fn cors(c: &HttpRouteRulesFiltersCors) -> CorsPolicy {
    CorsPolicy {
        allow_origins: c.allow_origins.clone().unwrap_or_default(),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        allow_methods: c.allow_methods.clone().unwrap_or_default(),
        allow_headers: c.allow_headers.clone().unwrap_or_default(),
        expose_headers: c.expose_headers.clone().unwrap_or_default(),
        // The CRD's default is 5 seconds.
        max_age_seconds: Some(c.max_age.map(|a| a.max(0) as u32).unwrap_or(5)),
    }
}
