//! dockerd (Debian 12's docker.io 20.10, unpacked by `cargo xtask setup`, never installed as a
//! service) on a private containerd, in the sandbox's host namespace (`nsenter --net`): a
//! private data root, exec root, API socket, pid file, key file, config file and cgroup
//! parent, no default bridge, and `--live-restore` (containers outlive a dockerd restart).
//!
//! Its networks ([`Networking`]) are either the sandbox agent's driver, with no iptables,
//! forwarding or masquerading of dockerd's own (the tests), or dockerd's own bridge driver
//! with its iptables rules and docker-proxy, all inside the sandbox's host namespace (the
//! bench's baseline; a `modprobe` that refuses comes first on its PATH, so that it never loads
//! a kernel module for the whole machine).
//!
//! dockerd finds plugins only in machine-wide places: sockets in `/run/docker/plugins`, spec
//! files in `/etc/docker/plugins` (dockerd 20.10 cannot be pointed elsewhere). The agent's
//! socket or spec file there has a per-run name ([`driver_socket`], [`driver_spec`]), removed
//! at cleanup. Images come from `docker import` of the busybox layer (no registry is reachable).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::{
    containerd::DEFAULT_CONTAINERD_DIR, kill_cgroup_members, kill_processes_mentioning, remove_cgroup_tree,
    remove_dir_if_empty, remove_engine_dir, require, write_busybox_layer, BUSYBOX_IMAGE, ENGINE_STEP_LIMIT,
};
use crate::{
    process::{output_bounded, wait_bounded},
    Sandbox,
};

/// Where `cargo xtask setup` unpacks Debian's docker.io package; BPFNET_DOCKER_DIR names
/// another unpacked copy.
pub const DEFAULT_DOCKER_DIR: &str = "/opt/bpfnet-engines/docker";
/// Where dockerd looks for plugin sockets, whatever its other settings.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
/// Where dockerd 20.10 looks for plugin spec files first, whatever its other settings.
pub const SPEC_DIR: &str = "/etc/docker/plugins";
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// The socket the sandbox's agent serves the driver on (its BPFNET_DOCKER_PLUGIN_SOCKET):
/// dockerd knows the driver by the file's name, the sandbox's prefix.
pub fn driver_socket(sb: &Sandbox) -> PathBuf {
    Path::new(PLUGIN_DIR).join(format!("{}.sock", sb.prefix()))
}

/// A spec file naming the sandbox agent's socket elsewhere (its BPFNET_DOCKER_PLUGIN_SPEC):
/// the driver is again known by the sandbox's prefix.
pub fn driver_spec(sb: &Sandbox) -> PathBuf {
    Path::new(SPEC_DIR).join(format!("{}.spec", sb.prefix()))
}

/// Whose networks dockerd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Networking {
    /// The sandbox agent's driver; dockerd sets up no iptables rules, forwarding or
    /// masquerading of its own.
    Driver,
    /// dockerd's own bridge driver, as dockerd is installed by default: iptables rules,
    /// forwarding, masquerading, docker-proxy (all in the sandbox's host namespace).
    OwnBridge,
}

/// What the refusing `modprobe` says (dockerd logs it).
const MODPROBE_SHIM: &str = "#!/bin/sh\necho \"modprobe $*: refused: this sandbox's dockerd loads no kernel module (it would change the whole machine)\" >&2\nexit 1\n";
pub struct Docker {
    /// Data root, exec root, sockets, config, containerd's directories, logs.
    dir: PathBuf,
    docker_bin: PathBuf,
    dockerd_bin: PathBuf,
    containerd_bin: PathBuf,
    host_netns: String,
    /// The driver's name for `docker network create -d`.
    pub driver: String,
    networking: Networking,
    plugin_socket: PathBuf,
    plugin_spec: PathBuf,
    /// The cgroup parent of the containers (`/{prefix}-docker`).
    cgroup_parent: String,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    torn_down: bool,
}

impl Docker {
    /// Starts containerd and dockerd on the sandbox agent's driver and imports the busybox
    /// image as [`BUSYBOX_IMAGE`].
    pub fn start(sb: &Sandbox) -> Result<Docker> {
        Docker::start_with(sb, Networking::Driver)
    }

    /// Starts containerd and dockerd with `networking` and imports the busybox image.
    pub fn start_with(sb: &Sandbox, networking: Networking) -> Result<Docker> {
        let root =
            std::env::var_os("BPFNET_DOCKER_DIR").map_or_else(|| PathBuf::from(DEFAULT_DOCKER_DIR), PathBuf::from);
        let containerd_root = std::env::var_os("BPFNET_CONTAINERD_DIR")
            .map_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_DIR), PathBuf::from);
        let dockerd_bin = require(&root.join("usr/sbin/dockerd"), "docker.io (unpacked, not installed)")?;
        let docker_bin = require(&root.join("usr/bin/docker"), "docker.io (unpacked, not installed)")?;
        let containerd_bin =
            require(&containerd_root.join("usr/bin/containerd"), "containerd (unpacked, not installed)")?;
        require(&containerd_root.join("usr/bin/containerd-shim-runc-v2"), "containerd (unpacked, not installed)")?;
        require(Path::new("/usr/bin/runc"), "runc")?;
        let dir = std::env::temp_dir().join(sb.name("docker"));
        if dir.exists() {
            bail!("{} exists already: is another run using it? (if not, remove it)", dir.display());
        }
        let mut engine = Docker {
            dir,
            docker_bin,
            dockerd_bin,
            containerd_bin,
            host_netns: sb.host_netns().to_owned(),
            driver: match networking {
                Networking::Driver => sb.prefix().to_owned(),
                Networking::OwnBridge => "bridge".to_owned(),
            },
            networking,
            plugin_socket: driver_socket(sb),
            plugin_spec: driver_spec(sb),
            cgroup_parent: sb.name("docker"),
            containerd: None,
            dockerd: None,
            torn_down: false,
        };
        // From here on the guard exists: whatever fails, Drop removes what was made.
        fs::create_dir_all(&engine.dir).with_context(|| format!("creating {}", engine.dir.display()))?;
        fs::write(engine.dir.join("containerd.toml"), engine.containerd_config())?;
        // A configuration of its own, never the machine's /etc/docker/daemon.json; with the
        // identity key dockerd 20.10 would otherwise write to /etc/docker/key.json.
        let config = serde_json::json!({"deprecated-key-path": engine.dir.join("key.json")});
        fs::write(engine.dir.join("daemon.json"), config.to_string())?;
        if networking == Networking::OwnBridge {
            let shim = engine.dir.join("shim");
            fs::create_dir_all(&shim)?;
            fs::write(shim.join("modprobe"), MODPROBE_SHIM)?;
            fs::set_permissions(shim.join("modprobe"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        engine.spawn_containerd()?;
        engine.start_dockerd()?;
        let layer = engine.dir.join("busybox.tar");
        write_busybox_layer(&layer)?;
        engine.run(&["import", layer.to_str().expect("a UTF-8 path"), BUSYBOX_IMAGE]).context("importing busybox")?;
        Ok(engine)
    }

    fn containerd_config(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/containerd-root"
state = "{d}/containerd-state"
# dockerd needs no CRI; snapshotters and tracing this machine has no use for: fewer plugins, less to fail.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        )
    }

    /// The daemons find runc and containerd's shim on PATH; with its own bridge, dockerd also
    /// docker-proxy, and the refusing `modprobe` before any other.
    fn path_env(&self) -> String {
        let shim_dir = self.containerd_bin.parent().expect("a file in a directory");
        let common = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", shim_dir.display());
        match self.networking {
            Networking::Driver => common,
            Networking::OwnBridge => {
                let proxy_dir = self.dockerd_bin.parent().expect("a file in a directory");
                format!("{}:{}:{common}", self.dir.join("shim").display(), proxy_dir.display())
            }
        }
    }

    fn spawn_containerd(&mut self) -> Result<()> {
        let log = fs::File::create(self.dir.join("containerd.log")).context("creating containerd's log")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_netns))
            .arg(&self.containerd_bin)
            .arg("--config")
            .arg(self.dir.join("containerd.toml"))
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.containerd = Some(cmd.spawn().context("starting containerd")?);
        self.wait_for_socket(&self.dir.join("containerd.sock"), "containerd")
    }

    /// Starts dockerd (again, after [`Docker::stop_dockerd`]) and waits until it answers.
    pub fn start_dockerd(&mut self) -> Result<()> {
        let d = &self.dir;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .context("opening dockerd's log")?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_netns))
            .arg(&self.dockerd_bin)
            .arg(format!("--config-file={}", d.join("daemon.json").display()))
            .args(["--bridge=none", "--oom-score-adjust=0", "--live-restore"]);
        match self.networking {
            Networking::Driver => {
                cmd.args([
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-forward=false",
                    "--ip-masq=false",
                    "--userland-proxy=false",
                ]);
            }
            // dockerd's defaults: iptables, forwarding, masquerading, docker-proxy.
            Networking::OwnBridge => {
                cmd.args(["--iptables=true", "--ip-forward=true", "--ip-masq=true"]);
            }
        }
        cmd.arg(format!("--data-root={}", d.join("data").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--host=unix://{}", self.socket().display()))
            .arg(format!("--pidfile={}", d.join("dockerd.pid").display()))
            .arg(format!("--containerd={}", d.join("containerd.sock").display()))
            .arg(format!("--cgroup-parent=/{}", self.cgroup_parent))
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.dockerd = Some(cmd.spawn().context("starting dockerd")?);
        self.wait_for_socket(&self.socket(), "dockerd")?;
        // The socket exists before the API serves: ask until it answers.
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match self.run(&["version", "--format", "{{.Server.Version}}"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("dockerd did not answer; its log:\n{}", self.log_text())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stops dockerd (SIGTERM); with --live-restore its containers keep running.
    pub fn stop_dockerd(&mut self) -> Result<()> {
        if let Some(mut daemon) = self.dockerd.take() {
            let _sent = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            wait_bounded(&mut daemon, STOP_LIMIT).context("dockerd did not stop on SIGTERM")?;
        }
        Ok(())
    }

    fn wait_for_socket(&mut self, socket: &Path, what: &str) -> Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            let daemon = if what == "containerd" { self.containerd.as_mut() } else { self.dockerd.as_mut() };
            if let Some(status) = daemon.and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{what} exited ({status}) before serving; the logs:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("{what} did not serve within {START_LIMIT:?}; the logs:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The daemons' logs.
    pub fn log_text(&self) -> String {
        let read = |file: &str| fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        format!("--- dockerd ---\n{}\n--- containerd ---\n{}", read("dockerd.log"), read("containerd.log"))
    }

    /// The docker CLI against this daemon: its stdout, or an error with its output.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.docker_bin);
        cmd.arg("--host").arg(format!("unix://{}", self.socket().display())).args(args);
        // The CLI's own configuration directory: never the machine's ~/.docker.
        cmd.env("DOCKER_CONFIG", self.dir.join("cli"));
        output_bounded(&mut cmd, ENGINE_STEP_LIMIT)
    }

    /// `docker exec NAME sh -c SCRIPT`.
    pub fn exec(&self, name: &str, script: &str) -> Result<String> {
        self.run(&["exec", name, "sh", "-c", script])
    }

    /// The process id of a running container's first process (its namespaces are those of
    /// `/proc/PID/ns`).
    pub fn pid(&self, name: &str) -> Result<u32> {
        let pid = self.inspect(name, "{{.State.Pid}}")?;
        match pid.parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => bail!("container {name} has no process (State.Pid {pid:?}): is it running?"),
        }
    }

    /// `docker inspect` of one field (a Go template) of a container.
    pub fn inspect(&self, name: &str, format: &str) -> Result<String> {
        Ok(self.run(&["inspect", "--format", format, name])?.trim().to_owned())
    }

    pub fn teardown(mut self) -> Result<()> {
        self.torn_down = true;
        let errors = self.cleanup();
        if errors.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = errors.iter().map(|e| format!("  - {e:#}")).collect();
        bail!("docker teardown found problems:\n{}", list.join("\n"))
    }

    /// Every step runs, whatever failed before it. Never panics.
    fn cleanup(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        if std::thread::panicking() {
            eprintln!("{}", self.log_text());
        }
        // Docker's way first, while the agent still answers the driver: containers, then the
        // networks of this run's driver.
        if self.dockerd.is_some() {
            match self.run(&["ps", "-aq"]) {
                Ok(ids) => {
                    // A few per command: one command for hundreds could outlast its bound.
                    let ids: Vec<&str> = ids.split_whitespace().collect();
                    for some in ids.chunks(10) {
                        let mut args = vec!["rm", "-f"];
                        args.extend(some);
                        if let Err(e) = self.run(&args) {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
            match self.run(&["network", "ls", "-q", "--filter", "type=custom"]) {
                Ok(ids) => {
                    for id in ids.split_whitespace() {
                        if let Err(e) = self.run(&["network", "rm", id]) {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = self.stop_dockerd() {
            errors.push(e);
        }
        if let Some(mut daemon) = self.containerd.take() {
            let _sent = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
            if let Err(e) = wait_bounded(&mut daemon, STOP_LIMIT) {
                errors.push(e.context("containerd did not stop on SIGTERM"));
            }
        }
        // What the daemons could not remove: shims (named by the private directory) and the
        // containers' processes (in the cgroup parent), then their mounts and directories.
        errors.extend(kill_processes_mentioning(&self.dir));
        errors.extend(kill_cgroup_members(&self.cgroup_parent));
        errors.extend(remove_cgroup_tree(&self.cgroup_parent));
        errors.extend(remove_engine_dir(&self.dir));
        // The agent removes its socket and spec file when it stops; one killed leaves them.
        for file in [&self.plugin_socket, &self.plugin_spec] {
            match fs::remove_file(file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(anyhow::anyhow!("removing {}: {e}", file.display())),
            }
        }
        errors.extend(remove_dir_if_empty(Path::new(PLUGIN_DIR)));
        errors.extend(remove_dir_if_empty(Path::new(SPEC_DIR)));
        errors.extend(remove_dir_if_empty(Path::new("/run/docker")));
        errors.extend(remove_dir_if_empty(Path::new("/run/containerd/s")));
        errors.extend(remove_dir_if_empty(Path::new("/run/containerd")));
        errors
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        for err in self.cleanup() {
            eprintln!("warning: docker cleanup: {err:#}");
        }
    }
}
