//! `bench compare gateway-https` / `gateway-h2` end to end with the third-party
//! contenders only (nginx, HAProxy; the gateway binary belongs to another
//! package): one short round, then the JSON shape. Skipped when nginx (or
//! h2load for gateway-h2) is not installed. Nothing here asserts on timing.

use std::path::Path;
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

fn run_compare(scenario: &str, extra: &[&str]) -> serde_json::Value {
    let out_dir = std::env::temp_dir().join(format!(
        "ringmesh-compare-test-{scenario}-{}",
        std::process::id()
    ));
    let out = Command::new(BENCH)
        .args(["compare", scenario, "--rounds", "1", "--duration", "1s"])
        .args(["--connections", "4", "--no-install"])
        .args(extra)
        .arg("--out-dir")
        .arg(&out_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join(format!("{scenario}.json"))).unwrap(),
    )
    .unwrap();
    let svg = std::fs::read_to_string(out_dir.join(format!("{scenario}.svg"))).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(scenario), "{svg}");
    let _ = std::fs::remove_dir_all(&out_dir);
    json
}

#[test]
fn gateway_https_runs_both_variants_against_nginx() {
    if !installed("nginx") || !installed("taskset") {
        eprintln!("skipping: nginx or taskset not installed");
        return;
    }
    let json = run_compare("gateway-https", &["--contenders", "nginx"]);
    assert_eq!(json["scenario"], "gateway-https");
    assert_eq!(
        json["settings"]["tls"]["server_name"],
        "bench.ringmesh.test"
    );
    let summary = json["summary"].as_array().unwrap();
    let tools: Vec<&str> = summary
        .iter()
        .map(|s| s["tool"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["keep-alive", "new-conn"], "{json}");
    for s in summary {
        assert_eq!(s["contender"], "nginx");
        assert_eq!(s["errors"], 0, "{s}");
        assert!(s["rps"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["rps_vs_baseline"], 1.0);
    }
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
}

#[test]
fn gateway_h2_runs_h2load_and_bench_load() {
    if !installed("nginx") || !installed("h2load") || !installed("taskset") {
        eprintln!("skipping: nginx, h2load or taskset not installed");
        return;
    }
    let json = run_compare(
        "gateway-h2",
        &["--contenders", "nginx", "--tool", "both", "--streams", "4"],
    );
    assert_eq!(json["settings"]["streams"], 4);
    let summary = json["summary"].as_array().unwrap();
    let tools: Vec<&str> = summary
        .iter()
        .map(|s| s["tool"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["h2load", "bench-h2"], "{json}");
    for s in summary {
        assert_eq!(s["errors"], 0, "{s}");
        assert!(s["rps"].as_f64().unwrap() > 0.0, "{s}");
    }
}

/// `bench compare loadgen` over HTTPS (wrk) and HTTP/2 (h2load): one short
/// round each against the nginx TLS target, then the JSON shape. The bars
/// (ratio, pacing) are timing: reported, not asserted here.
#[test]
fn loadgen_checks_https_against_wrk_and_h2_against_h2load() {
    if !["nginx", "wrk", "h2load", "taskset"]
        .iter()
        .all(|p| installed(p))
    {
        eprintln!("skipping: nginx, wrk, h2load or taskset not installed");
        return;
    }
    let out_dir =
        std::env::temp_dir().join(format!("ringmesh-loadgen-test-{}", std::process::id()));
    let out = Command::new(BENCH)
        .args(["compare", "loadgen", "--modes", "https,h2", "--rounds", "1"])
        .args(["--duration", "1s", "--connections", "2", "--streams", "2"])
        .arg("--no-install")
        .arg("--out-dir")
        .arg(&out_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("| https -c2 | wrk |"), "{text}");
    assert!(text.contains("| h2 -c2 -m2 | h2load |"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("loadgen.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenario"], "loadgen");
    let checks = json["checks"].as_array().unwrap();
    let pairs: Vec<(&str, &str, &str)> = checks
        .iter()
        .map(|c| {
            (
                c["mode"].as_str().unwrap(),
                c["reference_tool"].as_str().unwrap(),
                c["bench_tool"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("https", "wrk", "bench-https"),
            ("h2", "h2load", "bench-h2")
        ]
    );
    for c in checks {
        let runs = c["runs"].as_array().unwrap();
        let tools: Vec<&str> = runs.iter().map(|r| r["tool"].as_str().unwrap()).collect();
        assert_eq!(
            tools,
            [
                c["reference_tool"].as_str().unwrap(),
                c["bench_tool"].as_str().unwrap()
            ]
        );
        for r in runs {
            assert_eq!(r["errors"], 0, "{r}");
            assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        }
        assert_eq!(c["open_loop_errors"], 0, "{c}");
        let requested = c["open_loop_requested_qps"].as_f64().unwrap();
        assert!(requested >= 100.0 && requested % 100.0 == 0.0, "{c}");
        assert!(c["open_loop_actual_qps"].as_f64().unwrap() > 0.0, "{c}");
        assert!(
            c["max_rate_ok"].is_boolean() && c["open_loop_ok"].is_boolean(),
            "{c}"
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn loadgen_refuses_unknown_modes_and_zero_streams() {
    let run = |args: &[&str]| {
        let out = Command::new(BENCH)
            .args(["compare", "loadgen", "--no-install"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--modes", "http,ftp"]);
    assert!(err.contains("invalid value 'ftp'"), "{err}");
    let err = run(&["--modes", "h2", "--streams", "0"]);
    assert!(err.contains("--streams must be at least 1"), "{err}");
}
