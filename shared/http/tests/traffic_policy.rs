//! DestinationRule traffic policy end to end: a worker, real echo backends
//! on loopback, snapshots with `Cluster.policy` set by hand.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mesh_balance::{HashKey, LbAlgorithm, LbConfig, OutlierConfig, PoolLimits};
use mesh_registry::*;

fn policy_cluster(name: &str, endpoints: Vec<SocketAddr>, policy: ClusterPolicy) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: format!("default/{name}:80"),
        service: obj("default", name),
        port: 80,
        endpoints,
        protocol: Default::default(),
        policy: Arc::new(policy),
    })
}

fn start_with(c: Arc<Cluster>) -> Gateway {
    Gateway::start(
        move |port| {
            snapshot(
                port,
                vec![prefix("/", rule(vec![backend(&c, 1)], vec![]))],
                vec![],
            )
        },
        quick_options(),
    )
}

/// Sends `raw` on a kept-alive connection and reads one response.
fn send(r: &mut BufReader<TcpStream>, raw: &str) -> Response {
    r.get_mut().write_all(raw.as_bytes()).unwrap();
    read_response(r, false)
}

fn keepalive(gw: &Gateway) -> BufReader<TcpStream> {
    BufReader::new(gw.connect())
}

/// An upstream that answers every request with `status` and counts them.
fn failing_upstream(status: u16) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nx-upstream: {addr}\r\ncontent-length: 0\r\n\r\n"
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

#[test]
fn weighted_split_is_within_five_percent_over_1000_requests() {
    let (a, b) = (upstream(), upstream());
    let (ca, cb) = (cluster("a", vec![a.addr]), cluster("b", vec![b.addr]));
    let gw = Gateway::start(
        move |port| {
            let r = rule(vec![backend(&ca, 80), backend(&cb, 20)], vec![]);
            snapshot(port, vec![prefix("/", r)], vec![])
        },
        quick_options(),
    );
    let mut conn = keepalive(&gw);
    let mut to_a = 0;
    for _ in 0..1000 {
        let r = send(&mut conn, "GET /w HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        if r.header("x-upstream") == Some(a.addr.to_string()) {
            to_a += 1;
        }
    }
    assert!((750..=850).contains(&to_a), "80% expected, got {to_a}/1000");
}

#[test]
fn consistent_hash_keeps_a_key_on_one_backend() {
    let ups: Vec<Upstream> = (0..3).map(|_| upstream()).collect();
    for (algorithm, key, request) in [
        (
            LbAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
            HashKey::Header("x-user".into()),
            "GET /h HTTP/1.1\r\nHost: x\r\nx-user: {k}\r\n\r\n",
        ),
        (
            LbAlgorithm::Maglev { table_size: 65537 },
            HashKey::QueryParameter("user".into()),
            "GET /h?user={k} HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            LbAlgorithm::RingHash {
                minimum_ring_size: 64,
            },
            HashKey::Cookie {
                name: "session".into(),
                path: None,
                ttl: None,
            },
            "GET /h HTTP/1.1\r\nHost: x\r\ncookie: a=b; session={k}\r\n\r\n",
        ),
    ] {
        let c = policy_cluster(
            "hash",
            ups.iter().map(|u| u.addr).collect(),
            ClusterPolicy {
                load_balancer: Some(LbConfig {
                    algorithm,
                    hash_key: Some(key),
                }),
                ..Default::default()
            },
        );
        let gw = start_with(c);
        let mut conn = keepalive(&gw);
        let mut owners: HashMap<String, String> = HashMap::new();
        for round in 0..5 {
            for k in 0..30 {
                let r = send(&mut conn, &request.replace("{k}", &format!("user-{k}")));
                assert_eq!(r.status, 200);
                let to = r.header("x-upstream").unwrap();
                let owner = owners.entry(format!("user-{k}")).or_insert(to.clone());
                assert_eq!(*owner, to, "round {round}: user-{k} moved ({request})");
            }
        }
        let distinct: std::collections::HashSet<_> = owners.values().collect();
        assert!(
            distinct.len() >= 2,
            "30 keys all on one backend: {owners:?}"
        );
    }
}

#[test]
fn a_cookie_with_ttl_is_generated_and_then_sticks() {
    let ups: Vec<Upstream> = (0..3).map(|_| upstream()).collect();
    let c = policy_cluster(
        "cookie",
        ups.iter().map(|u| u.addr).collect(),
        ClusterPolicy {
            load_balancer: Some(LbConfig {
                algorithm: LbAlgorithm::RingHash {
                    minimum_ring_size: 1024,
                },
                hash_key: Some(HashKey::Cookie {
                    name: "sticky".into(),
                    path: Some("/".into()),
                    ttl: Some(Duration::from_secs(60)),
                }),
            }),
            ..Default::default()
        },
    );
    let gw = start_with(c);
    let mut conn = keepalive(&gw);
    for _ in 0..5 {
        let first = send(&mut conn, "GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        let set = first.header("set-cookie").expect("a generated cookie");
        assert!(set.starts_with("sticky=\""), "{set}");
        assert!(set.contains("Max-Age=60"), "{set}");
        let cookie = set.split(';').next().unwrap();
        let owner = first.header("x-upstream").unwrap();
        for _ in 0..5 {
            let r = send(
                &mut conn,
                &format!("GET /c HTTP/1.1\r\nHost: x\r\ncookie: {cookie}\r\n\r\n"),
            );
            assert_eq!(r.header("x-upstream").unwrap(), owner);
            assert!(r.header("set-cookie").is_none());
        }
    }
}

#[test]
fn an_overloaded_pool_answers_503_with_x_envoy_overloaded() {
    let up = upstream();
    let c = policy_cluster(
        "small",
        vec![up.addr],
        ClusterPolicy {
            connection_pool: Some(PoolLimits {
                max_connections: 1,
                max_pending_requests: 1,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let gw = Arc::new(start_with(c));
    // Five concurrent slow requests: one in flight, one pending, three refused.
    let threads: Vec<_> = (0..5)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || get(&gw, "/delay/600"))
        })
        .collect();
    let responses: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let overloaded: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    assert!(
        (1..=2).contains(&ok),
        "in flight + pending succeed: {responses:?}"
    );
    assert!(overloaded.len() >= 3, "{responses:?}");
    for r in overloaded {
        assert_eq!(r.header("x-envoy-overloaded").as_deref(), Some("true"));
    }
    // The breaker closes again once the load is gone.
    assert_eq!(get(&gw, "/after").status, 200);
}

#[test]
fn max_requests_per_connection_one_disables_upstream_keepalive() {
    let up = upstream();
    let c = policy_cluster(
        "once",
        vec![up.addr],
        ClusterPolicy {
            connection_pool: Some(PoolLimits {
                max_requests_per_connection: 1,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let gw = start_with(c);
    let mut conn = keepalive(&gw);
    for _ in 0..5 {
        assert_eq!(
            send(&mut conn, "GET /k HTTP/1.1\r\nHost: x\r\n\r\n").status,
            200
        );
    }
    assert_eq!(up.seen.connections.load(Ordering::SeqCst), 5);
}

#[test]
fn a_backend_returning_5xx_is_ejected_and_comes_back() {
    let good = upstream();
    let (bad, bad_count) = failing_upstream(503);
    let c = policy_cluster(
        "outlier",
        vec![good.addr, bad],
        ClusterPolicy {
            load_balancer: Some(LbConfig {
                algorithm: LbAlgorithm::RoundRobin,
                hash_key: None,
            }),
            outlier_detection: Some(OutlierConfig {
                consecutive_5xx: Some(3),
                base_ejection_time: Duration::from_millis(1500),
                max_ejection_percent: 100,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let gw = start_with(c);
    let mut conn = keepalive(&gw);
    let mut failures = 0;
    for _ in 0..6 {
        if send(&mut conn, "GET /o HTTP/1.1\r\nHost: x\r\n\r\n").status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "three 5xx eject the bad endpoint");
    let ejected_at = bad_count.load(Ordering::SeqCst);
    for _ in 0..20 {
        let r = send(&mut conn, "GET /o HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "ejected endpoint got traffic");
        assert_eq!(r.header("x-upstream"), Some(good.addr.to_string()));
    }
    assert_eq!(bad_count.load(Ordering::SeqCst), ejected_at);
    // After baseEjectionTime it takes traffic again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(&mut conn, "GET /o HTTP/1.1\r\nHost: x\r\n\r\n");
        if r.status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ejected endpoint never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(bad_count.load(Ordering::SeqCst) > ejected_at);
}

#[test]
fn connect_failures_eject_an_endpoint() {
    let good = upstream();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let c = policy_cluster(
        "dead",
        vec![good.addr, dead],
        ClusterPolicy {
            load_balancer: Some(LbConfig {
                algorithm: LbAlgorithm::RoundRobin,
                hash_key: None,
            }),
            outlier_detection: Some(OutlierConfig {
                consecutive_5xx: None,
                consecutive_gateway_errors: Some(2),
                max_ejection_percent: 100,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let gw = start_with(c);
    let mut conn = keepalive(&gw);
    let mut errors = 0;
    for _ in 0..24 {
        let r = send(&mut conn, "GET /d HTTP/1.1\r\nHost: x\r\n\r\n");
        if r.status != 200 {
            assert_eq!(r.status, 502);
            errors += 1;
        }
    }
    assert_eq!(
        errors, 2,
        "two connect failures, then the endpoint is ejected"
    );
}

#[test]
fn responses_carry_upstream_service_time() {
    let up = upstream();
    let gw = start_with(cluster("t", vec![up.addr]));
    let r = get(&gw, "/delay/120");
    assert_eq!(r.status, 200);
    let ms: u64 = r
        .header("x-envoy-upstream-service-time")
        .expect("service time header")
        .parse()
        .unwrap();
    assert!(ms >= 120, "{ms}");
}

fn limited_rule(c: &Arc<Cluster>, key: mesh_limits::LimitKey, max: u32) -> RouteRule {
    let mut r = rule(vec![backend(c, 1)], vec![]);
    r.rate_limit = Some(Arc::new(mesh_limits::RateLimiter::new(
        mesh_limits::RateLimitConfig {
            bucket: mesh_limits::TokenBucketConfig {
                max_tokens: max,
                tokens_per_fill: max,
                fill_interval: Duration::from_secs(60),
            },
            key,
            source: "default/limit".into(),
        },
    )));
    r
}

#[test]
fn rate_limit_answers_429_with_headers_once_the_bucket_is_empty() {
    let up = upstream();
    let c = cluster("limited", vec![up.addr]);
    let gw = Gateway::start(
        move |port| {
            let keyed = limited_rule(&c, mesh_limits::LimitKey::Header("x-user".into()), 2);
            let global = limited_rule(&c, mesh_limits::LimitKey::None, 3);
            snapshot(
                port,
                vec![prefix("/keyed", keyed), prefix("/", global)],
                vec![],
            )
        },
        quick_options(),
    );
    let mut conn = keepalive(&gw);
    for i in 0..3 {
        let r = send(&mut conn, "GET /g HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "request {i}");
    }
    let r = send(&mut conn, "GET /g HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    // The connection stays usable and other keys have their own buckets.
    let keyed = |user: &str| format!("GET /keyed HTTP/1.1\r\nHost: x\r\nx-user: {user}\r\n\r\n");
    assert_eq!(send(&mut conn, &keyed("a")).status, 200);
    assert_eq!(send(&mut conn, &keyed("a")).status, 200);
    assert_eq!(send(&mut conn, &keyed("a")).status, 429);
    assert_eq!(send(&mut conn, &keyed("b")).status, 200);
    // Limited requests never reached the backend: 3 + 3.
    assert_eq!(up.seen.heads.lock().unwrap().len(), 6);
}
