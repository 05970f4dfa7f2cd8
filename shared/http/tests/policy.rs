//! Filters, retries, backend choice, drain and metrics, end to end.

mod common;

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mesh_registry::*;
use mesh_runtime::MetricsSource;

fn start(entries: impl FnOnce() -> Vec<RouteEntry> + Send + 'static) -> Gateway {
    Gateway::start(
        move |port| snapshot(port, entries(), vec![]),
        quick_options(),
    )
}

fn modifier(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderModifier {
    HeaderModifier {
        set: set
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        add: add
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        remove: remove.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn request_and_response_header_modifiers() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = start(move || {
        let mut b = backend(&c, 1);
        b.filters = vec![Filter::RequestHeaders(modifier(
            &[("X-Backend", "b")],
            &[],
            &[],
        ))];
        let mut r = rule(
            vec![b],
            vec![
                Filter::RequestHeaders(modifier(
                    &[("X-Header-Set", "set-overwrites-values")],
                    &[("X-Header-Add-Append", "header-val-2")],
                    &["x-header-remove"],
                )),
                Filter::ResponseHeaders(modifier(
                    &[("X-Resp-Set", "s")],
                    &[("X-Resp-Add", "a")],
                    &["x-upstream"],
                )),
            ],
        );
        r.rule_index = 1;
        vec![prefix("/", r)]
    });
    let r = request(
        &gw,
        "GET /m HTTP/1.1\r\nHost: a\r\nx-header-set: old\r\nX-Header-Add-Append: append-val-1\r\nX-Header-Remove: gone\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = r.text();
    assert_eq!(
        header_values(&seen, "x-header-set"),
        vec!["set-overwrites-values"]
    );
    assert_eq!(
        header_values(&seen, "x-header-add-append").join(","),
        "append-val-1,header-val-2"
    );
    assert!(header_value(&seen, "x-header-remove").is_none());
    assert_eq!(header_value(&seen, "x-backend").as_deref(), Some("b"));
    assert_eq!(r.header("x-resp-set").as_deref(), Some("s"));
    assert_eq!(r.header("x-resp-add").as_deref(), Some("a"));
    assert!(r.header("x-upstream").is_none());
}

#[test]
fn redirects() {
    let gw = Gateway::start(
        |port| {
            let redirect =
                |scheme: Option<&str>, host: Option<&str>, port: Option<u16>, path, status| {
                    rule(
                        vec![],
                        vec![Filter::Redirect(Redirect {
                            scheme: scheme.map(Into::into),
                            hostname: host.map(Into::into),
                            path,
                            port,
                            status,
                        })],
                    )
                };
            snapshot(
                port,
                vec![
                    prefix(
                        "/original-prefix",
                        redirect(
                            None,
                            None,
                            None,
                            Some(PathModifier::ReplacePrefixMatch(
                                "/replacement-prefix".into(),
                            )),
                            302,
                        ),
                    ),
                    prefix(
                        "/https",
                        redirect(Some("https"), Some("example.org"), None, None, 301),
                    ),
                    prefix("/port", redirect(None, None, Some(8083), None, 302)),
                    prefix(
                        "/full",
                        redirect(
                            None,
                            None,
                            None,
                            Some(PathModifier::ReplaceFullPath("/replaced".into())),
                            302,
                        ),
                    ),
                ],
                vec![],
            )
        },
        quick_options(),
    );
    let port = gw.addr.port();
    let r = get(&gw, "/original-prefix/lemon?x=1");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!(
            "http://example.com:{port}/replacement-prefix/lemon?x=1"
        ))
    );
    let r = get(&gw, "/https/a");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.org/https/a")
    );
    let r = get(&gw, "/port");
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://example.com:8083/port")
    );
    let r = get(&gw, "/full/x/y");
    assert_eq!(
        r.header("location"),
        Some(format!("http://example.com:{port}/replaced"))
    );
}

#[test]
fn url_rewrite_host_and_path() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = start(move || {
        vec![
            prefix(
                "/strip-prefix",
                rule(
                    vec![backend(&c, 1)],
                    vec![Filter::UrlRewrite(UrlRewrite {
                        hostname: Some("rewritten.example".into()),
                        path: Some(PathModifier::ReplacePrefixMatch("/".into())),
                    })],
                ),
            ),
            prefix(
                "/full",
                rule(
                    vec![backend(&c, 1)],
                    vec![Filter::UrlRewrite(UrlRewrite {
                        hostname: None,
                        path: Some(PathModifier::ReplaceFullPath("/one".into())),
                    })],
                ),
            ),
        ]
    });
    let seen = get(&gw, "/strip-prefix/three?q=1").text();
    assert!(seen.starts_with("GET /three?q=1 HTTP/1.1"), "{seen}");
    assert_eq!(
        header_value(&seen, "host").as_deref(),
        Some("rewritten.example")
    );
    assert!(get(&gw, "/strip-prefix")
        .text()
        .starts_with("GET / HTTP/1.1"));
    assert!(get(&gw, "/full/a/b")
        .text()
        .starts_with("GET /one HTTP/1.1"));
}

#[test]
fn cors_preflight_is_answered_and_simple_requests_get_headers() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = start(move || {
        let policy = CorsPolicy {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_credentials: true,
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into()],
            expose_headers: vec!["x-header-3".into()],
            max_age_seconds: Some(3600),
        };
        vec![prefix(
            "/cors",
            rule(vec![backend(&c, 1)], vec![Filter::Cors(Arc::new(policy))]),
        )]
    });
    let r = request(
        &gw,
        "OPTIONS /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://xpto.www.bar.com\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "answered by the gateway");
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://xpto.www.bar.com")
    );
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("GET, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(r.header("access-control-max-age").as_deref(), Some("3600"));
    assert!(up.seen.heads.lock().unwrap().is_empty());

    let r = request(
        &gw,
        "OPTIONS /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://foobar.com\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    );
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(up.seen.heads.lock().unwrap().is_empty());

    let r = request(
        &gw,
        "GET /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://www.foo.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://www.foo.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers").as_deref(),
        Some("x-header-3")
    );
    let r = request(
        &gw,
        "GET /cors HTTP/1.1\r\nHost: a\r\nOrigin: https://foobar.com\r\nConnection: close\r\n\r\n",
    );
    assert!(r.header("access-control-allow-origin").is_none());
}

#[test]
fn mirror_gets_a_copy_and_the_main_request_is_unaffected() {
    let up = upstream();
    let mirror_up = upstream();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = cluster("echo", vec![up.addr]);
    let m = cluster("mirror", vec![mirror_up.addr]);
    let broken = cluster("broken", vec![dead]);
    let gw = start(move || {
        vec![
            prefix(
                "/mirror",
                rule(
                    vec![backend(&c, 1)],
                    vec![
                        Filter::RequestHeaders(modifier(&[("X-Set", "1")], &[], &[])),
                        Filter::Mirror(Mirror {
                            target: m,
                            percent: 100.0,
                        }),
                    ],
                ),
            ),
            prefix(
                "/broken-mirror",
                rule(
                    vec![backend(&c, 1)],
                    vec![Filter::Mirror(Mirror {
                        target: broken,
                        percent: 100.0,
                    })],
                ),
            ),
        ]
    });
    let r = request(&gw, "POST /mirror?id=7 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
    assert_eq!(r.status, 200);
    assert_eq!(header_value(&r.text(), "x-set").as_deref(), Some("1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(h) = mirror_up.seen.heads.lock().unwrap().first() {
            assert!(h.starts_with("POST /mirror?id=7 HTTP/1.1"), "{h}");
            assert_eq!(header_value(h, "x-set").as_deref(), Some("1"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirror never received the request"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The head is recorded before the body has been read, so wait for the body too.
    while mirror_up.seen.body_bytes.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(mirror_up.seen.body_bytes.load(Ordering::SeqCst), 3);
    assert_eq!(get(&gw, "/broken-mirror").status, 200);
}

fn retry_rule(c: &Arc<Cluster>, codes: Vec<u16>, attempts: u32) -> RouteRule {
    let mut r = rule(vec![backend(c, 1)], vec![]);
    r.retry = Some(RetryPolicy {
        codes,
        attempts,
        backoff: Some(Duration::from_millis(1)),
        on_connect_failure: true,
        on_reset: true,
        grpc_codes: Vec::new(),
    });
    r
}

#[test]
fn retries_on_codes_and_connection_errors() {
    let up = upstream();
    let other = upstream();
    let c = cluster("echo", vec![up.addr]);
    let o = cluster("other", vec![other.addr]);
    let gw = start(move || {
        vec![
            prefix("/flaky", retry_rule(&c, vec![500, 502], 2)),
            prefix("/noretry/flaky", rule(vec![backend(&o, 1)], vec![])),
        ]
    });
    // Two failures, two retries allowed: success on the third try.
    assert_eq!(get(&gw, "/flaky?key=a&fail=2&code=500").status, 200);
    // Three failures: exhausted, the last upstream status is returned.
    assert_eq!(get(&gw, "/flaky?key=b&fail=3&code=502").status, 502);
    // Not a listed code: no retry.
    assert_eq!(get(&gw, "/flaky?key=c&fail=1&code=503").status, 503);
    assert_eq!(up.seen.counts.lock().unwrap()["c"], 1);
    // Resets before a response are retried too.
    assert_eq!(get(&gw, "/flaky?key=d&fail=2&code=0").status, 200);
    let r = get(&gw, "/flaky?key=e&fail=5&code=0");
    assert!(r.status == 503 || r.status == 502, "{}", r.status);
    assert_eq!(up.seen.counts.lock().unwrap()["e"], 3);
    // A body small enough to buffer is replayed on each try.
    let r = request(
        &gw,
        "POST /flaky?key=f&fail=1&code=500 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-body-len").as_deref(), Some("4"));
    // Without a retry policy: the failure is passed through.
    // (A fresh upstream, so the reset cannot be mistaken for a stale pooled connection.)
    assert_eq!(get(&gw, "/noretry/flaky?key=g&fail=1&code=0").status, 502);
}

#[test]
fn per_try_timeouts_are_retried_within_the_request_timeout() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = start(move || {
        let mut r = retry_rule(&c, vec![], 2);
        r.timeouts.backend_request = Some(Duration::from_millis(200));
        let mut capped = retry_rule(&c, vec![500], 10);
        capped.timeouts.request = Some(Duration::from_millis(300));
        vec![prefix("/delay", r), prefix("/flaky", capped)]
    });
    assert_eq!(get(&gw, "/delay/500").status, 504);
    assert_eq!(get(&gw, "/delay/10").status, 200);
    // Retries that cannot finish before the overall timeout end in 504.
    assert_eq!(
        get(&gw, "/flaky?key=t&fail=100&code=500&delay=100").status,
        504
    );
}

#[test]
fn weights_and_round_robin() {
    let a = upstream();
    let b = upstream();
    let never = upstream();
    let ab = cluster("ab", vec![a.addr, b.addr]);
    let n = cluster("never", vec![never.addr]);
    let gw = start(move || {
        vec![prefix(
            "/",
            rule(vec![backend(&ab, 1), backend(&n, 0)], vec![]),
        )]
    });
    let s = gw.connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..20 {
        (&s).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut r, false).status, 200);
    }
    assert_eq!(
        never.seen.heads.lock().unwrap().len(),
        0,
        "weight 0 is never picked"
    );
    assert_eq!(a.seen.heads.lock().unwrap().len(), 10);
    assert_eq!(b.seen.heads.lock().unwrap().len(), 10);
}

#[test]
fn host_routing_and_absolute_form() {
    let a = upstream();
    let b = upstream();
    let ca = cluster("a", vec![a.addr]);
    let cb = cluster("b", vec![b.addr]);
    let gw = Gateway::start(
        move |port| {
            snapshot(
                port,
                vec![prefix("/", rule(vec![backend(&ca, 1)], vec![]))],
                vec![(
                    "special.example",
                    vec![prefix("/", rule(vec![backend(&cb, 1)], vec![]))],
                )],
            )
        },
        quick_options(),
    );
    get(&gw, "/x");
    request(
        &gw,
        "GET /y HTTP/1.1\r\nHost: Special.Example:99\r\nConnection: close\r\n\r\n",
    );
    let r = request(
        &gw,
        "GET http://special.example/z?q HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("GET /z?q HTTP/1.1"));
    assert_eq!(
        header_value(&r.text(), "host").as_deref(),
        Some("special.example")
    );
    assert_eq!(a.seen.heads.lock().unwrap().len(), 1);
    assert_eq!(b.seen.heads.lock().unwrap().len(), 2);
}

#[test]
fn drain_closes_keep_alive_connections() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = start(move || vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))]);
    let idle = gw.connect();
    let mut idle_r = BufReader::new(idle.try_clone().unwrap());
    (&idle)
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle_r, false).status, 200);
    let busy = gw.connect();
    let mut busy_r = BufReader::new(busy.try_clone().unwrap());
    (&busy)
        .write_all(b"GET /delay/300 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    gw.drain.start();
    let resp = read_response(&mut busy_r, false);
    assert_eq!(resp.status, 200, "in-flight request finishes");
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert!(closed_after(&mut busy_r));
    assert!(
        closed_after(&mut idle_r),
        "idle keep-alive connection closed on drain"
    );
}

#[test]
fn metrics_count_requests_and_connections() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = start(move || vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))]);
    get(&gw, "/a");
    get(&gw, "/status/503");
    let metrics = mesh_http::HttpMetrics {
        workers: vec![gw.metrics.clone()],
    };
    // The request is recorded right after its response was written: poll.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = String::new();
    while !out.contains("response_code=\"503\"") && Instant::now() < deadline {
        out.clear();
        metrics.render(&mut out);
    }
    assert!(out.contains("istio_requests_total{response_code=\"200\",source_workload=\"unknown\",destination_service=\"echo.default.svc.cluster.local\",destination_service_name=\"echo\",destination_service_namespace=\"default\",reporter=\"source\",request_protocol=\"http\"} 1"), "{out}");
    assert!(out.contains("response_code=\"503\""));
    assert!(out.contains("istio_request_duration_milliseconds_count{response_code=\"200\""));
    assert_eq!(gw.metrics.connections_opened.load(Ordering::Relaxed), 2);
}

#[test]
fn scheme_of_the_stream_sets_forwarded_proto_and_redirect_default() {
    let up = upstream();
    let c = cluster("echo", vec![up.addr]);
    let gw = Gateway::start_with_scheme(
        move |port| {
            let to_host = rule(
                vec![],
                vec![Filter::Redirect(Redirect {
                    scheme: None,
                    hostname: Some("example.org".into()),
                    path: None,
                    port: Some(443),
                    status: 302,
                })],
            );
            snapshot(
                port,
                vec![
                    prefix("/redirect", to_host),
                    prefix("/", rule(vec![backend(&c, 1)], vec![])),
                ],
                vec![],
            )
        },
        quick_options(),
        Some("https"),
    );
    let seen = get(&gw, "/x").text();
    assert_eq!(
        header_value(&seen, "x-forwarded-proto").as_deref(),
        Some("https")
    );
    let r = get(&gw, "/redirect/y");
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.org/redirect/y")
    );
}
