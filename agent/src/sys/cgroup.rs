//! The host cgroup (`--host-cgroup`): the cgroup v2 directory whose processes' sockets reach
//! published ports through the socket hooks (`sock_*` programs). On a real host that is the
//! root of the cgroup v2 hierarchy, so that every process of the host is covered.
use std::{
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// cgroup2's statfs f_type (linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// An open cgroup v2 directory.
pub struct HostCgroup {
    pub path: PathBuf,
    /// The kernel's cgroup id (the directory's inode number on cgroup2): it names the link pins.
    pub id: u64,
    dir: File,
}

impl HostCgroup {
    /// Opens `path`, which must be a cgroup v2 directory; the error names the option and what
    /// to give instead.
    pub fn open(path: &Path) -> Result<Self> {
        let fix = fix_hint();
        let dir = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("--host-cgroup {}: no such directory; {fix}", path.display())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                bail!("--host-cgroup {}: not a directory; {fix}", path.display())
            }
            Err(e) => return Err(e).with_context(|| format!("--host-cgroup {}: opening it; {fix}", path.display())),
        };
        let fs = nix::sys::statfs::fstatfs(dir.as_fd())
            .with_context(|| format!("--host-cgroup {}: statfs", path.display()))?;
        if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
            bail!(
                "--host-cgroup {}: not a cgroup v2 directory (its filesystem type is {:#x}); {fix}",
                path.display(),
                fs.filesystem_type().0
            );
        }
        let id = dir.metadata().with_context(|| format!("--host-cgroup {}: stat", path.display()))?.ino();
        Ok(Self { path: path.to_owned(), id, dir })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// What to give `--host-cgroup` on this machine: where its cgroup v2 hierarchy is mounted.
fn fix_hint() -> String {
    match cgroup2_mount() {
        Some(mount) => format!(
            "give a cgroup v2 directory: {} (the root of this machine's cgroup v2 hierarchy: every \
             process) or a directory under it, or leave out --host-cgroup (BPFNET_HOST_CGROUP, \
             host_cgroup in the config file)",
            mount.display()
        ),
        None => "no cgroup v2 hierarchy is mounted on this machine (mount -t cgroup2 none /sys/fs/cgroup); \
                 or leave out --host-cgroup (BPFNET_HOST_CGROUP, host_cgroup in the config file)"
            .to_owned(),
    }
}

/// The mount point of the cgroup v2 hierarchy (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid host), from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS... - FSTYPE SOURCE SUPER_OPTIONS"
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}
