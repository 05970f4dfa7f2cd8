//! Runs `bench conformance` on the Gateway API vectors against the real `gateway` binary.
//! Skips (and says why) when the vectors folder is absent.

use std::path::{Path, PathBuf};
use std::process::Command;

fn vectors_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/gateway-api"
    ))
}

/// `target/<profile>/gateway` next to the bench binary, built on demand: cargo only builds
/// binaries of the package under test.
fn gateway_binary(bench: &Path) -> PathBuf {
    let dir = bench.parent().expect("bench binary has a folder");
    let gateway = dir.join("gateway");
    if !gateway.exists() {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-p", "ringmesh-gateway"]);
        if profile == "release" {
            command.arg("--release");
        } else if profile != "debug" {
            command.args(["--profile", &profile]);
        }
        let status = command
            .status()
            .expect("run cargo build -p ringmesh-gateway");
        assert!(status.success(), "cargo build -p ringmesh-gateway failed");
    }
    assert!(
        gateway.exists(),
        "{} missing after build",
        gateway.display()
    );
    gateway
}

#[test]
fn gateway_api_conformance_vectors_pass() {
    let dir = vectors_dir();
    if !dir.join("_environment.yaml").exists() {
        println!(
            "skipping: conformance vectors not found at {}",
            dir.display()
        );
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let gateway = gateway_binary(&bench);
    let output = Command::new(&bench)
        .arg("conformance")
        .arg(&dir)
        .arg("--gateway-bin")
        .arg(&gateway)
        .args(["--min-pass-rate", "0.9"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run bench conformance");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("");
    assert!(
        !summary.is_empty(),
        "no summary line from bench conformance"
    );
    assert!(
        output.status.success(),
        "bench conformance below the 90% pass rate: {summary}"
    );
}

/// The runner must be able to fail: a copy of the vectors with one expectation made
/// wrong reports that case with its reason, and the pass-rate gate exits non-zero.
#[test]
fn runner_reports_a_wrong_expectation() {
    let dir = vectors_dir();
    if !dir.join("_environment.yaml").exists() {
        println!(
            "skipping: conformance vectors not found at {}",
            dir.display()
        );
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let gateway = gateway_binary(&bench);
    let copy =
        std::env::temp_dir().join(format!("ringmesh-mutated-vectors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        dir.join("_environment.yaml"),
        copy.join("_environment.yaml"),
    )
    .unwrap();
    let original = std::fs::read_to_string(dir.join("httproute-matching.yaml")).unwrap();
    // Case 0 (path /) really goes to infra-backend-v1; claim v2 instead.
    let mutated = original.replacen(
        "    backend: infra-backend-v1\n",
        "    backend: infra-backend-v2\n",
        1,
    );
    assert_ne!(mutated, original, "vector file changed shape");
    std::fs::write(copy.join("httproute-matching.yaml"), mutated).unwrap();
    let output = Command::new(&bench)
        .arg("conformance")
        .arg(&copy)
        .arg("--gateway-bin")
        .arg(&gateway)
        .args(["--min-pass-rate", "1.0", "--case-timeout", "1s"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run bench conformance");
    let _ = std::fs::remove_dir_all(&copy);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(!output.status.success(), "a failed case must fail the run");
    assert!(stdout.contains("FAIL HTTPRouteMatching 8/9"), "{stdout}");
    assert!(
        stdout.contains(
            "case 0 [GET /]: expected backend infra-backend-v2, got pod infra-backend-v1-"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("8 passed, 1 failed"), "{stdout}");
}
