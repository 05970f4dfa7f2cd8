//! `bench compare waypoint-latency` end to end at the lowest settings (one
//! round of 1 s per path and mode), then the JSON shape and `--plot-only`.
//! The ztunnel and waypoint binaries belong to other packages: the run is
//! skipped (with a message) unless they sit next to `bench` (cargo build -p
//! ringmesh-ztunnel -p ringmesh-waypoint), and where unshare, iptables or
//! nginx are missing or user namespaces are not permitted. Nothing here
//! asserts on timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

fn compare(args: &[&str], out_dir: &Path) -> Output {
    Command::new(BENCH)
        .args(["compare", "waypoint-latency", "--no-install"])
        .args(args)
        .arg("--out-dir")
        .arg(out_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn out_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ringmesh-wl-test-{tag}-{}", std::process::id()))
}

#[test]
fn a_rate_that_is_not_positive_is_refused_before_anything_starts() {
    let dir = out_dir("bad");
    for qps in ["0", "-5", "NaN"] {
        let out = compare(&[&format!("--qps={qps}")], &dir);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("--qps must be a positive rate"),
            "{}",
            text(&out)
        );
    }
    let out = compare(&["--rounds", "0"], &dir);
    assert!(
        text(&out).contains("--rounds must be at least 1"),
        "{}",
        text(&out)
    );
    let out = compare(&["--proxy-cpu", "4096"], &dir);
    assert!(
        text(&out).contains("pick --proxy-cpu and --load-cpu below"),
        "{}",
        text(&out)
    );
    assert!(!dir.join("waypoint-latency.json").exists());
}

#[test]
fn four_paths_measured_and_the_waypoint_counted_its_requests() {
    let bin_dir = Path::new(BENCH).parent().unwrap();
    let missing: Vec<&str> = ["unshare", "nsenter", "ip", "iptables", "taskset", "nginx"]
        .into_iter()
        .filter(|p| !installed(p))
        .chain(
            ["ztunnel", "waypoint"]
                .into_iter()
                .filter(|b| !bin_dir.join(b).is_file()),
        )
        .collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED waypoint-latency run: missing {missing:?}");
        return;
    }
    let user_namespaces = Command::new("unshare")
        .args(["-Urn", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !user_namespaces {
        eprintln!(
            "SKIPPED waypoint-latency run: user namespaces (unshare -Urn) not permitted here"
        );
        return;
    }
    let dir = out_dir("run");
    let out = compare(
        &[
            "--rounds",
            "1",
            "--duration",
            "1s",
            "--connections",
            "2",
            "--qps",
            "50",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("waypoint-latency.json")).unwrap())
            .unwrap();
    assert_eq!(json["scenario"], "waypoint-latency");
    assert_eq!(json["settings"]["open_loop_qps"], 50.0);
    assert_eq!(json["settings"]["baseline"], "ztunnel");
    assert_eq!(json["skipped"].as_array().unwrap().len(), 0, "{json}");
    let rows: Vec<(String, String)> = json["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["errors"], 0, "{s}");
            (
                s["contender"].as_str().unwrap().to_string(),
                s["tool"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = vec![];
    for tool in ["open-loop", "max-rate"] {
        for c in ["direct", "ztunnel", "waypoint", "nginx"] {
            want.push((c.to_string(), tool.to_string()));
        }
    }
    assert_eq!(rows, want);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    let mut through_waypoint = 0;
    for r in runs {
        assert_eq!(r["round"], 1);
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        // Only `direct` has no proxy to charge.
        assert_eq!(
            r["proxy_cpu_seconds"].is_null(),
            r["contender"] == "direct",
            "{r}"
        );
        if r["contender"] == "waypoint" {
            through_waypoint += r["requests"].as_u64().unwrap();
        }
    }
    let counted = json["settings"]["waypoint_requests_counted"]
        .as_u64()
        .unwrap();
    assert!(
        counted >= through_waypoint,
        "{counted} < {through_waypoint}"
    );
    assert!(
        json["settings"]["ztunnel_node2_connections_counted"]
            .as_u64()
            .unwrap()
            > 0
    );
    let hops: Vec<(&str, &str)> = json["hop_costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["hop"].as_str().unwrap(), h["over"].as_str().unwrap()))
        .collect();
    assert_eq!(
        hops,
        [
            ("ztunnel", "direct"),
            ("waypoint", "ztunnel"),
            ("nginx", "direct")
        ]
    );

    // The plot is redrawn from the JSON alone.
    let svg = dir.join("waypoint-latency.svg");
    std::fs::remove_file(&svg).unwrap();
    let out = compare(&["--plot-only"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("waypoint-latency"),
        "{svg}"
    );
    assert_eq!(svg.matches(r#"class="rps""#).count(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
