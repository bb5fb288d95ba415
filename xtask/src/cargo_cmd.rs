//! Running cargo on this workspace with the environment the build needs.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::command;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

impl Profile {
    pub fn from_release_flag(release: bool) -> Self {
        if release {
            Profile::Release
        } else {
            Profile::Dev
        }
    }

    fn cargo_flag(self) -> Option<&'static str> {
        match self {
            Profile::Dev => None,
            Profile::Release => Some("--release"),
        }
    }

    /// The folder under the target directory that holds this profile's binaries.
    fn output_dir(self) -> &'static str {
        match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        }
    }
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the workspace root")
}

pub fn cargo_home() -> PathBuf {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return PathBuf::from(home);
    }
    let home = env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cargo")
}

/// PATH with `$CARGO_HOME/bin` first, where `cargo install` put bpf-linker
/// (agent/build.rs needs it on PATH).
pub fn path_with_cargo_bin() -> OsString {
    let cargo_bin = cargo_home().join("bin");
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.contains(&cargo_bin) {
        dirs.insert(0, cargo_bin);
    }
    env::join_paths(dirs).expect("PATH entries contain no ':'")
}

/// The cargo that runs this xtask (cargo sets $CARGO for `cargo run`), in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root()).env("PATH", path_with_cargo_bin());
    cmd
}

/// `cargo build` of `packages`, or of the whole workspace when empty.
pub fn build(profile: Profile, packages: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build");
    if packages.is_empty() {
        cmd.arg("--workspace");
    }
    for package in packages {
        cmd.args(["--package", package]);
    }
    cmd.args(profile.cargo_flag());
    command::run(&mut cmd).context("the build failed: see the compiler output above")
}

pub fn target_dir() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
    let json = command::output(&mut cmd)?;
    let metadata: serde_json::Value =
        serde_json::from_str(&json).context("`cargo metadata` printed something that is not JSON")?;
    match metadata["target_directory"].as_str() {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("`cargo metadata` has no string field `target_directory`"),
    }
}

/// The built `bpfnet` binary of `profile` (build it first).
pub fn bpfnet_bin(profile: Profile) -> Result<PathBuf> {
    binary(profile, "bpfnet", "bpfnet")
}

/// The built `bpfnet-cni` plugin of `profile`, a binary of package `bpfnet` (build it first).
pub fn cni_bin(profile: Profile) -> Result<PathBuf> {
    binary(profile, "bpfnet", "bpfnet-cni")
}

/// Builds `bpfnet-devkit`, the developer tools (the `devkit` feature, which the shipped
/// `bpfnet` binary is built without), and returns its path.
pub fn build_devkit(profile: Profile) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "bpfnet", "--bin", "bpfnet-devkit", "--features", "devkit"]);
    cmd.args(profile.cargo_flag());
    command::run(&mut cmd).context("the build of bpfnet-devkit failed: see the compiler output above")?;
    binary(profile, "bpfnet", "bpfnet-devkit")
}

/// The built `xtask` binary of `profile` (build it first): the bench runs its release build
/// as the load generator.
pub fn xtask_bin(profile: Profile) -> Result<PathBuf> {
    binary(profile, "xtask", "xtask")
}

fn binary(profile: Profile, package: &str, name: &str) -> Result<PathBuf> {
    let bin = target_dir()?.join(profile.output_dir()).join(name);
    if !bin.is_file() {
        bail!(
            "{} does not exist after the build: does package `{package}` still have a binary named `{name}`?",
            bin.display()
        );
    }
    Ok(bin)
}
