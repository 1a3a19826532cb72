//! Compiles proto/ with protox (pure Rust), so building needs no system protoc.
//! Also compiles etcd's v3 API (benches/engines/proto) into client stubs for
//! the `engines` benchmark, which compares quorumlock with etcd; the library
//! does not include them.

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
    let etcd_files = ["rpc.proto", "v3lock.proto"];
    let etcd_descriptors = protox::compile(etcd_files, ["benches/engines/proto"])?;
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(etcd_descriptors)?;
    println!("cargo:rerun-if-changed=benches/engines/proto");
    Ok(())
}
