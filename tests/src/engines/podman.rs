//! podman (Debian 12's 4.3, its CNI backend) with a configuration of its own: a private
//! `CONTAINERS_CONF` and storage, the CNI networks the test writes (bpfnet-cni only), runc,
//! file locks, cgroupfs under a cgroup parent named after the sandbox. Every podman command
//! runs in the sandbox's host namespace (`nsenter --net`).
use std::{
    cell::RefCell,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{
    cni_bin_dir, kill_cgroup_members, kill_processes_mentioning, remove_cgroup_tree, remove_dir_if_empty,
    remove_engine_dir, remove_netns_file, require, require_on_path, write_busybox_layer, write_conflist, BUSYBOX_IMAGE,
    ENGINE_STEP_LIMIT,
};
use crate::{process::output_bounded, Sandbox};

/// Where runc keeps the state of podman's containers (podman gives it no root of its own).
const RUNC_ROOT: &str = "/run/runc";

/// What podman says of a container it runs.
#[derive(Clone, Debug)]
pub struct PodmanContainer {
    pub id: String,
    /// Its address on the (only) network it joined, from podman's inspect.
    pub ip: Ipv4Addr,
    /// Its network namespace (`/run/netns/netns-...`, podman's SandboxKey).
    pub netns: PathBuf,
}

pub struct Podman {
    /// Everything of this podman: configuration, storage, run root, temporary files, the CNI
    /// configuration and plugin directories.
    dir: PathBuf,
    host_netns: String,
    /// The cgroup parent of its containers and conmons (`/{prefix}-podman`).
    cgroup_parent: String,
    /// The containers started: at cleanup, the namespace and runc state of any that podman
    /// could not remove are removed.
    seen: RefCell<Vec<PodmanContainer>>,
    torn_down: bool,
}

impl Podman {
    /// Writes podman's configuration and imports the busybox image; nothing runs yet.
    pub fn new(sb: &Sandbox) -> Result<Podman> {
        require_on_path("podman", "podman")?;
        require(Path::new("/usr/bin/runc"), "runc")?;
        let dir = std::env::temp_dir().join(sb.name("podman"));
        if dir.exists() {
            bail!("{} exists already: is another run using it? (if not, remove it)", dir.display());
        }
        let podman = Podman {
            dir,
            host_netns: sb.host_netns().to_owned(),
            cgroup_parent: sb.name("podman"),
            seen: RefCell::default(),
            torn_down: false,
        };
        // From here on the guard exists: whatever fails, Drop removes what was made.
        for sub in ["root", "runroot", "tmp", "cni-conf"] {
            fs::create_dir_all(podman.dir.join(sub))
                .with_context(|| format!("creating {}", podman.dir.join(sub).display()))?;
        }
        cni_bin_dir(&podman.dir.join("cni-bin"))?;
        fs::write(podman.dir.join("containers.conf"), podman.containers_conf())?;
        fs::write(podman.dir.join("storage.conf"), podman.storage_conf())?;
        let layer = podman.dir.join("busybox.tar");
        write_busybox_layer(&layer)?;
        podman.run(&["import", layer.to_str().expect("a UTF-8 path"), BUSYBOX_IMAGE]).context("importing busybox")?;
        Ok(podman)
    }

    /// containers.conf: CNI as the network backend with the test's networks only (podman's
    /// default network, with its bridge, portmap and firewall plugins, is never written or
    /// used); runc, because crun fails on this machine's cgroup layout; ulimits that need no
    /// CAP_SYS_RESOURCE, which the tests' processes lack; file locks in the private tmp dir
    /// instead of the machine-wide shared-memory lock segment.
    fn containers_conf(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
network_config_dir = "{d}/cni-conf"
cni_plugin_dirs = ["{d}/cni-bin"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "{d}/tmp"
volume_path = "{d}/root/volumes"
static_dir = "{d}/root/libpod"
"#
        )
    }

    fn storage_conf(&self) -> String {
        let d = self.dir.display();
        format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n")
    }

    /// Adds a CNI network (a configuration list, see [`super::conflist`]).
    pub fn add_network(&self, conflist: &Value) -> Result<()> {
        let name = conflist["name"].as_str().context("a conflist without a name")?;
        write_conflist(&self.dir.join("cni-conf"), &format!("{name}.conflist"), conflist)
    }

    /// The network configurations in podman's CNI configuration directory.
    pub fn network_files(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("cni-conf");
        let entries = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// podman with this configuration, in the sandbox's host namespace.
    pub fn command(&self) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_netns))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "overlay"])
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"));
        cmd
    }

    /// Runs podman with `args`, bounded in time; returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        output_bounded(self.command().args(args), ENGINE_STEP_LIMIT)
    }

    /// `podman run -d --network NETWORK -p PUBLISH... IMAGE sh -c SCRIPT` as `name`; returns
    /// what inspect says of it.
    pub fn run_detached(&self, name: &str, network: &str, publish: &[&str], script: &str) -> Result<PodmanContainer> {
        let parent = format!("/{}", self.cgroup_parent);
        let mut args = vec!["run", "-d", "--name", name, "--network", network, "--cgroup-parent", &parent];
        for p in publish {
            args.extend(["-p", p]);
        }
        args.extend([BUSYBOX_IMAGE, "sh", "-c", script]);
        self.run(&args).with_context(|| format!("starting container {name}"))?;
        self.inspect(name)
    }

    /// `podman run --rm` of a short-lived container: its output (podman's exit-command
    /// cleanup detaches it afterwards).
    pub fn run_once(&self, name: &str, network: &str, script: &str) -> Result<String> {
        let parent = format!("/{}", self.cgroup_parent);
        self.run(&[
            "run",
            "--rm",
            "--name",
            name,
            "--network",
            network,
            "--cgroup-parent",
            &parent,
            BUSYBOX_IMAGE,
            "sh",
            "-c",
            script,
        ])
    }

    /// `podman exec NAME sh -c SCRIPT`: its output.
    pub fn exec(&self, name: &str, script: &str) -> Result<String> {
        self.run(&["exec", name, "sh", "-c", script])
    }

    pub fn inspect(&self, name: &str) -> Result<PodmanContainer> {
        let text = self.run(&["inspect", "--type", "container", name])?;
        let all: Value = serde_json::from_str(&text).context("podman inspect printed no JSON")?;
        let c = &all[0];
        let settings = &c["NetworkSettings"];
        let networks = settings["Networks"].as_object().context("no networks in podman inspect")?;
        let (_, net) = networks.iter().next().ok_or_else(|| anyhow!("{name} joined no network"))?;
        let ip = net["IPAddress"].as_str().unwrap_or_default();
        let netns = PathBuf::from(settings["SandboxKey"].as_str().unwrap_or_default());
        let container = PodmanContainer {
            id: c["Id"].as_str().unwrap_or_default().to_owned(),
            ip: ip.parse().with_context(|| format!("{name}'s IPAddress {ip:?}"))?,
            netns,
        };
        self.seen.borrow_mut().push(container.clone());
        Ok(container)
    }

    /// `podman rm -f -t 0 NAME`.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.run(&["rm", "-f", "-t", "0", name]).map(drop)
    }

    /// Names of the containers podman knows.
    pub fn containers(&self) -> Result<Vec<String>> {
        Ok(self.run(&["ps", "-a", "--format", "{{.Names}}"])?.lines().map(str::to_owned).collect())
    }

    /// Removes everything, and fails if a step of it failed.
    pub fn teardown(mut self) -> Result<()> {
        self.torn_down = true;
        crate::process::all_done("podman teardown", self.cleanup())
    }

    /// Every step runs, whatever failed before it. Never panics.
    fn cleanup(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        // podman's own way first: the plugin's DEL runs, conmon and runc's state go.
        if self.dir.join("containers.conf").exists() {
            if let Err(e) = self.run(&["rm", "-a", "-f", "-t", "0"]) {
                errors.push(e.context("podman rm -a"));
            }
        }
        // What podman could not remove: its processes, named by its directory (conmon) or
        // living in its cgroup parent (the containers).
        errors.extend(kill_processes_mentioning(&self.dir));
        errors.extend(kill_cgroup_members(&self.cgroup_parent));
        for container in self.seen.take() {
            errors.extend(remove_netns_file(&container.netns));
            // runc's state of a container lives in runc's default root (podman passes none).
            let state = Path::new(RUNC_ROOT).join(&container.id);
            if !container.id.is_empty() && state.exists() {
                if let Err(e) = fs::remove_dir_all(&state) {
                    errors.push(anyhow!("removing {}: {e}", state.display()));
                }
            }
        }
        errors.extend(remove_cgroup_tree(&self.cgroup_parent));
        errors.extend(remove_engine_dir(&self.dir));
        errors.extend(remove_dir_if_empty(Path::new(RUNC_ROOT)));
        errors
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        for err in self.cleanup() {
            eprintln!("warning: podman cleanup: {err:#}");
        }
    }
}
