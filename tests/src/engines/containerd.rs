//! containerd (Debian 12's 1.6, unpacked by `cargo xtask setup` into a private directory, never
//! installed as a service) with its CRI plugin: a private root, state, socket and runc root, the
//! test's CNI configuration and plugin directories, and a pause image made from busybox and
//! imported with `ctr` (no registry is reachable). The daemon runs in the sandbox's host
//! namespace (`nsenter --net`); the tests drive it through CRI as the kubelet does.
use std::{
    fs,
    io::Write,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    cni_bin_dir,
    cri::{CriClient, HostPort, SandboxStatus},
    kill_cgroup_members, kill_processes_mentioning, remove_cgroup_tree, remove_dir_if_empty, remove_engine_dir,
    remove_netns_file, require, write_busybox_layer, write_conflist, ENGINE_STEP_LIMIT,
};
use crate::{
    process::{output_bounded, wait_bounded},
    Sandbox,
};

/// Where `cargo xtask setup` unpacks Debian's containerd package; BPFNET_CONTAINERD_DIR names
/// another unpacked copy.
pub const DEFAULT_CONTAINERD_DIR: &str = "/opt/bpfnet-engines/containerd";
/// The pause image the CRI plugin starts each sandbox from (config `sandbox_image`).
pub const PAUSE_IMAGE: &str = "localhost/bpfnet-pause:test";
/// The reference CNI plugins' loopback, which the CRI plugin runs for every pod.
const LOOPBACK_PLUGIN: &str = "/usr/lib/cni/loopback";
/// Where containerd 1.6's shims make their sockets (in `s/`), whatever the configuration.
const SHIM_SOCKET_DIR: &str = "/run/containerd";
/// CRI's image namespace in containerd.
const CRI_NAMESPACE: &str = "k8s.io";
/// How long the daemon may take to serve CRI.
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(10);

pub struct Containerd {
    /// Configuration, root, state, socket, runc root, CNI directories, log.
    dir: PathBuf,
    bin_dir: PathBuf,
    host_netns: String,
    /// The cgroup parent of the pods (`/{prefix}-cri`).
    cgroup_parent: String,
    daemon: Option<Child>,
    cri: Option<CriClient>,
    /// Namespaces of the sandboxes started: removed at cleanup if containerd left one.
    netns_seen: Vec<PathBuf>,
    torn_down: bool,
}

impl Containerd {
    /// Starts containerd with `conflist` as its (only) CNI network, imports the pause image and
    /// connects a CRI client.
    pub fn start(sb: &Sandbox, conflist: &Value) -> Result<Containerd> {
        let root = std::env::var_os("BPFNET_CONTAINERD_DIR")
            .map_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_DIR), PathBuf::from);
        let bin_dir = root.join("usr/bin");
        require(&bin_dir.join("containerd"), "containerd (unpacked, not installed)")?;
        require(&bin_dir.join("containerd-shim-runc-v2"), "containerd (unpacked, not installed)")?;
        require(Path::new("/usr/bin/runc"), "runc")?;
        let dir = std::env::temp_dir().join(sb.name("containerd"));
        if dir.exists() {
            bail!("{} exists already: is another run using it? (if not, remove it)", dir.display());
        }
        let mut engine = Containerd {
            dir,
            bin_dir,
            host_netns: sb.host_netns().to_owned(),
            cgroup_parent: sb.name("cri"),
            daemon: None,
            cri: None,
            netns_seen: Vec::new(),
            torn_down: false,
        };
        // From here on the guard exists: whatever fails, Drop removes what was made.
        fs::create_dir_all(&engine.dir).with_context(|| format!("creating {}", engine.dir.display()))?;
        let cni_bin = engine.dir.join("cni-bin");
        cni_bin_dir(&cni_bin)?;
        // The CRI plugin adds the loopback plugin to every pod's networks.
        let loopback = require(Path::new(LOOPBACK_PLUGIN), "containernetworking-plugins")?;
        symlink(&loopback, cni_bin.join("loopback")).context("linking the loopback plugin")?;
        // containerd loads the first configuration of its directory (max_conf_num = 1).
        write_conflist(&engine.dir.join("cni-conf"), "10-bpfnet.conflist", conflist)?;
        fs::write(engine.dir.join("config.toml"), engine.config())?;
        let pause = engine.dir.join("pause.tar");
        write_pause_image(&engine.dir.join("pause-image"), &pause)?;
        engine.spawn_daemon()?;
        engine
            .ctr(&["images", "import", pause.to_str().expect("a UTF-8 path")])
            .context("importing the pause image")?;
        engine.cri = Some(engine.connect_cri()?);
        Ok(engine)
    }

    /// The daemon's configuration (version 2): everything under the test's directory, the CRI
    /// plugin with the test's CNI directories and pause image. restrict_oom_score_adj: the
    /// tests' processes may not lower an OOM score below their own.
    fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Snapshotters and tracing this machine has no use for: fewer plugins, less to fail.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        Root = "{d}/runc"
"#
        )
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// PATH with the unpacked binaries first: containerd finds its shim there.
    fn path_env(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.bin_dir.clone()];
        dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        std::env::join_paths(dirs).expect("PATH entries contain no ':'")
    }

    fn spawn_daemon(&mut self) -> Result<()> {
        let log = fs::File::create(self.log_path()).context("creating containerd's log")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_netns))
            .arg(self.bin_dir.join("containerd"))
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().context("starting containerd")?;
        self.daemon = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = self.daemon.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("containerd exited ({status}) before serving; its log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("containerd did not serve within {START_LIMIT:?}; its log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `ctr` against this daemon, in CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(self.bin_dir.join("ctr"));
        cmd.arg("--address").arg(self.socket()).args(["--namespace", CRI_NAMESPACE]).args(args);
        output_bounded(&mut cmd, ENGINE_STEP_LIMIT)
    }

    /// The CRI service answers once its plugin has started: retried until then.
    fn connect_cri(&self) -> Result<CriClient> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match CriClient::connect(self.socket()) {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("containerd's CRI did not answer; its log:\n{}", self.log_text())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn cri(&mut self) -> &mut CriClient {
        self.cri.as_mut().expect("connected in start")
    }

    /// RunPodSandbox of a pod `name` with `ports` published; returns its id (the CNI
    /// container id).
    pub fn run_pod(&mut self, name: &str, ports: &[HostPort]) -> Result<String> {
        let parent = format!("/{}", self.cgroup_parent);
        let id = self.cri().run_pod_sandbox(name, "bpfnet-test", &parent, ports)?;
        if let Ok(status) = self.cri().pod_sandbox_status(&id) {
            self.netns_seen.extend(status.netns);
        }
        Ok(id)
    }

    pub fn pod_status(&mut self, id: &str) -> Result<SandboxStatus> {
        self.cri().pod_sandbox_status(id)
    }

    /// StopPodSandbox, then RemovePodSandbox, as the kubelet does when a pod goes.
    pub fn remove_pod(&mut self, id: &str) -> Result<()> {
        self.cri().stop_pod_sandbox(id)?;
        self.cri().remove_pod_sandbox(id)
    }

    pub fn pods(&mut self) -> Result<Vec<String>> {
        self.cri().list_pod_sandboxes()
    }

    /// Removes everything, and fails if a step of it failed.
    pub fn teardown(mut self) -> Result<()> {
        self.torn_down = true;
        crate::process::all_done("containerd teardown", self.cleanup())
    }

    /// Every step runs, whatever failed before it. Never panics.
    fn cleanup(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log_text());
        }
        // The kubelet's way first: the plugin's DEL runs, the shims and namespaces go.
        if let Some(mut cri) = self.cri.take() {
            match cri.list_pod_sandboxes() {
                Ok(ids) => {
                    for id in ids {
                        // Its namespace, to remove should containerd not (a sandbox whose
                        // RunPodSandbox failed has an id only here).
                        if let Ok(status) = cri.pod_sandbox_status(&id) {
                            self.netns_seen.extend(status.netns);
                        }
                        if let Err(e) = cri.stop_pod_sandbox(&id).and_then(|()| cri.remove_pod_sandbox(&id)) {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            // It may have exited already: then kill fails and the wait reaps it.
            let _sent = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            if let Err(e) = wait_bounded(&mut daemon, STOP_LIMIT) {
                errors.push(e.context("containerd did not stop on SIGTERM"));
            }
        }
        // What containerd could not remove: shims (named by its socket's directory) and the
        // pods' processes (in its cgroup parent).
        errors.extend(kill_processes_mentioning(&self.dir));
        errors.extend(kill_cgroup_members(&self.cgroup_parent));
        for netns in std::mem::take(&mut self.netns_seen) {
            errors.extend(remove_netns_file(&netns));
        }
        errors.extend(remove_cgroup_tree(&self.cgroup_parent));
        errors.extend(remove_engine_dir(&self.dir));
        // containerd 1.6's shims put their sockets under /run/containerd/s, whatever the
        // daemon's state directory.
        errors.extend(remove_dir_if_empty(&Path::new(SHIM_SOCKET_DIR).join("s")));
        errors.extend(remove_dir_if_empty(Path::new(SHIM_SOCKET_DIR)));
        errors
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        for err in self.cleanup() {
            eprintln!("warning: containerd cleanup: {err:#}");
        }
    }
}

/// A pause image as a docker archive for `ctr images import`: the busybox layer, `sleep` as
/// its entrypoint. The CRI plugin kills a sandbox's pause process with SIGKILL, so a plain
/// sleep serves.
fn write_pause_image(work: &Path, archive: &Path) -> Result<()> {
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let layer = work.join("layer.tar");
    write_busybox_layer(&layer)?;
    let digest = hex(&Sha256::digest(fs::read(&layer)?));
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    let manifest = json!([{"Config": "config.json", "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]);
    let file = fs::File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut tar = tar::Builder::new(file);
    for (name, bytes) in
        [("manifest.json", serde_json::to_vec(&manifest)?), ("config.json", serde_json::to_vec(&config)?)]
    {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        tar.append_data(&mut header, name, bytes.as_slice())?;
    }
    tar.append_path_with_name(&layer, "layer.tar")?;
    tar.into_inner()?.flush()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
