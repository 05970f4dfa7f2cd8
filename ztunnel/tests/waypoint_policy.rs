//! Traffic policy through a waypoint, end to end in the two-node topology
//! (`topology`): client pod (node1) → ztunnel → HBONE → waypoint (node1,
//! its own pod) → HBONE → ztunnel (node2) → two backend pods (node2).
//! Each Service below is bound to the waypoint (`istio.io/use-waypoint`)
//! and configured the way a user would: GAMMA HTTPRoutes (Service parent),
//! DestinationRules, a VirtualService and a LocalRateLimitPolicy. Every
//! feature is shown by its effect on real requests: weighted split,
//! retries, POST sent once, timeout, consistent hash, circuit breaker,
//! outlier ejection and return, fault delay and abort, rate limit, gRPC
//! unary and streaming calls with trailers, a missing waypoint refused.
//!
//! `waypoint_policy` re-runs this binary's `waypoint_policy_inside` under
//! `unshare -Urnm`; needs `target/debug/waypoint` (`cargo build -p
//! ringmesh-waypoint`); skipped where the tools or user namespaces are missing.

#[path = "topology/grpc.rs"]
mod grpc;
mod topology;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use topology::apps::{pod_of, spawn_http_app_with, Answer};
use topology::http_client::Client;
use topology::waypoint::Waypoint;
use topology::*;

const ZTUNNEL: &str = env!("CARGO_BIN_EXE_ztunnel");

const CLIENT: Pod = Pod {
    name: "client",
    node: 1,
    ip: "10.0.1.2",
    captured: true,
};
const ECHO_1: Pod = Pod {
    name: "echo1",
    node: 2,
    ip: "10.0.2.3",
    captured: true,
};
const ECHO_2: Pod = Pod {
    name: "echo2",
    node: 2,
    ip: "10.0.2.2",
    captured: true,
};
const WAYPOINT_POD: Pod = Pod {
    name: "wp",
    node: 1,
    ip: "10.0.1.9",
    captured: false,
};

/// The Service VIPs (port 80, gRPC 9090), one per feature.
const ECHO: &str = "10.96.0.10:80";
const HASH: &str = "10.96.0.13:80";
const POOL: &str = "10.96.0.14:80";
const OUTLIER: &str = "10.96.0.15:80";
const LIMITED: &str = "10.96.0.16:80";
const FAULTY: &str = "10.96.0.17:80";
const GRPC: &str = "10.96.0.18:9090";
const LOST: &str = "10.96.0.19:80";
const GRPC_LIMITED: &str = "10.96.0.20:9090";
const GRPC_POOL: &str = "10.96.0.21:9090";

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: wp
  namespace: apps
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: node1, serviceAccountName: waypoint, containers: []}
status: {podIP: 10.0.1.9}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: apps
  annotations: {ringmesh.io/netns: /run/netns/zt-client}
spec: {nodeName: node1, serviceAccountName: client, containers: []}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo1
  namespace: apps
  labels: {app: echo}
  annotations: {ringmesh.io/netns: /run/netns/zt-echo1}
spec: {nodeName: node2, serviceAccountName: echo, containers: []}
status: {podIP: 10.0.2.3}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo2
  namespace: apps
  labels: {app: echo}
  annotations: {ringmesh.io/netns: /run/netns/zt-echo2}
spec: {nodeName: node2, serviceAccountName: echo, containers: []}
status: {podIP: 10.0.2.2}
"#;

/// The traffic configuration, as a user writes it.
const POLICY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: echo-one, port: 80, weight: 80}, {name: echo-two, port: 80, weight: 20}]
  - matches: [{path: {type: PathPrefix, value: /retry}}]
    retry: {codes: [503], attempts: 2, backoff: 1ms}
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-two, port: 80}}
    backendRefs: [{name: echo-one, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /timeout}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: echo, port: 80}]
  - backendRefs: [{name: echo, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hash, namespace: apps}
spec:
  host: hash
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: apps}
spec:
  host: pool.apps.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier, namespace: apps}
spec:
  host: outlier
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 50
      minHealthPercent: 0
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: limited, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: limited, port: 80}]
  rules: [{backendRefs: [{name: limited, port: 80}]}]
---
apiVersion: policy.ringmesh.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: limited, namespace: apps}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: limited}
  tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 1h}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faulty, namespace: apps}
spec:
  hosts: [faulty]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 25}}}
    route: [{destination: {host: faulty}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 250ms, percentage: {value: 25}}}
    route: [{destination: {host: faulty}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc, namespace: apps}
spec:
  hosts: [grpc.apps.svc.cluster.local]
  http:
  - match: [{uri: {exact: /test.Echo/Flaky}}]
    retries: {attempts: 2, retryOn: unavailable}
    route: [{destination: {host: grpc}}]
  - match: [{uri: {exact: /test.Echo/Slow}}]
    timeout: 300ms
    route: [{destination: {host: grpc}}]
  - route: [{destination: {host: grpc}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: grpc-limited, namespace: apps}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc-limited, port: 9090}]
  rules: [{backendRefs: [{name: grpc-limited, port: 9090}]}]
---
apiVersion: policy.ringmesh.io/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: grpc-limited, namespace: apps}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: grpc-limited}
  tokenBucket: {maxTokens: 2, fillInterval: 1h}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: grpc-pool, namespace: apps}
spec:
  host: grpc-pool
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 1}
"#;

/// A Service (with its EndpointSlice) over `pods`; `waypoint` is the
/// `istio.io/use-waypoint` label, if any.
fn service(name: &str, vip_port: &str, pods: &[&Pod], waypoint: Option<&str>) -> String {
    let (vip, port) = vip_port.split_once(':').unwrap();
    let labels = waypoint
        .map(|w| format!(", labels: {{istio.io/use-waypoint: {w}}}"))
        .unwrap_or_default();
    let (target, app_protocol) = match port {
        "9090" => ("9090", ", appProtocol: kubernetes.io/h2c"),
        _ => ("8080", ""),
    };
    let endpoints: Vec<String> = pods
        .iter()
        .map(|p| format!("{{addresses: [{}]}}", p.ip))
        .collect();
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: apps{labels}}}
spec: {{clusterIP: {vip}, ports: [{{name: http, port: {port}, targetPort: {target}{app_protocol}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: apps, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {target}{app_protocol}}}]
endpoints: [{}]
",
        endpoints.join(", ")
    )
}

fn config() -> String {
    let both = [&ECHO_1, &ECHO_2];
    let mut yaml = BASE.to_string();
    for (name, vip) in [
        ("echo", ECHO),
        ("hash", HASH),
        ("pool", POOL),
        ("outlier", OUTLIER),
        ("limited", LIMITED),
        ("faulty", FAULTY),
        ("grpc", GRPC),
        ("grpc-limited", GRPC_LIMITED),
        ("grpc-pool", GRPC_POOL),
    ] {
        yaml.push_str(&service(name, vip, &both, Some("waypoint")));
    }
    // The weighted split's two single-pod backends (not bound themselves).
    yaml.push_str(&service("echo-one", "10.96.0.11:80", &[&ECHO_1], None));
    yaml.push_str(&service("echo-two", "10.96.0.12:80", &[&ECHO_2], None));
    yaml.push_str(&service("lost", LOST, &both, Some("nowhere")));
    yaml.push_str("---");
    yaml.push_str(POLICY);
    yaml
}

// ---- the backend pods' behaviour, steered by the request path ----

/// What the apps saw and how they misbehave, shared by both pods (they
/// are threads of this process).
#[derive(Default)]
struct AppState {
    /// Requests seen, by "METHOD PATH" and by "POD METHOD PATH".
    seen: Mutex<HashMap<String, usize>>,
    /// `/outlier` requests to this pod answer 500.
    failing: Mutex<Option<&'static str>>,
}

static APPS: LazyLock<AppState> = LazyLock::new(AppState::default);

/// Path segments: `/status/CODE` answers CODE, `/delay/MS` waits MS,
/// `/flaky/...` answers 503 the first time that path is seen, `/outlier`
/// answers 500 from the failing pod.
fn answer(pod: &str, head: &str) -> Answer {
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let times = {
        let mut seen = APPS.seen.lock().unwrap();
        *seen.entry(format!("{pod} {method} {path}")).or_default() += 1;
        let n = seen.entry(format!("{method} {path}")).or_default();
        *n += 1;
        *n
    };
    let mut answer = Answer {
        status: 200,
        delay: Duration::ZERO,
    };
    let segments: Vec<&str> = path.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let next = segments.get(i + 1).copied().unwrap_or_default();
        match *segment {
            "status" => answer.status = next.parse().unwrap_or(200),
            "delay" => answer.delay = Duration::from_millis(next.parse().unwrap_or(0)),
            "flaky" if times == 1 => answer.status = 503,
            "outlier" if *APPS.failing.lock().unwrap() == Some(pod) => answer.status = 500,
            _ => {}
        }
    }
    answer
}

fn times_seen(method: &str, path: &str) -> usize {
    let seen = APPS.seen.lock().unwrap();
    seen.get(&format!("{method} {path}")).copied().unwrap_or(0)
}

/// A keep-alive client in the client pod.
fn client(to: &str) -> Client {
    Client::new(&CLIENT, to)
}

/// `n` GETs of `path` on one keep-alive connection: responses per pod (all 200).
fn pods_serving(to: &str, path: &str, n: usize) -> HashMap<String, usize> {
    let mut client = client(to);
    let mut pods = HashMap::new();
    for i in 0..n {
        let r = client.get(path);
        assert_eq!(r.status, 200, "request {i} of {path}: {r:?}");
        *pods.entry(r.pod().to_string()).or_default() += 1;
    }
    pods
}

/// Runs `each(i)` for `i` in `0..n` on `n` threads at once.
fn concurrently<T: Send + 'static>(
    n: usize,
    each: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let each = Arc::new(each);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let each = each.clone();
            std::thread::spawn(move || each(i))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Polls `check` every 20 ms until it holds; panics with `what` at the deadline.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the test ----

#[test]
fn waypoint_policy() {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED waypoint_policy: {why} (scripts/test.sh installs iproute2/iptables)");
        return;
    }
    let bin = waypoint_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ringmesh-waypoint` first",
        bin.display()
    );
    run_inside_namespaces("waypoint_policy_inside");
}

fn waypoint_bin() -> PathBuf {
    Path::new(ZTUNNEL).with_file_name("waypoint")
}

#[test]
#[ignore = "runs inside unshare -Urnm, started by waypoint_policy"]
fn waypoint_policy_inside() {
    if std::env::var_os(INNER_ENV).is_none() {
        return;
    }
    build(&[CLIENT, ECHO_1, ECHO_2, WAYPOINT_POD]);
    let dir = std::env::temp_dir().join(format!("ringmesh-wpp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("mesh.yaml");
    std::fs::write(&config_path, config()).unwrap();
    let ca = dir.join("ca");
    for pod in [&ECHO_1, &ECHO_2] {
        spawn_http_app_with(pod, 8080, Arc::new(answer));
        grpc::spawn_grpc_app(pod, 9090);
    }
    let z1 = Ztunnel::start(ZTUNNEL, &config_path, 1, &ca);
    let _z2 = Ztunnel::start(ZTUNNEL, &config_path, 2, &ca);
    let waypoint = Waypoint::start(
        &waypoint_bin(),
        &WAYPOINT_POD,
        &config_path,
        "apps/waypoint",
        &ca,
    );
    // The first connections may race the waypoint's listeners.
    eventually(
        "the echo Service answers through the waypoint",
        Duration::from_secs(10),
        || {
            client(ECHO)
                .try_send("GET", "/hello", &[], "")
                .is_ok_and(|r| {
                    r.status == 200 && r.header("x-envoy-upstream-service-time").is_some()
                })
        },
    );

    weighted_split();
    retry_turns_503_into_200();
    post_without_retry_is_sent_once();
    post_is_retried_only_when_its_body_was_buffered();
    timeout_gives_504();
    mirror_copies_requests_to_another_service();
    http2_clients_get_the_same_policy();
    consistent_hash_keeps_a_key_on_one_pod();
    overloaded_pool_answers_503_overloaded();
    failing_pod_is_ejected_and_comes_back();
    rate_limit_answers_429_with_headers();
    fault_abort_at_its_percentage();
    fault_delay_at_its_percentage();
    grpc_unary_and_streaming_with_trailers();
    grpc_retry_and_proxy_errors_as_grpc_status();
    grpc_timeout_and_overload_as_grpc_status();
    missing_waypoint_is_refused(&z1);

    // Everything above went through the waypoint.
    let served = metric_sum(
        &waypoint.metrics(),
        "istio_requests_total",
        &[("reporter", "waypoint")],
    );
    assert!(served > 3000, "waypoint istio_requests_total: {served}");
    drop(waypoint);
    let _ = std::fs::remove_dir_all(&dir);
}

/// HTTPRoute backendRefs weighted 80/20 between two single-pod Services:
/// within ±5% over 1,000 requests.
fn weighted_split() {
    let pods = pods_serving(ECHO, "/split", 1000);
    let one = pods.get("echo1").copied().unwrap_or(0);
    assert_eq!(
        one + pods.get("echo2").copied().unwrap_or(0),
        1000,
        "{pods:?}"
    );
    eprintln!("waypoint_policy: 80/20 split over 1,000 requests: {pods:?}");
    assert!((750..=850).contains(&one), "80/20 split: {pods:?}");
}

/// HTTPRoute `retry: {codes: [503], attempts: 2}`: each first try answers
/// 503, the retry 200; the client sees only the 200.
fn retry_turns_503_into_200() {
    let mut client = client(ECHO);
    for i in 0..5 {
        let path = format!("/retry/flaky/{i}");
        let r = client.get(&path);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            times_seen("GET", &path),
            2,
            "{path}: one failure, one retry"
        );
    }
}

/// A POST on the retried route: a small body (read whole, within the
/// engine's 64 KiB buffer) is replayed; a 100 KiB body, streamed to the pod
/// as it came, is never replayed: the client gets the pod's 503.
fn post_is_retried_only_when_its_body_was_buffered() {
    let mut client = client(ECHO);
    let r = client.send("POST", "/retry/flaky/small-post", &[], &"s".repeat(1024));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(times_seen("POST", "/retry/flaky/small-post"), 2);
    let r = client.send(
        "POST",
        "/retry/flaky/big-post",
        &[],
        &"b".repeat(100 * 1024),
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        times_seen("POST", "/retry/flaky/big-post"),
        1,
        "streamed body sent once"
    );
}

/// The default rule has no retry: a POST answered 503 reached the pods once.
fn post_without_retry_is_sent_once() {
    let mut client = client(ECHO);
    for i in 0..3 {
        let path = format!("/flaky/post-{i}");
        let r = client.send("POST", &path, &[], "order=1");
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(times_seen("POST", &path), 1, "{path} sent exactly once");
    }
}

/// HTTPRoute RequestMirror to `echo-two` (echo2) on a route to `echo-one`
/// (echo1): echo1 answers, echo2 gets a copy (fire and forget: polled).
fn mirror_copies_requests_to_another_service() {
    let mut client = client(ECHO);
    for i in 0..5 {
        let path = format!("/mirror/{i}");
        let r = client.get(&path);
        assert_eq!((r.status, r.pod()), (200, "echo1"), "{r:?}");
        eventually(
            &format!("echo2 got a copy of {path}"),
            Duration::from_secs(5),
            || times_seen("echo2 GET", &path) == 1,
        );
        assert_eq!(times_seen("GET", &path), 2, "one answer, one copy");
    }
}

/// An HTTP/2 client (h2c) of the HTTP/1.1 Service: the same routes apply
/// (weights, retry, timeout).
fn http2_clients_get_the_same_policy() {
    let mut paths: Vec<String> = vec!["/retry/flaky/h2".into(), "/timeout/delay/3000".into()];
    paths.extend((0..200).map(|_| "/split".to_string()));
    let answers = grpc::h2_gets(&CLIENT, ECHO.parse().unwrap(), paths);
    assert_eq!(answers[0].0, 200, "retried: {:?}", answers[0]);
    assert_eq!(times_seen("GET", "/retry/flaky/h2"), 2);
    assert_eq!(answers[1].0, 504, "timeout: {:?}", answers[1]);
    let mut pods: HashMap<String, usize> = HashMap::new();
    for (status, body) in &answers[2..] {
        assert_eq!(*status, 200, "{body}");
        *pods.entry(pod_of(body).to_string()).or_default() += 1;
    }
    let one = pods.get("echo1").copied().unwrap_or(0);
    // 80% of 200 is 160; 5 standard deviations is about 28.
    assert!((132..=188).contains(&one), "80/20 over HTTP/2: {pods:?}");
}

/// HTTPRoute `timeouts.request: 300ms` on a pod that takes 3 s: 504.
fn timeout_gives_504() {
    let r = client(ECHO).get("/timeout/delay/3000");
    assert_eq!(r.status, 504, "{r:?}");
    // Only that rule has the timeout.
    assert_eq!(client(ECHO).get("/delay/400").status, 200);
}

/// DestinationRule consistentHash on `x-user`: a user stays on one pod,
/// across connections; users spread over both pods.
fn consistent_hash_keeps_a_key_on_one_pod() {
    let mut owner: HashMap<usize, String> = HashMap::new();
    for round in 0..3 {
        let mut client = client(HASH);
        for user in 0..20 {
            let r = client.get_with("/hash", &[("x-user", &format!("user-{user}"))]);
            assert_eq!(r.status, 200, "{r:?}");
            let first = owner.entry(user).or_insert_with(|| r.pod().to_string());
            assert_eq!(first, r.pod(), "round {round}: user-{user} moved");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 2, "20 users on one pod: {owner:?}");
}

/// DestinationRule connectionPool maxConnections 1 + 1 pending: of 6
/// concurrent slow requests at most 2 are served, the rest get 503 with
/// `x-envoy-overloaded: true`.
fn overloaded_pool_answers_503_overloaded() {
    let responses = concurrently(6, |_| client(POOL).get("/delay/1500"));
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let overloaded: Vec<_> = responses.iter().filter(|r| r.status == 503).collect();
    assert!((1..=2).contains(&ok), "{responses:?}");
    assert_eq!(ok + overloaded.len(), 6, "{responses:?}");
    for r in overloaded {
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{r:?}");
    }
    assert_eq!(client(POOL).get("/after").status, 200);
}

/// DestinationRule outlierDetection (3 consecutive 5xx, 3 s ejection),
/// round robin: while echo2 answers 500 it is ejected and echo1 takes
/// every request; once echo2 is healthy it comes back after the ejection.
fn failing_pod_is_ejected_and_comes_back() {
    // One keep-alive connection: one waypoint worker (detection is per worker).
    let mut client = client(OUTLIER);
    *APPS.failing.lock().unwrap() = Some("echo2");
    let mut failures = 0;
    let mut echo1_in_a_row = 0;
    eventually(
        "echo2 ejected: 10 answers in a row from echo1",
        Duration::from_secs(10),
        || {
            let r = client.get("/outlier");
            match (r.status, r.pod()) {
                (500, "echo2") => {
                    failures += 1;
                    echo1_in_a_row = 0;
                }
                (200, "echo1") => echo1_in_a_row += 1,
                _ => panic!("{r:?}"),
            }
            echo1_in_a_row >= 10
        },
    );
    // One connection, one worker: exactly consecutive5xxErrors failures.
    assert_eq!(failures, 3, "echo2 ejected after consecutive5xxErrors");
    *APPS.failing.lock().unwrap() = None;
    eventually(
        "echo2 back after its ejection time",
        Duration::from_secs(15),
        || {
            let r = client.get("/outlier");
            assert_eq!(r.status, 200, "{r:?}");
            r.pod() == "echo2"
        },
    );
}

/// LocalRateLimitPolicy on the Service's HTTPRoute: 5 tokens, then 429 with
/// the x-ratelimit headers.
fn rate_limit_answers_429_with_headers() {
    let mut client = client(LIMITED);
    for i in 0..5 {
        let r = client.get("/limited");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    for _ in 0..3 {
        let r = client.get("/limited");
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"), "{r:?}");
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"), "{r:?}");
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((3500..=3600).contains(&reset), "{r:?}");
    }
}

/// VirtualService fault abort 503 at 25%: within ±5% over 1,000 requests.
fn fault_abort_at_its_percentage() {
    let mut client = client(FAULTY);
    let mut aborted = 0;
    for _ in 0..1000 {
        let r = client.get("/abort");
        match r.status {
            503 => {
                assert_eq!(r.body, "fault filter abort", "{r:?}");
                aborted += 1;
            }
            200 => {}
            _ => panic!("{r:?}"),
        }
    }
    eprintln!("waypoint_policy: fault abort at 25%: {aborted}/1000");
    assert!((200..=300).contains(&aborted), "aborted {aborted}/1000");
}

/// VirtualService fault delay 250 ms at 25%: within ±5% over 1,000
/// requests (16 keep-alive clients). A delayed answer cannot come sooner
/// than the delay; an undelayed one would need a 250 ms stall to be
/// counted, so the count does not depend on the machine's speed.
fn fault_delay_at_its_percentage() {
    let delayed: usize = concurrently(16, |i| {
        let mut client = client(FAULTY);
        let n = if i < 8 { 63 } else { 62 };
        (0..n)
            .filter(|_| {
                let started = Instant::now();
                let r = client.get("/delay");
                assert_eq!(r.status, 200, "{r:?}");
                started.elapsed() >= Duration::from_millis(250)
            })
            .count()
    })
    .into_iter()
    .sum();
    eprintln!("waypoint_policy: fault delay at 25%: {delayed}/1000");
    assert!((200..=300).contains(&delayed), "delayed {delayed}/1000");
}

/// An h2c (gRPC) Service through the waypoint: unary calls reach both pods
/// with their trailers; a bidirectional stream answers each message before
/// the next is sent, then ends with trailers.
fn grpc_unary_and_streaming_with_trailers() {
    let to: SocketAddr = GRPC.parse().unwrap();
    let calls = grpc::unary_calls(&CLIENT, to, grpc::UNARY, "hello", 20);
    let mut pods = HashSet::new();
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call.status, 200, "{call:?}");
        assert_eq!(call.grpc_status(), Some("0"), "{call:?}");
        let pod = call.trailer("x-served-by").expect("x-served-by trailer");
        assert_eq!(
            call.messages,
            vec![format!("pod={pod} hello {i}")],
            "{call:?}"
        );
        pods.insert(pod.to_string());
    }
    assert_eq!(pods.len(), 2, "both pods served unary calls: {pods:?}");

    let call = grpc::chat(&CLIENT, to, &["one", "two", "three", "four", "five"]);
    assert_eq!(call.status, 200, "{call:?}");
    let pod = call
        .trailer("x-served-by")
        .expect("x-served-by trailer")
        .to_string();
    let expected: Vec<String> = ["one", "two", "three", "four", "five"]
        .iter()
        .map(|m| format!("{pod}:{m}"))
        .collect();
    assert_eq!(call.messages, expected, "{call:?}");
    assert_eq!(call.trailer("grpc-status"), Some("0"), "{call:?}");
    assert_eq!(call.trailer("x-messages"), Some("5"), "{call:?}");
}

/// gRPC errors: a VirtualService retry on `unavailable` turns a failed
/// call into a success (the pods saw two calls); without retries the
/// pods see one call and the client its UNAVAILABLE; the proxy's own rate
/// limit reaches a gRPC client as RESOURCE_EXHAUSTED (HTTP 200, trailers-only).
fn grpc_retry_and_proxy_errors_as_grpc_status() {
    let calls = grpc::unary_calls(&CLIENT, GRPC.parse().unwrap(), grpc::FLAKY, "retried", 3);
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call.grpc_status(), Some("0"), "retried: {call:?}");
        assert_eq!(grpc::calls_seen(grpc::FLAKY, &format!("retried {i}")), 2);
    }

    // grpc-limited: no retries, 2 tokens.
    let to: SocketAddr = GRPC_LIMITED.parse().unwrap();
    let failed = &grpc::unary_calls(&CLIENT, to, grpc::FLAKY, "once", 1)[0];
    assert_eq!(failed.grpc_status(), Some("14"), "not retried: {failed:?}");
    assert_eq!(grpc::calls_seen(grpc::FLAKY, "once 0"), 1);
    let ok = &grpc::unary_calls(&CLIENT, to, grpc::UNARY, "limited", 1)[0];
    assert_eq!(ok.grpc_status(), Some("0"), "{ok:?}");
    let limited = &grpc::unary_calls(&CLIENT, to, grpc::UNARY, "limited", 1)[0];
    assert_eq!(limited.status, 200, "{limited:?}");
    assert_eq!(
        limited.grpc_status(),
        Some("8"),
        "RESOURCE_EXHAUSTED: {limited:?}"
    );
    assert_eq!(
        limited.header("x-ratelimit-limit"),
        Some("2"),
        "{limited:?}"
    );
}

/// A VirtualService `timeout: 300ms` on a 3 s call: DEADLINE_EXCEEDED. A
/// DestinationRule `http2MaxRequests: 1`: of 4 slow calls multiplexed on
/// one connection at most 2 are served (1 active + 1 pending), the others
/// are UNAVAILABLE with `x-envoy-overloaded`.
fn grpc_timeout_and_overload_as_grpc_status() {
    let to: SocketAddr = GRPC.parse().unwrap();
    let late = &grpc::concurrent_calls(&CLIENT, to, grpc::SLOW, vec!["3000".into()])[0];
    assert_eq!(late.status, 200, "{late:?}");
    assert_eq!(late.grpc_status(), Some("4"), "DEADLINE_EXCEEDED: {late:?}");

    let to: SocketAddr = GRPC_POOL.parse().unwrap();
    let calls = grpc::concurrent_calls(&CLIENT, to, grpc::SLOW, vec!["1500".into(); 4]);
    let ok = calls
        .iter()
        .filter(|c| c.grpc_status() == Some("0"))
        .count();
    assert!((1..=2).contains(&ok), "{calls:?}");
    for call in calls.iter().filter(|c| c.grpc_status() != Some("0")) {
        assert_eq!(call.grpc_status(), Some("14"), "{call:?}");
        assert_eq!(call.header("x-envoy-overloaded"), Some("true"), "{call:?}");
    }
}

/// A Service bound to a waypoint that does not exist: the connection is
/// refused (closed unanswered), and ztunnel counts it.
fn missing_waypoint_is_refused(z1: &Ztunnel) {
    let result = client(LOST).try_send("GET", "/", &[], "");
    assert!(result.is_err(), "fail closed: {result:?}");
    let m = z1.metrics();
    assert!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("destination_service", "lost.apps.svc.cluster.local"),
                ("response_flags", "WAYPOINT_MISSING"),
            ],
        ) >= 1,
        "{m}"
    );
}
