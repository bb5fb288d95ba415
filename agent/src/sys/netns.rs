//! Named network namespaces, compatible with `ip netns` (iproute2), and namespaces that
//! someone else made, by path ([`Netns`], [`open_path`], [`Identity`]).
//!
//! A named namespace is a bind mount of a namespace file onto
//! `/run/netns/NAME`, so `ip netns exec`, `ip -n NAME` and this module all see
//! the same namespaces.
//!
//! Namespaces are only ever switched on threads created for that purpose
//! (`create`, `run_in`, `netlink_in`): a namespace belongs to a thread, and a
//! tokio worker that switched would carry the wrong namespace into every task
//! it runs afterwards. The one exception is `enter_process`, for `main()`
//! before any other thread exists.

use std::fs::{self, File};
use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::sys::netlink::Netlink;

/// Where iproute2 keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Serialises the "make /run/netns a shared mount point" step: two threads
/// racing through it would both bind-mount the directory onto itself.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("invalid network namespace name {name:?}: must be non-empty, not \".\" or \"..\", and contain no '/'");
    }
    Ok(())
}

fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

/// Makes `/run/netns` exist and be a shared mount point, as `ip netns add`
/// does, so that unmounting a namespace file propagates to other mount
/// namespaces (e.g. those of `ip netns exec`) and the namespace is freed.
fn prepare_run_dir() -> Result<()> {
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    match fs::DirBuilder::new().mode(0o755).create(NETNS_RUN_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating directory {NETNS_RUN_DIR}")),
    }
    let mut made_mount_point = false;
    loop {
        match mount(Some(""), NETNS_RUN_DIR, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet; make it one by binding it onto itself.
            Err(Errno::EINVAL) if !made_mount_point => {
                mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .with_context(|| format!("bind-mounting {NETNS_RUN_DIR} onto itself"))?;
                made_mount_point = true;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("mount --make-shared {NETNS_RUN_DIR}"));
            }
        }
    }
}

/// Creates the named network namespace `name`, like `ip netns add NAME`.
pub fn create(name: &str) -> Result<()> {
    check_name(name)?;
    prepare_run_dir()?;
    let path = path_of(name);
    // O_EXCL: never bind over (and so hide) an existing namespace.
    match nix::fcntl::open(&path, OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => drop(fd),
        Err(Errno::EEXIST) => {
            bail!("network namespace {name} already exists ({})", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("creating {} for network namespace {name}", path.display())),
    }

    // unshare() moves only the calling thread, so do it on a thread that
    // exits right after; the bind mount keeps the namespace alive.
    let target = path.clone();
    let made = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            mount(Some("/proc/thread-self/ns/net"), &target, Some("none"), MsFlags::MS_BIND, None::<&str>)
                .with_context(|| format!("bind-mounting the new namespace onto {}", target.display()))
        })
        .context("spawning the thread that creates the namespace")
        .and_then(|thread| {
            thread.join().map_err(|panic| anyhow!("namespace creation thread panicked: {}", panic_message(&*panic)))?
        });

    if let Err(e) = made {
        // Nothing is mounted if the bind mount failed; the detach is for the
        // unlikely case it succeeded and something after it did not.
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        if let Err(rm) = fs::remove_file(&path) {
            tracing::warn!("rolling back network namespace {name}: removing {}: {rm}", path.display());
        }
        return Err(e).with_context(|| format!("creating network namespace {name}"));
    }
    Ok(())
}

/// Deletes the named network namespace, like `ip netns delete NAME`.
/// Returns `Ok(false)` if it did not exist.
///
/// The namespace itself lives on while processes or open file descriptors
/// still refer to it; only the name goes away.
pub fn delete(name: &str) -> Result<bool> {
    check_name(name)?;
    let path = path_of(name);
    if fs::symlink_metadata(&path).is_err() {
        return Ok(false);
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-created namespace); still remove the file.
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("unmounting {} of network namespace {name}", path.display())),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {} of network namespace {name}", path.display())),
    }
}

/// Whether `/run/netns/NAME` exists. Invalid names never exist.
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && fs::symlink_metadata(path_of(name)).is_ok()
}

#[cfg(test)] // only the tests need it so far
/// Names of all named network namespaces, sorted.
pub fn list() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_RUN_DIR}")),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_RUN_DIR}"))?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(raw) => tracing::warn!("ignoring non-UTF-8 entry {raw:?} in {NETNS_RUN_DIR}"),
        }
    }
    names.sort();
    Ok(names)
}

/// Opens the named namespace (read-only, close-on-exec), for `setns` or for
/// moving links into it.
pub fn open(name: &str) -> Result<OwnedFd> {
    check_name(name)?;
    let path = path_of(name);
    if fs::symlink_metadata(&path).is_err() {
        bail!("network namespace {name} does not exist (no {})", path.display());
    }
    open_path(&path).map_err(|e| {
        if e.to_string().contains("is not a network namespace") {
            anyhow!(
                "{} is not a network namespace (not a bind mount of one); remove it with `ip netns delete {name}`",
                path.display()
            )
        } else {
            e
        }
    })
}

/// Opens a network namespace by path (`/run/netns/X`, `/proc/PID/ns/net`,
/// `/var/run/netns/cni-...`), checked to be a network namespace, not some other file or kind
/// of namespace.
pub fn open_path(path: &Path) -> Result<OwnedFd> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("no network namespace at {} (no such file)", path.display()),
        Err(e) => return Err(e).with_context(|| format!("opening network namespace {}", path.display())),
    };
    // A leftover plain file (e.g. a crashed create) opens fine but is no namespace.
    let fs_type = fstatfs(&file).with_context(|| format!("fstatfs on {}", path.display()))?.filesystem_type();
    if fs_type != NSFS_MAGIC {
        bail!("{} is not a network namespace (no namespace file or bind mount of one)", path.display());
    }
    // A mount or PID namespace's file is on nsfs too.
    // SAFETY: NS_GET_NSTYPE takes no argument; it only reports the type of the file's namespace.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        bail!(
            "{} is not a network namespace (another kind of namespace); give one such as /proc/PID/ns/net",
            path.display()
        );
    }
    Ok(file.into())
}

/// `NS_GET_NSTYPE` (linux/nsfs.h: `_IO(0xb7, 0x3)`), not in the libc crate.
const NS_GET_NSTYPE: libc::Ioctl = 0xb703;

/// What identifies a namespace while it lives: the device and inode of its nsfs file (what
/// `stat` on any path of it gives). A path that names another namespace than before (a reused
/// PID, a name made again) has another identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub inode: u64,
}

impl Identity {
    pub fn of(fd: &OwnedFd) -> Result<Self> {
        let stat = nix::sys::stat::fstat(fd).context("fstat on a network namespace")?;
        Ok(Self { dev: stat.st_dev, inode: stat.st_ino })
    }

    /// The calling thread's own network namespace.
    pub fn own() -> Result<Self> {
        Self::of(&open_path(Path::new("/proc/thread-self/ns/net"))?)
    }
}

/// A network namespace bpfnet works in: one it made and named under /run/netns (a bpfnet
/// container's), or one someone else made, by path (a container engine's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    Named(String),
    Path(PathBuf),
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Netns::Named(name) => f.write_str(name),
            Netns::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Netns {
    pub fn open(&self) -> Result<OwnedFd> {
        match self {
            Netns::Named(name) => open(name),
            Netns::Path(path) => open_path(path),
        }
    }

    /// [`run_in`] for either kind.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        spawn_in(&self.to_string(), self.open()?, f)
    }

    /// [`netlink_in`] for either kind.
    pub async fn netlink_in<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Netlink) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
        T: Send + 'static,
    {
        netlink_in_fd(self.to_string(), self.open()?, f).await
    }
}

fn enter(label: &str, fd: &OwnedFd) -> Result<()> {
    setns(fd, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering network namespace {label} (setns)"))
}

/// Moves the calling thread into the named namespace.
///
/// Only for `main()` before any other thread (in particular the tokio
/// runtime) exists: threads created afterwards inherit the namespace, so the
/// whole process lives in it. Anywhere else, use `run_in` or `netlink_in`.
pub fn enter_process(name: &str) -> Result<()> {
    enter(name, &open(name)?)
}

/// `SO_NETNS_COOKIE` (asm-generic/socket.h; Linux 5.14), not in the libc crate yet.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace (what `bpf_get_netns_cookie` returns
/// for its sockets), read from a throwaway socket.
pub fn own_cookie() -> Result<u64> {
    use std::os::fd::AsRawFd;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket to read the network namespace cookie")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, which outlives the call.
    let ret = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len)
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error())
            .context("reading the network namespace cookie (SO_NETNS_COOKIE needs Linux 5.14 or later)");
    }
    Ok(cookie)
}

/// Runs `f` on a new thread inside the named namespace and returns its result.
/// A panic in `f` is returned as an error.
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    spawn_in(name, open(name)?, f)
}

/// Runs `f` on a new thread inside the namespace of `fd` (`label` names it in errors).
fn spawn_in<T: Send + 'static>(label: &str, fd: OwnedFd, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let owned = label.to_owned();
    let thread = std::thread::Builder::new()
        .name("netns-run".into())
        .spawn(move || -> Result<T> {
            enter(&owned, &fd)?;
            drop(fd);
            f()
        })
        .with_context(|| format!("spawning a thread for network namespace {label}"))?;
    thread
        .join()
        .map_err(|panic| anyhow!("thread in network namespace {label} panicked: {}", panic_message(&*panic)))?
}

/// Runs `f` with a `Netlink` whose socket lives in the named namespace.
///
/// `f` runs on a dedicated thread (moved into the namespace) with its own
/// current-thread tokio runtime; the caller awaits it without blocking a
/// worker.
pub async fn netlink_in<T, F, Fut>(name: &str, f: F) -> Result<T>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    netlink_in_fd(name.to_owned(), open(name)?, f).await
}

async fn netlink_in_fd<T, F, Fut>(label: String, fd: OwnedFd, f: F) -> Result<T>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    let waiting = format!("waiting for the netlink task in network namespace {label}");
    tokio::task::spawn_blocking(move || {
        let ns = label.clone();
        spawn_in(&label, fd, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .with_context(|| format!("building a tokio runtime for network namespace {ns}"))?;
            runtime.block_on(async move {
                let netlink = Netlink::connect_labeled(Some(&ns))?;
                f(netlink).await
            })
        })
    })
    .await
    .context(waiting)?
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    use crate::devkit::netns::{is_root, TestNamespaces};

    fn ns_inode(name: &str) -> u64 {
        fs::metadata(path_of(name)).unwrap().ino()
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", ".", "..", "a/b", "/x"] {
            assert!(create(bad).is_err(), "{bad:?}");
            assert!(delete(bad).is_err(), "{bad:?}");
            assert!(open(bad).is_err(), "{bad:?}");
            assert!(!exists(bad), "{bad:?}");
        }
    }

    #[test]
    fn create_list_delete() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(1);
        let name = &ns.names[0];
        assert!(exists(name));
        assert!(list().unwrap().contains(name));
        // iproute2 sees it and it is a working namespace.
        let out = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name)));
        let out = std::process::Command::new("ip").args(["-n", name, "link", "show", "lo"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Its own namespace, not ours.
        let ours = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(ns_inode(name), ours);

        assert!(delete(name).unwrap());
        assert!(!delete(name).unwrap(), "second delete reports nothing to delete");
        assert!(!exists(name));
        assert!(!list().unwrap().contains(name));
        let err = open(name).unwrap_err();
        assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    }

    #[test]
    fn create_existing_fails_and_keeps_it() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(1);
        let name = &ns.names[0];
        let before = ns_inode(name);
        let err = create(name).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        assert!(exists(name));
        assert_eq!(ns_inode(name), before, "existing namespace was replaced");
        open(name).unwrap();
    }

    #[test]
    fn run_in_switches_only_the_helper_thread() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(1);
        let name = ns.names[0].clone();
        let ours = fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let inside = run_in(&name, || Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())).unwrap();
        assert_eq!(inside, ns_inode(&name));
        assert_eq!(fs::metadata("/proc/thread-self/ns/net").unwrap().ino(), ours);

        let err = run_in(&name, || -> Result<()> { panic!("boom") }).unwrap_err();
        assert!(format!("{err:#}").contains("boom"), "{err:#}");
        let err = run_in(&name, || -> Result<()> { bail!("closure failed") }).unwrap_err();
        assert!(format!("{err:#}").contains("closure failed"), "{err:#}");
        assert!(run_in("bnt-missing-namespace", || Ok(())).is_err());
    }

    #[tokio::test]
    async fn netlink_in_sees_only_the_namespace() {
        if !is_root() {
            return;
        }
        let ns = TestNamespaces::create(1);
        let links = netlink_in(&ns.names[0], |nl| async move { nl.links().await }).await.unwrap();
        let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lo"]);
        assert!(netlink_in("bnt-missing-namespace", |nl| async move { nl.links().await }).await.is_err());
    }
}
