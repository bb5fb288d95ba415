//! Throwaway network namespaces for running bpfnet by hand (`demo`, later `bench`), and the
//! guard that removes everything again: on success, on error, on panic and after Ctrl-C.
//!
//! Nothing here touches the root network namespace: a namespace `{prefix}-host` plays the
//! host, bpfnet is told so with `--host-netns`, and every name carries a per-run prefix so
//! cleanup removes only what this run made. [`Sandbox::add_uplink`] gives the host an uplink
//! to a namespace `{prefix}-out` that plays the outside world.

use std::cell::RefCell;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::command;

const NETNS_DIR: &str = "/run/netns";
const BPFFS: &str = "/sys/fs/bpf";
/// Limit for one bpfnet or ip command during cleanup: a hung one must not keep the rest
/// from running.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);
/// How long a starting agent may take to serve (it loads and verifies the programs).
const AGENT_START_LIMIT: Duration = Duration::from_secs(30);
/// Limit for one `ip` command that builds the sandbox.
const BUILD_LIMIT: Duration = Duration::from_secs(30);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn Ctrl-C and SIGTERM into a flag, so the guard gets to clean up. The foreground child
/// gets the signal too and fails, which ends the current step.
pub fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing a {signal} handler"))?;
    }
    Ok(())
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A background process (a server in a container) and its piped stdout.
struct Background {
    label: String,
    child: Child,
    stdout: BufReader<ChildStdout>,
}

/// The host's uplink made by [`Sandbox::add_uplink`]: a veth `name` in the host namespace with
/// `host_ip`/24, its peer `eth0` in `outside_netns` with `outside_ip`/24, and the host's
/// default route via `outside_ip`, as a host's first NIC and its router would be.
#[derive(Clone, Debug)]
pub struct Uplink {
    pub name: &'static str,
    pub host_ip: Ipv4Addr,
    pub outside_netns: String,
    pub outside_ip: Ipv4Addr,
}

/// Handle for a process started with [`Sandbox::spawn`].
#[derive(Clone, Copy, Debug)]
pub struct BackgroundId(usize);

pub struct Sandbox {
    prefix: String,
    bpfnet_bin: PathBuf,
    state_dir: PathBuf,
    bpffs_dir: PathBuf,
    scratch_dir: PathBuf,
    background: Vec<Option<Background>>,
    /// Namespaces the sandbox made itself (the host, the outside): the others of the run's
    /// prefix are bpfnet's, which `bpfnet down` must remove.
    sandbox_netns: Vec<String>,
    /// The sandbox's `bpfnet agent`, once started; the CLI talks to it on `socket`.
    agent: RefCell<Option<Child>>,
    socket: PathBuf,
    torn_down: bool,
}

impl Sandbox {
    /// Create the host namespace `{stem}xxxxx-host` (lo up) and a scratch folder.
    pub fn create(stem: &str, bpfnet_bin: PathBuf) -> Result<Sandbox> {
        let prefix = format!("{stem}{:05x}", run_id() & 0xf_ffff);
        // Checked before the guard exists, whose cleanup would delete the other run's namespace.
        let host = format!("{prefix}-host");
        if Path::new(NETNS_DIR).join(&host).exists() {
            bail!(
                "network namespace {host} exists already: is another run using it? (if not: `ip netns delete {host}`)"
            );
        }
        let sandbox = Sandbox {
            state_dir: PathBuf::from(format!("/tmp/{prefix}-state")),
            bpffs_dir: Path::new(BPFFS).join(&prefix),
            scratch_dir: PathBuf::from(format!("/tmp/{prefix}-scratch")),
            socket: PathBuf::from(format!("/tmp/{prefix}.sock")),
            agent: RefCell::new(None),
            prefix,
            bpfnet_bin,
            background: Vec::new(),
            sandbox_netns: vec![host.clone()],
            torn_down: false,
        };
        // From here on the guard exists: whatever follows fails, Drop cleans up.
        command::run(Command::new("ip").args(["netns", "add", &host]))?;
        command::run(&mut sandbox.in_netns(&host, "ip", ["link", "set", "lo", "up"]))?;
        fs::create_dir_all(&sandbox.scratch_dir)
            .with_context(|| format!("creating {}", sandbox.scratch_dir.display()))?;
        Ok(sandbox)
    }

    /// `{prefix}-{suffix}`: every namespace and bpfnet object of this run is named so.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Where this sandbox's bpfnet pins its programs and maps.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    /// The API socket of this sandbox's agent.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn host_netns(&self) -> String {
        self.name("host")
    }

    /// Give the host an uplink to a new namespace `{prefix}-out`, the outside world (see
    /// [`Uplink`]); the guard removes it with the sandbox. Make it before the agent starts
    /// with `--uplink`: the agent reads the uplink's address to masquerade to.
    pub fn add_uplink(&mut self) -> Result<Uplink> {
        let uplink = Uplink {
            name: "up0",
            host_ip: Ipv4Addr::new(10, 250, 0, 1),
            outside_netns: self.name("out"),
            outside_ip: Ipv4Addr::new(10, 250, 0, 2),
        };
        let host = self.host_netns();
        let out = uplink.outside_netns.as_str();
        if Path::new(NETNS_DIR).join(out).exists() {
            bail!("network namespace {out} exists already: is another run using it? (if not: `ip netns delete {out}`)");
        }
        let host_cidr = format!("{}/24", uplink.host_ip);
        let out_cidr = format!("{}/24", uplink.outside_ip);
        let gateway = uplink.outside_ip.to_string();
        command::run_bounded(Command::new("ip").args(["netns", "add", out]), BUILD_LIMIT)?;
        // Counted as the sandbox's at once, so a failure below does not blame `bpfnet down`.
        self.sandbox_netns.push(out.to_string());
        // `ip -n NS`: every step runs in a sandbox namespace, never in the root one.
        let steps: [&[&str]; 7] = [
            &["-n", out, "link", "set", "lo", "up"],
            &["-n", &host, "link", "add", uplink.name, "type", "veth", "peer", "name", "eth0", "netns", out],
            &["-n", &host, "addr", "add", &host_cidr, "dev", uplink.name],
            &["-n", &host, "link", "set", uplink.name, "up"],
            &["-n", out, "addr", "add", &out_cidr, "dev", "eth0"],
            &["-n", out, "link", "set", "eth0", "up"],
            &["-n", &host, "route", "add", "default", "via", &gateway],
        ];
        for step in steps {
            command::run_bounded(Command::new("ip").args(step), BUILD_LIMIT)
                .context("building the sandbox's uplink")?;
        }
        Ok(uplink)
    }

    /// Starts `bpfnet agent` for this sandbox (its host namespace, state and pin directories,
    /// its own socket, and `extra` flags such as `--uplink up0`) and waits until it serves.
    /// The guard stops it after `bpfnet down`.
    pub fn start_agent(&self, extra: &[&str]) -> Result<()> {
        let mut cmd = Command::new(&self.bpfnet_bin);
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("agent")
            .arg("--host-netns")
            .arg(self.host_netns())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpffs")
            .arg(&self.bpffs_dir)
            .args(extra)
            .stdout(Stdio::null());
        command::announce(&cmd);
        let mut child = cmd.spawn().with_context(|| format!("could not start `{}`", command::display(&cmd)))?;
        let deadline = Instant::now() + AGENT_START_LIMIT;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("bpfnet agent exited ({status}) before serving: see its errors above");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("bpfnet agent did not serve on {} within {AGENT_START_LIMIT:?}", self.socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.agent.borrow_mut() = Some(child);
        Ok(())
    }

    /// Whether the agent was started (and not stopped since).
    pub fn agent_running(&self) -> bool {
        self.agent.borrow().is_some()
    }

    /// Stops the running agent (SIGTERM: the datapath keeps running) and starts it again with
    /// `extra` flags, e.g. another `--uplink-mode`.
    pub fn restart_agent(&self, extra: &[&str]) -> Result<()> {
        if let Some(mut agent) = self.agent.borrow_mut().take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), Signal::SIGTERM);
            command::wait_bounded(&mut agent, CLEANUP_LIMIT).context("stopping bpfnet agent for a restart")?;
        }
        self.start_agent(extra)
    }

    /// The bpfnet CLI aimed at this sandbox's agent.
    pub fn bpfnet(&self) -> Command {
        let mut cmd = Command::new(&self.bpfnet_bin);
        cmd.arg("--socket").arg(&self.socket);
        cmd
    }

    /// `ip netns exec NETNS PROGRAM ARGS`.
    pub fn in_netns<I, S>(&self, netns: &str, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, program]).args(args);
        cmd
    }

    /// Write a file (a script for the containers to run) into the scratch folder.
    pub fn write_scratch(&self, file: &str, contents: &str) -> Result<PathBuf> {
        let path = self.scratch_dir.join(file);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Start a background process with piped stdout; the guard kills and reaps it.
    pub fn spawn(&mut self, label: &str, mut cmd: Command) -> Result<BackgroundId> {
        command::announce(&cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {label}: `{}`", command::display(&cmd)))?;
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        self.background.push(Some(Background { label: label.to_string(), child, stdout }));
        Ok(BackgroundId(self.background.len() - 1))
    }

    fn background(&mut self, id: BackgroundId) -> Result<&mut Background> {
        self.background[id.0].as_mut().ok_or_else(|| anyhow!("background process #{} has finished already", id.0))
    }

    /// The next line the process prints (a server says when it listens).
    pub fn read_line(&mut self, id: BackgroundId) -> Result<String> {
        let process = self.background(id)?;
        let mut line = String::new();
        let read =
            process.stdout.read_line(&mut line).with_context(|| format!("reading the output of {}", process.label))?;
        if read == 0 {
            bail!("{} exited before it printed a line: see its errors above", process.label);
        }
        Ok(line.trim_end().to_string())
    }

    /// Wait (at most `limit`) for the process to exit 0, and return the rest of its output.
    pub fn finish(&mut self, id: BackgroundId, limit: Duration) -> Result<String> {
        let mut process =
            self.background[id.0].take().ok_or_else(|| anyhow!("background process #{} has finished already", id.0))?;
        let status = command::wait_bounded(&mut process.child, limit).with_context(|| process.label.clone())?;
        let mut rest = String::new();
        process.stdout.read_to_string(&mut rest).with_context(|| format!("reading the output of {}", process.label))?;
        if !status.success() {
            bail!("{} failed ({status}); its output: {rest}", process.label);
        }
        Ok(rest)
    }

    /// Remove everything, and fail if bpfnet left anything behind or a step of the
    /// removal failed.
    pub fn teardown(mut self) -> Result<()> {
        self.torn_down = true;
        let errors = self.cleanup(true);
        if errors.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = errors.iter().map(|err| format!("  - {err:#}")).collect();
        bail!("teardown found problems:\n{}", list.join("\n"))
    }

    /// Every step runs, whatever failed before it; the errors are returned.
    /// `strict`: also count what `bpfnet down` should have removed but left.
    fn cleanup(&mut self, strict: bool) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();

        // `bpfnet down` needs the agent; the agent is stopped after it (the datapath it
        // leaves running is gone by then).
        let agent = self.agent.borrow_mut().take();
        if let Some(mut agent) = agent {
            let mut down = self.bpfnet();
            down.arg("down");
            if let Err(err) = command::run_bounded(&mut down, CLEANUP_LIMIT) {
                errors.push(err.context("`bpfnet down` failed"));
            }
            println!("stopping bpfnet agent");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), Signal::SIGTERM);
            if command::wait_bounded(&mut agent, CLEANUP_LIMIT).is_err() {
                let _ = agent.kill();
                let _ = agent.wait();
            }
        }
        let _ = fs::remove_file(&self.socket);

        for slot in &mut self.background {
            if let Some(mut process) = slot.take() {
                println!("stopping {}", process.label);
                // It may have exited already: then kill fails and wait reaps it.
                let _killed = process.child.kill();
                if let Err(err) = process.child.wait() {
                    errors.push(anyhow!("reaping {}: {err}", process.label));
                }
            }
        }

        let host = self.host_netns();

        // What bpfnet down should have removed; remove it anyway.
        let mut own_netns = self.own_namespaces();
        own_netns.sort_by_key(|netns| *netns == host); // the host namespace last
        for netns in own_netns {
            if strict && !self.sandbox_netns.contains(&netns) {
                errors.push(anyhow!("`bpfnet down` left network namespace {netns} behind"));
            }
            if let Err(err) = command::run_bounded(Command::new("ip").args(["netns", "delete", &netns]), CLEANUP_LIMIT)
            {
                errors.push(err);
            }
        }

        if strict && dir_has_entries(&self.bpffs_dir) {
            errors.push(anyhow!("`bpfnet down` left pins in {}", self.bpffs_dir.display()));
        }
        for dir in [&self.bpffs_dir, &self.state_dir, &self.scratch_dir] {
            if dir.exists() {
                println!("$ rm -r {}", dir.display());
                if let Err(err) = fs::remove_dir_all(dir) {
                    errors.push(anyhow!("removing {}: {err}", dir.display()));
                }
            }
        }
        errors
    }

    /// Named namespaces of this run (`/run/netns/{prefix}-*`).
    fn own_namespaces(&self) -> Vec<String> {
        let own = format!("{}-", self.prefix);
        let Ok(entries) = fs::read_dir(NETNS_DIR) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(&own))
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        println!("\n==> cleaning up sandbox {}", self.prefix);
        for err in self.cleanup(false) {
            eprintln!("warning: cleanup: {err:#}");
        }
    }
}

fn dir_has_entries(dir: &Path) -> bool {
    fs::read_dir(dir).map(|mut entries| entries.next().is_some()).unwrap_or(false)
}

/// pid ^ time: distinct for runs that overlap on one machine.
fn run_id() -> u32 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos() as u32).unwrap_or(0);
    std::process::id() ^ nanos
}
