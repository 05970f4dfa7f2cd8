//! Compiles proto/ with protox (pure Rust, no system protoc) and generates prost messages
//! and tonic client/server stubs with tonic-prost-build.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/v1/auth/ca.proto",
    "google/rpc/status.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "ringmesh/l7/v1/l7.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let descriptors = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        // BTreeMap: map fields encode in key order, so equal messages give equal bytes
        // (the controller derives resource versions from the encoded bytes).
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
