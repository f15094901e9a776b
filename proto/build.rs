//! Compiles the `.proto` files with protox (pure Rust), so no `protoc` binary is needed.
//! The gRPC client and server are generated only with the `grpc` feature, so the crates
//! that need the messages alone (the compiler) pull in no network stack.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/atrium/v1/snapshot.proto", "proto/atrium/v1/uplink.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        // Snapshot bodies are encoded once per change and shared between streams.
        .bytes(".atrium.v1.Snapshot.body")
        .compile_fds(fds)?;
    Ok(())
}
