//! Compiles the vendored CRI protocol (proto/cri/api.proto) into the gRPC client that the
//! containerd tests drive containerd's CRI plugin with, as the kubelet does.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=proto/cri/api.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    if Command::new(&protoc).arg("--version").output().is_err() {
        panic!(
            "{} not found: the CRI client of bpfnet-tests is generated with protoc; install it with \
             `apt-get install protobuf-compiler` (`cargo xtask setup` does), or point PROTOC at one",
            protoc.to_string_lossy()
        );
    }
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri/api.proto"], &["proto"])
        .expect("compiling proto/cri/api.proto");
}
