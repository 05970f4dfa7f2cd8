//! `bench controller-scale`: the generated cluster is what it claims (counts, unique IPs,
//! every endpoint a pod, byte-for-byte deterministic), and a small end-to-end run against
//! the real `controller` binary measures what it should (no timing is asserted).

use mesh_registry::workloads::WorkloadRegistry;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bench"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringmesh-bench-controller-scale-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn generate(dir: &Path, services: usize) -> serde_json::Value {
    let output = Command::new(bench())
        .args(["controller-scale", "--generate-only"])
        .arg(dir)
        .args(["--sizes", &services.to_string()])
        .output()
        .expect("run bench controller-scale --generate-only");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("counts as JSON")
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn generated_cluster_has_the_counts_it_reports_and_is_deterministic() {
    let (a, b) = (scratch("gen-a"), scratch("gen-b"));
    let counts = generate(&a, 250);
    assert_eq!(
        counts,
        serde_json::json!({"services": 250, "pods": 2500, "endpoint_slices": 250, "files": 3})
    );
    generate(&b, 250);
    assert_eq!(files_of(&a), files_of(&b), "same size, same bytes");

    let loaded = mesh_config::load_path(&a).expect("the generated folder loads");
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let resources = &loaded.resources;
    assert_eq!(
        (
            resources.services.len(),
            resources.pods.len(),
            resources.endpoint_slices.len()
        ),
        (250, 2500, 250)
    );
    let registry = WorkloadRegistry::build(resources, "cluster.local");
    assert_eq!(registry.workloads.len(), 2500, "pod IPs are unique");
    assert_eq!(registry.services.len(), 250, "cluster IPs are unique");
    for service in registry.services.values() {
        assert_eq!(service.endpoints.len(), 10, "{}", service.name);
        for endpoint in &service.endpoints {
            assert_eq!(endpoint.port(), 8080);
            assert!(
                registry.workload(endpoint.ip()).is_some(),
                "{endpoint} is a pod"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// `target/<profile>/controller`, built (or found up to date) by cargo: cargo only builds
/// binaries of the package under test.
fn controller_binary() -> PathBuf {
    let dir = bench()
        .parent()
        .expect("bench binary has a folder")
        .to_path_buf();
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "ringmesh-controller"]);
    if profile == "release" {
        command.arg("--release");
    } else if profile != "debug" {
        command.args(["--profile", &profile]);
    }
    assert!(command.status().expect("run cargo build").success());
    dir.join("controller")
}

#[test]
fn small_run_measures_the_edit_as_one_resource_on_every_subscriber() {
    let out = scratch("run");
    let output = Command::new(bench())
        .args(["controller-scale", "--sizes", "200", "--subscribers", "3"])
        .arg("--controller-bin")
        .arg(controller_binary())
        .arg("--out-dir")
        .arg(&out)
        .args(["--timeout-secs", "60"])
        .output()
        .expect("run bench controller-scale");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("controller-scale.json")).unwrap()).unwrap();
    let result = &report["results"][0];
    assert_eq!(result["generated"]["pods"], 2000);
    assert_eq!(result["probe"]["addresses"], 2200, "{result:#}");
    assert_eq!(result["probe"]["workloads"], 2000);
    assert_eq!(result["subscribers"], 3);
    // The edit adds one pod: one Workload reaches each subscriber, nothing else.
    assert_eq!(result["edit_resources_per_subscriber_max"], 1, "{result:#}");
    let edit_bytes = result["edit_bytes_per_subscriber_max"].as_u64().unwrap();
    assert!(edit_bytes > 0 && edit_bytes < 2000, "{result:#}");
    assert_eq!(
        result["edit_bytes_per_subscriber_min"], result["edit_bytes_per_subscriber_max"],
        "every subscriber got the same push"
    );
    assert!(result["initial_load_ms"].as_f64().unwrap() > 0.0);
    assert!(result["controller_rss_after_load_kb"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_dir_all(&out);
}
