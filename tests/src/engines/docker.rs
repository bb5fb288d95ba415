//! dockerd (Debian 12's docker.io 20.10, unpacked by `cargo xtask setup`, never installed as a
//! service) on a private containerd, in the sandbox's host namespace (`nsenter --net`): a
//! private data root, exec root, API socket, pid file, config file and cgroup parent, no bridge,
//! no iptables, no forwarding or masquerading of its own, and `--live-restore` (containers
//! outlive a dockerd restart). Its network driver is the sandbox agent's: dockerd finds plugins
//! only in the machine-wide `/run/docker/plugins`, so the agent's socket there has a per-run
//! name ([`driver_socket`]), removed at cleanup. Images come from `docker import` of the
//! busybox layer (no registry is reachable).
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
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// The socket the sandbox's agent serves the driver on (its BPFNET_DOCKER_PLUGIN_SOCKET):
/// dockerd knows the driver by the file's name, the sandbox's prefix.
pub fn driver_socket(sb: &Sandbox) -> PathBuf {
    Path::new(PLUGIN_DIR).join(format!("{}.sock", sb.prefix()))
}

pub struct Docker {
    /// Data root, exec root, sockets, config, containerd's directories, logs.
    dir: PathBuf,
    docker_bin: PathBuf,
    dockerd_bin: PathBuf,
    containerd_bin: PathBuf,
    host_netns: String,
    /// The driver's name for `docker network create -d`.
    pub driver: String,
    plugin_socket: PathBuf,
    /// The cgroup parent of the containers (`/{prefix}-docker`).
    cgroup_parent: String,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    torn_down: bool,
}

impl Docker {
    /// Starts containerd and dockerd and imports the busybox image as [`BUSYBOX_IMAGE`].
    pub fn start(sb: &Sandbox) -> Result<Docker> {
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
            driver: sb.prefix().to_owned(),
            plugin_socket: driver_socket(sb),
            cgroup_parent: sb.name("docker"),
            containerd: None,
            dockerd: None,
            torn_down: false,
        };
        // From here on the guard exists: whatever fails, Drop removes what was made.
        fs::create_dir_all(&engine.dir).with_context(|| format!("creating {}", engine.dir.display()))?;
        fs::write(engine.dir.join("containerd.toml"), engine.containerd_config())?;
        // An empty configuration: never the machine's /etc/docker/daemon.json.
        fs::write(engine.dir.join("daemon.json"), "{}")?;
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

    /// The daemons find runc and the shim on PATH.
    fn path_env(&self) -> String {
        let shim_dir = self.containerd_bin.parent().expect("a file in a directory");
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", shim_dir.display())
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
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--oom-score-adjust=0",
                "--live-restore",
            ])
            .arg(format!("--data-root={}", d.join("data").display()))
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
                    for id in ids.split_whitespace() {
                        if let Err(e) = self.run(&["rm", "-f", id]) {
                            errors.push(e);
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
            match self.run(&["network", "ls", "-q", "--filter", &format!("driver={}", self.driver)]) {
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
        // The agent removes its socket when it stops; one killed leaves it behind.
        match fs::remove_file(&self.plugin_socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(anyhow::anyhow!("removing {}: {e}", self.plugin_socket.display())),
        }
        errors.extend(remove_dir_if_empty(Path::new(PLUGIN_DIR)));
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
