//! `cargo xtask test`: the style checks (rustfmt, clippy), the unit tests of every workspace
//! crate, and the black-box integration tests of `bpfnet-tests`, which run the real `bpfnet`
//! binary named by $BPFNET_BIN (and the developer tools' `bpfnet-devkit`, $BPFNET_DEVKIT_BIN,
//! and the CNI plugin `bpfnet-cni`, $BPFNET_CNI_BIN).

use anyhow::{Context, Result};

use crate::cargo_cmd::{self, Profile};
use crate::{command, setup};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Tests run at once (the integration tests share kernel state; the machines have 2 cores).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) jobs: u32,
    /// Build and test with the release profile (the dev profile is the default: it builds
    /// faster, and the tests check behaviour, not speed).
    #[arg(long)]
    release: bool,
    /// Passed on to `cargo test` (a test name, `--package X`, ...); after a further `--`,
    /// to the test harness (`--nocapture`, `--exact`, ...).
    #[arg(last = true)]
    pub(crate) cargo_args: Vec<String>,
}

pub fn run(args: TestArgs) -> Result<()> {
    setup::run()?;
    check_style()?;
    let profile = Profile::from_release_flag(args.release);
    // Package `bpfnet` builds both binaries the tests run: `bpfnet` and `bpfnet-cni`.
    cargo_cmd::build(profile, &["bpfnet"])?;
    let bpfnet_bin = cargo_cmd::bpfnet_bin(profile)?;
    let cni_bin = cargo_cmd::cni_bin(profile)?;
    let devkit_bin = cargo_cmd::build_devkit(profile)?;

    let (cargo_args, harness_args) = split_harness_args(&args.cargo_args);
    let mut cmd = cargo_cmd::cargo();
    // Run every test binary even after one failed: CI should report all failures at once.
    cmd.args(["test", "--no-fail-fast"]);
    if !selects_packages(cargo_args) {
        cmd.arg("--workspace");
    }
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    cmd.args(cargo_args)
        .arg("--")
        .arg(format!("--test-threads={}", args.jobs))
        .args(harness_args)
        .env("BPFNET_BIN", &bpfnet_bin)
        .env("BPFNET_DEVKIT_BIN", &devkit_bin)
        .env("BPFNET_CNI_BIN", &cni_bin)
        .env("BPFNET_CONTAINERD_DIR", setup::CONTAINERD_DIR)
        .env("BPFNET_DOCKER_DIR", setup::DOCKER_DIR);
    command::run(&mut cmd).context("tests failed: see cargo test's report above")
}

/// The house style, checked before anything is tested: one format (rustfmt.toml) for every
/// crate, the eBPF one included, and no clippy warning in the host crates (the developer kit
/// included).
fn check_style() -> Result<()> {
    let ebpf_manifest = cargo_cmd::workspace_root().join("datapath-ebpf").join("Cargo.toml");
    let mut fmt = cargo_cmd::cargo();
    fmt.args(["fmt", "--all", "--check"]);
    command::run(&mut fmt).context("unformatted code (the diff is above): run `cargo fmt --all`")?;
    let mut fmt = cargo_cmd::cargo();
    fmt.args(["fmt", "--check", "--manifest-path"]).arg(&ebpf_manifest);
    command::run(&mut fmt).context("unformatted eBPF code (the diff is above): run `cargo fmt` in datapath-ebpf/")?;
    let mut clippy = cargo_cmd::cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--features", "bpfnet/devkit", "--", "-D", "warnings"]);
    command::run(&mut clippy).context("clippy found something (above): fix it, it fails the tests")
}

/// Split `cargo test` arguments from the harness arguments after a `--`.
fn split_harness_args(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|arg| arg == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[]),
    }
}

/// Whether the caller picked packages (then `--workspace` would override the choice).
fn selects_packages(cargo_args: &[String]) -> bool {
    cargo_args.iter().any(|arg| arg.starts_with("-p") || arg.starts_with("--package"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    #[test]
    fn harness_args_follow_the_second_separator() {
        let args = strings(&["ping", "--", "--nocapture"]);
        let (cargo, harness) = split_harness_args(&args);
        assert_eq!(cargo, strings(&["ping"]));
        assert_eq!(harness, strings(&["--nocapture"]));
        let args = strings(&["ping"]);
        assert_eq!(split_harness_args(&args).1.len(), 0);
    }

    #[test]
    fn package_selection() {
        assert!(selects_packages(&strings(&["-p", "bpfnet"])));
        assert!(selects_packages(&strings(&["--package=bpfnet-tests"])));
        assert!(selects_packages(&strings(&["-pbpfnet"])));
        assert!(!selects_packages(&strings(&["ping", "--lib"])));
    }
}
