//! Compiles the `.proto` files with protox (pure Rust), so no `protoc` binary is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/atrium/v1/snapshot.proto", "proto/atrium/v1/uplink.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Snapshot bodies are encoded once per change and shared between streams.
        .bytes(".atrium.v1.Snapshot.body")
        .compile_fds(fds)?;
    Ok(())
}
