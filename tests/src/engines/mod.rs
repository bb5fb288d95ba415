//! Real container engines driving `bpfnet-cni` against a sandbox's agent: podman (its CNI
//! backend) and containerd (its CRI plugin, spoken to as the kubelet does, see [`cri`]).
//!
//! Each engine runs with `nsenter --net=/run/netns/HOST`, so the plugin's "host" is the
//! sandbox's host namespace (not `ip netns exec`, which remounts /sys and breaks the engines'
//! cgroup mounts), with private roots, state, sockets, config and cgroup parents named after
//! the sandbox, and only the networks the test writes: never an engine's default network. The
//! guards ([`podman::Podman`], [`containerd::Containerd`]) remove what their engine made when
//! dropped, also when a test failed: containers and pods, the engine's processes, its mounts,
//! namespaces and cgroups, its directories. Declare the guard after the [`Sandbox`], so it is
//! dropped first, while the agent still answers the plugin's DELs.
//!
//! An engine that is not installed fails the test, with how to install it (`cargo xtask setup`).
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod podman;

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddrV4, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    mount::{umount2, MntFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

use crate::{cgroup2_mount, cni_bin, in_netns, process::output_bounded, Sandbox, IO_TIMEOUT};

/// The image both engines run: busybox and its applets, imported from a tar the test builds
/// (no registry is reachable).
pub const BUSYBOX_IMAGE: &str = "localhost/bpfnet-busybox:test";
/// Where the busybox the images are made of comes from (Debian's `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";
/// Bound on one engine command (an image import, a container start or removal).
pub const ENGINE_STEP_LIMIT: Duration = Duration::from_secs(60);

/// A CNI configuration list with one plugin, bpfnet-cni, for the sandbox's agent: `network`
/// is both the list's name (what the engine calls the network) and the bpfnet network; with a
/// `subnet`, the plugin creates the bpfnet network on the first ADD.
pub fn conflist(sb: &Sandbox, cni_version: &str, network: &str, subnet: Option<&str>) -> Value {
    let mut plugin = json!({
        "type": "bpfnet-cni",
        "network": network,
        "socket": sb.socket(),
        "capabilities": {"portMappings": true},
    });
    if let Some(subnet) = subnet {
        plugin["subnet"] = json!(subnet);
    }
    json!({"cniVersion": cni_version, "name": network, "plugins": [plugin]})
}

/// A directory with the plugin under test, for an engine's CNI plugin path.
fn cni_bin_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let plugin = cni_bin();
    symlink(&plugin, dir.join("bpfnet-cni"))
        .with_context(|| format!("linking {} into {}", plugin.display(), dir.display()))
}

/// Writes a configuration list into an engine's CNI configuration directory.
fn write_conflist(dir: &Path, file: &str, conflist: &Value) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file);
    fs::write(&path, serde_json::to_vec_pretty(conflist)?).with_context(|| format!("writing {}", path.display()))
}

/// A tool the engine tests need, or an error saying how to install it.
fn require(path: &Path, package: &str) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    bail!(
        "{} not found: the engine tests need Debian's {package}; install it with `cargo xtask setup` \
         (as root), which installs every tool the tests use",
        path.display()
    )
}

/// A program on PATH, or an error saying how to install it.
fn require_on_path(program: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file()).ok_or_else(|| {
        anyhow!(
            "{program} not found on PATH: the engine tests need Debian's {package}; install it with \
                 `cargo xtask setup` (as root), which installs every tool the tests use"
        )
    })
}

/// A root filesystem layer as a tar: `/bin/busybox` and a symlink per applet, plus the
/// directories a container expects. Both engines' images are made of it.
pub fn write_busybox_layer(path: &Path) -> Result<()> {
    let busybox = require(Path::new(BUSYBOX), "busybox-static")?;
    let applets = output_bounded(Command::new(&busybox).arg("--list"), ENGINE_STEP_LIMIT)?;
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut tar = tar::Builder::new(file);
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        header.set_size(0);
        tar.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    tar.append_path_with_name(&busybox, "bin/busybox").with_context(|| format!("adding {}", busybox.display()))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// Unmounts every mount at or below `dir` (deepest first, lazily: an engine that died leaves
/// overlay, shm and namespace mounts behind). Returns the errors.
fn unmount_under(dir: &Path) -> Vec<anyhow::Error> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return vec![anyhow!("reading /proc/self/mountinfo")];
    };
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    mounts.dedup();
    let mut errors = Vec::new();
    for point in mounts {
        // A mount stacked on another shows up twice: the second umount may find it gone.
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => errors.push(anyhow!("unmounting {}: {e}", point.display())),
        }
    }
    errors
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Kills (SIGKILL, by PID) the processes whose command line mentions `marker` (an engine's
/// private directory: its daemons and shims name it), and waits a little for them to go.
/// They are not this process's children: init reaps them.
fn kill_processes_mentioning(marker: &Path) -> Vec<anyhow::Error> {
    let marker = marker.to_string_lossy().into_owned();
    let me = std::process::id();
    let matching = || -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid as u32 != me)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&marker))
                    .unwrap_or(false)
            })
            .collect()
    };
    signal_until_gone(matching)
}

/// Kills the processes in a cgroup tree (a container's processes, when its engine could not
/// stop it), by PID.
fn kill_cgroup_members(cgroup_name: &str) -> Vec<anyhow::Error> {
    let trees: Vec<PathBuf> = cgroup_mounts().into_iter().map(|m| m.join(cgroup_name)).filter(|t| t.is_dir()).collect();
    let members = move || -> Vec<i32> {
        let mut pids = Vec::new();
        for tree in &trees {
            let mut stack = vec![tree.clone()];
            while let Some(dir) = stack.pop() {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                if let Ok(entries) = fs::read_dir(&dir) {
                    stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    signal_until_gone(members)
}

fn signal_until_gone(find: impl Fn() -> Vec<i32>) -> Vec<anyhow::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = find();
        if pids.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return vec![anyhow!("processes {pids:?} did not exit after SIGKILL")];
        }
        for pid in pids {
            let _gone_already = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every mounted cgroup hierarchy (v1 controllers and the v2 one).
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            matches!(fs.split_whitespace().next(), Some("cgroup" | "cgroup2"))
                .then(|| mount.split_whitespace().nth(4).map(|p| PathBuf::from(unescape_mountinfo(p))))?
        })
        .collect();
    if mounts.is_empty() {
        mounts.extend(cgroup2_mount());
    }
    mounts
}

/// Removes a cgroup tree `/{cgroup_name}` from every hierarchy (deepest first; its processes
/// must be gone).
fn remove_cgroup_tree(cgroup_name: &str) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    for tree in cgroup_mounts().into_iter().map(|m| m.join(cgroup_name)).filter(|t| t.is_dir()) {
        let mut dirs = Vec::new();
        let mut stack = vec![tree];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                errors.push(anyhow!("removing cgroup {}: {e}", dir.display()));
            }
        }
    }
    errors
}

/// Removes a network namespace an engine made and left behind (its bind mount, then its
/// file).
fn remove_netns_file(path: &Path) -> Vec<anyhow::Error> {
    if !path.exists() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => errors.push(anyhow!("unmounting {}: {e}", path.display())),
    }
    if let Err(e) = fs::remove_file(path) {
        errors.push(anyhow!("removing {}: {e}", path.display()));
    }
    errors
}

/// The engine's private directory, removed (its mounts first).
fn remove_engine_dir(dir: &Path) -> Vec<anyhow::Error> {
    let mut errors = unmount_under(dir);
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(dir) {
            errors.push(anyhow!("removing {}: {e}", dir.display()));
        }
    }
    errors
}

/// Removes a machine-wide directory that an engine makes for its runs (runc's and the
/// containerd shims' defaults under /run) once it is empty: another run may still use it.
fn remove_dir_if_empty(dir: &Path) -> Vec<anyhow::Error> {
    match fs::remove_dir(dir) {
        Ok(()) => Vec::new(),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTEMPTY | libc::EEXIST)) => Vec::new(),
        Err(e) => vec![anyhow!("removing {}: {e}", dir.display())],
    }
}

/// The name of a namespace under /run/netns, from an engine's path of it (containerd says
/// /var/run/netns/..., a link to /run/netns here).
pub fn netns_name(path: &Path) -> Result<String> {
    let name = path.file_name().and_then(|n| n.to_str()).context("a namespace path without a file name")?;
    let parent = path.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    if parent != "/run/netns" && parent != "/var/run/netns" {
        bail!("{} is not under /run/netns", path.display());
    }
    Ok(name.to_owned())
}

/// A busybox httpd on port 80 whose CGI answers with the client's address ($REMOTE_ADDR).
pub const PEER_SERVER: &str = r#"mkdir -p /www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "peer=$REMOTE_ADDR"\n' > /www/cgi-bin/peer && chmod +x /www/cgi-bin/peer && exec httpd -f -p 80 -h /www"#;

/// GET /cgi-bin/peer over TCP from `netns` to `addr`: the address the server saw. Retried
/// for a short while: httpd needs a moment after its container started.
pub fn peer_seen(netns: &str, addr: SocketAddrV4) -> String {
    let mut last = String::new();
    for _ in 0..20 {
        match http_get(netns, addr, "/cgi-bin/peer") {
            Ok(body) => match peer_in(&body) {
                Some(peer) => return peer,
                None => last = body,
            },
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("no answer from {addr} (from {netns}): {last}");
}

/// The client address in the CGI's answer. httpd listens on a dual-stack socket where it can,
/// and then names an IPv4 client `[::ffff:a.b.c.d]`.
pub fn peer_in(answer: &str) -> Option<String> {
    let peer = answer.lines().find_map(|l| l.strip_prefix("peer="))?;
    Some(peer.trim().trim_start_matches("[::ffff:").trim_end_matches(']').to_owned())
}

pub fn http_get(netns: &str, addr: SocketAddrV4, path: &'static str) -> anyhow::Result<String> {
    in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(&addr.into(), IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
}
