//! Compiles `proto/user.proto` for the example programs, as a user's own build script would.

fn main() -> std::io::Result<()> {
    let proto = "../proto/user.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &["../proto"])
}
