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
