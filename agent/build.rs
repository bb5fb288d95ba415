//! Builds the eBPF programs (datapath-ebpf) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where src/datapath.rs embeds it with `include_bytes_aligned!`.
//!
//! Rust eBPF is built here with Debian's rustc-web (it ships a prebuilt `core` for the bpfel
//! target, so no nightly `build-std` is needed) and bpf-linker; `cargo xtask setup` installs
//! both. See docs/toolchain.md for why the usual aya-build recipe does not work here.
//!
//! Set BPFNET_SKIP_EBPF=1 for a quick host-only `cargo check`/`clippy`: the object is then
//! empty and the binary refuses to load a datapath, saying why.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let ebpf_dir = root.join("datapath-ebpf");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        root.join("datapath-common/src"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!("cargo:rerun-if-env-changed=BPFNET_SKIP_EBPF");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let objects = [("datapath", out_dir.join("datapath.bpf.o")), ("bench-floor", out_dir.join("bench_floor.bpf.o"))];
    if env::var_os("BPFNET_SKIP_EBPF").is_some() {
        println!("cargo:warning=BPFNET_SKIP_EBPF is set: the bpfnet binary has no datapath");
        for (_, object) in &objects {
            std::fs::write(object, []).unwrap();
        }
        return;
    }
    if let Err(message) = build_ebpf(&ebpf_dir, &out_dir, &objects) {
        panic!(
            "building the eBPF programs failed: {message}\n\
             Run `cargo xtask setup` (as root) to install Debian's rustc-web and bpf-linker, \
             or set BPFNET_SKIP_EBPF=1 for a host-only check."
        );
    }
}

/// Builds every binary of datapath-ebpf (bpfnet's datapath, and the bench's floor, which the
/// devkit embeds) and copies each `(binary, object)` to its object path.
fn build_ebpf(ebpf_dir: &Path, out_dir: &Path, objects: &[(&str, PathBuf)]) -> Result<(), String> {
    if !Path::new(DEBIAN_RUSTC).exists() {
        return Err(format!("{DEBIAN_RUSTC} (Debian's rustc-web) is not installed"));
    }
    let target_dir = out_dir.join("ebpf-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(ebpf_dir).args(["build", "--release", "--target", EBPF_TARGET, "--target-dir"]).arg(&target_dir);
    // The outer cargo's settings are for the host build; none of them may leak in.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key == "RUSTFLAGS";
        if leaks {
            cmd.env_remove(key.as_ref());
        }
    }
    // bpf-linker is installed by `cargo install`, next to cargo's own binaries.
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"));
    let mut path = cargo_bin.into_iter().collect::<Vec<_>>();
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    cmd.env("PATH", env::join_paths(path).unwrap())
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf uses `#![feature(asm_experimental_arch)]`; Debian's rustc is a stable build.
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF for the maps and programs, as aya-build does.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf");
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of {} exited with {status}", ebpf_dir.display()));
    }
    for (binary, object) in objects {
        let built = target_dir.join(EBPF_TARGET).join("release").join(binary);
        std::fs::copy(&built, object)
            .map_err(|e| format!("copying {} to {}: {e}", built.display(), object.display()))?;
    }
    Ok(())
}
