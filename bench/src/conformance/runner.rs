//! Runs the cases of one test file against a running gateway with the harness's
//! eventual-consistency semantics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::checks::{self, EchoBody, Sent};
use super::client::{self, HttpRequest};
use super::procs::{EchoProcess, GatewayProcess};
use super::vectors::{Case, ConditionExpect};

/// Consecutive passes required before a case counts as passed.
const CONSECUTIVE_PASSES: usize = 3;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const MIRROR_WAIT: Duration = Duration::from_secs(3);

pub struct Target<'a> {
    pub gateway: &'a mut GatewayProcess,
    pub port: u16,
    pub scheme: String,
    pub echoes: &'a [EchoProcess],
    pub case_timeout: Duration,
    /// https cases: the TLS client config (trusting the test certificate).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Replaces the per-probe placeholders of the vectors.
pub fn substitute(text: &str, uuid: &str) -> String {
    let mut out = text
        .replace("<fresh-uuid-per-probe>", uuid)
        .replace("<uuid>", uuid);
    while let Some(pos) = out.find("<random per request>") {
        let jitter: u64 = rand::rng().random();
        out.replace_range(pos..pos + "<random per request>".len(), &jitter.to_string());
    }
    out
}

/// Repeats `probe` until it passes CONSECUTIVE_PASSES times in a row or `timeout` elapses.
fn eventually(
    timeout: Duration,
    gateway: &mut GatewayProcess,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let start = Instant::now();
    let mut passes = 0;
    loop {
        match probe() {
            Ok(()) => {
                passes += 1;
                if passes >= CONSECUTIVE_PASSES {
                    return Ok(());
                }
                continue;
            }
            Err(reason) => {
                passes = 0;
                if let Some(exit) = gateway.guard.exited() {
                    return Err(format!(
                        "{reason}; {exit}: {}",
                        super::procs::log_tail(&gateway.log_path)
                    ));
                }
                if start.elapsed() >= timeout {
                    return Err(reason);
                }
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

pub fn run_case(case: &Case, target: &mut Target<'_>) -> Result<(), String> {
    let timeout = target.case_timeout;
    match case.kind.as_deref() {
        None | Some("http") if case.request.grpc_method.is_some() => {
            let (port, echoes) = (target.port, target.echoes);
            eventually(timeout, target.gateway, || probe_grpc(case, port, echoes))
        }
        None | Some("http") => {
            let (port, scheme, echoes) = (target.port, target.scheme.clone(), target.echoes);
            let tls = target.tls.clone();
            eventually(timeout, target.gateway, || {
                probe_http(case, port, &scheme, echoes, tls.as_ref())
            })
        }
        Some("distribution") => run_distribution(case, target),
        Some("route_status") => {
            let admin = target.gateway.admin;
            eventually(timeout, target.gateway, || check_route_status(case, admin))
        }
        Some("gateway_listener_status") => {
            let admin = target.gateway.admin;
            eventually(timeout, target.gateway, || {
                check_listener_status(case, admin)
            })
        }
        Some(other) => Err(format!("unknown case kind {other:?}")),
    }
}

fn build_request(case: &Case, uuid: &str, port: u16, scheme: &str) -> (HttpRequest, Sent) {
    let method = case
        .request
        .method
        .clone()
        .unwrap_or_else(|| "GET".to_string());
    let path = substitute(case.request.path.as_deref().unwrap_or("/"), uuid);
    let explicit_host = case.request.host.as_ref().map(|h| substitute(h, uuid));
    let host = explicit_host.clone().unwrap_or_else(|| {
        if (port == 80 && scheme == "http") || (port == 443 && scheme == "https") {
            "127.0.0.1".to_string()
        } else {
            format!("127.0.0.1:{port}")
        }
    });
    let headers: Vec<(String, String)> = case
        .request
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), substitute(v, uuid)))
        .collect();
    let set_header = case
        .backend_sets_response_headers
        .iter()
        .map(|(n, v)| format!("{n}:{}", v.0))
        .collect::<Vec<_>>()
        .join(",");
    let mut wire_headers = headers.clone();
    wire_headers.push(("X-Echo-Set-Header".to_string(), set_header));
    let request = HttpRequest {
        method: method.clone(),
        host,
        path: path.clone(),
        headers: wire_headers,
    };
    let sent = Sent {
        method,
        path,
        explicit_host,
        headers,
        scheme: scheme.to_string(),
    };
    (request, sent)
}

fn probe_http(
    case: &Case,
    port: u16,
    scheme: &str,
    echoes: &[EchoProcess],
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    let uuid = uuid::Uuid::new_v4().to_string();
    let (request, sent) = build_request(case, &uuid, port, scheme);
    // SNI: the case's, else the Host without its port (IP addresses send none).
    let probe_tls = tls.map(|config| client::ProbeTls {
        config: config.clone(),
        sni: case.request.sni.clone().unwrap_or_else(|| {
            let host = request.host.as_str();
            host.rsplit_once(':').map_or(host, |(h, _)| h).to_string()
        }),
    });
    let mut expect = case.expect.clone();
    if let Some(up) = expect.upstream.as_mut() {
        up.path = up.path.as_ref().map(|p| substitute(p, &uuid));
        for (_, v) in up.headers.iter_mut() {
            *v = substitute(v, &uuid);
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let result = client::send_with(addr, &request, PROBE_TIMEOUT, probe_tls.as_ref())
        .and_then(|response| checks::check_http(&expect, &sent, &response));
    if let Err(reason) = result {
        return Err(with_backend_trace(reason, &uuid, &sent.path, echoes));
    }
    check_mirrors(case, &uuid, echoes)
}

/// `expect.mirrored_to`: each mirror backend logged the request (its echo log line).
fn check_mirrors(case: &Case, uuid: &str, echoes: &[EchoProcess]) -> Result<(), String> {
    for mirror in &case.expect.mirrored_to {
        let path = substitute(&mirror.path, uuid);
        let candidates: Vec<&EchoProcess> = echoes
            .iter()
            .filter(|e| e.pod.starts_with(&mirror.backend))
            .filter(|e| {
                mirror
                    .namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == e.namespace)
            })
            .collect();
        let deadline = Instant::now() + MIRROR_WAIT;
        while !candidates.iter().any(|e| e.saw_request(&path)) {
            if Instant::now() > deadline {
                return Err(format!(
                    "mirror backend {} never logged a request to {path}",
                    mirror.backend
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn probe_grpc(case: &Case, port: u16, echoes: &[EchoProcess]) -> Result<(), String> {
    let method = case
        .request
        .grpc_method
        .as_ref()
        .map(super::grpc::method_path)
        .transpose()?
        .unwrap_or_default();
    let uuid = uuid::Uuid::new_v4().to_string();
    let metadata: Vec<(String, String)> = case
        .request
        .metadata
        .iter()
        .map(|(n, v)| (n.clone(), substitute(v, &uuid)))
        .collect();
    let host = case.request.host.as_ref().map(|h| substitute(h, &uuid));
    let reply = super::grpc::call(port, host.as_deref(), &method, &metadata, PROBE_TIMEOUT)?;
    super::grpc::check(case, &reply).map_err(|e| format!("{method}: {e}"))?;
    check_mirrors(case, &uuid, echoes)
}

/// Appends what the echo backends logged for this probe's uuid (retry attempts that
/// failed, echoed requests), when the request carried one.
fn with_backend_trace(reason: String, uuid: &str, path: &str, echoes: &[EchoProcess]) -> String {
    if !path.contains(uuid) {
        return reason;
    }
    // Give the backends' stdout a moment to reach the reader threads.
    std::thread::sleep(Duration::from_millis(50));
    let mut attempts = 0;
    let mut echoed = 0;
    for echo in echoes {
        for line in echo.lines_with(uuid) {
            if line.starts_with("Retry attempt") {
                attempts += 1;
            } else {
                echoed += 1;
            }
        }
    }
    format!("{reason} [backends saw {attempts} failed retry attempts and echoed {echoed} requests for this probe]")
}

/// `kind: distribution`: `samples` requests over `concurrency` connections at a time; the
/// per-backend fractions must be within tolerance. Retried up to `max_attempts` times.
fn run_distribution(case: &Case, target: &mut Target<'_>) -> Result<(), String> {
    let samples = case.samples.unwrap_or(500).max(1);
    let concurrency = case.concurrency.unwrap_or(10).clamp(1, samples);
    let tolerance = case.tolerance_abs.unwrap_or(0.05);
    let attempts = case.max_attempts.unwrap_or(10).max(1);
    let mut last = String::new();
    for _ in 0..attempts {
        if let Some(exit) = target.gateway.guard.exited() {
            return Err(exit);
        }
        let attempt = if case.request.grpc_method.is_some() {
            grpc_distribution_attempt(case, target.port, samples, concurrency)
        } else {
            distribution_attempt(case, target.port, &target.scheme, samples, concurrency)
        };
        match attempt {
            Ok(counts) => match checks::check_distribution(
                &counts,
                &case.expect.backend_fractions,
                tolerance,
                case.expect.backends_receiving_traffic,
            ) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
    }
    Err(format!("after {attempts} attempts: {last}"))
}

fn distribution_attempt(
    case: &Case,
    port: u16,
    scheme: &str,
    samples: usize,
    concurrency: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let per_thread = samples.div_ceil(concurrency);
    let results: Vec<Result<Vec<String>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|i| {
                let count = per_thread.min(samples.saturating_sub(i * per_thread));
                scope.spawn(move || {
                    let mut seen = Vec::with_capacity(count);
                    for _ in 0..count {
                        let uuid = uuid::Uuid::new_v4().to_string();
                        let (request, sent) = build_request(case, &uuid, port, scheme);
                        let addr = SocketAddr::from(([127, 0, 0, 1], port));
                        let response = client::send(addr, &request, PROBE_TIMEOUT)?;
                        if !checks::status_matches(&case.expect.status, response.status) {
                            return Err(format!(
                                "expected status {:?}, got {} for {}",
                                case.expect.status, response.status, sent.path
                            ));
                        }
                        let echo = EchoBody::parse(&response.body);
                        if let Some(ns) = &case.expect.backend_namespace {
                            if &echo.namespace != ns {
                                return Err(format!(
                                    "expected namespace {ns:?}, got {:?}",
                                    echo.namespace
                                ));
                            }
                        }
                        seen.push(checks::backend_identity(&echo.pod));
                    }
                    Ok(seen)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("probe thread panicked".into()))
            })
            .collect()
    });
    let mut counts = BTreeMap::new();
    for result in results {
        for backend in result? {
            *counts.entry(backend).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// A distribution attempt with gRPC calls: each call must succeed (status OK, the
/// expected namespace); the serving pods are counted per backend.
fn grpc_distribution_attempt(
    case: &Case,
    port: u16,
    samples: usize,
    concurrency: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let method = case
        .request
        .grpc_method
        .as_ref()
        .map(super::grpc::method_path)
        .transpose()?
        .unwrap_or_default();
    let per_task = samples.div_ceil(concurrency);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let results: Vec<Result<Vec<String>, String>> = runtime.block_on(async {
        let tasks = (0..concurrency).map(|i| {
            let count = per_task.min(samples.saturating_sub(i * per_task));
            let method = method.clone();
            async move {
                let client = super::grpc::GrpcClient::connect(port, None, PROBE_TIMEOUT).await?;
                let mut seen = Vec::with_capacity(count);
                for _ in 0..count {
                    let uuid = uuid::Uuid::new_v4().to_string();
                    let metadata: Vec<(String, String)> = case
                        .request
                        .metadata
                        .iter()
                        .map(|(n, v)| (n.clone(), substitute(v, &uuid)))
                        .collect();
                    let reply = client.call(&method, &metadata).await?;
                    super::grpc::check(case, &reply)?;
                    let pod = reply
                        .response
                        .as_ref()
                        .and_then(|r| r.assertions.as_ref())
                        .and_then(|a| a.context.as_ref())
                        .map(|c| c.pod.clone())
                        .unwrap_or_default();
                    seen.push(checks::backend_identity(&pod));
                }
                Ok(seen)
            }
        });
        futures_join_all(tasks).await
    });
    let mut counts = BTreeMap::new();
    for result in results {
        for backend in result? {
            *counts.entry(backend).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Runs futures concurrently on the current task (no `futures` crate needed: a
/// JoinSet needs 'static futures, these borrow the case).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// The gateway's `config_errors` from /status (for diagnosing failed cases).
pub fn config_errors(admin: SocketAddr) -> Vec<String> {
    fetch_status(admin)
        .ok()
        .and_then(|status| {
            status
                .get("config_errors")
                .and_then(|e| e.as_array())
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| {
                            e.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| e.to_string())
                        })
                        .collect()
                })
        })
        .unwrap_or_default()
}

fn fetch_status(admin: SocketAddr) -> Result<serde_json::Value, String> {
    let request = HttpRequest {
        method: "GET".into(),
        host: admin.to_string(),
        path: "/status".into(),
        headers: vec![],
    };
    let response = client::send(admin, &request, PROBE_TIMEOUT)?;
    if response.status != 200 {
        return Err(format!("admin /status answered {}", response.status));
    }
    serde_json::from_slice(&response.body).map_err(|e| format!("admin /status is not JSON: {e}"))
}

fn split_ref(text: &str) -> (&str, &str) {
    text.split_once('/').unwrap_or(("default", text))
}

fn object_is(value: &serde_json::Value, namespace: &str, name: &str) -> bool {
    value.get("namespace").and_then(|v| v.as_str()) == Some(namespace)
        && value.get("name").and_then(|v| v.as_str()) == Some(name)
}

fn check_conditions(
    what: &str,
    actual: Option<&serde_json::Value>,
    expected: &[ConditionExpect],
) -> Result<(), String> {
    let actual: &[serde_json::Value] = actual.and_then(|v| v.as_array()).map_or(&[], |v| v);
    for want in expected {
        let found = actual
            .iter()
            .find(|c| c.get("type").and_then(|t| t.as_str()) == Some(want.type_.as_str()));
        let Some(found) = found else {
            return Err(format!("{what}: condition {} missing", want.type_));
        };
        let status = found.get("status").and_then(|s| s.as_str()).unwrap_or("");
        let reason = found.get("reason").and_then(|s| s.as_str()).unwrap_or("");
        if status != want.status || want.reason.as_ref().is_some_and(|r| r != reason) {
            return Err(format!(
                "{what}: expected {}={}{}, got {status}/{reason}",
                want.type_,
                want.status,
                want.reason
                    .as_ref()
                    .map(|r| format!("/{r}"))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(())
}

fn check_route_status(case: &Case, admin: SocketAddr) -> Result<(), String> {
    let status = fetch_status(admin)?;
    let route_ref = case
        .route
        .as_deref()
        .ok_or("route_status case without route")?;
    let parent_ref = case
        .parent
        .as_deref()
        .ok_or("route_status case without parent")?;
    let (route_ns, route_name) = split_ref(route_ref);
    let (parent_ns, parent_name) = split_ref(parent_ref);
    let routes = status
        .get("routes")
        .and_then(|r| r.as_array())
        .ok_or("no routes in /status")?;
    let route = routes
        .iter()
        .find(|r| {
            r.get("route")
                .is_some_and(|o| object_is(o, route_ns, route_name))
        })
        .ok_or_else(|| format!("route {route_ref} not in /status"))?;
    let parents = route
        .get("parents")
        .and_then(|p| p.as_array())
        .map_or(&[][..], |p| p);
    let parent = parents
        .iter()
        .find(|p| {
            p.get("parentRef")
                .is_some_and(|o| object_is(o, parent_ns, parent_name))
        })
        .ok_or_else(|| format!("route {route_ref} has no status for parent {parent_ref}"))?;
    check_conditions(
        &format!("route {route_ref} parent {parent_ref}"),
        parent.get("conditions"),
        &case.expect.conditions,
    )
}

fn check_listener_status(case: &Case, admin: SocketAddr) -> Result<(), String> {
    let status = fetch_status(admin)?;
    let gateway_ref = case
        .gateway
        .as_deref()
        .ok_or("gateway_listener_status case without gateway")?;
    let (ns, name) = split_ref(gateway_ref);
    let gateways = status
        .get("gateways")
        .and_then(|g| g.as_array())
        .ok_or("no gateways in /status")?;
    let gateway = gateways
        .iter()
        .find(|g| g.get("gateway").is_some_and(|o| object_is(o, ns, name)))
        .ok_or_else(|| format!("gateway {gateway_ref} not in /status"))?;
    let listeners = gateway
        .get("listeners")
        .and_then(|l| l.as_array())
        .map_or(&[][..], |l| l);
    for want in &case.expect.listeners {
        let listener = listeners
            .iter()
            .find(|l| l.get("name").and_then(|n| n.as_str()) == Some(want.name.as_str()))
            .ok_or_else(|| format!("listener {} not in /status", want.name))?;
        if let Some(attached) = want.attached_routes {
            let got = listener.get("attachedRoutes").and_then(|a| a.as_u64());
            if got != Some(attached as u64) {
                return Err(format!(
                    "listener {}: expected attachedRoutes {attached}, got {got:?}",
                    want.name
                ));
            }
        }
        if let Some(kinds) = &want.supported_kinds {
            let got: Vec<String> = listener
                .get("supportedKinds")
                .and_then(|k| k.as_array())
                .map(|k| {
                    k.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if &got != kinds {
                return Err(format!(
                    "listener {}: expected supportedKinds {kinds:?}, got {got:?}",
                    want.name
                ));
            }
        }
        check_conditions(
            &format!("listener {}", want.name),
            listener.get("conditions"),
            &want.conditions,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let text = substitute("/m?id=<uuid>&x=<fresh-uuid-per-probe>", "U");
        assert_eq!(text, "/m?id=U&x=U");
        let a = substitute("<random per request>", "U");
        assert!(a.parse::<u64>().is_ok());
    }

    #[test]
    fn condition_checks() {
        let actual = serde_json::json!([
            {"type": "Accepted", "status": "True", "reason": "Accepted"},
            {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"},
        ]);
        let want = |t: &str, s: &str, r: Option<&str>| ConditionExpect {
            type_: t.into(),
            status: s.into(),
            reason: r.map(String::from),
        };
        assert!(check_conditions(
            "r",
            Some(&actual),
            &[
                want("Accepted", "True", None),
                want("ResolvedRefs", "False", Some("BackendNotFound"))
            ]
        )
        .is_ok());
        assert!(
            check_conditions("r", Some(&actual), &[want("ResolvedRefs", "True", None)]).is_err()
        );
        assert!(check_conditions("r", Some(&actual), &[want("Programmed", "True", None)]).is_err());
    }
}
