//! `cargo xtask setup`: everything docs/toolchain.md describes (and the tools the tests use,
//! the container engines included), installed and checked. Idempotent, and quick (a few
//! probes) when all is there already. One line per step; what apt-get and cargo install print goes to `{target dir}/xtask-setup.log`,
//! whose last lines are shown when a step fails.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};
use nix::unistd::geteuid;

use crate::{cargo_cmd, command};

/// Debian packages, all checked with `apt-cache policy` on Debian 12 (bookworm + backports).
const PACKAGES: &[&str] = &[
    // The eBPF toolchain: rustc 1.96 with LLVM 22 as /usr/bin/rustc, a prebuilt core/alloc for
    // bpfel-unknown-none, and the LLVM that bpf-linker links against.
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    // Namespaces, traffic, the bridge+iptables baseline and inspection.
    "iproute2",
    "iputils-ping",
    "iperf3",
    "sockperf",
    "tcpdump",
    "conntrack",
    "iptables",
    // nft, for the bench's nftables datapath (loaded in a sandbox namespace only). Its
    // nftables.service would load /etc/nftables.conf (`flush ruleset`) into the ROOT
    // namespace: setup masks it before installing (see [`nftables_unit`]).
    "nftables",
    "bpftool",
    "ethtool", // checksum offload off in the SNAT checksum test, so receivers verify
    "python3", // the demo's TCP/UDP peers
    "linux-perf",
    // The container engines the engine tests run bpfnet-cni under (tests/tests/engines.rs):
    // podman with its CNI backend, runc (crun fails on this machine's cgroup layout), the
    // reference CNI plugins (containerd's CRI adds their loopback to every pod), busybox for
    // the images the tests build, and protoc for the tests' CRI client (the reference plugins
    // are also what `bench --cni` compares bpfnet-cni with). containerd and Docker themselves
    // are unpacked, not installed: see [`unpack`].
    "podman",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "protobuf-compiler",
];

/// Where setup unpacks Debian's containerd package: unpacked, not installed, so no service
/// exists that could start by itself. The engine tests find it here (BPFNET_CONTAINERD_DIR,
/// which `cargo xtask test` sets, names another place).
pub const CONTAINERD_DIR: &str = "/opt/bpfnet-engines/containerd";
/// Where setup unpacks Debian's docker.io package (dockerd and the docker CLI), for the Docker
/// driver tests (BPFNET_DOCKER_DIR names another place). Its service is never installed.
pub const DOCKER_DIR: &str = "/opt/bpfnet-engines/docker";
/// In an unpacked package's directory: the package's version, written last.
const UNPACKED_STAMP: &str = ".bpfnet-unpacked";
/// Units podman's package enables: its API socket and the services that restart and
/// auto-update containers at boot. Setup disables them: nothing it leaves starts by itself.
const PODMAN_UNITS: &[&str] = &[
    "podman.socket",
    "podman.service",
    "podman-restart.service",
    "podman-auto-update.service",
    "podman-auto-update.timer",
];

/// The unit of Debian's nftables package; setup masks it.
const NFTABLES_UNIT: &str = "nftables.service";

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const MIN_RUSTC: (u32, u32) = (1, 96);
const BPF_RUSTLIB: &str = "/usr/lib/rustlib/bpfel-unknown-none";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_SERIES: (u32, u32) = (0, 13);
const BPFFS: &str = "/sys/fs/bpf";
/// Limits for the installing steps: generous (a slow mirror, bpf-linker compiling for
/// minutes), only there so that a hung step ends.
const APT_LIMIT: Duration = Duration::from_secs(20 * 60);
const CARGO_INSTALL_LIMIT: Duration = Duration::from_secs(60 * 60);

/// The log of this setup run, made (empty) when the first step needs it: a setup with
/// nothing to install neither asks cargo for the target directory nor writes a log.
#[derive(Default)]
struct SetupLog {
    path: Option<PathBuf>,
}

impl SetupLog {
    fn path(&mut self) -> Result<&Path> {
        if self.path.is_none() {
            let path = cargo_cmd::target_dir()?.join("xtask-setup.log");
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            fs::write(&path, "").with_context(|| format!("creating the setup log {}", path.display()))?;
            self.path = Some(path);
        }
        Ok(self.path.as_deref().expect("set above"))
    }
}

pub fn run() -> Result<()> {
    if !geteuid().is_root() {
        bail!(
            "must run as root: setup installs Debian packages and mounts bpffs at {BPFFS} \
             (run `sudo -E cargo xtask setup`, or as root)"
        );
    }
    let mut log = SetupLog::default();
    nftables_unit(&mut log)?;
    debian_packages(&mut log)?;
    podman_units(&mut log)?;
    unpack(&mut log, &CONTAINERD)?;
    unpack(&mut log, &DOCKER)?;
    debian_rustc()?;
    bpf_linker(&mut log)?;
    bpffs()?;
    Ok(())
}

fn debian_packages(log: &mut SetupLog) -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("ok: {} Debian packages installed", PACKAGES.len());
        return Ok(());
    }
    let log = log.path()?;
    println!("installing: {} (apt's output: {})", missing.join(" "), log.display());
    command::run_logged(Command::new("apt-get").arg("update"), log, APT_LIMIT)
        .context("`apt-get update` failed: check the network and /etc/apt/sources.list*")?;
    command::run_logged(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        log,
        APT_LIMIT,
    )
    .context(
        "`apt-get install` failed: see apt's message in the log's last lines above (another apt holding the lock?)",
    )?;
    let still_missing = missing_packages()?;
    ensure!(
        still_missing.is_empty(),
        "apt-get install succeeded but these packages are still not installed: {}",
        still_missing.join(" ")
    );
    println!("ok: installed {}", missing.join(" "));
    Ok(())
}

/// Disables the podman units its package enabled (offline, with `systemctl --root=/`: no
/// systemd needs to run).
fn podman_units(log: &mut SetupLog) -> Result<()> {
    let mut query = Command::new("systemctl");
    query.args(["--root=/", "is-enabled"]).args(PODMAN_UNITS).stderr(Stdio::null());
    command::announce(&query);
    // is-enabled exits non-zero when any unit is not enabled: its lines are what counts.
    let out = match query.output() {
        Ok(out) => out,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("ok: no systemctl, so no podman unit can start by itself");
            return Ok(());
        }
        Err(err) => return Err(err).context("could not run `systemctl is-enabled`"),
    };
    let enabled = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim() == "enabled").count();
    if enabled == 0 {
        println!("ok: podman's units are disabled");
        return Ok(());
    }
    let log = log.path()?;
    command::run_logged(Command::new("systemctl").args(["--root=/", "disable"]).args(PODMAN_UNITS), log, APT_LIMIT)
        .context("disabling podman's systemd units failed")?;
    println!("ok: disabled podman's units ({})", PODMAN_UNITS.join(" "));
    Ok(())
}

/// Masks nftables.service, before its package is installed: started (by the package's
/// postinst or at boot), it would load /etc/nftables.conf, which begins with `flush ruleset`,
/// into the root namespace. Masked, nothing can start it (offline, `systemctl --root=/`).
fn nftables_unit(log: &mut SetupLog) -> Result<()> {
    let mut query = Command::new("systemctl");
    query.args(["--root=/", "is-enabled", NFTABLES_UNIT]).stderr(Stdio::null());
    command::announce(&query);
    let out = match query.output() {
        Ok(out) => out,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("ok: no systemctl, so {NFTABLES_UNIT} cannot start by itself");
            return Ok(());
        }
        Err(err) => return Err(err).context("could not run `systemctl is-enabled`"),
    };
    // is-enabled prints `masked` for a masked unit (installed or not) and exits non-zero.
    if String::from_utf8_lossy(&out.stdout).trim() == "masked" {
        println!("ok: {NFTABLES_UNIT} is masked");
        return Ok(());
    }
    let log = log.path()?;
    command::run_logged(Command::new("systemctl").args(["--root=/", "mask", NFTABLES_UNIT]), log, APT_LIMIT)
        .with_context(|| format!("masking {NFTABLES_UNIT} failed"))?;
    println!("ok: masked {NFTABLES_UNIT} (it would load /etc/nftables.conf into the root namespace)");
    Ok(())
}

/// A Debian package that setup unpacks into a private directory instead of installing it:
/// no service exists that could start by itself.
struct Unpacked {
    package: &'static str,
    dir: &'static str,
    /// Files (relative to `dir`) a complete unpacking has.
    files: &'static [&'static str],
}

/// containerd, for the CRI tests and as the private containerd of dockerd's tests.
const CONTAINERD: Unpacked = Unpacked {
    package: "containerd",
    dir: CONTAINERD_DIR,
    files: &["usr/bin/containerd", "usr/bin/containerd-shim-runc-v2"],
};

/// Docker (20.10 on Debian 12), whose dockerd the Docker driver tests and `bench --docker` run
/// on a private containerd (docker-proxy: the bench's baseline, dockerd's own bridge).
const DOCKER: Unpacked = Unpacked {
    package: "docker.io",
    dir: DOCKER_DIR,
    files: &["usr/sbin/dockerd", "usr/sbin/docker-proxy", "usr/bin/docker"],
};

/// Downloads a Debian package and unpacks it into its directory; a stamp with its version,
/// written last, says the unpacking completed.
fn unpack(log: &mut SetupLog, what: &Unpacked) -> Result<()> {
    let Unpacked { package, dir: dir_name, files } = *what;
    let dir = Path::new(dir_name);
    let stamp = dir.join(UNPACKED_STAMP);
    if let Ok(version) = fs::read_to_string(&stamp) {
        if files.iter().all(|f| dir.join(f).is_file()) {
            println!("ok: {package} {} unpacked in {dir_name}", version.trim());
            return Ok(());
        }
    }
    let log = log.path()?.to_owned();
    let download = cargo_cmd::target_dir()?.join(format!("{package}-download"));
    if download.exists() {
        fs::remove_dir_all(&download).with_context(|| format!("removing {}", download.display()))?;
    }
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    println!("unpacking: Debian's {package} into {dir_name}, not installed (apt's output: {})", log.display());
    let mut fetch = Command::new("apt-get");
    fetch.args(["download", package]).current_dir(&download);
    if command::run_logged(&mut fetch, &log, APT_LIMIT).is_err() {
        // An old or empty package list: update it once and try again.
        command::run_logged(Command::new("apt-get").arg("update"), &log, APT_LIMIT)
            .context("`apt-get update` failed: check the network and /etc/apt/sources.list*")?;
        command::run_logged(&mut fetch, &log, APT_LIMIT)
            .with_context(|| format!("`apt-get download {package}` failed"))?;
    }
    let deb = fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;
    let version = command::output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
    // Unpacked beside, then moved in place: a half-unpacked copy is never taken for a whole one.
    let partial = dir.with_extension("partial");
    let parent = dir.parent().expect("an absolute path");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    for stale in [&partial, &dir.to_path_buf()] {
        if stale.exists() {
            fs::remove_dir_all(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    command::run_logged(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial), &log, APT_LIMIT)
        .with_context(|| format!("unpacking {package} failed"))?;
    fs::rename(&partial, dir).with_context(|| format!("moving {} to {dir_name}", partial.display()))?;
    fs::write(&stamp, &version).with_context(|| format!("writing {}", stamp.display()))?;
    fs::remove_dir_all(&download).with_context(|| format!("removing {}", download.display()))?;
    println!("ok: unpacked {package} {} into {dir_name}", version.trim());
    Ok(())
}

fn missing_packages() -> Result<Vec<String>> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package}\\t${Status}\\n"]).args(PACKAGES);
    command::announce(&cmd);
    // dpkg-query exits 1 and complains on stderr about packages it has never heard of;
    // those are simply missing, so only its stdout counts.
    let out = cmd.stderr(Stdio::null()).output().context("could not run dpkg-query: is this a Debian system?")?;
    let status = parse_dpkg_status(&String::from_utf8_lossy(&out.stdout));
    Ok(PACKAGES
        .iter()
        .filter(|package| status.get(**package).map(String::as_str) != Some("install ok installed"))
        .map(|package| package.to_string())
        .collect())
}

/// `PACKAGE\tSTATUS` lines from dpkg-query; architecture qualifiers (`pkg:amd64`) dropped.
fn parse_dpkg_status(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(package, status)| {
            let package = package.split(':').next().unwrap_or(package);
            (package.to_string(), status.trim().to_string())
        })
        .collect()
}

fn debian_rustc() -> Result<()> {
    let out = command::output(Command::new(DEBIAN_RUSTC).arg("--version")).with_context(|| {
        format!("{DEBIAN_RUSTC} does not run: reinstall it with `apt-get install --reinstall rustc-web`")
    })?;
    let version = out.trim();
    let found = parse_version(version, "rustc")
        .with_context(|| format!("cannot read the version in `{version}` from {DEBIAN_RUSTC}"))?;
    ensure!(
        (found.0, found.1) >= MIN_RUSTC,
        "{DEBIAN_RUSTC} is `{version}`, the eBPF crate needs >= {}.{}: is Debian's older `rustc` \
         package installed instead of `rustc-web`? (`apt-get install rustc-web`)",
        MIN_RUSTC.0,
        MIN_RUSTC.1
    );
    ensure!(
        Path::new(BPF_RUSTLIB).is_dir(),
        "{BPF_RUSTLIB} is missing: the prebuilt core for eBPF comes with `libstd-rust-web-dev-bpf` \
         (`apt-get install --reinstall libstd-rust-web-dev-bpf`)"
    );
    println!("ok: rustc-web {}.{}.{} with {BPF_RUSTLIB}", found.0, found.1, found.2);
    Ok(())
}

/// `(major, minor, patch)` of the first word after `tool` in a `--version` line.
fn parse_version(line: &str, tool: &str) -> Option<(u32, u32, u32)> {
    let mut words = line.split_whitespace();
    if words.next()? != tool {
        return None;
    }
    let version = words.next()?;
    // Drop pre-release or build suffixes such as "-nightly" or "+dfsg".
    let version = version.split(['-', '+']).next()?;
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn bpf_linker(log: &mut SetupLog) -> Result<()> {
    if let Some(version) = bpf_linker_version()? {
        println!("ok: bpf-linker {}.{}.{}", version.0, version.1, version.2);
        return Ok(());
    }
    let series = format!("{}.{}", BPF_LINKER_SERIES.0, BPF_LINKER_SERIES.1);
    let log = log.path()?;
    println!("installing: bpf-linker {series} (takes a few minutes; cargo's output: {})", log.display());
    let llvm_path = {
        let mut dirs = vec![Path::new(LLVM_PREFIX).join("bin")];
        dirs.extend(std::env::split_paths(&cargo_cmd::path_with_cargo_bin()));
        std::env::join_paths(dirs).expect("PATH entries contain no ':'")
    };
    let mut install = cargo_cmd::cargo();
    install
        .args(["install", "bpf-linker", "--version", &format!("~{series}")])
        .args(["--no-default-features", "--features", "llvm-22", "--locked"])
        .env("PATH", llvm_path)
        // Without it llvm-sys does not find -lLLVM.
        .env("LLVM_PREFIX", LLVM_PREFIX);
    command::run_logged(&mut install, log, CARGO_INSTALL_LIMIT).context(
        "installing bpf-linker failed: it needs llvm-22-dev and libpolly-22-dev (setup installs \
         them) and crates.io",
    )?;
    match bpf_linker_version()? {
        Some(version) => {
            println!("ok: installed bpf-linker {}.{}.{}", version.0, version.1, version.2);
            Ok(())
        }
        None => bail!(
            "bpf-linker {series} was installed but is not found with the right version: \
             is another bpf-linker earlier on PATH than {}?",
            cargo_cmd::cargo_home().join("bin").display()
        ),
    }
}

/// The version of the bpf-linker that the build would use, if it is of the wanted series.
fn bpf_linker_version() -> Result<Option<(u32, u32, u32)>> {
    let mut cmd = Command::new("bpf-linker");
    cmd.arg("--version").env("PATH", cargo_cmd::path_with_cargo_bin());
    command::announce(&cmd);
    let out = match cmd.stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => out,
        Ok(_) => return Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("bpf-linker is not installed");
            return Ok(None);
        }
        Err(err) => return Err(err).context("could not run `bpf-linker --version`"),
    };
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match parse_version(&line, "bpf-linker") {
        Some(version) if (version.0, version.1) == BPF_LINKER_SERIES => Ok(Some(version)),
        _ => {
            println!("bpf-linker reports `{line}`, want {}.{}.x", BPF_LINKER_SERIES.0, BPF_LINKER_SERIES.1);
            Ok(None)
        }
    }
}

fn bpffs() -> Result<()> {
    if is_bpffs(BPFFS)? {
        println!("ok: bpffs mounted at {BPFFS}");
        return Ok(());
    }
    println!("$ mount -t bpf bpf {BPFFS}");
    mount(Some("bpf"), BPFFS, Some("bpf"), MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting bpffs at {BPFFS} failed: does this kernel have CONFIG_BPF_SYSCALL?"))?;
    ensure!(is_bpffs(BPFFS)?, "{BPFFS} is still not a bpffs after mounting one there");
    println!("ok: mounted bpffs at {BPFFS}");
    Ok(())
}

fn is_bpffs(path: &str) -> Result<bool> {
    let stat = statfs(path).with_context(|| format!("statfs({path}) failed: is sysfs mounted at /sys?"))?;
    Ok(stat.filesystem_type() == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)", "rustc"),
            Some((1, 96, 0))
        );
        assert_eq!(parse_version("rustc 1.97.0-nightly (abc 2026-01-01)", "rustc"), Some((1, 97, 0)));
        assert_eq!(parse_version("bpf-linker 0.13.0", "bpf-linker"), Some((0, 13, 0)));
        assert_eq!(parse_version("bpf-linker", "bpf-linker"), None);
        assert_eq!(parse_version("cargo 1.95.0", "rustc"), None);
    }

    #[test]
    fn dpkg_status() {
        let status = parse_dpkg_status(
            "iproute2\tinstall ok installed\nbpftool\tdeinstall ok config-files\nlibfoo:amd64\tinstall ok installed\n",
        );
        assert_eq!(status["iproute2"], "install ok installed");
        assert_eq!(status["bpftool"], "deinstall ok config-files");
        assert_eq!(status["libfoo"], "install ok installed");
    }
}
