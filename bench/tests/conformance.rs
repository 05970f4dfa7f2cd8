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
