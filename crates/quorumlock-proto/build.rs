//! Compiles `proto/` with protox (pure Rust), so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "quorumlock/v1/lock.proto",
        "raft/v1/raft.proto",
        "paxos/v1/paxos.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("quorumlock_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    for file in files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    Ok(())
}
