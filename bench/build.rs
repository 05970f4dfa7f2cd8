//! Compiles proto/grpcecho.proto (the conformance gRPC echo service) with protox
//! (pure Rust, no system protoc) into prost messages; the client and the echo
//! backend frame gRPC themselves (tonic's generic client, h2 server), so no stubs.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile([root.join("grpcecho.proto")], [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
